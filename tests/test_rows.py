"""QARow: one type for free text and multiple choice, built from mapped records."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lorakit import ConfigError, DataError, QARow
from lorakit.data.rows import parse_fields


def test_import_lorakit_does_not_import_torch():
    code = "import sys, lorakit; lorakit.QARow; lorakit.DataSpec; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_free_text_row_from_mapping_with_field_mapping():
    row = QARow.from_mapping(
        {"Question": "What is a fever?", "Answer": "A raised temperature.", "url": "x"},
        fields={"question": "Question", "answer": "Answer"},
        file="qa.jsonl",
        line=3,
    )
    assert (row.question, row.answer, row.kind) == (
        "What is a fever?",
        "A raised temperature.",
        "free_text",
    )
    assert row.origin == "qa.jsonl:3"
    assert row.meta == {"url": "x"}
    assert row.answer_index is None


def test_mcq_row_from_list_dict_and_pipe_options():
    for options in (["yes", "no"], {"A": "yes", "B": "no"}, "yes|no"):
        row = QARow.from_mapping({"question": "Q?", "options": options, "answer_letter": "b"})
        assert row.kind == "mcq"
        assert row.options == ("yes", "no")
        assert (row.answer_letter, row.answer, row.answer_index) == ("B", "no", 1)


def test_misnamed_field_names_file_line_field_and_suggests_column():
    with pytest.raises(DataError) as info:
        QARow.from_mapping({"Question": "q", "Answer": "a"}, file="qa.jsonl", line=7)
    message = str(info.value)
    assert message.startswith("qa.jsonl:7: field 'question': required field 'question' is missing")
    assert "did you mean 'Question'?" in message
    assert "--fields question=COLUMN" in message


def test_mapped_column_missing_is_an_error():
    with pytest.raises(
        DataError, match=r"qa.csv:2: field 'Body': column 'Body' \(mapped to answer\) is missing"
    ):
        QARow.from_mapping(
            {"question": "q", "answer": "a"}, fields={"answer": "Body"}, file="qa.csv", line=2
        )


def test_answer_letter_outside_options_is_an_error():
    with pytest.raises(DataError, match=r"answer letter 'E' is not among the options A, B, C"):
        QARow.from_mapping(
            {"question": "q", "options": ["a", "b", "c"], "answer_letter": "E"}, file="f", line=1
        )


def test_wrong_type_is_an_error():
    with pytest.raises(DataError, match=r"f:4: field 'answer': expected text, got dict"):
        QARow.from_mapping({"question": "q", "answer": {"text": "a"}}, file="f", line=4)


def test_null_answer_becomes_empty_for_the_cleaner_to_count():
    assert QARow.from_mapping({"question": "q", "answer": None}).answer == ""


def test_parse_fields():
    assert parse_fields("question=Question, answer=Answer") == {
        "question": "Question",
        "answer": "Answer",
    }
    assert parse_fields(None) == {}
    with pytest.raises(ConfigError, match="did you mean 'question'"):
        parse_fields("questoin=Q")
    with pytest.raises(ConfigError, match="is not NAME=COLUMN"):
        parse_fields("question")
