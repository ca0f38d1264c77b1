"""Quiet, readable output: library warnings go to the run's log (shown with --verbose),
plain progress lines without a terminal, nothing clipped at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TRAIN = [
    "train",
    "medqa_phi3_tiny",
    "--set",
    "training.max_steps=2",
    "--set",
    "training.eval_steps=2",
    "--set",
    "training.save_steps=2",
    "--set",
    "training.logging_steps=1",
]


def lorakit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from lorakit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "80"},
    )


def test_library_warnings_go_to_the_run_log_not_the_terminal(tmp_path: Path):
    done = lorakit(*TRAIN, "--run-dir", str(tmp_path / "quiet"))
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    for noise in ("Warning", "warnings.warn", "Failed to load CPU gemm_4bit", "Loading weights"):
        assert noise not in shown, shown
    log = (tmp_path / "quiet" / "lorakit.log").read_text()
    assert "Paged optimizers are not supported on CPU" in log
    # Without a terminal: one plain line per step and per log record, no live bars.
    assert "step 1/2 · loss " in shown and "Cleaning: 98/98 in" in shown
    assert "━" not in shown
    assert max(len(line) for line in shown.splitlines()) <= 80


def test_verbose_shows_the_library_warnings(tmp_path: Path):
    done = lorakit("--verbose", *TRAIN, "--run-dir", str(tmp_path / "loud"))
    assert done.returncode == 0, done.stderr
    assert "Paged optimizers are not supported on CPU" in done.stderr


def test_long_descriptions_keep_their_start_and_end():
    from rich.console import Console

    from lorakit.reporting import RichProgress

    console = Console(width=80, force_terminal=True, file=open(os.devnull, "w"))  # noqa: SIM115
    progress = RichProgress(console)
    assert not progress.plain
    from lorakit.reporting import _shorten

    text = "Reading jsonl:/a/very/long/path/to/some/folder/of/data/demo_medqa.jsonl"
    short = _shorten(text, progress._width)
    assert len(short) == progress._width and short.endswith("medqa.jsonl")
    assert short.startswith("Reading")
