"""Tests that need ../shared/data never skip silently where it is required (CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

DATA_TEST = """
def test_reads_the_data(shared_data):
    assert shared_data.is_dir()


def test_needs_no_data():
    import pytest
    pytest.skip("an optional extra is missing")
"""


@pytest.mark.parametrize(
    ("required", "expected"), [("1", "1 skipped, 1 error"), ("0", "2 skipped")]
)
def test_a_data_test_without_data_fails_when_data_is_required(
    tmp_path: Path, required: str, expected: str
):
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "test_data.py").write_text(DATA_TEST, encoding="utf-8")
    env = {
        "PATH": "/usr/bin:/bin",
        "LORAKIT_SHARED_DATA": str(tmp_path / "no-such-folder"),
        "LORAKIT_REQUIRE_DATA": required,
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert expected in done.stdout, done.stdout
    if required == "1":
        assert done.returncode == 1
        assert "LORAKIT_REQUIRE_DATA=1: this test needs the real data and skipped" in done.stdout
    else:
        assert done.returncode == 0
