"""``lorakit eval ... --index DIR``: multiple-choice items with retrieved passages in the
prompt (base, adapter, adapter + index), and a run's split answered with citations.

The citation metrics are checked on hand-made answers over real MedQuAD passages (so the
maths does not depend on what the tiny model says); the commands run end to end on the tiny
Phi-3 with a ``hashing-256`` index over a few real MedQuAD documents.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.errors import ConfigError
from lorakit.evaluate.citations import (
    SUPPORT_THRESHOLD,
    GroundedItem,
    cited_sentences,
    score_grounded,
    strip_citations,
    support,
)
from lorakit.evaluate.stats import wilson_interval
from lorakit.protocols import Hit, Passage

retrieval = pytest.importorskip("lorakit.retrieval")

DOCS = 6  # the first MedQuAD NHLBI documents


@pytest.fixture(scope="module")
def medquad_dir(shared_data, tmp_path_factory) -> Path:
    source = shared_data / "medquad" / "8_NHLBI_QA_XML"
    folder = tmp_path_factory.mktemp("medquad") / "8_NHLBI_QA_XML"
    folder.mkdir()
    for path in sorted(source.glob("*.xml"))[:DOCS]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def index_dir(medquad_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    retrieval.build_index([f"medquad:{medquad_dir}"], out, embedder="hashing-256")
    return out


@pytest.fixture(scope="module")
def rows(medquad_dir):
    from lorakit.data.sources import read_source

    return list(read_source(f"medquad:{medquad_dir}"))


@pytest.fixture(scope="module")
def adapter_dir(tiny_phi3, tmp_path_factory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def run_dir(tiny_phi3, adapter_dir, medquad_dir, tmp_path_factory) -> Path:
    """A finished run as ``lorakit train`` leaves it (its recipe and adapter), on MedQuAD."""
    from lorakit.presets import medqa_phi3_tiny

    recipe = medqa_phi3_tiny.with_overrides(
        {
            "model.name": str(tiny_phi3),
            "model.quant.method": "none",
            "data.source": f"medquad:{medquad_dir}",
            "data.fields": {},
            "data.split.group_by": "group",
            "data.split.test_fraction": 0.35,
        }
    )
    folder = tmp_path_factory.mktemp("run")
    (folder / "recipe.json").write_text(json.dumps({"hash": "x", "recipe": recipe.to_dict()}))
    shutil.copytree(adapter_dir, folder / "adapter")
    return folder


def _hit(passage: Passage) -> Hit:
    return Hit(passage=passage, score=1.0, scores={"relevance": 1.0})


# --- the metric maths, on hand-made answers --------------------------------------------------


def test_sentences_carry_their_citations_and_support_counts_content_words():
    assert cited_sentences(
        "Gout hurts the toe [1]. It is uric acid. [2, 3] Rest helps [1][4]!"
    ) == [
        ("Gout hurts the toe.", [1]),
        ("It is uric acid.", [2, 3]),
        ("Rest helps!", [1, 4]),
    ]
    assert cited_sentences("[2] Alone first. Then [1].") == [("Alone first.", [2]), ("Then.", [1])]
    assert strip_citations("Low iron [1], pale skin [2].") == "Low iron, pale skin."
    # content words: gout, crystals, toe (stopwords "is", "in", "the" left out); 2 of 3 in it
    assert support("Gout is crystals in the toe [1].", "Crystals form in gout.") == pytest.approx(
        2 / 3
    )
    assert support("[1]", "anything") == 0.0 and support("It is.", "it is") == 0.0


def test_citation_metrics_on_hand_made_answers_over_real_passages(index_dir, rows):
    index = retrieval.load_index(index_dir)
    docs = sorted({p.doc_id for p in index.passages})
    gold_doc, other_doc = docs[0], docs[1]
    gold = next(p for p in index.passages if p.doc_id == gold_doc)
    other = next(p for p in index.passages if p.doc_id == other_doc)
    hits = [_hit(other), _hit(gold)]  # [1] another document, [2] the gold one
    gold_words = " ".join(gold.text.split()[:12])
    other_words = " ".join(other.text.split()[:12])
    answer = (
        f"{gold_words} [2]. "  # gold and supported: correct
        f"{other_words} [1]. "  # supported, another document
        "Purple elephants dance quietly tonight [2]. "  # gold, unsupported
        "Bogus [7]."  # no such passage: ignored
    )
    first = GroundedItem.from_answer(answer, hits, gold_doc=gold_doc, qtype="causes", item_id="a")
    assert [(c.n, c.gold, c.supported) for c in first.claims] == [
        (2, True, True),
        (1, False, True),
        (2, True, False),
    ]
    assert first.claims[2].support < SUPPORT_THRESHOLD <= first.claims[0].support
    # Retrieved the gold document but cites only another one: counts against recall.
    second = GroundedItem.from_answer(
        f"{other_words} [1].", hits, gold_doc=gold_doc, qtype="causes", item_id="b"
    )
    # The model says the sources do not cover it: an abstention, no claims scored.
    third = GroundedItem.from_answer(
        "The sources do not cover this question [1].", hits, gold_doc=gold_doc, qtype="symptoms"
    )
    # The answer path abstained; the gold document was not retrieved.
    fourth = GroundedItem.from_answer(
        "I cannot answer.", [_hit(other)], gold_doc=gold_doc, abstained=True, reason="no_passages"
    )
    assert third.abstained and third.reason == "not_covered" and not third.claims
    assert not fourth.gold_retrieved
    free_text = {
        "items": [{"scores": {"token_f1": s}, "error": None} for s in (0.5, 0.25, 0.0, 0.1)]
    }
    report = score_grounded([first, second, third, fourth], free_text, resamples=500)
    precision = report["citation_precision"]
    assert (precision["value"], precision["n"]) == (pytest.approx(1 / 4), 4)
    assert precision["ci_low"] <= precision["value"] <= precision["ci_high"]
    assert report["citation_support"]["value"] == pytest.approx(3 / 4)
    recall = report["citation_recall"]  # of first and second (answered, gold retrieved)
    assert (recall["value"], recall["n"]) == (0.5, 2)
    assert (recall["ci_low"], recall["ci_high"]) == pytest.approx(wilson_interval(1, 2))
    assert report["abstention"]["value"] == 0.5
    assert report["abstained"] == {"no_passages": 1, "not_covered": 1}
    assert report["answers_without_citation"] == 0 and report["cited_claims"] == 4
    causes = report["per_qtype"]["causes"]
    assert causes["n"] == 2 and causes["citation_recall"]["value"] == 0.5
    assert causes["free_text"]["token_f1"]["mean"] == pytest.approx(0.375)
    symptoms = report["per_qtype"]["symptoms"]
    assert symptoms["citation_precision"]["value"] is None and symptoms["abstention"]["value"] == 1
    assert set(report["per_qtype"]) == {"causes", "symptoms", "(none)"}
    with pytest.raises(ConfigError, match="3 text scores for 4 grounded answers"):
        score_grounded([first, second, third, fourth], {"items": free_text["items"][:3]})


# --- multiple choice with retrieved passages -------------------------------------------------


def test_mcq_items_get_their_passages_in_the_usual_prompt(index_dir, shared_data):
    from lorakit.evaluate.benchmarks import load_benchmark, resolve_benchmark
    from lorakit.evaluate.grounded import ground_rows, retrieval_query
    from lorakit.evaluate.mcq import MCQPrompt

    index = retrieval.load_index(index_dir)
    items, _ = load_benchmark(
        resolve_benchmark("medqa"), f"{shared_data}/medqa/us_4_options_sample.jsonl", limit=2
    )
    grounded = ground_rows(items, index, 2)
    query = retrieval_query(items[0])
    assert items[0].options[-1].strip() in query and query.startswith(items[0].question.strip())
    hits = index.search(query, 2)
    context = MCQPrompt().context(grounded[0])
    assert context.startswith("Context: Passages:\n\n[1] ")
    assert hits[0].passage.text.strip() in context and hits[1].passage.text.strip() in context
    assert context.endswith("Answer:") and "A. " in context
    assert grounded[0].id == items[0].id and grounded[0].question == items[0].question


def test_eval_bench_with_index_reports_base_adapter_and_retrieval(
    tiny_phi3, adapter_dir, index_dir, shared_data
):
    args = [
        "eval", "--model", str(tiny_phi3), "--adapter", str(adapter_dir), "--quant", "none",
        "--bench", f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl",
        "--index", str(index_dir), "--k", "2", "--limit", "6", "--json", "--no-progress",
    ]  # fmt: skip
    done = CliRunner().invoke(main, args, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    (record,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {"base", "compare", "retrieval"} <= set(record)  # --index with an adapter compares
    with_index = record["retrieval"]
    assert with_index["k"] == 2 and with_index["result"]["n"] == 6
    delta = with_index["compare"]
    # The retrieval delta is over the adapter's own result, item for item.
    assert delta["base"] == pytest.approx(record["accuracy"])
    assert delta["adapter"] == pytest.approx(with_index["result"]["accuracy"])
    assert delta["ci_low"] <= delta["delta"] <= delta["ci_high"] and delta["n"] == 6
    assert record["compare"]["base"] == pytest.approx(record["base"]["accuracy"])
    table = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args[:-2], "--no-progress"])
    assert table.exit_code == 0, table.output
    assert "(base)" in table.output and "medqa + index" in table.output


def test_eval_bench_with_index_without_an_adapter(tiny_phi3, index_dir, shared_data):
    done = CliRunner().invoke(
        main,
        [
            "eval",
            "--model",
            str(tiny_phi3),
            "--quant",
            "none",
            "--bench",
            f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl",
            "--index",
            str(index_dir),
            "--limit",
            "3",
            "--json",
            "--no-progress",
        ],
    )
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert "compare" not in record and record["retrieval"]["k"] == 3
    assert record["retrieval"]["compare"]["base"] == pytest.approx(record["accuracy"])


# --- a run's split, answered with citations --------------------------------------------------


def test_eval_split_with_index_scores_citations_per_qtype(run_dir, index_dir):
    args = [
        "eval", str(run_dir), "--split", "test", "--index", str(index_dir), "--k", "2",
        "--limit", "6", "--max-new-tokens", "8", "--metric", "token_f1", "--no-progress",
    ]  # fmt: skip
    done = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout.strip().splitlines()[-1])
    side = result["adapter"]
    assert result["k"] == 2 and side["n"] == 6 and "base" not in result
    lines = [json.loads(x) for x in Path(side["answers_file"]).read_text().splitlines()]
    assert Path(side["answers_file"]).name == "test_grounded_answers_adapter.jsonl"
    assert len(lines) == 6
    for line in lines:
        assert line["gold_doc"].startswith("8_NHLBI_QA_XML/") and len(line["retrieved"]) <= 2
        assert {"citations", "claims", "abstained", "scores", "qtype"} <= set(line)
    # The report's numbers are those of the rows written.
    abstained = sum(line["abstained"] for line in lines)
    assert side["abstention"]["value"] == pytest.approx(abstained / 6)
    eligible = [x for x in lines if x["gold_retrieved"] and not x["abstained"]]
    assert side["citation_recall"]["n"] == len(eligible)
    assert side["cited_claims"] == sum(len(x["claims"]) for x in lines)
    assert sum(e["n"] for e in side["per_qtype"].values()) == 6
    assert set(side["per_qtype"]) == {x["qtype"] for x in lines}
    f1 = side["free_text"]["metrics"]["token_f1"]
    assert f1["mean"] == pytest.approx(sum(x["scores"]["token_f1"] for x in lines) / 6)
    table = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args, "--compare"])
    assert table.exit_code == 0, table.output
    assert "test base + index" in table.output and "citation precision" in table.output
    assert "test_grounded_answers_base.jsonl" in table.output
    overall = [line for line in table.output.splitlines() if "│ all " in line][-1]  # adapter
    assert overall.rstrip(" │").endswith(f"{f1['mean']:.3f}")


# --- bad input -------------------------------------------------------------------------------


def test_a_missing_or_foreign_index_is_one_line(
    tiny_phi3, run_dir, index_dir, tmp_path, shared_data, monkeypatch
):
    bench = ["--bench", f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl"]
    model = ["--model", str(tiny_phi3), "--quant", "none"]
    missing = CliRunner().invoke(main, ["eval", *model, *bench, "--index", str(tmp_path / "no")])
    assert missing.exit_code == 2 and "no such index folder" in missing.output
    assert missing.output.count("\n") == 1
    # An index built by an embedder that is not installed here, and one of other dimensions.
    (tmp_path / "small_embedder.py").write_text(
        "from lorakit.retrieval.embedders import HashingEmbedder\n"
        "class Small(HashingEmbedder):\n"
        "    def __init__(self):\n"
        "        super().__init__(64)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = {
        "mystery-embedder": "unknown embedder 'mystery-embedder'",
        "small_embedder:Small": "embedder 'hashing-64' gives 64 dimensions, the index has 256",
    }
    for name, message in expected.items():
        foreign = tmp_path / name.replace(":", "-")
        shutil.copytree(index_dir, foreign)
        card = json.loads((foreign / "card.json").read_text())
        (foreign / "card.json").write_text(json.dumps({**card, "embedder": name}))
        for args in (
            ["eval", *model, *bench, "--index", str(foreign)],
            ["eval", str(run_dir), "--split", "test", "--index", str(foreign)],
        ):
            done = CliRunner().invoke(main, args)
            assert done.exit_code == 2, done.output
            assert message in done.output and done.output.count("\n") == 1
    rows = tmp_path / "x.jsonl"
    rows.write_text(json.dumps({"question": "What is gout?", "answer": "Arthritis."}) + "\n")
    heldout = CliRunner().invoke(
        main, ["eval", *model, "--bench", f"heldout:jsonl:{rows}", "--index", str(index_dir)]
    )
    assert heldout.exit_code == 2 and "--index grounds multiple-choice" in heldout.output
