"""Retrieval: passages with provenance, index build/load/search, grounding, evaluation, CLI.

Most tests use the model-free ``hashing-256`` embedder on small corpora; the tests of the
real embedder (all-MiniLM-L6-v2) skip without the ``embeddings`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.errors import ConfigError, DataError
from lorakit.protocols import Hit, Passage, Retriever
from lorakit.retrieval import build_index, load_index, read_passages, rrf_fuse
from lorakit.retrieval.embedders import HashingEmbedder, resolve_embedder
from lorakit.retrieval.grounding import (
    GROUNDED_INSTRUCTION,
    Citation,
    build_prompt,
    covers,
    resolve_citations,
)
from lorakit.retrieval.passages import split_paragraphs

DOCS = [
    {
        "id": "glaucoma",
        "title": "Glaucoma",
        "url": "https://example.org/glaucoma",
        "text": "Glaucoma damages the optic nerve, often because of high eye pressure.\n\n"
        "It can lead to vision loss and blindness if untreated.",
    },
    {
        "id": "asthma",
        "title": "Asthma",
        "url": "https://example.org/asthma",
        "text": "Asthma inflames and narrows the airways of the lungs, causing wheezing.",
    },
    {
        "id": "anemia",
        "title": "Anemia",
        "text": "Anemia means the blood has too few healthy red blood cells or hemoglobin.",
    },
    {
        "id": "gout",
        "title": "Gout",
        "url": "https://example.org/gout",
        "text": "Gout is arthritis caused by uric acid crystals in a joint, often the big toe.",
    },
]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return _write_jsonl(tmp_path / "docs.jsonl", DOCS)


@pytest.fixture()
def index_dir(tmp_path: Path, corpus: Path) -> Path:
    out = tmp_path / "index"
    build_index([f"jsonl:{corpus}"], out, embedder=HashingEmbedder(), max_chars=100)
    return out


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(256)
        self.embedded = 0

    def embed(self, texts):
        self.embedded += len(texts)
        return super().embed(texts)


# --- passages --------------------------------------------------------------------------------


def test_split_paragraphs_packs_paragraphs_and_cuts_only_at_blank_lines():
    text = "one one\n\n  \ntwo two\nstill two\n\nthree"
    assert split_paragraphs(text, 1000) == ["one one\n\ntwo two\nstill two\n\nthree"]
    assert split_paragraphs(text, 100) == ["one one\n\ntwo two\nstill two\n\nthree"]
    long = "a" * 80
    assert split_paragraphs(f"{long}\n\n{long}\n\nshort", 100) == [long, f"{long}\n\nshort"]
    assert split_paragraphs("  \n\n ", 100) == []


def test_jsonl_documents_keep_provenance_and_a_missing_url_is_allowed(corpus):
    passages = list(read_passages(f"jsonl:{corpus}", max_chars=100))
    glaucoma = [p for p in passages if p.doc_id == "glaucoma"]
    assert [p.passage_id for p in glaucoma] == ["glaucoma#1", "glaucoma#2"]
    assert glaucoma[0].url == "https://example.org/glaucoma" and glaucoma[0].title == "Glaucoma"
    anemia = next(p for p in passages if p.doc_id == "anemia")
    assert anemia.url == "" and anemia.passage_id == "anemia"
    assert len(anemia.content_hash) == 16 and anemia.source == "jsonl:docs.jsonl"


def test_csv_documents_with_a_column_mapping(tmp_path):
    path = tmp_path / "pages.csv"
    path.write_text('body,link,name\n"Fever is a raised temperature.",https://x.org/f,f1\n')
    (passage,) = read_passages(f"csv:{path}", fields={"text": "body", "url": "link", "id": "name"})
    assert (passage.doc_id, passage.url, passage.text) == (
        "f1",
        "https://x.org/f",
        "Fever is a raised temperature.",
    )


def test_bad_document_sources_are_one_line_errors(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"body": "x"}])
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'text': record has no column 'text'"):
        list(read_passages(f"jsonl:{path}"))
    with pytest.raises(ConfigError, match="unknown document field 'txt'"):
        list(read_passages(f"jsonl:{path}", fields={"txt": "body"}))
    dup = _write_jsonl(
        tmp_path / "dup.jsonl", [{"id": "a", "text": "x y"}, {"id": "a", "text": "z"}]
    )
    with pytest.raises(DataError, match="two passages have the id 'a'"):
        list(read_passages(f"jsonl:{dup}"))


def test_pages_folder_of_markdown_and_html(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "flu.md").write_text(
        "---\nurl: https://x.org/flu\n---\n# Influenza\n\nThe flu is a viral infection.\n"
    )
    (pages / "cold.html").write_text(
        '<html><head><title>Common cold</title><link rel="canonical" href="https://x.org/cold">'
        "<script>var x = 1;</script></head><body><nav>Menu</nav><p>A cold is a mild "
        "infection of the nose &amp; throat.</p><p>It passes in a week.</p></body></html>"
    )
    passages = {p.doc_id: p for p in read_passages(f"pages:{pages}")}
    assert passages["flu.md"].title == "Influenza" and passages["flu.md"].url == "https://x.org/flu"
    cold = passages["cold.html"]
    assert (cold.title, cold.url) == ("Common cold", "https://x.org/cold")
    assert cold.text == "A cold is a mild infection of the nose & throat.\n\nIt passes in a week."
    assert "Menu" not in cold.text and "var x" not in cold.text


def test_medquad_passages_carry_document_focus_and_url(shared_data):
    passages = list(read_passages(f"medquad:{shared_data / 'medquad' / '8_NHLBI_QA_XML'}"))
    assert len({p.passage_id for p in passages}) == len(passages)
    first = passages[0]
    assert first.doc_id.startswith("8_NHLBI_QA_XML/") and first.url.startswith("http")
    assert first.title and first.source
    assert all(len(p.text) <= 2000 or "\n\n" not in p.text for p in passages)


# --- index -----------------------------------------------------------------------------------


def test_build_load_and_search_a_small_index(index_dir):
    index = load_index(index_dir, embedder=HashingEmbedder())
    assert isinstance(index, Retriever)
    card = index.card
    assert (card.passages, card.documents, card.embedder, card.dims) == (5, 4, "hashing-256", 256)
    assert set(card.hashes) == {"passages", "vectors"} and card.sources[0].startswith("jsonl:")
    hits = index.search("What causes gout in the big toe?", k=3)
    assert hits[0].passage.doc_id == "gout"
    assert set(hits[0].scores) == {"bm25", "dense", "rrf", "relevance"}
    assert hits[0].score == hits[0].scores["rrf"] and hits[0].scores["bm25"] > 0
    for mode in ("lexical", "dense"):
        assert index.search("uric acid crystals joint", k=1, mode=mode)[0].passage.doc_id == "gout"
    with pytest.raises(ConfigError, match="k must be at least 1"):
        index.search("gout", k=0)


def test_rrf_fusion_sums_reciprocal_ranks():
    fused = rrf_fuse({"bm25": [7, 3], "dense": [3, 9]}, k=60)
    assert [row for row, _ in fused] == [3, 7, 9]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_rebuild_embeds_only_new_and_changed_passages(tmp_path, corpus, index_dir):
    embedder = CountingEmbedder()
    changed = [dict(d) for d in DOCS]
    changed[1]["text"] = "Asthma narrows the airways; inhalers help."
    path = _write_jsonl(tmp_path / "changed.jsonl", changed)
    report = build_index([f"jsonl:{path}"], index_dir, embedder=embedder, max_chars=100)
    assert (report.embedded, report.reused, embedder.embedded) == (1, 4, 1)
    extra = _write_jsonl(tmp_path / "extra.jsonl", [{"id": "flu", "text": "The flu is viral."}])
    report = build_index([f"jsonl:{extra}"], index_dir, embedder=embedder, add=True)
    assert (report.passages, report.embedded) == (6, 1)
    card = load_index(index_dir, embedder=embedder).card
    assert len(card.sources) == 2


def test_a_failed_build_leaves_the_old_index_and_no_temporary_folder(tmp_path, index_dir):
    before = (index_dir / "card.json").read_text()

    class Broken(HashingEmbedder):
        def embed(self, texts):
            raise RuntimeError("disk on fire")

    extra = _write_jsonl(tmp_path / "new.jsonl", [{"id": "new", "text": "Something new here."}])
    with pytest.raises(RuntimeError):
        build_index([f"jsonl:{extra}"], index_dir, embedder=Broken(), add=True)
    assert (index_dir / "card.json").read_text() == before
    assert sorted(p.name for p in index_dir.parent.iterdir() if p.name.startswith(".")) == []


def test_empty_corpus_and_foreign_or_corrupt_folders_are_one_line_errors(tmp_path, index_dir):
    empty = _write_jsonl(tmp_path / "blank.jsonl", [{"id": "x", "text": "   "}])
    with pytest.raises(DataError, match="no passage to index"):
        build_index([f"jsonl:{empty}"], tmp_path / "new", embedder=HashingEmbedder())
    assert not (tmp_path / "new").exists()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    corpus = tmp_path / "docs.jsonl"
    with pytest.raises(DataError, match=r"photos: not a lorakit index: no card.json"):
        build_index([f"jsonl:{corpus}"], foreign, embedder=HashingEmbedder())
    with pytest.raises(DataError, match="not a lorakit index"):
        load_index(foreign)
    with pytest.raises(DataError, match="no such index folder"):
        load_index(tmp_path / "missing")
    card = index_dir / "card.json"
    card.write_text("{not json")
    with pytest.raises(DataError, match=r"card.json: the index card is not JSON") as info:
        load_index(index_dir, embedder=HashingEmbedder())
    assert "\n" not in str(info.value)
    card.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="field 'format': not a lorakit index card"):
        load_index(index_dir, embedder=HashingEmbedder())


def test_damaged_vectors_and_a_dimension_mismatch_are_named(index_dir):
    with pytest.raises(
        ConfigError,
        match=r"field 'dims': embedder 'hashing-64' gives 64 dimensions, the index has 256",
    ):
        load_index(index_dir, embedder=HashingEmbedder(64))
    import numpy as np

    np.save(index_dir / "vectors.npy", np.zeros((5, 8), dtype=np.float32))
    with pytest.raises(DataError, match=r"vectors.npy: field 'dims': vectors of shape \(5, 8\)"):
        load_index(index_dir, embedder=HashingEmbedder())


def test_embedders_resolve_by_name_or_import_path(tmp_path, monkeypatch):
    assert resolve_embedder("hashing-256").dims == 256
    (tmp_path / "my_embedders.py").write_text(
        "from lorakit.retrieval.embedders import HashingEmbedder\n"
        "class Mine(HashingEmbedder):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_embedder("my_embedders:Mine").name == "hashing-256"
    with pytest.raises(ConfigError, match="unknown embedder 'hashing'"):
        resolve_embedder("hashing")


# --- grounding -------------------------------------------------------------------------------


def _hits() -> list[Hit]:
    def hit(n: int, url: str, score: float) -> Hit:
        passage = Passage(
            passage_id=f"p{n}", doc_id=f"d{n}", text=f"text {n}", title=f"T{n}", url=url
        )
        return Hit(passage=passage, score=score, scores={"relevance": score})

    return [hit(1, "https://x.org/1", 0.6), hit(2, "", 0.2)]


def test_build_prompt_numbers_the_passages_and_asks_for_citations():
    prompt = build_prompt("What is T1?", _hits())
    assert prompt.startswith(GROUNDED_INSTRUCTION)
    assert "[1] T1 (https://x.org/1)\ntext 1" in prompt and "[2] T2\ntext 2" in prompt
    assert prompt.endswith("Question: What is T1?")


def test_resolve_citations_removes_and_counts_citations_of_no_passage():
    text, citations, removed = resolve_citations(
        "First [1]. Second [2][7]. Both [1, 9]. Bogus [12].", _hits()
    )
    assert text == "First [1]. Second [2]. Both [1]. Bogus."
    assert removed == 3
    assert citations == [
        Citation(n=1, passage_id="p1", doc_id="d1", url="https://x.org/1", text="text 1"),
        Citation(n=2, passage_id="p2", doc_id="d2", url="", text="text 2"),
    ]
    assert citations[1].to_dict()["url"] == ""
    assert resolve_citations("No citations.", []) == ("No citations.", [], 0)


def test_covers_compares_the_best_relevance_with_the_threshold():
    assert covers(_hits(), 0.5) and not covers(_hits(), 0.7) and not covers([], 0.0)


# --- evaluation and calibration ----------------------------------------------------------------


@pytest.fixture(scope="module")
def nhlbi_index(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("nhlbi") / "index"
    build_index(
        [f"medquad:{shared_data / 'medquad' / '8_NHLBI_QA_XML'}"], out, embedder="hashing-256"
    )
    return out


def test_evaluate_retrieval_on_medquad_reports_three_retrievers(nhlbi_index, shared_data):
    from lorakit.data.sources import read_source
    from lorakit.retrieval.evaluation import EvalQuestion, evaluate_retrieval, questions_from_rows

    index = load_index(nhlbi_index)
    rows = read_source(f"medquad:{shared_data / 'medquad' / '8_NHLBI_QA_XML'}")
    questions = [*questions_from_rows(rows)[:150], EvalQuestion("x?", "elsewhere/doc")]
    report = evaluate_retrieval(index, questions, ks=(1, 5), latency_sample=5)
    assert report["questions"] == 150 and report["not_indexed"] == 1
    lexical = report["modes"]["lexical"]["all"]
    assert lexical["recall@5"]["value"] >= lexical["recall@1"]["value"] > 0.3
    r1 = lexical["recall@1"]
    assert r1["low"] <= r1["value"] <= r1["high"]
    assert set(report["modes"]["fused"]["subsets"]) == {"8_NHLBI_QA_XML"}
    assert report["latency_ms"]["fused"]["p95"] > 0
    with pytest.raises(DataError, match="none of 1 questions"):
        evaluate_retrieval(index, [EvalQuestion("q", "nope")])


def test_calibration_sets_the_threshold_in_the_card(nhlbi_index):
    from lorakit.retrieval.evaluation import calibrate_threshold, save_calibration

    index = load_index(nhlbi_index)
    on = [
        "What causes high blood pressure?",
        "What are the signs of asthma?",
        "How is anemia treated?",
    ]
    off = ["Write a poem about the sea.", "Translate good morning into French."]
    calibration = calibrate_threshold(index, on, off)
    # the best split of these scores (the hashing embedder sees words, not meaning)
    assert calibration.on_topic_covered + calibration.off_topic_abstained > 1.0
    low, high = calibration.on_topic_covered_interval
    assert low <= calibration.on_topic_covered <= high
    save_calibration(index, calibration)
    again = load_index(nhlbi_index)
    assert again.threshold == calibration.threshold
    assert again.card.calibration["on_topic"] == 3


# --- command line ----------------------------------------------------------------------------


def test_cli_build_retrieve_info_and_eval(tmp_path, corpus):
    runner = CliRunner()
    out = tmp_path / "cli-index"
    result = runner.invoke(
        main,
        [
            "index",
            "build",
            f"jsonl:{corpus}",
            "--out",
            str(out),
            "--embedder",
            "hashing-256",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["passages"] == 4
    result = runner.invoke(
        main, ["retrieve", str(out), "uric acid in the big toe", "--k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (
        data["hits"][0]["doc_id"] == "gout" and data["hits"][0]["url"] == "https://example.org/gout"
    )
    assert {"bm25", "dense", "rrf", "relevance"} <= set(data["hits"][0]["scores"])
    result = runner.invoke(main, ["index", "info", str(out)])
    assert json.loads(result.output)["format"] == "lorakit-index"
    questions = _write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "What is gout?", "answer": "x", "group": "gout"},
            {"question": "Why do airways narrow in asthma?", "answer": "x", "group": "asthma"},
        ],
    )
    result = runner.invoke(
        main,
        ["index", "eval", str(out), "--questions", f"jsonl:{questions}", "--k", "1,3", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["modes"]["fused"]["all"]["recall@3"]["value"] == 1.0


def test_cli_errors_are_one_red_line(tmp_path):
    result = CliRunner().invoke(main, ["retrieve", str(tmp_path / "nowhere"), "q"])
    assert result.exit_code == 2
    assert "no such index folder" in result.output and result.output.count("\n") == 1
    result = CliRunner().invoke(
        main, ["index", "eval", str(tmp_path), "--questions", "x", "--k", "0"]
    )
    assert result.exit_code == 2 and "--k must be whole numbers" in result.output


# --- the real embedder -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from lorakit.embeddings import SentenceEmbedder

    if not SentenceEmbedder.available():
        pytest.skip('the embeddings extra is not installed (pip install "lorakit[embeddings]")')
    embedder = resolve_embedder("all-MiniLM-L6-v2")
    embedder.device = "cpu"
    return embedder


def test_minilm_index_finds_meaning_beyond_words(tmp_path, corpus, minilm):
    out = tmp_path / "minilm"
    build_index([f"jsonl:{corpus}"], out, embedder=minilm)
    index = load_index(out, embedder=minilm)
    assert index.card.dims == 384 and index.card.embedder == "all-MiniLM-L6-v2"
    hit = index.search("my eyesight is fading because of pressure in the eye", k=1, mode="dense")[0]
    assert hit.passage.doc_id == "glaucoma"
    off = index.search("Write a limerick about a pirate's parrot.", k=5)
    on = index.search("What is glaucoma?", k=5)
    assert max(h.scores["relevance"] for h in on) > max(h.scores["relevance"] for h in off)


def test_retrieval_and_the_metric_share_one_embedder(minilm):
    import numpy as np

    from lorakit.evaluate.text import EmbeddingSimilarity

    metric = EmbeddingSimilarity(device="cpu")
    metric._model, metric._tokenizer = minilm._model, minilm._tokenizer
    texts = ["Glaucoma damages the optic nerve.", "Gout affects the big toe."]
    assert np.allclose(metric.embed(texts), minilm.embed(texts))


def test_cli_calibrate_stores_the_threshold(tmp_path, index_dir):
    on = tmp_path / "on.txt"
    on.write_text("What causes gout?\nWhat is glaucoma?\nWhy do airways narrow in asthma?\n")
    off = tmp_path / "off.txt"
    off.write_text("Write a sonnet about autumn leaves.\nWhich team won the cup in 1998?\n")
    result = CliRunner().invoke(
        main,
        [
            "index",
            "calibrate",
            str(index_dir),
            "--questions",
            f"lines:{on}",
            "--off-topic",
            f"lines:{off}",
            "--json",
        ],
    )
    # the CLI resolves the card's embedder (hashing-256 here): no model needed
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.output)
    card = json.loads((index_dir / "card.json").read_text())
    assert card["threshold"] == calibration["threshold"]
    assert card["calibration"]["sources"]["off_topic"] == f"lines:{off}"
