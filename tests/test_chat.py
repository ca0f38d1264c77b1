"""``lorakit chat`` driven through the stdin of a real process: streamed answers, /save,
/reset, the oldest turns dropped (and said so) to fit the context window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_answer import trained_run

    return trained_run(tmp_path_factory.getbasetemp())


def chat(run_dir: Path, lines: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from lorakit.cli import main; main()",
            "chat",
            str(run_dir),
            "--max-new-tokens",
            "6",
            *extra,
        ],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=300,
    )


def test_chat_streams_saves_and_resets(tmp_path, run_dir):
    from lorakit.answer import Answerer, SamplingSpec

    saved, after_reset = tmp_path / "talk.json", tmp_path / "empty.json"
    done = chat(
        run_dir,
        [
            "What is diabetes?",
            "And asthma?",
            f"/save {saved}",
            "/reset",
            f"/save {after_reset}",
            "/nope",
            "/exit",
        ],
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[saved 4 messages to" in out and "[conversation reset]" in out
    assert "[saved 0 messages to" in out and "[unknown command /nope" in out
    talk = json.loads(saved.read_text())
    assert [m["role"] for m in talk["messages"]] == ["user", "assistant"] * 2
    answerer = Answerer.from_run_dir(run_dir, sampling=SamplingSpec(max_new_tokens=6))
    first = answerer.answer("What is diabetes?").text
    assert talk["messages"][1]["content"] == first
    assert first in out
    second = answerer.answer("And asthma?", talk["messages"][:2]).text
    assert talk["messages"][3]["content"] == second
    assert json.loads(after_reset.read_text())["messages"] == []


def test_chat_drops_the_oldest_turns_and_says_so(run_dir):
    done = chat(
        run_dir, [f"Question number {i} about the flu?" for i in range(6)], "--context", "70"
    )
    assert done.returncode == 0, done.stderr
    assert "oldest messages to fit the 70-token context window]" in done.stdout


def test_chat_ends_at_end_of_input_and_rejects_bad_options(run_dir):
    done = chat(run_dir, [])
    assert done.returncode == 0 and "[chat with" in done.stdout
    bad = chat(run_dir, [], "--model", "tiny-phi3")
    assert bad.returncode == 2 and "not both" in bad.stderr
