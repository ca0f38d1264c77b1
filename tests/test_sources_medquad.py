"""``medquad:`` in every form of MedQuAD's documents, on small hand-written files.

MedQuAD (abachaa/MedQuAD) writes most documents as ``<Document>``, one file of
9_CDC_QA as ``<DiseaseFile>`` and four files of 6_NINDS_QA as a lower-case ``<doc>``.
The real-data tests on the subsets in ../shared/data are in test_sources.py.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lorakit.data import sources
from lorakit.data.rows import QARow
from lorakit.data.sources import read_source
from lorakit.errors import DataError
from lorakit.plugins import Registries, make_plugin_manager

DOCUMENT = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000042" source="GHR" url="https://example.org/ghr/42">
<Focus>Rare Syndrome</Focus>
<FocusAnnotations>
  <UMLS><CUIs><CUI>C0000001</CUI></CUIs></UMLS>
  <Synonyms><Synonym>RS</Synonym></Synonyms>
</FocusAnnotations>
<QAPairs>
  <QAPair pid="1">
    <Question qid="0000042-1" qtype="information">What is (are) Rare Syndrome ?</Question>
    <Answer>Rare syndrome is rare.</Answer>
  </QAPair>
  <QAPair pid="2">
    <Question qid="0000042-2" qtype="inheritance">Is Rare Syndrome inherited ?</Question>
    <Answer>Sometimes.</Answer>
  </QAPair>
</QAPairs>
</Document>
"""

DISEASE_FILE = """<?xml version="1.0" encoding="UTF-8"?>
<DiseaseFile fid="0000397" source="CDC" url="http://www.cdc.gov/parasites/taeniasis/">
<Focus>Parasites - Taeniasis</Focus>
<UMLS>
<CUI></CUI>
<SemanticType></SemanticType>
<SemanticGroup></SemanticGroup>
</UMLS>
<QAPairs>
<QAPair pid="1">
<Question qid="0000397-1" qtype="information">What is (are) Parasites - Taeniasis ?</Question>
<Answer>A tapeworm infection.

People don&apos;t always know.</Answer>
</QAPair>
<QAPair pid="2">
<Question qid="0000397-2" qtype="susceptibility">Who is at risk for Parasites - Taeniasis? ?</Question>
<Answer>Eaters of raw pork.</Answer>
</QAPair>
</QAPairs>
</DiseaseFile>
"""

DOC = """<?xml version="1.0" encoding="UTF-8"?>
<doc docid="0000007" corpus="NINDS" url="http://www.ninds.nih.gov/disorders/holmes_adie/holmes_adie.htm">
<doctitle-focus>Holmes-Adie</doctitle-focus>
<umls>
<cui></cui>
<semanticType></semanticType>
<semanticGroup></semanticGroup>
</umls>
<qaPairs>
<pair pid="1">
<question qid="0000007-1" qtype="information">what is holmes-adie syndrome ?</question>
<answer>A disorder of the pupil.</answer>
</pair>
<pair pid="2">
<question qid="0000007-2" qtype="treatment">what are the treatments for holmes-adie syndrome ?</question>
<answer>Glasses.</answer>
</pair>
<pair pid="3">
<question qid="0000007-3" qtype="outlook">what is the prognosis ?</question>
<answer/>
</pair>
</qaPairs>
</doc>
"""


@pytest.fixture(scope="module")
def reg() -> Registries:
    pm = make_plugin_manager(builtins=False, entry_points=False, plugins=[sources], disabled=())
    return Registries.from_plugin_manager(pm)


@pytest.fixture()
def read(reg: Registries) -> Any:
    def _read(location: Path) -> list[QARow]:
        return list(read_source(f"medquad:{location}", registries=reg))

    return _read


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def summary(row: QARow) -> tuple[Any, ...]:
    """Everything a MedQuAD row carries, the origin reduced to its line."""
    return (
        row.id,
        row.group,
        row.question,
        row.answer,
        row.focus,
        row.category,
        row.origin.rsplit(":", 1)[1],
        row.meta,
    )


def test_document_form(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "3_GHR_QA" / "0000042.xml", DOCUMENT)
    rows = read(tmp_path)
    meta = {"source": "GHR", "url": "https://example.org/ghr/42", "subset": "3_GHR_QA"}
    meta |= {"document": "0000042"}
    assert [summary(r) for r in rows] == [
        (
            "3_GHR_QA/0000042-1",
            "3_GHR_QA/0000042",
            "What is (are) Rare Syndrome ?",
            "Rare syndrome is rare.",
            "Rare Syndrome",
            "information",
            "9",
            {**meta, "qid": "0000042-1", "pid": "1"},
        ),
        (
            "3_GHR_QA/0000042-2",
            "3_GHR_QA/0000042",
            "Is Rare Syndrome inherited ?",
            "Sometimes.",
            "Rare Syndrome",
            "inheritance",
            "13",
            {**meta, "qid": "0000042-2", "pid": "2"},
        ),
    ]
    assert rows[0].origin == f"{path}:9"


def test_disease_file_form(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "9_CDC_QA" / "0000397.xml", DISEASE_FILE)
    rows = read(tmp_path)
    meta = {"source": "CDC", "url": "http://www.cdc.gov/parasites/taeniasis/"}
    meta |= {"subset": "9_CDC_QA", "document": "0000397"}
    assert [summary(r) for r in rows] == [
        (
            "9_CDC_QA/0000397-1",
            "9_CDC_QA/0000397",
            "What is (are) Parasites - Taeniasis ?",
            "A tapeworm infection.\n\nPeople don't always know.",
            "Parasites - Taeniasis",
            "information",
            "10",
            {**meta, "qid": "0000397-1", "pid": "1"},
        ),
        (
            "9_CDC_QA/0000397-2",
            "9_CDC_QA/0000397",
            "Who is at risk for Parasites - Taeniasis? ?",
            "Eaters of raw pork.",
            "Parasites - Taeniasis",
            "susceptibility",
            "16",
            {**meta, "qid": "0000397-2", "pid": "2"},
        ),
    ]
    assert rows[1].origin == f"{path}:16"


def test_lower_case_doc_form(tmp_path: Path, read: Any) -> None:
    path = write(tmp_path / "6_NINDS_QA" / "0000007.xml", DOC)
    rows = read(tmp_path)
    meta = {
        "source": "NINDS",
        "url": "http://www.ninds.nih.gov/disorders/holmes_adie/holmes_adie.htm",
    }
    meta |= {"subset": "6_NINDS_QA", "document": "0000007"}
    assert [summary(r) for r in rows] == [
        (
            "6_NINDS_QA/0000007-1",
            "6_NINDS_QA/0000007",
            "what is holmes-adie syndrome ?",
            "A disorder of the pupil.",
            "Holmes-Adie",
            "information",
            "10",
            {**meta, "qid": "0000007-1", "pid": "1"},
        ),
        (
            "6_NINDS_QA/0000007-2",
            "6_NINDS_QA/0000007",
            "what are the treatments for holmes-adie syndrome ?",
            "Glasses.",
            "Holmes-Adie",
            "treatment",
            "14",
            {**meta, "qid": "0000007-2", "pid": "2"},
        ),
        (
            "6_NINDS_QA/0000007-3",
            "6_NINDS_QA/0000007",
            "what is the prognosis ?",
            "",  # <answer/>: yielded, a cleaner drops it
            "Holmes-Adie",
            "outlook",
            "18",
            {**meta, "qid": "0000007-3", "pid": "3"},
        ),
    ]
    assert rows[2].origin == f"{path}:18"


def test_every_form_in_one_tree_is_counted_exactly(tmp_path: Path, read: Any) -> None:
    """A subset mixing forms, as 6_NINDS_QA and 9_CDC_QA do upstream."""
    write(tmp_path / "6_NINDS_QA" / "0000001.xml", DOCUMENT.replace("0000042", "0000001"))
    write(tmp_path / "6_NINDS_QA" / "0000007.xml", DOC)
    write(tmp_path / "9_CDC_QA" / "0000001.xml", DOCUMENT.replace("0000042", "0000001"))
    write(tmp_path / "9_CDC_QA" / "0000397.xml", DISEASE_FILE)
    rows = read(tmp_path)
    assert Counter(r.meta["subset"] for r in rows) == {"6_NINDS_QA": 5, "9_CDC_QA": 4}
    assert [r.id for r in rows] == [
        "6_NINDS_QA/0000001-1",
        "6_NINDS_QA/0000001-2",
        "6_NINDS_QA/0000007-1",
        "6_NINDS_QA/0000007-2",
        "6_NINDS_QA/0000007-3",
        "9_CDC_QA/0000001-1",
        "9_CDC_QA/0000001-2",
        "9_CDC_QA/0000397-1",
        "9_CDC_QA/0000397-2",
    ]
    # each form read alone gives the same rows as in the tree
    alone = read(tmp_path / "6_NINDS_QA" / "0000007.xml")
    assert [summary(r) for r in alone] == [summary(r) for r in rows[2:5]]


def test_names_are_read_in_any_case(tmp_path: Path, read: Any) -> None:
    text = (
        '<DOCUMENT ID="9" Source="X" URL="u"><FOCUS>F</FOCUS><qapairs>'
        '<QaPair PID="1"><QUESTION QID="9-1" QTYPE="causes">Why ?</QUESTION>'
        "<ANSWER>Because.</ANSWER></QaPair></qapairs></DOCUMENT>"
    )
    (row,) = read(write(tmp_path / "s" / "9.xml", text))
    assert summary(row) == (
        "s/9-1",
        "s/9",
        "Why ?",
        "Because.",
        "F",
        "causes",
        "1",
        {"source": "X", "url": "u", "subset": "s", "document": "9", "qid": "9-1", "pid": "1"},
    )


def test_a_document_without_pairs_yields_nothing(tmp_path: Path, read: Any) -> None:
    """Six upstream 5_NIDDK_QA files hold an empty <QAPairs>."""
    write(
        tmp_path / "5_NIDDK_QA" / "1.xml",
        '<Document id="1"><Focus>F</Focus>\n<QAPairs>\n</QAPairs></Document>',
    )
    write(tmp_path / "5_NIDDK_QA" / "2.xml", DOCUMENT)
    assert len(read(tmp_path)) == 2


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("<?xml version='1.0'?>\n<html><body/></html>\n", 2, "the root element is <html>"),
        (
            "<rss>\n<doc/></rss>",
            1,
            "the root element is <rss>, not <Document>, <DiseaseFile> or <doc>",
        ),
        # a root with a MedQuAD name but none of its structure
        (
            "<?xml version='1.0'?>\n\n<doc id='1'><title>Not QA</title><p>text</p></doc>",
            3,
            "<doc> holds no <QAPairs>",
        ),
        ("<Document>\n<Question>Q?</Question></Document>", 1, "<Document> holds no <QAPairs>"),
    ],
)
def test_foreign_xml_is_refused(
    tmp_path: Path, read: Any, text: str, line: int, message: str
) -> None:
    write(tmp_path / "a.xml", DOCUMENT)  # read first, fine
    path = write(tmp_path / "b.xml", text)
    with pytest.raises(DataError, match="not a MedQuAD document") as info:
        read(tmp_path)
    assert message in str(info.value)
    assert (info.value.file, info.value.line) == (str(path), line)
    assert info.value.hint == "medquad: reads MedQuAD's XML files; move other XML out of the folder"


# Counted independently of the reader: `grep -ciE '<question[[:space:]>]'` summed over each
# subset's files (and the same with ElementTree, counting QAPair/pair elements), abachaa/MedQuAD
# @577bd37.
UPSTREAM_COUNTS = {
    "10_MPlus_ADAM_QA": 17348,
    "11_MPlusDrugs_QA": 12889,
    "12_MPlusHerbsSupplements_QA": 792,
    "1_CancerGov_QA": 729,
    "2_GARD_QA": 5394,
    "3_GHR_QA": 5430,
    "4_MPlus_Health_Topics_QA": 981,
    "5_NIDDK_QA": 1192,
    "6_NINDS_QA": 1104,
    "7_SeniorHealth_QA": 769,
    "8_NHLBI_QA_XML": 559,
    "9_CDC_QA": 270,
}


def test_the_whole_upstream_corpus(read: Any) -> None:
    """Every subset of the full corpus, when LORAKIT_MEDQUAD_FULL points at a checkout of it."""
    location = os.environ.get("LORAKIT_MEDQUAD_FULL")
    if not location:
        pytest.skip("set LORAKIT_MEDQUAD_FULL to a checkout of abachaa/MedQuAD")
    rows = read(Path(location))
    assert Counter(r.meta["subset"] for r in rows) == UPSTREAM_COUNTS
    assert len(rows) == 47457
