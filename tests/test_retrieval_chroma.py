"""The ``chroma`` store against a real Chroma server started on 127.0.0.1.

The server comes from the ``chromadb`` package (extra ``lorakit[chroma]``): its ``chroma``
command on PATH, or the one named by ``LORAKIT_CHROMA_BIN``. Without it these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lorakit.errors import LorakitError
from lorakit.retrieval import build_index, load_index
from lorakit.retrieval.embedders import HashingEmbedder

DOCS = [
    ("gout", "Gout is arthritis caused by uric acid crystals in a joint, often the big toe."),
    ("asthma", "Asthma inflames and narrows the airways of the lungs, causing wheezing."),
    ("glaucoma", "Glaucoma damages the optic nerve, often because of high eye pressure."),
    ("anemia", "Anemia means the blood has too few healthy red blood cells."),
]


def _chroma_bin() -> str | None:
    return os.environ.get("LORAKIT_CHROMA_BIN") or shutil.which("chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    binary = _chroma_bin()
    if binary is None:
        pytest.skip('no chroma server (pip install "lorakit[chroma]", or set LORAKIT_CHROMA_BIN)')
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-data")
    log = open(data / "server.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [binary, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2) as response:
                json.loads(response.read())
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(
                    f"the chroma server did not start: {(data / 'server.log').read_text()[-500:]}"
                )
            time.sleep(0.3)
    yield url
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in DOCS))
    return path


def test_chroma_store_gives_the_embedded_stores_results(tmp_path, corpus, chroma_url):
    embedder = HashingEmbedder()
    build_index([f"jsonl:{corpus}"], tmp_path / "local", embedder=embedder)
    build_index(
        [f"jsonl:{corpus}"],
        tmp_path / "remote",
        embedder=embedder,
        store="chroma",
        store_options={"url": chroma_url},
    )
    local = load_index(tmp_path / "local", embedder=embedder)
    remote = load_index(tmp_path / "remote", embedder=embedder)
    assert remote.card.store == "chroma" and remote.card.store_settings["url"] == chroma_url
    for question in ("uric acid in the big toe", "pressure in the eye", "red blood cells"):
        for mode in ("dense", "fused"):
            want = local.search(question, k=3, mode=mode)
            got = remote.search(question, k=3, mode=mode)
            assert [h.passage.passage_id for h in got] == [h.passage.passage_id for h in want]
            assert [h.scores["dense"] for h in got] == pytest.approx(
                [h.scores["dense"] for h in want], abs=1e-5
            )


def test_chroma_rebuild_reuses_vectors_and_replaces_the_collection(tmp_path, corpus, chroma_url):
    options = {"url": chroma_url}
    out = tmp_path / "remote"
    build_index(
        [f"jsonl:{corpus}"], out, embedder=HashingEmbedder(), store="chroma", store_options=options
    )
    report = build_index(
        [f"jsonl:{corpus}"], out, embedder=HashingEmbedder(), store="chroma", store_options=options
    )
    assert (report.embedded, report.reused) == (0, 4)
    hits = load_index(out, embedder=HashingEmbedder()).search("wheezing airways", k=1, mode="dense")
    assert hits[0].passage.doc_id == "asthma"


def test_an_unreachable_chroma_server_is_one_line(tmp_path, corpus):
    with pytest.raises(LorakitError, match=r"cannot reach the Chroma server") as info:
        build_index(
            [f"jsonl:{corpus}"],
            tmp_path / "x",
            embedder=HashingEmbedder(),
            store="chroma",
            store_options={"url": f"http://127.0.0.1:{_free_port()}"},
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(LorakitError, match="needs --store-option url="):
        build_index([f"jsonl:{corpus}"], tmp_path / "y", embedder=HashingEmbedder(), store="chroma")
