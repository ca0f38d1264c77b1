"""Public medical QA data by name: ``lorakit data get medquad|pubmedqa|medqa|medmcqa|mmlu``.

Each dataset is a :class:`DatasetManifest`: where its files come from (an upstream repository
at a pinned revision, or the authors' own server where there is none), their SHA-256, the
licence, and the file a benchmark scores. :func:`get_dataset` downloads the files into
``DIR/NAME/`` through a temporary folder and a rename, verifies every checksum the manifest
pins, and writes ``DIR/NAME/lorakit-data.json`` (the record of what was fetched).

Checksums. A file whose exact bytes lorakit's maintainers could read at the pinned revision has
its SHA-256 pinned, and a download with other bytes is refused. A GitHub archive is not
byte-stable, so an archive is checked by the digest of the files it unpacks to
(:func:`tree_sha256`, what ``sha256sum`` of every file, sorted by path, gives when hashed again).
Where no fixed bytes could be read (a Hugging Face mirror whose files were not read, the MMLU
tarball on the authors' server), the checksum is ``None``: the download is *unverified*, its
SHA-256 is recorded in ``lorakit-data.json`` and printed, and the record says so.

Mirrors. ``mirror`` (``--mirror`` / ``LORAKIT_DATA_MIRROR``) replaces every upstream URL by
``MIRROR/NAME/FILE`` (``FILE`` the last part of the upstream URL); a plain folder works as a
``file://`` URL. Tests and air-gapped sites use it; checksums are checked all the same.

Benchmarks by name. :func:`fetched_bench_location` answers where ``lorakit data get`` put a
benchmark's file in the data home (``LORAKIT_DATA_HOME``, default ``~/.cache/lorakit/data``),
which ``--bench medqa`` without a path then scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import attrs

from lorakit.errors import ConfigError, DataError, LorakitError, did_you_mean

__all__ = [
    "DATASETS",
    "RECORD_FILE",
    "DatasetManifest",
    "FetchedFile",
    "GetResult",
    "RemoteFile",
    "data_home",
    "describe",
    "fetched_bench_location",
    "get_dataset",
    "resolve_dataset",
    "tree_sha256",
]

RECORD_FILE = "lorakit-data.json"
"""The record ``get_dataset`` writes last in each dataset folder: present means complete."""

CHUNK = 1 << 20
Archive = Literal["tar", "tar.gz"]


@attrs.frozen(kw_only=True)
class RemoteFile:
    """One upstream file of a dataset.

    Attributes:
        url: where it is downloaded from (pinned to a revision where upstream has revisions).
        path: where it goes inside the dataset folder; for an archive, the folder it unpacks
            into (``""``: the dataset folder itself).
        sha256: the SHA-256 of the exact bytes, or ``None`` when they could not be pinned
            (then the download is unverified and its SHA-256 is recorded).
        archive: ``"tar"`` or ``"tar.gz"`` to unpack it; ``None`` for a plain file.
        strip: leading path parts dropped from each archive member (GitHub's ``REPO-SHA/``).
        members: keep only archive members under these folders (after ``strip``); empty: all.
        tree_sha256: for an archive, the :func:`tree_sha256` of what it unpacks to (the kept
            members), or ``None`` when unknown (unverified).
    """

    url: str
    path: str
    sha256: str | None = None
    archive: Archive | None = None
    strip: int = 0
    members: tuple[str, ...] = ()
    tree_sha256: str | None = None

    @property
    def filename(self) -> str:
        """The last part of the URL's path: the name of the file in a mirror."""
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name

    @property
    def pinned(self) -> bool:
        """Whether the download is checked against a checksum lorakit pins."""
        return (self.tree_sha256 if self.archive else self.sha256) is not None


@attrs.frozen(kw_only=True)
class DatasetManifest:
    """A dataset lorakit can fetch by name.

    Attributes:
        name: the name ``lorakit data get`` takes.
        title: one line for listings.
        upstream: the upstream repository or site.
        revision: the pinned commit or dataset revision, or ``None`` where upstream has none.
        licence: the licence, as upstream states it.
        licence_url: where upstream states it.
        files: the files to download.
        source: the source URI that reads the folder, ``{dir}`` standing for it.
        bench: benchmark name -> the file (or folder) it scores, relative to the dataset folder.
        note: what a user should know (a mirror, a derived file, an unpinned server).
        derive: writes derived files into the dataset folder after the download (the PubMedQA
            test split); returns their relative paths.
    """

    name: str
    title: str
    upstream: str
    revision: str | None
    licence: str
    licence_url: str
    files: tuple[RemoteFile, ...]
    source: str
    bench: Mapping[str, str] = attrs.field(factory=dict)
    note: str = ""
    derive: Callable[[Path], list[str]] | None = attrs.field(default=None, eq=False)


@attrs.frozen(kw_only=True)
class FetchedFile:
    """A downloaded file (or unpacked archive) and how it was checked."""

    path: str
    url: str
    sha256: str
    verified: bool
    kind: Literal["file", "tree", "derived"] = "file"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class GetResult:
    """What :func:`get_dataset` did."""

    manifest: DatasetManifest
    folder: Path
    files: tuple[FetchedFile, ...]
    already: bool = False

    @property
    def unverified(self) -> list[FetchedFile]:
        """The files no pinned checksum covers."""
        return [f for f in self.files if not f.verified and f.kind != "derived"]

    def bench_paths(self) -> dict[str, str]:
        """Benchmark name -> the path ``--bench NAME:PATH`` takes for this folder."""
        return {name: str(self.folder / rel) for name, rel in self.manifest.bench.items()}

    def source_uri(self) -> str:
        """The source URI that reads this folder (``data.source``)."""
        return self.manifest.source.format(dir=self.folder)

    def to_dict(self) -> dict[str, Any]:
        """The record written to ``lorakit-data.json``."""
        m = self.manifest
        return {
            "name": m.name,
            "title": m.title,
            "upstream": m.upstream,
            "revision": m.revision,
            "licence": m.licence,
            "licence_url": m.licence_url,
            "note": m.note,
            "source": self.source_uri(),
            "bench": self.bench_paths(),
            "files": [f.to_dict() for f in self.files],
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


# --------------------------------------------------------------------------- the datasets


def _pubmedqa_splits(folder: Path) -> list[str]:
    """``pqal_test.json`` (the 500 PMIDs of ``test_ground_truth.json``) and ``pqal_train.json``
    (the other 500), each a JSON object keyed by PMID like ``ori_pqal.json``."""
    items = _read_json_object(folder / "ori_pqal.json")
    test_ids = _read_json_object(folder / "test_ground_truth.json")
    missing = [pmid for pmid in test_ids if pmid not in items]
    if missing:
        raise DataError(
            f"test_ground_truth.json names {len(missing)} PMIDs that ori_pqal.json lacks "
            f"(first: {missing[0]})",
            file=str(folder / "test_ground_truth.json"),
            hint="the two files are from different revisions: run lorakit data get pubmedqa --force",
        )
    test = {pmid: items[pmid] for pmid in test_ids}
    train = {pmid: item for pmid, item in items.items() if pmid not in test_ids}
    for name, part in (("pqal_test.json", test), ("pqal_train.json", train)):
        (folder / name).write_text(json.dumps(part, indent=1) + "\n", encoding="utf-8")
    return ["pqal_test.json", "pqal_train.json"]


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read JSON: {exc}", file=str(path)) from None
    if not isinstance(data, dict):
        raise DataError("expected a JSON object keyed by PMID", file=str(path))
    return data


_MEDQUAD_SHA = "577bd37b96c02d1833b2c9eed2de9f96964e96cb"
_PUBMEDQA_SHA = "1cbae8e92f72f20c8d3747cbb3bf5bc53554d997"
_MEDQA_REV = "0fb93dd23a7339b6dcd27e241cb9b5eca62d4d18"
_MEDMCQA_REV = "88ebeccf8a7c57143bd55125254033927e5a0f3c"


def _raw(repo: str, sha: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{sha}/{path}"


def _hf(repo: str, rev: str, path: str) -> str:
    return f"https://huggingface.co/datasets/{repo}/resolve/{rev}/{path}"


DATASETS: Mapping[str, DatasetManifest] = {
    m.name: m
    for m in (
        DatasetManifest(
            name="medquad",
            title="MedQuAD: 47,457 consumer-health QA pairs from 12 NIH websites (XML)",
            upstream="https://github.com/abachaa/MedQuAD",
            revision=_MEDQUAD_SHA,
            licence="CC BY 4.0",
            licence_url=f"https://github.com/abachaa/MedQuAD/blob/{_MEDQUAD_SHA}/LICENSE.txt",
            files=(
                RemoteFile(
                    url=f"https://codeload.github.com/abachaa/MedQuAD/tar.gz/{_MEDQUAD_SHA}",
                    path="",
                    archive="tar.gz",
                    strip=1,
                    # 11,277 files, 36,735,138 bytes: read from the git tree at the revision.
                    tree_sha256="90cd62b28957a3ec93f33c9e19799fb7260282f83833085e4313ab0d440224fb",
                ),
            ),
            source="medquad:{dir}",
            note="subsets 10-12 (MedlinePlus) have empty answers upstream (removed for copyright)",
        ),
        DatasetManifest(
            name="pubmedqa",
            title="PubMedQA PQA-L: 1,000 expert-labelled yes/no/maybe questions with abstracts",
            upstream="https://github.com/pubmedqa/pubmedqa",
            revision=_PUBMEDQA_SHA,
            licence="MIT",
            licence_url=f"https://github.com/pubmedqa/pubmedqa/blob/{_PUBMEDQA_SHA}/LICENSE",
            files=(
                RemoteFile(
                    url=_raw("pubmedqa/pubmedqa", _PUBMEDQA_SHA, "data/ori_pqal.json"),
                    path="ori_pqal.json",
                    sha256="8b3276be8942ebbd77f3ddcda12c1749bf0e490045a736fd8438ee40cf37a41d",
                ),
                RemoteFile(
                    url=_raw("pubmedqa/pubmedqa", _PUBMEDQA_SHA, "data/test_ground_truth.json"),
                    path="test_ground_truth.json",
                    sha256="939fe566f09017d13b1ca64d2ddfee0bc2374b366048152997669cccedc44d51",
                ),
                RemoteFile(
                    url=_raw("pubmedqa/pubmedqa", _PUBMEDQA_SHA, "LICENSE"),
                    path="LICENSE",
                    sha256="8e75abc6136be91e5ae66dbb6dda07c8bc9dcc215ed3bc1ba3ae7fab7904777e",
                ),
            ),
            source="pubmedqa:{dir}/pqal_train.json",
            bench={"pubmedqa": "pqal_test.json"},
            note="pqal_test.json is the official 500-item test split (the PMIDs of "
            "test_ground_truth.json); pqal_train.json the other 500",
            derive=_pubmedqa_splits,
        ),
        DatasetManifest(
            name="medqa",
            title="MedQA (USMLE, 4 options): the 1,273-question test split",
            upstream="https://github.com/jind11/MedQA (data on Google Drive); files from the "
            "Hugging Face copy GBaker/MedQA-USMLE-4-options",
            revision=_MEDQA_REV,
            licence="MIT (jind11/MedQA); the Hugging Face copy's card says CC BY 4.0",
            licence_url="https://github.com/jind11/MedQA/blob/27b02f66aac217933c9648a06f82e9f720377925/LICENSE",
            files=(
                RemoteFile(
                    url=_hf(
                        "GBaker/MedQA-USMLE-4-options", _MEDQA_REV, "phrases_no_exclude_test.jsonl"
                    ),
                    path="phrases_no_exclude_test.jsonl",
                ),
            ),
            source="medqa:{dir}/phrases_no_exclude_test.jsonl",
            bench={"medqa": "phrases_no_exclude_test.jsonl"},
            note="upstream publishes a Google Drive archive without revisions; the copy is "
            "pinned by revision but its checksum is not (unverified, recorded at download)",
        ),
        DatasetManifest(
            name="medmcqa",
            title="MedMCQA: the 4,183-question dev split (the test split has no answers)",
            upstream="https://github.com/medmcqa/medmcqa (data on Google Drive); files from the "
            "Hugging Face copy lighteval/med_mcqa",
            revision=_MEDMCQA_REV,
            licence="MIT",
            licence_url="https://github.com/medmcqa/medmcqa/blob/c59ef14ca1990266c4107c7864b45a20fd93e5e0/LICENSE.md",
            files=(
                RemoteFile(
                    url=_hf("lighteval/med_mcqa", _MEDMCQA_REV, "dev.json"), path="dev.json"
                ),
            ),
            source="medmcqa:{dir}/dev.json",
            bench={"medmcqa": "dev.json"},
            note="upstream publishes a Google Drive archive without revisions; the copy is "
            "pinned by revision but its checksum is not (unverified, recorded at download)",
        ),
        DatasetManifest(
            name="mmlu",
            title="MMLU (Hendrycks et al.): dev, val and test CSVs of 57 subjects",
            upstream="https://github.com/hendrycks/test (data on the authors' server)",
            revision=None,
            licence="MIT",
            licence_url="https://github.com/hendrycks/test/blob/4450500f923c49f1fb1dd3d99108a0bd9717b660/LICENSE",
            files=(
                RemoteFile(
                    url="https://people.eecs.berkeley.edu/~hendrycks/data.tar",
                    path="",
                    archive="tar",
                    strip=1,
                    members=("dev", "val", "test"),
                ),
            ),
            source="mmlu:{dir}/test",
            bench={"mmlu_medical": "test"},
            note="the authors' server has no revisions and publishes no checksum "
            "(unverified, recorded at download)",
        ),
    )
}
"""The datasets ``lorakit data get`` knows, by name."""


# --------------------------------------------------------------------------- locations


def data_home() -> Path:
    """Where ``lorakit data get`` puts datasets by default and ``--bench NAME`` looks:
    ``LORAKIT_DATA_HOME``, else ``$XDG_CACHE_HOME/lorakit/data`` (``~/.cache/lorakit/data``)."""
    home = os.environ.get("LORAKIT_DATA_HOME")
    if home:
        return Path(home).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lorakit" / "data"


def resolve_dataset(name: str) -> DatasetManifest:
    """The manifest named ``name``.

    Raises:
        ConfigError: an unknown name, suggesting the nearest.
    """
    key = name.strip().lower()
    if key not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}",
            field="NAME",
            hint=did_you_mean(key, DATASETS) or f"datasets: {', '.join(DATASETS)}",
        )
    return DATASETS[key]


def fetched_bench_location(bench: str, home: Path | None = None) -> tuple[str | None, str]:
    """Where ``lorakit data get`` put the file benchmark ``bench`` scores.

    Returns:
        ``(path, dataset)``: ``path`` is ``None`` when the dataset has not been fetched into
        the data home; ``dataset`` is the name to give ``lorakit data get`` (``""`` when no
        dataset provides the benchmark).
    """
    home = data_home() if home is None else home
    for manifest in DATASETS.values():
        if bench in manifest.bench:
            folder = home / manifest.name
            if (folder / RECORD_FILE).is_file():
                return str(folder / manifest.bench[bench]), manifest.name
            return None, manifest.name
    return None, ""


# --------------------------------------------------------------------------- checksums


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for path in folder.rglob("*"):
        if path.is_file() and path.name != RECORD_FILE:
            yield path.relative_to(folder).as_posix(), path


def tree_sha256(folder: Path) -> str:
    """The digest of every file under ``folder``: the SHA-256 of the lines
    ``"<sha256 of the file>  <path relative to folder>\\n"`` sorted by path, i.e. of
    ``find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum`` (``lorakit-data.json``
    left out)."""
    lines = [f"{file_sha256(path)}  {rel}\n" for rel, path in sorted(_tree_files(folder))]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- download


def _mirror_url(mirror: str, dataset: str, remote: RemoteFile) -> str:
    base = mirror if "://" in mirror else Path(mirror).expanduser().resolve().as_uri()
    return f"{base.rstrip('/')}/{dataset}/{remote.filename}"


def _download(url: str, target: Path, *, dataset: str, timeout: float) -> str:
    """Stream ``url`` into ``target``; return its SHA-256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        bench = DATASETS[dataset].bench if dataset in DATASETS else {}
        where = (
            f"or download it by hand and pass --bench {next(iter(bench))}:PATH"
            if bench
            else f"or download it by hand and pass --set data.source={dataset}:PATH"
        )
        raise DataError(
            f"cannot download {dataset} from {url}: {reason}",
            hint=f"offline? run lorakit data get {dataset} where the network is, {where}",
        ) from None
    return digest.hexdigest()


def _safe_members(
    archive: tarfile.TarFile, remote: RemoteFile
) -> Iterator[tuple[tarfile.TarInfo, str]]:
    for member in archive.getmembers():
        if not member.isfile():
            continue
        parts = PurePosixPath(member.name).parts[remote.strip :]
        if not parts or ".." in parts or parts[0].startswith("/"):
            continue
        if remote.members and parts[0] not in remote.members:
            continue
        yield member, "/".join(parts)


def _unpack(archive_path: Path, remote: RemoteFile, folder: Path, dataset: str) -> None:
    try:
        with tarfile.open(archive_path, "r:gz" if remote.archive == "tar.gz" else "r:") as tar:
            for member, rel in _safe_members(tar, remote):
                out = folder / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    continue
                with source, out.open("wb") as fh:
                    shutil.copyfileobj(source, fh, CHUNK)
    except (tarfile.TarError, EOFError) as exc:
        raise DataError(
            f"{dataset}: the download is not a readable {remote.archive} archive: {exc}",
            file=remote.url,
            hint=f"run lorakit data get {dataset} --force again",
        ) from None


def _check(dataset: str, what: str, url: str, got: str, want: str | None) -> bool:
    if want is None:
        return False
    if got != want:
        raise DataError(
            f"{dataset}: {what} has sha256 {got}, lorakit pins {want}",
            file=url,
            hint="the upstream file changed or the download is damaged; nothing was kept: "
            "report it, or download by hand and pass the path",
        )
    return True


def get_dataset(
    name: str | DatasetManifest,
    to: Path | str | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> GetResult:
    """Download dataset ``name`` into ``TO/NAME/`` and verify it.

    Args:
        name: a name of :data:`DATASETS`, or a manifest.
        to: the parent folder (default :func:`data_home`).
        mirror: a base URL or folder holding ``NAME/FILE`` for each upstream file
            (default ``LORAKIT_DATA_MIRROR``).
        force: download again even when the folder holds a complete download.
        timeout: seconds to wait for each connection.

    Raises:
        ConfigError: an unknown name.
        DataError: a download failed (offline: the message names ``--bench NAME:PATH``), a
            checksum differs from the pinned one, or an archive cannot be read.
        LorakitError: the folder cannot be written.
    """
    manifest = name if isinstance(name, DatasetManifest) else resolve_dataset(name)
    parent = Path(to).expanduser() if to is not None else data_home()
    folder = parent / manifest.name
    mirror = mirror if mirror is not None else os.environ.get("LORAKIT_DATA_MIRROR") or None
    if not force and (folder / RECORD_FILE).is_file():
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        files = tuple(FetchedFile(**f) for f in record.get("files", []))
        return GetResult(manifest=manifest, folder=folder, files=files, already=True)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{manifest.name}-", dir=parent))
    except OSError as exc:
        raise LorakitError(
            f"cannot write {parent}: {exc.strerror or exc}", hint="choose another --to"
        ) from None
    try:
        fetched = _fetch_all(manifest, work, mirror=mirror, timeout=timeout)
        result = GetResult(manifest=manifest, folder=folder, files=tuple(fetched))
        (work / RECORD_FILE).write_text(
            json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _fetch_all(
    manifest: DatasetManifest, work: Path, *, mirror: str | None, timeout: float
) -> list[FetchedFile]:
    fetched: list[FetchedFile] = []
    for remote in manifest.files:
        url = _mirror_url(mirror, manifest.name, remote) if mirror else remote.url
        if remote.archive is None:
            target = work / remote.path
            target.parent.mkdir(parents=True, exist_ok=True)
            got = _download(url, target, dataset=manifest.name, timeout=timeout)
            verified = _check(manifest.name, remote.path, url, got, remote.sha256)
            fetched.append(FetchedFile(path=remote.path, url=url, sha256=got, verified=verified))
            continue
        archive = work / f".download-{remote.filename}"
        _download(url, archive, dataset=manifest.name, timeout=timeout)
        into = work / remote.path
        _unpack(archive, remote, into, manifest.name)
        archive.unlink()
        got = tree_sha256(into)
        what = f"the files unpacked from {remote.filename}"
        verified = _check(manifest.name, what, url, got, remote.tree_sha256)
        fetched.append(
            FetchedFile(
                path=remote.path or ".", url=url, sha256=got, verified=verified, kind="tree"
            )
        )
    if manifest.derive is not None:
        for rel in manifest.derive(work):
            fetched.append(
                FetchedFile(
                    path=rel,
                    url="",
                    sha256=file_sha256(work / rel),
                    verified=False,
                    kind="derived",
                )
            )
    return fetched


def describe(manifests: Sequence[DatasetManifest] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready summary per dataset (``lorakit data get --list``)."""
    out = []
    for m in manifests if manifests is not None else list(DATASETS.values()):
        out.append(
            {
                "name": m.name,
                "title": m.title,
                "upstream": m.upstream,
                "revision": m.revision,
                "licence": m.licence,
                "checksums": "pinned" if all(f.pinned for f in m.files) else "unverified",
                "bench": sorted(m.bench),
            }
        )
    return out
