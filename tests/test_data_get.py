"""`lorakit data get`: downloads from a local mirror (no network), checksums, the record,
`--bench NAME` without a path, and the one-line failure offline."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import socket
import tarfile
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.data.get import (
    DATASETS,
    RECORD_FILE,
    DatasetManifest,
    RemoteFile,
    fetched_bench_location,
    get_dataset,
    tree_sha256,
)
from lorakit.errors import ConfigError, DataError

HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(main, list(args))


@pytest.fixture()
def mirror(tmp_path: Path, shared_data: Path) -> Path:
    """A mirror folder laid out as MIRROR/NAME/FILE, holding real files from ../shared/data."""
    root = tmp_path / "mirror"
    (root / "medqa").mkdir(parents=True)
    shutil.copy(
        shared_data / "medqa" / "us_4_options_sample.jsonl",
        root / "medqa" / "phrases_no_exclude_test.jsonl",
    )
    return root


def plain_manifest(name: str, files: dict[str, bytes | None], mirror: Path) -> DatasetManifest:
    """A manifest of plain files; a value of None leaves the checksum unpinned."""
    (mirror / name).mkdir(parents=True, exist_ok=True)
    remotes = []
    for filename, pinned in files.items():
        remotes.append(
            RemoteFile(
                url=f"https://example.invalid/{name}/rev/{filename}",
                path=filename,
                sha256=None if pinned is None else sha256(pinned),
            )
        )
    return DatasetManifest(
        name=name,
        title=name,
        upstream="https://example.invalid",
        revision="0" * 40,
        licence="MIT",
        licence_url="https://example.invalid/LICENSE",
        files=tuple(remotes),
        source=f"jsonl:{{dir}}/{next(iter(files))}",
    )


# --------------------------------------------------------------------------- checksums


def test_pinned_files_are_verified_and_recorded(tmp_path: Path):
    mirror = tmp_path / "mirror"
    a, b = b'{"question": "q", "answer": "a"}\n', b"licence text\n"
    manifest = plain_manifest("toy", {"qa.jsonl": a, "LICENSE": b}, mirror)
    (mirror / "toy" / "qa.jsonl").write_bytes(a)
    (mirror / "toy" / "LICENSE").write_bytes(b)

    result = get_dataset(manifest, tmp_path / "home", mirror=str(mirror))

    assert result.folder == tmp_path / "home" / "toy" and not result.already
    assert (result.folder / "qa.jsonl").read_bytes() == a
    assert [(f.path, f.sha256, f.verified) for f in result.files] == [
        ("qa.jsonl", sha256(a), True),
        ("LICENSE", sha256(b), True),
    ]
    record = json.loads((result.folder / RECORD_FILE).read_text())
    assert record["revision"] == "0" * 40 and record["licence"] == "MIT"
    assert record["files"][0]["url"] == (mirror / "toy" / "qa.jsonl").resolve().as_uri()
    assert record["source"] == f"jsonl:{result.folder}/qa.jsonl"
    assert [p.name for p in (tmp_path / "home").iterdir()] == ["toy"]  # no temporary left

    again = get_dataset(manifest, tmp_path / "home", mirror=str(mirror))
    assert again.already and again.files == result.files
    (mirror / "toy" / "LICENSE").write_bytes(b"changed\n")
    with pytest.raises(DataError):  # --force downloads again, and checks again
        get_dataset(manifest, tmp_path / "home", mirror=str(mirror), force=True)
    assert (result.folder / "LICENSE").read_bytes() == b  # the good copy is kept


def test_a_changed_file_is_refused_and_nothing_is_kept(tmp_path: Path):
    mirror = tmp_path / "mirror"
    pinned, other = b"the pinned bytes\n", b"other bytes\n"
    manifest = plain_manifest("toy", {"qa.jsonl": pinned}, mirror)
    (mirror / "toy" / "qa.jsonl").write_bytes(other)

    with pytest.raises(DataError) as caught:
        get_dataset(manifest, tmp_path / "home", mirror=str(mirror))

    message = caught.value.format()
    assert "\n" not in message
    assert f"qa.jsonl has sha256 {sha256(other)}" in message
    assert f"lorakit pins {sha256(pinned)}" in message
    assert list((tmp_path / "home").iterdir()) == []


def test_an_unpinned_file_is_recorded_as_unverified(tmp_path: Path):
    mirror = tmp_path / "mirror"
    manifest = plain_manifest("toy", {"qa.jsonl": None}, mirror)
    (mirror / "toy" / "qa.jsonl").write_bytes(b"any bytes\n")

    result = get_dataset(manifest, tmp_path / "home", mirror=str(mirror))

    (fetched,) = result.files
    assert (fetched.verified, fetched.sha256) == (False, sha256(b"any bytes\n"))
    assert result.unverified == [fetched]


def _tar_gz(folder: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=top)
    return buffer.getvalue()


def test_an_archive_is_checked_by_the_files_it_unpacks_to(tmp_path: Path, shared_data: Path):
    subset = shared_data / "medquad" / "5_NIDDK_QA"
    # The digest as `sha256sum` of every file sorted by path gives it, computed independently.
    lines = "".join(
        f"{sha256(p.read_bytes())}  5_NIDDK_QA/{p.name}\n"
        for p in sorted(subset.iterdir(), key=lambda p: p.name)
    )
    expected = sha256(lines.encode())
    mirror = tmp_path / "mirror"
    (mirror / "medquad").mkdir(parents=True)
    (mirror / "medquad" / "abc123").write_bytes(
        _tar_gz(subset, "MedQuAD-abc123/5_NIDDK_QA")  # GitHub's REPO-SHA/ top folder
    )
    archive = RemoteFile(
        url="https://codeload.github.com/abachaa/MedQuAD/tar.gz/abc123",
        path="",
        archive="tar.gz",
        strip=1,
        tree_sha256=expected,
    )
    manifest = attrs.evolve(DATASETS["medquad"], files=(archive,))

    result = get_dataset(manifest, tmp_path / "home", mirror=str(mirror))

    folder = tmp_path / "home" / "medquad"
    assert tree_sha256(folder) == expected == result.files[0].sha256
    assert result.files[0].verified and result.files[0].kind == "tree"
    assert len(list((folder / "5_NIDDK_QA").iterdir())) == len(list(subset.iterdir()))
    assert result.source_uri() == f"medquad:{folder}"

    wrong = attrs.evolve(manifest, files=(attrs.evolve(archive, tree_sha256="0" * 64),))
    with pytest.raises(DataError, match="the files unpacked from abc123 has sha256"):
        get_dataset(wrong, tmp_path / "other", mirror=str(mirror))


# --------------------------------------------------------------------------- the built-ins


def test_builtin_manifests_pin_what_they_can_and_say_what_they_cannot(registries):
    assert set(DATASETS) == {"medquad", "pubmedqa", "medqa", "medmcqa", "mmlu"}
    for m in DATASETS.values():
        assert m.licence and m.licence_url.startswith("https://") and m.upstream
        assert m.source.partition(":")[0] in registries.sources.names()
        for bench in m.bench:
            assert bench in registries.benchmarks.names()
        for f in m.files:
            pinned = f.tree_sha256 if f.archive else f.sha256
            assert pinned is None or HEX64.fullmatch(pinned)
            if m.revision is not None:
                assert m.revision in f.url  # the URL is pinned to the revision
        if not all(f.pinned for f in m.files):
            assert "unverified" in m.note  # an unpinned checksum is said, not hidden
    assert DATASETS["mmlu"].revision is None  # the authors' server has no revisions
    assert all(f.pinned for f in DATASETS["pubmedqa"].files + DATASETS["medquad"].files)


def test_pubmedqa_derives_the_official_test_split(tmp_path: Path, shared_data: Path, monkeypatch):
    items = json.loads((shared_data / "pubmedqa" / "ori_pqal_train.json").read_text())
    test_ids = list(items)[:7]
    files = {
        "ori_pqal.json": json.dumps(items).encode(),
        "test_ground_truth.json": json.dumps(
            {k: items[k]["final_decision"] for k in test_ids}
        ).encode(),
        "LICENSE": b"MIT\n",
    }
    mirror = tmp_path / "mirror"
    (mirror / "pubmedqa").mkdir(parents=True)
    for name, data in files.items():
        (mirror / "pubmedqa" / name).write_bytes(data)
    manifest = attrs.evolve(
        DATASETS["pubmedqa"],
        files=tuple(
            attrs.evolve(f, sha256=sha256(files[f.path])) for f in DATASETS["pubmedqa"].files
        ),
    )
    home = tmp_path / "home"

    result = get_dataset(manifest, home, mirror=str(mirror))

    test = json.loads((home / "pubmedqa" / "pqal_test.json").read_text())
    train = json.loads((home / "pubmedqa" / "pqal_train.json").read_text())
    assert list(test) == test_ids and len(train) == len(items) - 7
    assert not set(test) & set(train)
    assert {f.path: f.kind for f in result.files}["pqal_test.json"] == "derived"

    # `--bench pubmedqa` without a path now scores the derived test split.
    from lorakit.evaluate.benchmarks import load_benchmark, parse_bench

    monkeypatch.setenv("LORAKIT_DATA_HOME", str(home))
    bench, location = parse_bench("pubmedqa")
    assert location == str(home / "pubmedqa" / "pqal_test.json")
    rows, _ = load_benchmark(bench, location)
    assert len(rows) == 7 and all(row.context for row in rows)


# --------------------------------------------------------------------------- the command


def test_data_get_medqa_from_a_mirror_then_bench_by_name(tmp_path: Path, mirror: Path, monkeypatch):
    home = tmp_path / "home"
    result = run("data", "get", "medqa", "--mirror", str(mirror), "--to", str(home))

    assert result.exit_code == 0, result.output
    path = home / "medqa" / "phrases_no_exclude_test.jsonl"
    digest = sha256(path.read_bytes())
    assert f"sha256 {digest}  UNVERIFIED" in result.output
    assert "licence: MIT (jind11/MedQA)" in result.output
    assert "@ 0fb93dd23a7339b6dcd27e241cb9b5eca62d4d18" in result.output
    assert f"--bench medqa:{path}" in result.output

    from lorakit.evaluate.benchmarks import load_benchmark, parse_bench

    monkeypatch.setenv("LORAKIT_DATA_HOME", str(home))
    assert fetched_bench_location("medqa") == (str(path), "medqa")
    bench, location = parse_bench("medqa")
    assert location == str(path)
    rows, _ = load_benchmark(bench, location)
    assert len(rows) == 50 and all(len(row.options) == 4 for row in rows)

    again = run("data", "get", "medqa", "--json", env={"LORAKIT_DATA_HOME": str(home)})
    assert again.exit_code == 0 and json.loads(again.output)["already"] is True


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("where", ["http", "folder"])
def test_offline_is_one_line_naming_bench_name_path(tmp_path: Path, where: str):
    mirror = f"http://127.0.0.1:{_closed_port()}" if where == "http" else str(tmp_path / "none")
    result = run("data", "get", "medqa", "--mirror", mirror, "--to", str(tmp_path / "home"))

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: cannot download medqa from ")
    assert "--bench medqa:PATH" in lines[0]
    assert not (tmp_path / "home" / "medqa").exists()


def test_bench_without_a_path_and_without_a_download_is_one_line(tmp_path: Path, tiny_phi3: Path):
    result = run(
        "eval", "--model", str(tiny_phi3), "--bench", "mmlu_medical",
        env={"LORAKIT_DATA_HOME": str(tmp_path)},
    )  # fmt: skip

    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert f"{tmp_path / 'mmlu'} holds no download" in line
    assert "lorakit data get mmlu" in line and "--bench mmlu_medical:PATH" in line


def test_unknown_dataset_and_listing():
    result = run("data", "get", "medqaa")
    assert result.exit_code == 2 and "did you mean 'medqa'?" in result.output
    listing = run("data", "get", "--list", "--json")
    assert listing.exit_code == 0
    by_name = {d["name"]: d for d in json.loads(listing.output)}
    assert by_name["pubmedqa"]["checksums"] == "pinned"
    assert by_name["mmlu"]["checksums"] == "unverified" and by_name["mmlu"]["revision"] is None
    with pytest.raises(ConfigError, match="unknown dataset"):
        get_dataset("nope")
