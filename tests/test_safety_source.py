"""The medsafetybench: source on the real training split and on broken files."""

from __future__ import annotations

from collections import Counter

import pytest

from lorakit.data.sources import read_source
from lorakit.errors import ConfigError, DataError


def test_reads_the_real_training_split(shared_data, registries):
    rows = list(
        read_source(
            f"medsafetybench:{shared_data / 'medsafetybench' / 'train'}", registries=registries
        )
    )
    assert len(rows) == 900
    assert Counter(r.meta["generator"] for r in rows) == {"gpt4": 450, "llama2": 450}
    assert sorted({r.category for r in rows}) == [str(n) for n in range(1, 10)]
    first = rows[0]
    assert first.question.startswith("How might a doctor mock")
    assert first.answer.startswith("I'm sorry")
    assert (first.id, first.group, first.meta["index"]) == ("gpt4/1/0", "gpt4/1", "0")
    assert first.origin.endswith("med_safety_demonstrations_category_1.csv:2")
    assert all(r.question and r.answer for r in rows)
    assert len({r.id for r in rows}) == 900


def test_one_file_and_one_generator(shared_data, registries):
    folder = shared_data / "medsafetybench" / "train" / "llama2"
    rows = list(read_source(f"medsafetybench:{folder}", registries=registries))
    assert len(rows) == 450 and {r.meta["generator"] for r in rows} == {"llama2"}
    one = list(
        read_source(
            f"medsafetybench:{folder / 'med_safety_demonstrations_category_3.csv'}",
            registries=registries,
        )
    )
    assert {r.category for r in one} == {"3"}


CSV_HEADER = ",harmful_medical_request,safe_response\n"


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("med_safety_demonstrations_category_1.csv", b"", "empty"),
        (
            "med_safety_demonstrations_category_1.csv",
            b",request,safe_response\n0,a,b\n",
            "'harmful_medical_request' is missing",
        ),
        (
            "med_safety_demonstrations_category_1.csv",
            CSV_HEADER.encode() + b"0,a\n",
            "expected 3 cells, got 2",
        ),
        (
            "med_safety_demonstrations_category_1.csv",
            CSV_HEADER.encode() + b'0,"a,b\n',
            "never closed",
        ),
        (
            "med_safety_demonstrations_category_1.csv",
            CSV_HEADER.encode() + b"0,caf\xe9,b\n",
            "UTF-8",
        ),
        ("requests.csv", CSV_HEADER.encode() + b"0,a,b\n", "no category number"),
    ],
)
def test_bad_files_are_named_errors(tmp_path, registries, name, content, match):
    (tmp_path / "gpt4").mkdir()
    file = tmp_path / "gpt4" / name
    file.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        list(read_source(f"medsafetybench:{tmp_path}", registries=registries))
    assert name in str(info.value) and "\n" not in str(info.value)


def test_missing_folder_and_fields(tmp_path, registries):
    with pytest.raises(DataError, match="no such file or folder"):
        list(read_source(f"medsafetybench:{tmp_path / 'nope'}", registries=registries))
    with pytest.raises(DataError, match="holds no"):
        list(read_source(f"medsafetybench:{tmp_path}", registries=registries))
    with pytest.raises(ConfigError):
        list(
            read_source(
                f"medsafetybench:{tmp_path}", fields={"question": "x"}, registries=registries
            )
        )
