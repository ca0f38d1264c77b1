"""Shared fixtures: the real datasets in ../shared/data, isolated plugins, the tiny Phi-3."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.pop("LORAKIT_DISABLE_PLUGINS", None)

SHARED_DATA = Path(
    os.environ.get(
        "LORAKIT_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    )
).resolve()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """With ``LORAKIT_REQUIRE_DATA=1`` (nox's tests session sets it in CI and wherever the
    folder exists), a test that needs ../shared/data fails instead of skipping for want of it."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("LORAKIT_REQUIRE_DATA") != "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "shared_data" in getattr(item, "fixturenames", ()) and str(SHARED_DATA) in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"LORAKIT_REQUIRE_DATA=1: this test needs the real data and skipped: {reason}"
        )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public medical QA datasets, or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set LORAKIT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def registries():
    """Registries of the built-in plugins only (no installed entry points)."""
    from lorakit.plugins import Registries, make_plugin_manager

    return Registries.from_plugin_manager(make_plugin_manager(entry_points=False, disabled=()))


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Phi-3 checkpoint (model + tokenizer) saved with save_pretrained."""
    from lorakit.testing import build_tiny_phi3

    return build_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"))


@pytest.fixture()
def tiny_tokenizer(tiny_phi3: Path):
    """A fresh tokenizer per test: the pipeline sets its pad token in place."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3)


@contextlib.contextmanager
def _lorakit_on_a_port(args: Sequence[str], timeout_s: float = 60.0) -> Iterator[str]:
    """``lorakit ARGS --port N`` in its own process on 127.0.0.1: its URL once ``GET /health``
    answers 200; stopped afterwards. Fails the test, with the command's output, when it stops
    or does not answer within ``timeout_s``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = [sys.executable, "-c", "from lorakit.cli import main; main()", *args]
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=output, stderr=subprocess.STDOUT, text=True
        )

        def said() -> str:
            output.seek(0)
            return output.read()[-3000:]

        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"`lorakit {args[0]}` stopped: {said()}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"`lorakit {args[0]}` did not answer in {timeout_s:.0f} s: {said()}"
                    )
                time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def lorakit_server():
    """Start a lorakit server command: ``with lorakit_server(["serve", run]) as url: ...``."""
    return _lorakit_on_a_port
