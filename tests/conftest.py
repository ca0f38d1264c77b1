"""Shared fixtures: the real datasets in ../shared/data, isolated plugins, the tiny Phi-3."""

from __future__ import annotations

import os
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
