"""The ``grounded_qa`` template: gold passage with probability p, distractors from other
documents, citations in the answer, and no retrieval of eval/test documents for training rows."""

from __future__ import annotations

import re

import pytest

from lorakit.data.sources import read_source
from lorakit.data.splits import SplitSpec, split_rows
from lorakit.errors import ConfigError
from lorakit.retrieval import build_index
from lorakit.retrieval.grounding import GROUNDED_INSTRUCTION
from lorakit.retrieval.template import grounded_qa_template

SPLIT = {"eval_fraction": 0.2, "test_fraction": 0.2, "seed": 3}


@pytest.fixture(scope="module")
def nhlbi(tmp_path_factory, shared_data):
    source = f"medquad:{shared_data / 'medquad' / '8_NHLBI_QA_XML'}"
    out = tmp_path_factory.mktemp("grounded") / "index"
    build_index([source], out, embedder="hashing-256")
    rows = [r for r in read_source(source) if r.answer.strip()]
    return str(out), rows


def test_gold_passage_is_cited_and_distractors_come_from_other_documents(nhlbi):
    index, rows = nhlbi
    template = grounded_qa_template(index=index, k=4, p_gold=1.0, split=SPLIT)
    for row in rows[:40]:
        hits, numbers = template.layout(row)
        assert len(hits) == 4 and numbers
        gold = [hits[n - 1].passage for n in numbers]
        assert all(p.doc_id == row.group for p in gold)
        others = [h.passage for i, h in enumerate(hits, 1) if i not in numbers]
        assert all(p.doc_id != row.group for p in others)
        user = template.prompt(row)[-1]["content"]
        assert user.startswith(GROUNDED_INSTRUCTION) and "[4] " in user
        answer = template.answer(row)
        assert answer.startswith(row.answer.strip()[:50])
        assert re.search(r"(\[\d\])+$", answer).group(0) == "".join(f"[{n}]" for n in numbers)


def test_without_the_gold_passage_the_answer_has_no_citation(nhlbi):
    index, rows = nhlbi
    template = grounded_qa_template(index=index, k=3, p_gold=0.0)
    row = rows[0]
    hits, numbers = template.layout(row)
    assert numbers == [] and len(hits) == 3
    assert all(h.passage.doc_id != row.group for h in hits)
    assert template.answer(row) == row.answer.strip()


def test_gold_is_included_about_p_of_the_time_and_runs_repeat(nhlbi):
    index, rows = nhlbi
    one = grounded_qa_template(index=index, k=3, p_gold=0.5, seed=7)
    two = grounded_qa_template(index=index, k=3, p_gold=0.5, seed=7)
    sample = rows[:200]
    with_gold = sum(bool(one.layout(r)[1]) for r in sample)
    assert 70 <= with_gold <= 130
    assert [one.prompt(r) for r in sample[:20]] == [two.prompt(r) for r in sample[:20]]
    positions = {one.layout(r)[1][0] for r in sample if one.layout(r)[1]}
    assert positions == {1, 2, 3}  # the gold passage moves


def test_training_rows_never_retrieve_eval_or_test_documents(nhlbi):
    index, rows = nhlbi
    template = grounded_qa_template(index=index, k=5, p_gold=0.8, split=SPLIT)
    splits = split_rows(rows, SplitSpec(**SPLIT))
    held_out = {r.group for r in (*splits.eval, *splits.test)}
    assert held_out and splits.train
    for row in splits.train[:150]:
        hits, _ = template.layout(row)
        assert not {h.passage.doc_id for h in hits} & held_out
    # eval rows retrieve from the whole index (what answering does)
    seen = set()
    for row in splits.eval[:60]:
        seen |= {h.passage.doc_id for h in template.layout(row)[0]}
    assert seen - {r.group for r in splits.train}


def test_grounded_qa_is_registered_and_checks_its_options(registries, nhlbi):
    index, _ = nhlbi
    template = registries.templates.resolve("grounded_qa")(index=index, system="Cite sources.")
    assert template.prompt(nhlbi[1][0])[0] == {"role": "system", "content": "Cite sources."}
    with pytest.raises(ConfigError, match="unknown option 'p' for template 'grounded_qa'"):
        grounded_qa_template(index=index, p=0.5)
    with pytest.raises(ConfigError, match="p_gold must be in"):
        grounded_qa_template(index=index, p_gold=2)
    with pytest.raises(ConfigError, match="'group' or 'focus' only"):
        grounded_qa_template(index=index, split={"group_by": "group+focus"})
    with pytest.raises(ConfigError, match="needs index=FOLDER"):
        grounded_qa_template(index="")


def test_the_pipeline_tokenises_grounded_rows(nhlbi, shared_data, tiny_tokenizer):
    from lorakit.data.pipeline import DataSpec, prepare_data

    index, _ = nhlbi
    spec = DataSpec(
        source=f"medquad:{shared_data / 'medquad' / '8_NHLBI_QA_XML'}",
        split=SplitSpec(**SPLIT),
        template="grounded_qa",
        template_options={"index": index, "k": 2, "split": SPLIT},
        limit=40,
    )
    prepared = prepare_data(spec, tiny_tokenizer)
    assert prepared.examples["train"]
    assert prepared.report.tokenization["train"].examples == len(prepared.examples["train"])
