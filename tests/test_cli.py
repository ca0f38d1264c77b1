"""The command line: data inspect and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.cli import main


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def qa_file(tmp_path) -> Path:
    return _write_jsonl(
        tmp_path / "qa.jsonl",
        [
            {"Question": "What is a fever?", "Answer": "A body temperature above normal."},
            {"Question": "What is a fever?", "Answer": "A body temperature above normal."},
            {"Question": "What causes a cold?", "Answer": ""},
            {
                "Question": "How is anemia treated?",
                "Answer": "It depends on the cause;  iron   helps\n\n\n\nsome.",
            },
        ],
    )


def run(*args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args), catch_exceptions=False)


def test_inspect_json_counts(qa_file, tiny_phi3):
    result = run(
        "data",
        "inspect",
        f"jsonl:{qa_file}",
        "--fields",
        "question=Question,answer=Answer",
        "--tokenizer",
        str(tiny_phi3),
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["rows_read"], data["rows_kept"], data["kind"]) == (4, 2, "free_text")
    assert data["dropped"] == {
        "normalize_whitespace": 0,
        "drop_empty": 1,
        "exact_dedup": 1,
        "near_dedup": 0,
    }
    assert data["tokenization"]["all"]["examples"] == 2


def test_inspect_table_shows_rendered_example(qa_file, tiny_phi3):
    result = run(
        "data",
        "inspect",
        f"jsonl:{qa_file}",
        "--fields",
        "question=Question,answer=Answer",
        "--tokenizer",
        str(tiny_phi3),
    )
    assert result.exit_code == 0, result.output
    assert "4 rows read, 2 kept" in result.output
    assert "drop_empty" in result.output
    assert (
        "<|assistant|>" in result.output
        and "A body temperature above normal.<|end|>" in result.output
    )


def test_inspect_fails_when_an_example_has_no_supervised_token(qa_file, tiny_phi3):
    result = run(
        "data",
        "inspect",
        f"jsonl:{qa_file}",
        "--fields",
        "question=Question,answer=Answer",
        "--tokenizer",
        str(tiny_phi3),
        "--max-len",
        "8",
        "--json",
    )
    assert result.exit_code == 1
    assert "no supervised token" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["data", "inspect", "jsonl:/no/such/file.jsonl"], "/no/such/file.jsonl"),
        (["data", "inspect", "jsnl:x.jsonl"], "did you mean 'jsonl'"),
        (["data", "inspect", "QA_FILE"], "did you mean 'Question'"),
        (["data", "inspect", "QA_FILE", "--cleaner", "near_dedupe"], "did you mean 'near_dedup'"),
        (
            ["data", "inspect", "QA_FILE", "--fields", "questoin=Question"],
            "did you mean 'question'",
        ),
    ],
)
def test_bad_input_is_one_red_line_and_exit_code_2(args, expected, qa_file, tiny_phi3):
    args = [f"jsonl:{qa_file}" if a == "QA_FILE" else a for a in args]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args, "--tokenizer", str(tiny_phi3)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0]


def test_missing_tokenizer_is_a_clear_error(qa_file, tmp_path):
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, ["data", "inspect", f"jsonl:{qa_file}", "--tokenizer", str(tmp_path / "nothing")]
    )
    assert result.exit_code == 2
    assert "could not load tokenizer" in result.output and "tiny-phi3" in result.output


def test_inspect_real_medquad(shared_data, tiny_phi3):
    result = run(
        "data",
        "inspect",
        f"medquad:{shared_data / 'medquad' / '1_CancerGov_QA'}",
        "--tokenizer",
        str(tiny_phi3),
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rows_read"] == 729
    assert data["rows_kept"] == 729 - sum(data["dropped"].values())
    assert data["tokenization"]["all"]["truncated"] > 0


def test_version():
    assert run("--version").output.startswith("lorakit, version ")
