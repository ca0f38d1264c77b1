"""``lorakit generate``: batched answers to a file, resumable, settings recorded; a real tiny
run, no mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lorakit import ConfigError, DataError

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is diabetes?",
    "How is high blood pressure treated, and what should a patient with hypertension eat?",
    "Flu?",
    "What are the warning signs of a stroke?",
    "What is anemia?",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_answer import trained_run

    return trained_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def answerer(run_dir: Path):
    from lorakit.answer import Answerer, SamplingSpec

    return Answerer.from_run_dir(run_dir, sampling=SamplingSpec(max_new_tokens=8))


def write_questions(path: Path) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"id": f"q{i}", "question": q, "topic": "t"})
            for i, q in enumerate(QUESTIONS)
        )
        + "\n"
    )
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_answers_every_row_in_input_order_within_batches(tmp_path, answerer):
    from lorakit.serve.batch import generate_file

    out = tmp_path / "answers.jsonl"
    seen: list[int] = []
    report = generate_file(
        answerer, write_questions(tmp_path / "q.jsonl"), out, batch_size=2, progress=seen.append
    )
    assert (report.answered, report.skipped) == (5, 0)
    assert sum(seen) == 5 and len(seen) == 3
    got = {r["id"]: r for r in rows(out)}
    assert sorted(got) == [f"q{i}" for i in range(5)]
    for i, question in enumerate(QUESTIONS):
        assert got[f"q{i}"]["answer"] == answerer.answer(question).text
        assert got[f"q{i}"]["input"] == {"topic": "t"}
    meta = json.loads((tmp_path / "answers.jsonl.meta.json").read_text())
    assert meta["sampling"] == {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": None}
    assert meta["versions"]["torch"] and meta["answerer"]["template"] == "qa"


def test_generate_resumes_and_drops_a_half_written_line(tmp_path, answerer):
    from lorakit.serve.batch import generate_file

    source, out = write_questions(tmp_path / "q.jsonl"), tmp_path / "a.jsonl"
    generate_file(answerer, source, out, batch_size=5)
    complete = out.read_text().splitlines()
    out.write_text("\n".join(complete[:2]) + "\n" + complete[2][:10])  # killed mid-write
    report = generate_file(answerer, source, out, batch_size=5)
    assert (report.skipped, report.answered) == (2, 3)
    again = rows(out)
    assert len(again) == 5 and len({r["id"] for r in again}) == 5
    assert generate_file(answerer, source, out).answered == 0
    from lorakit.answer import SamplingSpec

    with pytest.raises(ConfigError, match="sampling"):
        generate_file(answerer, source, out, sampling=SamplingSpec(max_new_tokens=9))


def test_generate_bad_input_names_the_line(tmp_path, answerer):
    from lorakit.answer import read_questions

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"q": "no question"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'question'"):
        read_questions(bad)
    bad.write_text('{"question": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_questions(bad)
    text = tmp_path / "plain.txt"
    text.write_text("What is flu?\n\nWhat is asthma?\n")
    assert read_questions(text) == [
        {"id": "1", "question": "What is flu?"},
        {"id": "3", "question": "What is asthma?"},
    ]


def test_generate_command(tmp_path, run_dir):
    source, out = write_questions(tmp_path / "q.jsonl"), tmp_path / "out.jsonl"
    args = [sys.executable, "-c", "from lorakit.cli import main; main()", "generate", str(run_dir)]
    done = subprocess.run(
        [
            *args,
            "--input",
            str(source),
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--batch-size",
            "3",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "5 answered, 0 already" in done.stdout
    assert len(rows(out)) == 5
    missing = subprocess.run(
        [*args, "--input", str(tmp_path / "none.jsonl"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "none.jsonl" in missing.stderr
    assert "Traceback" not in missing.stderr
