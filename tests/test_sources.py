"""Source readers, through the public ``read_source`` API.

The counts asserted on the real datasets were computed from the raw files with grep
and wc, independently of these readers.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorakit.data import sources
from lorakit.data.rows import QARow
from lorakit.data.sources import parse_uri, read_source
from lorakit.errors import ConfigError, DataError, LorakitError
from lorakit.plugins import Registries, make_plugin_manager

SCHEMES = [
    "csv",
    "hf",
    "instructions",
    "jsonl",
    "medmcqa",
    "medqa",
    "medquad",
    "medsafetybench",
    "mmlu",
    "parquet",
    "pubmedqa",
]


@pytest.fixture(scope="module")
def reg() -> Registries:
    """Registries holding only this module's plugin: these tests exercise the readers alone."""
    pm = make_plugin_manager(builtins=False, entry_points=False, plugins=[sources], disabled=())
    return Registries.from_plugin_manager(pm)


@pytest.fixture()
def read(reg: Registries) -> Any:
    def _read(uri: str, **fields: str) -> list[QARow]:
        return list(read_source(uri, fields=fields or None, registries=reg))

    return _read


def check_error(
    exc: LorakitError,
    *,
    file: str | Path,
    line: int | None = None,
    field: str | None = None,
    hint: str | None = None,
) -> None:
    """The error names the file, line and field, in its attributes and in its message."""
    text = str(exc)
    assert exc.file == str(file)
    assert str(file) in text
    if line is not None:
        assert exc.line == line
        assert f"{file}:{line}:" in text
    if field is not None:
        assert exc.field == field
        assert f"field {field!r}" in text
    if hint is not None:
        assert exc.hint is not None and hint in exc.hint
        assert hint in text


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, *records: object) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------- URIs and plugin


def test_builtin_plugin_registers_every_scheme(registries: Registries) -> None:
    assert set(SCHEMES) <= set(registries.sources.names())
    assert registries.sources.entry("medquad").plugin == "lorakit.data.sources"


def test_read_source_defaults_to_the_plugin_manager(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "a.jsonl", {"question": "Q?", "answer": "A."})
    rows = list(read_source(f"jsonl:{path}"))
    assert [(r.question, r.answer) for r in rows] == [("Q?", "A.")]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("jsonl:data/train.jsonl", ("jsonl", "data/train.jsonl")),
        ("MedQuAD:../data/medquad", ("medquad", "../data/medquad")),
        ("hf:owner/name#validation", ("hf", "owner/name#validation")),
        ("csv:C:/data/x.csv", ("csv", "C:/data/x.csv")),
    ],
)
def test_parse_uri_splits_at_the_first_colon(uri: str, expected: tuple[str, str]) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("data/train.jsonl", "did you mean jsonl:data/train.jsonl?"),
        ("/abs/rows.CSV", "did you mean csv:/abs/rows.CSV?"),
        ("rows.parquet", "did you mean parquet:rows.parquet?"),
        ("C:/data/train.jsonl", "did you mean jsonl:C:/data/train.jsonl?"),
        ("data/medquad", "e.g. jsonl:PATH"),
        ("some/dir:x.jsonl", "did you mean jsonl:some/dir:x.jsonl?"),
    ],
)
def test_a_bare_path_is_a_config_error_with_a_hint(uri: str, hint: str, reg: Registries) -> None:
    with pytest.raises(ConfigError, match="has no scheme") as info:
        read_source(uri, registries=reg)
    assert info.value.hint is not None and hint in info.value.hint


def test_a_uri_without_location_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nothing after 'jsonl:'"):
        parse_uri("jsonl:")


def test_an_unknown_scheme_suggests_the_closest_and_lists_them(reg: Registries) -> None:
    with pytest.raises(ConfigError, match="unknown source scheme 'jsonll'") as info:
        read_source("jsonll:x.jsonl", registries=reg)
    hint = info.value.hint or ""
    assert "did you mean 'jsonl'?" in hint
    assert f"known schemes: {', '.join(SCHEMES)}" in hint
    with pytest.raises(ConfigError) as info:
        read_source("zzz:x", registries=reg)
    assert info.value.hint == f"known schemes: {', '.join(SCHEMES)}"


def test_a_field_mapping_with_an_unknown_row_field_is_a_config_error(
    tmp_path: Path, reg: Registries
) -> None:
    path = jsonl(tmp_path / "a.jsonl", {"Q": "q", "A": "a"})
    with pytest.raises(ConfigError, match="unknown row field 'questoin'") as info:
        read_source(f"jsonl:{path}", fields={"questoin": "Q"}, registries=reg)
    assert info.value.hint == "did you mean 'question'?"


@pytest.mark.parametrize("scheme", ["medquad", "pubmedqa", "medmcqa", "medqa", "mmlu"])
def test_fixed_formats_refuse_a_field_mapping(scheme: str, tmp_path: Path, reg: Registries) -> None:
    with pytest.raises(ConfigError, match=f"{scheme}: reads a fixed format"):
        read_source(f"{scheme}:{tmp_path}", fields={"question": "Q"}, registries=reg)


# --------------------------------------------------------------------------- real data


def test_medquad_counts(shared_data: Path, read: Any) -> None:
    rows = read(f"medquad:{shared_data / 'medquad'}")
    assert len(rows) == 14096
    by_subset = Counter((r.meta["subset"], "answered" if r.answer else "empty") for r in rows)
    assert dict(by_subset) == {
        ("1_CancerGov_QA", "answered"): 729,
        ("2_GARD_QA", "answered"): 5389,
        ("2_GARD_QA", "empty"): 5,
        ("3_GHR_QA", "answered"): 5430,
        ("5_NIDDK_QA", "answered"): 1192,
        ("8_NHLBI_QA_XML", "answered"): 559,
        ("12_MPlusHerbsSupplements_QA", "empty"): 792,
    }
    assert sum(1 for r in rows if r.answer) == 13299
    assert sum(1 for r in rows if not r.answer.strip()) == 797
    assert all(r.question for r in rows)


def test_medquad_row_fields(shared_data: Path, read: Any) -> None:
    root = shared_data / "medquad"
    rows = {r.id: r for r in read(f"medquad:{root}")}
    row = rows["1_CancerGov_QA/0000001_1-1"]
    assert row.question == "What is (are) Adult Acute Lymphoblastic Leukemia ?"
    # the answer keeps its line breaks and indentation: normalising is a cleaner's job
    assert row.answer.startswith("Key Points\n                    - Adult acute lymphoblastic")
    assert row.group == "1_CancerGov_QA/0000001_1"
    assert row.focus == "Adult Acute Lymphoblastic Leukemia"
    assert row.category == "information"
    assert row.kind == "free_text"
    assert row.origin == f"{root / '1_CancerGov_QA' / '0000001_1.xml'}:16"
    assert row.meta == {
        "source": "CancerGov",
        "url": "https://www.cancer.gov/types/leukemia/patient/adult-all-treatment-pdq",
        "subset": "1_CancerGov_QA",
        "document": "0000001_1",
        "qid": "0000001_1-1",
        "pid": "1",
    }
    herb = rows["12_MPlusHerbsSupplements_QA/0000001-2"]
    assert herb.answer == ""
    assert herb.question == "How effective is Activated Charcoal ?"
    assert herb.category == "how effective is it"
    # document ids repeat across subsets; groups do not
    assert rows["3_GHR_QA/0000135-1"].group != rows["5_NIDDK_QA/0000135-1"].group


def test_medquad_is_lazy_and_sorted(shared_data: Path, reg: Registries) -> None:
    rows = read_source(f"medquad:{shared_data / 'medquad'}", registries=reg)
    assert isinstance(rows, Iterator)
    first = next(rows)
    assert first.id == "12_MPlusHerbsSupplements_QA/0000001-1"
    again = [r.id for r in read_source(f"medquad:{shared_data / 'medquad'}", registries=reg)]
    assert again[0] == first.id
    assert again == [
        r.id for r in read_source(f"medquad:{shared_data / 'medquad'}", registries=reg)
    ]


def test_medquad_subset_folder(shared_data: Path, read: Any) -> None:
    rows = read(f"medquad:{shared_data / 'medquad' / '8_NHLBI_QA_XML'}")
    assert len(rows) == 559
    assert {r.meta["subset"] for r in rows} == {"8_NHLBI_QA_XML"}


def test_pubmedqa(shared_data: Path, read: Any) -> None:
    path = shared_data / "pubmedqa" / "ori_pqal_train.json"
    rows = read(f"pubmedqa:{path}")
    assert len(rows) == 500
    assert Counter(r.answer for r in rows) == {"yes": 276, "no": 169, "maybe": 55}
    assert Counter(r.answer_letter for r in rows) == {"A": 276, "B": 169, "C": 55}
    row = rows[0]
    assert row.id == row.group == "10808977"
    assert row.question == "Can tailored interventions increase mammography use among HMO women?"
    assert row.options == ("yes", "no", "maybe")
    assert (row.answer, row.answer_letter) == ("yes", "A")
    assert row.context.startswith("BACKGROUND: Telephone counseling and tailored print")
    assert "\n\nDESIGN: Three-year randomized field trial.\n\nPARTICIPANTS: " in row.context
    assert row.context.count("\n\n") == 5
    assert row.explanation.startswith("The effects of the intervention were most pronounced")
    assert row.meta["year"] == "2000"
    assert row.meta["meshes"].startswith("Cost-Benefit Analysis; Female; Health Maintenance")
    assert row.origin == f"{path}:2"


def test_medmcqa(shared_data: Path, read: Any) -> None:
    rows = read(f"medmcqa:{shared_data / 'medmcqa' / 'dev.json'}")
    assert len(rows) == 4183
    assert Counter(r.answer_letter for r in rows) == {"A": 1348, "B": 1085, "C": 925, "D": 825}
    assert sum(1 for r in rows if r.category == "Dental") == 1318
    first, second = rows[0], rows[1]
    assert first.id == "45258d3d-b974-44dd-a161-c3fccbdadd88"
    assert first.question == "Which of the following is not true for myelinated nerve fibers:"
    assert first.answer_letter == "A"
    assert (
        first.answer
        == first.options[0]
        == ("Impulse through myelinated fibers is slower than non-myelinated fibers")
    )
    assert len(first.options) == 4
    assert first.explanation == ""  # exp is null
    assert first.category == "Physiology"
    assert first.meta == {"choice_type": "multi"}  # topic_name is null
    assert second.explanation.startswith("Ans-a. The oncotic pressure")


def test_medqa(shared_data: Path, read: Any) -> None:
    rows = read(f"medqa:{shared_data / 'medqa' / 'us_4_options_sample.jsonl'}")
    assert len(rows) == 50
    assert Counter(r.category for r in rows) == {"step1": 27, "step2&3": 23}
    assert Counter(r.answer_letter for r in rows) == {"A": 11, "B": 10, "C": 11, "D": 18}
    row = rows[0]
    assert row.question.startswith("A junior orthopaedic surgery resident")
    assert row.answer_letter == "B"
    assert row.answer == "Tell the attending that he cannot fail to disclose this mistake"
    assert row.options[0] == "Disclose the error to the patient and put it in the operative report"
    assert row.id == "1"


def test_mmlu(shared_data: Path, read: Any) -> None:
    folder = shared_data / "mmlu" / "dev"
    rows = read(f"mmlu:{folder}")
    assert len(rows) == 30
    assert Counter(r.category for r in rows) == {
        "anatomy": 5,
        "clinical_knowledge": 5,
        "college_biology": 5,
        "college_medicine": 5,
        "medical_genetics": 5,
        "professional_medicine": 5,
    }
    assert Counter(r.answer_letter for r in rows) == {"A": 6, "B": 7, "C": 8, "D": 9}
    row = rows[0]
    assert row.id == row.group == "anatomy-1"
    assert row.question == "What is the embryological origin of the hyoid bone?"
    assert row.options == (
        "The first pharyngeal arch",
        "The first and second pharyngeal arches",
        "The second pharyngeal arch",
        "The second and third pharyngeal arches",
    )
    assert (row.answer_letter, row.answer) == ("D", "The second and third pharyngeal arches")
    assert row.origin == f"{folder / 'anatomy_dev.csv'}:1"
    one = read(f"mmlu:{folder / 'medical_genetics_dev.csv'}")
    assert [r.id for r in one] == [f"medical_genetics-{n}" for n in range(1, 6)]


# ------------------------------------------------------------------ generic round trips


def test_jsonl_round_trip_with_a_field_mapping(tmp_path: Path, read: Any) -> None:
    path = write(
        tmp_path / "rows.jsonl",
        json.dumps({"Q": "What is X?", "A": "X is Y.", "key": "k1", "doc": "d1", "src": "web"})
        + "\n\n"
        + json.dumps({"Q": "Is Z?", "A": "", "key": "k2", "doc": "d1"})
        + "\n",
    )
    rows = read(f"jsonl:{path}", question="Q", answer="A", id="key", group="doc")
    assert [(r.question, r.answer, r.id, r.group) for r in rows] == [
        ("What is X?", "X is Y.", "k1", "d1"),
        ("Is Z?", "", "k2", "d1"),  # an empty answer is yielded, not dropped
    ]
    assert [r.origin for r in rows] == [f"{path}:1", f"{path}:3"]  # the blank line 2 is skipped
    assert rows[0].meta == {"src": "web"}


def test_jsonl_multiple_choice(tmp_path: Path, read: Any) -> None:
    path = jsonl(
        tmp_path / "mcq.jsonl",
        {"question": "2+2?", "options": ["3", "4", "5"], "answer_letter": "b"},
    )
    (row,) = read(f"jsonl:{path}")
    assert (row.kind, row.options, row.answer_letter, row.answer) == (
        "mcq",
        ("3", "4", "5"),
        "B",
        "4",
    )


def test_jsonl_is_lazy(tmp_path: Path, reg: Registries) -> None:
    path = write(tmp_path / "a.jsonl", '{"question": "q", "answer": "a"}\n{broken\n')
    rows = read_source(f"jsonl:{path}", registries=reg)
    assert next(rows).question == "q"
    with pytest.raises(DataError):
        next(rows)


def test_csv_round_trip_with_a_field_mapping(tmp_path: Path, read: Any) -> None:
    path = write(
        tmp_path / "rows.csv",
        '\ufeffQuestion , Answer,Topic\n"What is X?","X is\nY, mostly.",t1\n\nIs Z?,,t2\n',
    )
    rows = read(f"csv:{path}", question="Question", answer="Answer", category="Topic")
    assert [(r.question, r.answer, r.category) for r in rows] == [
        ("What is X?", "X is\nY, mostly.", "t1"),
        ("Is Z?", "", "t2"),
    ]
    assert [r.origin for r in rows] == [f"{path}:2", f"{path}:5"]  # line numbers of the file


def test_csv_options_split_by_pipe(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "mcq.csv", "question,options,answer_letter\n2+2?,3|4|5,B\n")
    (row,) = read(f"csv:{path}")
    assert (row.options, row.answer) == (("3", "4", "5"), "4")


def test_parquet_round_trip_with_a_field_mapping(tmp_path: Path, read: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "rows.parquet"
    table = pa.table(
        {
            "Q": ["What is X?", "Pick one", "Is Z?"],
            "A": ["X is Y.", "", ""],
            "opts": [None, ["a", "b"], None],
            "letter": [None, "B", None],
            "n": [1, 2, 3],
        }
    )
    pq.write_table(table, path)
    rows = read(f"parquet:{path}", question="Q", answer="A", options="opts", answer_letter="letter")
    assert [(r.question, r.answer, r.kind) for r in rows] == [
        ("What is X?", "X is Y.", "free_text"),
        ("Pick one", "b", "mcq"),
        ("Is Z?", "", "free_text"),
    ]
    assert [r.origin for r in rows] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert rows[0].meta == {"n": "1"}


def _hf_dataset(columns: dict[str, list[Any]]) -> Any:
    datasets = pytest.importorskip("datasets")
    return datasets.Dataset.from_dict(columns)


def test_hf_save_to_disk_round_trip(tmp_path: Path, read: Any) -> None:
    datasets = pytest.importorskip("datasets")
    train = _hf_dataset({"Q": ["q1", "q2"], "A": ["a1", "a2"], "doc": ["d1", "d2"]})
    valid = _hf_dataset({"Q": ["q3"], "A": ["a3"], "doc": ["d3"]})
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "validation": valid}).save_to_disk(str(folder))
    rows = read(f"hf:{folder}", question="Q", answer="A", group="doc")
    assert [(r.question, r.answer, r.group) for r in rows] == [
        ("q1", "a1", "d1"),
        ("q2", "a2", "d2"),
    ]
    assert rows[1].origin == f"{folder}#train:2"
    (row,) = read(f"hf:{folder}#validation", question="Q", answer="A")
    assert (row.question, row.answer, row.meta) == ("q3", "a3", {"doc": "d3"})
    with pytest.raises(ConfigError, match="has no split 'valid'") as info:
        read(f"hf:{folder}#valid", question="Q", answer="A")
    assert "did you mean 'validation'?" in (info.value.hint or "")

    single = tmp_path / "single"
    train.save_to_disk(str(single))
    assert [r.question for r in read(f"hf:{single}", question="Q", answer="A")] == ["q1", "q2"]
    with pytest.raises(DataError, match="required field 'question' is missing") as err:
        read(f"hf:{single}")
    check_error(err.value, file=single, line=1, field="question")


def test_hf_data_file(tmp_path: Path, read: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    path = jsonl(tmp_path / "rows.jsonl", {"q": "q1", "a": "a1"}, {"q": "q2", "a": "a2"})
    rows = read(f"hf:{path}", question="q", answer="a")
    assert [(r.question, r.answer) for r in rows] == [("q1", "a1"), ("q2", "a2")]


def test_hf_unknown_name_offline_is_a_clear_error(
    read: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="datasets could not load it") as info:
        read("hf:no-such-owner/no-such-dataset")
    check_error(info.value, file="no-such-owner/no-such-dataset", hint="offline mode is on")


# ---------------------------------------------------------------- bad input, every reader

FILE_SCHEMES = ["jsonl", "csv", "parquet", "pubmedqa", "medmcqa", "medqa"]
PATH_SCHEMES = [*FILE_SCHEMES, "medquad", "mmlu"]


@pytest.mark.parametrize("scheme", PATH_SCHEMES)
def test_a_missing_path(scheme: str, tmp_path: Path, read: Any) -> None:
    missing = tmp_path / "nope" / "data.jsonl"
    with pytest.raises(DataError, match="no such file or folder") as info:
        read(f"{scheme}:{missing}")
    check_error(info.value, file=missing, hint="check the path")


@pytest.mark.parametrize("scheme", FILE_SCHEMES)
def test_a_folder_where_a_file_is_expected(scheme: str, tmp_path: Path, read: Any) -> None:
    with pytest.raises(DataError, match=f"is a folder, but {scheme}: reads one file") as info:
        read(f"{scheme}:{tmp_path}")
    check_error(info.value, file=tmp_path)


@pytest.mark.parametrize(
    ("scheme", "name", "text"),
    [
        ("jsonl", "a.jsonl", ""),
        ("jsonl", "a.jsonl", "\n  \n"),
        ("csv", "a.csv", ""),
        ("csv", "a.csv", "question,answer\n"),
        ("parquet", "a.parquet", ""),
        ("pubmedqa", "a.json", ""),
        ("pubmedqa", "a.json", "{}"),
        ("medmcqa", "a.json", ""),
        ("medqa", "a.jsonl", "\n"),
        ("mmlu", "a_dev.csv", ""),
    ],
)
def test_an_empty_file(scheme: str, name: str, text: str, tmp_path: Path, read: Any) -> None:
    if scheme == "parquet":
        pytest.importorskip("pyarrow")
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        read(f"{scheme}:{path}")
    check_error(info.value, file=path)
    assert "empty" in str(info.value) or "nothing" in str(info.value)


def test_an_empty_xml_file_in_medquad(tmp_path: Path, read: Any) -> None:
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub" / "0001.xml", "")
    with pytest.raises(DataError, match="file is empty") as info:
        read(f"medquad:{tmp_path}")
    check_error(info.value, file=path)


MCQA = {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1}
MEDQA = {"question": "q", "options": {"A": "a", "B": "b"}, "answer_idx": "A"}

# Each case: scheme, file name, content with one byte (0xe9, latin-1 "é") that is not UTF-8.
LATIN1 = [
    (
        "jsonl",
        "a.jsonl",
        b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9", "answer": "a"}\n',
    ),
    ("csv", "a.csv", b"question,answer\ncaf\xe9,a\n"),
    ("medmcqa", "a.json", json.dumps(MCQA).encode() + b'\n{"question": "caf\xe9"}\n'),
    ("medqa", "a.jsonl", json.dumps(MEDQA).encode() + b'\n{"question": "caf\xe9"}\n'),
    ("mmlu", "a_dev.csv", b"q,a,b,c,d,A\ncaf\xe9,a,b,c,d,A\n"),
    ("pubmedqa", "a.json", b'{"1": {"QUESTION": "q"},\n "2": {"QUESTION": "caf\xe9"}}\n'),
    (
        "medquad",
        "a.xml",
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Document id="1"><QAPairs>\n'
        b'<QAPair pid="1"><Question qid="1-1">caf\xe9</Question></QAPair></QAPairs></Document>\n',
    ),
]


@pytest.mark.parametrize(("scheme", "name", "data"), LATIN1, ids=[c[0] for c in LATIN1])
def test_bytes_that_are_not_utf8(
    scheme: str, name: str, data: bytes, tmp_path: Path, read: Any
) -> None:
    path = write(tmp_path / name, data)
    offset = data.index(b"\xe9")
    line = data.count(b"\n", 0, offset) + 1
    with pytest.raises(DataError) as info:
        read(f"{scheme}:{path if scheme != 'medquad' else tmp_path}")
    check_error(info.value, file=path, line=line, hint="re-encode the file as UTF-8")
    assert f"byte 0xe9 at byte offset {offset} is not valid UTF-8" in str(info.value)


def test_jsonl_malformed_json(tmp_path: Path, read: Any) -> None:
    path = write(
        tmp_path / "a.jsonl", '{"question": "q", "answer": "a"}\n\n{"question": "q" "a"}\n'
    )
    with pytest.raises(
        DataError, match="invalid JSON at column 18: Expecting ',' delimiter"
    ) as info:
        read(f"jsonl:{path}")
    check_error(info.value, file=path, line=3)


@pytest.mark.parametrize(
    ("last", "column"),
    [
        ('{"question": "q", "answer": \n', 28),  # cut off after the colon
        ('{"question": "q",\r\n', 18),
        ('  {"question": "q", "answer": "a"', 34),
        ('{"question": "q", "answer": "a"   \t\n', 32),
    ],
)
def test_jsonl_cut_off_line_reports_its_real_column(
    last: str, column: int, tmp_path: Path, read: Any
) -> None:
    path = write(tmp_path / "a.jsonl", '{"question": "q", "answer": "a"}\n\n' + last)
    with pytest.raises(DataError, match=f"invalid JSON at column {column}: ") as info:
        read(f"jsonl:{path}")
    check_error(info.value, file=path, line=3, hint="one complete JSON object")
    assert "but the line ends there" in str(info.value)


def test_a_json_document_is_not_json_lines(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "a.jsonl", '[\n  {"question": "q", "answer": "a"}\n]\n')
    with pytest.raises(DataError, match="invalid JSON") as info:
        read(f"jsonl:{path}")
    check_error(info.value, file=path, line=1, hint="one object per line")


@pytest.mark.parametrize("scheme", ["jsonl", "medmcqa", "medqa"])
def test_a_json_line_that_is_not_an_object(scheme: str, tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "a.jsonl", '["q", "a"]\n')
    with pytest.raises(DataError, match="expected a JSON object, got an array") as info:
        read(f"{scheme}:{path}")
    check_error(info.value, file=path, line=1)


def test_jsonl_misnamed_field_suggests_the_column(tmp_path: Path, read: Any) -> None:
    path = jsonl(
        tmp_path / "a.jsonl", {"question": "q", "answer": "a"}, {"Question": "q", "Answer": "a"}
    )
    with pytest.raises(DataError, match="required field 'question' is missing") as info:
        read(f"jsonl:{path}")
    check_error(info.value, file=path, line=2, field="question", hint="did you mean 'Question'?")


def test_jsonl_mapped_column_missing(tmp_path: Path, read: Any) -> None:
    path = jsonl(tmp_path / "a.jsonl", {"Question": "q", "Answer": "a"})
    with pytest.raises(DataError, match="column 'Answr'") as info:
        read(f"jsonl:{path}", question="Question", answer="Answr")
    check_error(info.value, file=path, line=1, field="Answr", hint="did you mean 'Answer'?")


def test_csv_misnamed_field_suggests_the_column(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "a.csv", "Question,Answer\nq,a\n")
    with pytest.raises(DataError, match="required field 'question' is missing") as info:
        read(f"csv:{path}")
    check_error(info.value, file=path, line=2, field="question", hint="did you mean 'Question'?")


def test_parquet_misnamed_field_suggests_the_column(tmp_path: Path, read: Any) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"question": ["q"], "Answer": ["a"]}), path)
    with pytest.raises(DataError, match="required field 'answer' is missing") as info:
        read(f"parquet:{path}")
    check_error(info.value, file=path, line=1, field="answer", hint="did you mean 'Answer'?")


def test_csv_wrong_cell_count(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "a.csv", "question,answer\nq,a\nq2,a,extra\n")
    with pytest.raises(DataError, match="row has 3 cells but the header") as info:
        read(f"csv:{path}")
    check_error(info.value, file=path, line=3, hint="quote cells")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        # the quote on line 2 never closes: a lenient parser reads lines 3-4 into that cell
        (
            'question,answer\nWhat is X?,"X is Y.\nIs Z?,Yes.\nWhy?,Because.\n',
            2,
            "the quoted cell that starts on this line is never closed: it runs to the end of "
            "the file (line 4), taking in every row after it",
        ),
        # a quoted cell over two lines is fine; the quote left open after it is on line 3
        (
            'question,answer\n"What is\nX?","X is Y.\nIs Z?,Yes.\n',
            3,
            "is never closed: it runs to the end of the file (line 4)",
        ),
        # the quote of line 3 is closed by the opening quote of a cell on line 4
        (
            'question,answer\nq1,a1\nq2,"a2\nq3,"a3"\n',
            3,
            "the quoted cell that starts on this line closes only on line 4, where text "
            "follows its closing quote (is a closing quote missing on this line?)",
        ),
        ('question,answer\nq1,"a1"x\n', 2, "text follows the closing quote of a quoted cell"),
    ],
)
def test_csv_quote_errors_name_the_line_the_quote_starts(
    text: str, line: int, message: str, tmp_path: Path, read: Any
) -> None:
    path = write(tmp_path / "a.csv", text)
    with pytest.raises(DataError, match="CSV does not parse") as info:
        read(f"csv:{path}")
    check_error(
        info.value, file=path, line=line, hint='write a quote inside a quoted cell twice ("")'
    )
    assert message in str(info.value)


def test_csv_quote_left_open_past_the_field_size_limit(tmp_path: Path, read: Any) -> None:
    cell = "x" * 100_000
    path = write(tmp_path / "a.csv", f'question,answer\nq1,"a1\n{cell}\n{cell}\nq4,a4\n')
    with pytest.raises(DataError, match="is still open at line 4: field larger than") as info:
        read(f"csv:{path}")
    check_error(info.value, file=path, line=2)


def test_mmlu_quote_never_closed(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "x_dev.csv", 'Q1,a,b,c,d,A\nQ2,a,b,c,d,"B\nQ3,a,b,c,d,C\n')
    with pytest.raises(DataError, match="never closed") as info:
        read(f"mmlu:{path}")
    check_error(info.value, file=path, line=2)


def test_parquet_without_pyarrow(
    tmp_path: Path, read: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "a.parquet", b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(LorakitError, match="needs pyarrow") as info:
        read(f"parquet:{path}")
    assert not isinstance(info.value, DataError)
    check_error(info.value, file=path, hint="pip install 'lorakit[parquet]'")


def test_a_file_that_is_not_parquet(tmp_path: Path, read: Any) -> None:
    pytest.importorskip("pyarrow")
    path = write(tmp_path / "a.parquet", "question,answer\nq,a\n")
    with pytest.raises(DataError, match="not a Parquet file") as info:
        read(f"parquet:{path}")
    check_error(info.value, file=path)


def test_hf_local_folder_without_data(
    tmp_path: Path, read: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DataError, match="datasets could not load it") as info:
        read(f"hf:{folder}")
    check_error(info.value, file=folder)


# ---------------------------------------------------------------------------- medquad

DOC = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000001" source="GARD" url="https://example.org/1">
<Focus> Some Disease </Focus>
<QAPairs>
  <QAPair pid="1">
    <Question qid="0000001-1" qtype="symptoms">  What are the symptoms of Some Disease ?  </Question>
    <Answer>Line one.
      Line two &amp; three.
    </Answer>
  </QAPair>
  <QAPair pid="2">
    <Question qid="0000001-2" qtype="causes">What causes Some Disease ?</Question>
  </QAPair>
  <QAPair pid="3">
    <Question qid="0000001-3" qtype="treatment">How to treat Some Disease ?</Question>
    <Answer/>
  </QAPair>
</QAPairs>
</Document>
"""


def test_medquad_small_tree(tmp_path: Path, read: Any) -> None:
    (tmp_path / "2_GARD_QA" / "deep").mkdir(parents=True)
    write(tmp_path / "2_GARD_QA" / "deep" / "1.xml", DOC)
    write(tmp_path / "notes.txt", "not xml")
    rows = read(f"medquad:{tmp_path}")
    assert [(r.question, r.answer, r.category) for r in rows] == [
        (
            "What are the symptoms of Some Disease ?",
            "Line one.\n      Line two & three.\n    ",
            "symptoms",
        ),
        ("What causes Some Disease ?", "", "causes"),  # no <Answer>
        ("How to treat Some Disease ?", "", "treatment"),  # empty <Answer/>
    ]
    assert {r.focus for r in rows} == {"Some Disease"}
    assert {r.group for r in rows} == {"2_GARD_QA/0000001"}
    assert rows[0].meta["subset"] == "2_GARD_QA"
    assert rows[0].id == "2_GARD_QA/0000001-1"
    assert [r.origin.rsplit(":", 1)[1] for r in rows] == ["5", "11", "14"]


def test_medquad_malformed_xml(tmp_path: Path, read: Any) -> None:
    broken = DOC.replace("</Question>\n  </QAPair>", "</Question>\n  </QAPai>")
    line = broken.splitlines().index("  </QAPai>") + 1
    path = write(tmp_path / "b.xml", broken)
    write(tmp_path / "a.xml", DOC)  # read first, fine
    with pytest.raises(DataError, match="XML does not parse: mismatched tag") as info:
        read(f"medquad:{tmp_path}")
    check_error(info.value, file=path, line=line)


def test_medquad_other_xml(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "a.xml", "<?xml version='1.0'?>\n<html><body/></html>\n")
    with pytest.raises(DataError, match="not a MedQuAD document") as info:
        read(f"medquad:{tmp_path}")
    check_error(info.value, file=path, line=2)


def test_medquad_folder_without_xml(tmp_path: Path, read: Any) -> None:
    write(tmp_path / "readme.txt", "hello")
    with pytest.raises(DataError, match="holds no MedQuAD XML files") as info:
        read(f"medquad:{tmp_path}")
    check_error(info.value, file=tmp_path, hint="1_CancerGov_QA")


# --------------------------------------------------------------------------- pubmedqa


def _pqal(**overrides: Any) -> dict[str, Any]:
    item = {
        "QUESTION": "Does it work?",
        "CONTEXTS": ["First part.", "Second part."],
        "LABELS": ["BACKGROUND", "RESULTS"],
        "MESHES": ["Humans", "Female"],
        "YEAR": "2001",
        "LONG_ANSWER": "It does.",
        "final_decision": "no",
    }
    item.update(overrides)
    return item


def test_pubmedqa_small_file(tmp_path: Path, read: Any) -> None:
    data = {"111": _pqal(), "222": _pqal(LABELS=["BACKGROUND"], final_decision="maybe")}
    text = json.dumps(data, indent=1)
    path = write(tmp_path / "p.json", text)
    first, second = read(f"pubmedqa:{path}")
    assert first.context == "BACKGROUND: First part.\n\nRESULTS: Second part."
    assert second.context == "BACKGROUND: First part.\n\nSecond part."
    assert (first.answer, first.answer_letter, second.answer_letter) == ("no", "B", "C")
    assert first.meta == {"year": "2001", "meshes": "Humans; Female"}
    line = text.splitlines().index(' "222": {') + 1
    assert (line, second.origin) == (20, f"{path}:{line}")


def test_pubmedqa_unknown_decision(tmp_path: Path, read: Any) -> None:
    data = {"111": _pqal(), "222": _pqal(final_decision="perhaps")}
    text = json.dumps(data, indent=1)
    path = write(tmp_path / "p.json", text)
    with pytest.raises(DataError, match="PMID 222: unknown decision 'perhaps'") as info:
        read(f"pubmedqa:{path}")
    line = text.splitlines().index(' "222": {') + 1
    check_error(info.value, file=path, line=line, field="final_decision", hint="yes, no or maybe")


def test_pubmedqa_missing_field(tmp_path: Path, read: Any) -> None:
    item = _pqal()
    item["question"] = item.pop("QUESTION")
    path = write(tmp_path / "p.json", json.dumps({"111": item}))
    with pytest.raises(DataError, match="required field 'QUESTION' is missing") as info:
        read(f"pubmedqa:{path}")
    check_error(info.value, file=path, line=1, field="QUESTION", hint="did you mean 'question'?")


def test_pubmedqa_not_an_object(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "p.json", json.dumps([_pqal()]))
    with pytest.raises(
        DataError, match="expected a JSON object keyed by PMID, got an array"
    ) as info:
        read(f"pubmedqa:{path}")
    check_error(info.value, file=path)


def test_pubmedqa_malformed_json(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "p.json", '{\n "1": {"QUESTION": "q",}\n}\n')
    with pytest.raises(DataError, match="invalid JSON at column 24: Expecting property") as info:
        read(f"pubmedqa:{path}")
    check_error(info.value, file=path, line=2)
    assert "ends there" not in str(info.value)


def test_pubmedqa_cut_off_file_reports_where_it_ends(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "p.json", '{\n "1": {"QUESTION": "q",\n  "final_decision": "yes"\n\n')
    with pytest.raises(
        DataError, match="invalid JSON at column 26: Expecting ',' delimiter, but the file ends"
    ) as info:
        read(f"pubmedqa:{path}")
    check_error(info.value, file=path, line=3, hint="keyed by PMID")


# -------------------------------------------------------------------- medmcqa, medqa


def _mcqa(**overrides: Any) -> dict[str, Any]:
    row = {
        "question": "Q?",
        "opa": "a",
        "opb": "b",
        "opc": "c",
        "opd": "d",
        "cop": 3,
        "exp": "because",
        "subject_name": "Anatomy",
        "topic_name": "Bones",
        "id": "x1",
        "choice_type": "single",
    }
    row.update(overrides)
    return row


def test_medmcqa_small_file(tmp_path: Path, read: Any) -> None:
    path = jsonl(tmp_path / "m.json", _mcqa(), _mcqa(cop="4", id=None))
    first, second = read(f"medmcqa:{path}")
    assert (first.answer_letter, first.answer, first.explanation) == ("C", "c", "because")
    assert first.meta == {"topic_name": "Bones", "choice_type": "single"}
    assert (second.answer_letter, second.id) == ("D", "2")


@pytest.mark.parametrize("cop", [0, 5, "x", None])
def test_medmcqa_cop_out_of_range(cop: object, tmp_path: Path, read: Any) -> None:
    path = jsonl(tmp_path / "m.json", _mcqa(), _mcqa(cop=cop))
    with pytest.raises(DataError, match=r"correct option .* is not 1, 2, 3 or 4") as info:
        read(f"medmcqa:{path}")
    check_error(info.value, file=path, line=2, field="cop", hint="1-based")


def test_medmcqa_missing_field(tmp_path: Path, read: Any) -> None:
    row = _mcqa()
    row["Question"] = row.pop("question")
    path = jsonl(tmp_path / "m.json", row)
    with pytest.raises(DataError, match="required field 'question' is missing") as info:
        read(f"medmcqa:{path}")
    check_error(info.value, file=path, line=1, field="question", hint="did you mean 'Question'?")


def _medqa(**overrides: Any) -> dict[str, Any]:
    row = {
        "question": "Q?",
        "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
        "answer": "c",
        "answer_idx": "C",
        "meta_info": "step1",
    }
    row.update(overrides)
    return row


def test_medqa_answer_text_must_match_the_letter(tmp_path: Path, read: Any) -> None:
    path = jsonl(tmp_path / "m.jsonl", _medqa(), _medqa(answer="b"))
    with pytest.raises(DataError, match="answer 'b' is not option C \\('c'\\)") as info:
        read(f"medqa:{path}")
    check_error(info.value, file=path, line=2, field="answer_idx")


def test_medqa_unknown_letter(tmp_path: Path, read: Any) -> None:
    path = jsonl(tmp_path / "m.jsonl", _medqa(answer_idx="E", answer=None))
    with pytest.raises(DataError, match="answer letter 'E' is not one of A, B, C, D") as info:
        read(f"medqa:{path}")
    check_error(info.value, file=path, line=1, field="answer_idx")


def test_medqa_bad_options(tmp_path: Path, read: Any) -> None:
    path = jsonl(tmp_path / "m.jsonl", _medqa(options=["a", "b"]))
    with pytest.raises(DataError, match="options must be an object keyed") as info:
        read(f"medqa:{path}")
    check_error(info.value, file=path, line=1, field="options")


def test_medqa_five_options(tmp_path: Path, read: Any) -> None:
    options = {"A": "a", "B": "b", "C": "c", "D": "d", "E": "e"}
    path = jsonl(tmp_path / "m.jsonl", _medqa(options=options, answer="e", answer_idx="E"))
    (row,) = read(f"medqa:{path}")
    assert (len(row.options), row.answer_letter, row.answer, row.category) == (5, "E", "e", "step1")


# ------------------------------------------------------------------------------- mmlu


def test_mmlu_subject_names(tmp_path: Path, read: Any) -> None:
    write(tmp_path / "virology_test.csv", 'What?,a,"b, or c",c,d,B\n')
    write(tmp_path / "anatomy_val.csv", "Q1,a,b,c,d,a\nQ2,a,b,c,d,D\n")
    write(tmp_path / "nested.txt", "ignored")
    rows = read(f"mmlu:{tmp_path}")
    assert [(r.id, r.category, r.answer) for r in rows] == [
        ("anatomy-1", "anatomy", "a"),
        ("anatomy-2", "anatomy", "d"),
        ("virology-1", "virology", "b, or c"),
    ]


def test_mmlu_wrong_column_count(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "x_dev.csv", "Q1,a,b,c,d,A\nQ2,a,b,c,D\n")
    with pytest.raises(DataError, match=r"expected 6 columns .* got 5") as info:
        read(f"mmlu:{path}")
    check_error(info.value, file=path, line=2, hint="no header")


def test_mmlu_bad_answer_letter(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "x_dev.csv", "Q1,a,b,c,d,E\n")
    with pytest.raises(DataError, match="answer 'E' is not A, B, C or D") as info:
        read(f"mmlu:{path}")
    check_error(info.value, file=path, line=1, field="answer")


def test_mmlu_folder_without_csv(tmp_path: Path, read: Any) -> None:
    with pytest.raises(DataError, match=r"holds no \*\.csv files") as info:
        read(f"mmlu:{tmp_path}")
    check_error(info.value, file=tmp_path, hint="MMLU CSV files")
