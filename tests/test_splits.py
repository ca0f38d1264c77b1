"""Grouped splits and benchmark overlap."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pytest

from lorakit.data.rows import QARow
from lorakit.data.splits import (
    Splits,
    SplitSpec,
    benchmark_overlap,
    group_key,
    group_keys,
    split_rows,
)
from lorakit.errors import ConfigError

SPLITS = ("train", "eval", "test")


def make_rows(n_groups: int, per_group: int = 3, prefix: str = "doc") -> list[QARow]:
    return [
        QARow(
            question=f"Question {g}-{i} about {prefix} {g}?",
            answer=f"Answer {g}-{i}.",
            id=f"{prefix}{g}-{i}",
            group=f"{prefix}{g}",
            origin=f"{prefix}.jsonl:{g * per_group + i + 1}",
        )
        for g in range(n_groups)
        for i in range(per_group)
    ]


def where(splits: Splits) -> dict[str, str]:
    """Row id -> the split it is in."""
    return {row.id: name for name in SPLITS for row in getattr(splits, name)}


def assert_no_group_crosses(splits: Splits, key) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, set[str]] = defaultdict(set)
    for name in SPLITS:
        for row in getattr(splits, name):
            seen[key(row)].add(name)
    crossing = {k: v for k, v in seen.items() if len(v) > 1}
    assert not crossing, f"{len(crossing)} groups cross splits, e.g. {next(iter(crossing.items()))}"


# --------------------------------------------------------------------------- spec


def test_default_spec():
    spec = SplitSpec()
    assert (spec.eval_fraction, spec.test_fraction, spec.group_by, spec.seed) == (
        0.05,
        0.05,
        "group",
        0,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eval_fraction": 1.0}, "eval_fraction must be a number in \\[0, 1\\)"),
        ({"eval_fraction": -0.1}, "eval_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"test_fraction": "0.1"}, "test_fraction"),
        ({"eval_fraction": True}, "eval_fraction"),
        ({"eval_fraction": 0.5, "test_fraction": 0.5}, "below 1"),
        ({"eval_fraction": 0.6, "test_fraction": 0.45}, "below 1"),
        ({"group_by": "focuss"}, "did you mean 'focus'"),
        ({"group_by": "document"}, "group_by must be one of group, focus, question, id, none"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"group_by": "group+focs"}, "did you mean 'focus'"),
        ({"group_by": "group+none"}, "cannot be combined"),
        ({"group_by": "focus+focus"}, "repeats"),
    ],
)
def test_spec_validation(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SplitSpec(**kwargs)


def test_spec_is_frozen():
    spec = SplitSpec()
    with pytest.raises(AttributeError):
        spec.seed = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- splitting


def test_fractions_are_approximately_met():
    rows = make_rows(4000, per_group=2)
    splits = split_rows(rows, SplitSpec(eval_fraction=0.1, test_fraction=0.2))
    total = len(rows)
    assert len(splits.train) + len(splits.eval) + len(splits.test) == total
    assert abs(len(splits.eval) / total - 0.1) < 0.02
    assert abs(len(splits.test) / total - 0.2) < 0.02
    assert abs(len(splits.train) / total - 0.7) < 0.02


def test_zero_fractions_put_everything_in_train():
    rows = make_rows(50)
    splits = split_rows(rows, SplitSpec(eval_fraction=0, test_fraction=0))
    assert splits.train == tuple(rows) and splits.eval == () and splits.test == ()


def test_every_group_is_in_one_split():
    rows = make_rows(500, per_group=5)
    splits = split_rows(rows, SplitSpec(eval_fraction=0.2, test_fraction=0.2))
    assert_no_group_crosses(splits, lambda row: row.group)
    assert splits.eval and splits.test


def test_split_is_deterministic_and_the_seed_matters():
    rows = make_rows(300)
    a = split_rows(rows, SplitSpec(seed=7, eval_fraction=0.2))
    b = split_rows(list(rows), SplitSpec(seed=7, eval_fraction=0.2))
    c = split_rows(rows, SplitSpec(seed=8, eval_fraction=0.2))
    assert a == b
    assert where(a) != where(c)


def test_assignment_is_stable_under_reordering_and_added_rows():
    rows = make_rows(400)
    spec = SplitSpec(eval_fraction=0.15, test_fraction=0.15, seed=3)
    before = where(split_rows(rows, spec))
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    extra = make_rows(300, prefix="other")
    mixed = extra[:150] + shuffled + extra[150:]
    after = where(split_rows(mixed, spec))
    assert {rid: after[rid] for rid in before} == before


def test_row_order_within_a_split_is_the_input_order():
    rows = make_rows(200)
    random.Random(1).shuffle(rows)
    splits = split_rows(rows, SplitSpec(eval_fraction=0.3, test_fraction=0.3))
    position = {row.id: i for i, row in enumerate(rows)}
    for name in SPLITS:
        indices = [position[row.id] for row in getattr(splits, name)]
        assert indices == sorted(indices)


def test_group_by_focus_normalises_and_keeps_a_focus_together():
    rows = [
        QARow(question=f"q{i}", answer="a", id=str(i), group=f"doc{i}", focus=focus)
        for i, focus in enumerate(
            ["Breast Cancer", "breast cancer", "BREAST CANCER.", "Asthma"] * 50
        )
    ]
    spec = SplitSpec(eval_fraction=0.3, test_fraction=0.3, group_by="focus")
    splits = split_rows(rows, spec)
    assert_no_group_crosses(splits, lambda row: row.focus.lower().strip("."))
    assert {splits.groups(name) for name in SPLITS} <= {0, 1, 2}
    assert sum(splits.groups(name) for name in SPLITS) == 2


def test_missing_key_falls_back_to_the_normalised_question():
    row = QARow(question="What is (are) Asthma ?", answer="a", group=None, focus="  ")
    assert group_key(row, "group") == "what is are asthma"
    assert group_key(row, "focus") == "what is are asthma"
    assert group_key(row, "id") == "what is are asthma"
    rows = [
        QARow(question=text, answer=f"a{i}", id=str(i))
        for i, text in enumerate(["What is asthma?", "what is ASTHMA ?", "What is COPD?"] * 100)
    ]
    splits = split_rows(rows, SplitSpec(eval_fraction=0.3, test_fraction=0.3, group_by="group"))
    assert_no_group_crosses(splits, lambda row: row.question.lower().replace(" ", "").strip("?"))


def test_group_by_question_and_none():
    rows = [QARow(question=f"Q{i % 10}", answer=f"a{i}", id=str(i)) for i in range(1000)]
    by_question = split_rows(
        rows, SplitSpec(eval_fraction=0.3, test_fraction=0.3, group_by="question")
    )
    assert_no_group_crosses(by_question, lambda row: row.question)
    by_row = split_rows(rows, SplitSpec(eval_fraction=0.3, test_fraction=0.3, group_by="none"))
    assert sum(by_row.groups(name) for name in SPLITS) == 1000
    # with each row its own group, rows of one question land in several splits
    names = {name for name in SPLITS for row in getattr(by_row, name) if row.question == "Q0"}
    assert len(names) > 1


def test_combined_keys_keep_connected_rows_together():
    rows = [
        QARow(question="a", answer="x", id="A", group="g1", focus="f1"),
        QARow(question="b", answer="x", id="B", group="g2", focus="F1"),  # shares f1 with A
        QARow(question="c", answer="x", id="C", group="g2", focus="f2"),  # shares g2 with B
        QARow(question="d", answer="x", id="D", group="g3", focus="f3"),
        QARow(question="e", answer="x", id="E", group=None, focus=None),  # falls back to question
    ]
    keys = group_keys(rows, "group+focus")
    assert keys[0] == keys[1] == keys[2] and len({keys[0], keys[3], keys[4]}) == 3
    assert group_keys(list(reversed(rows)), "group+focus") == list(reversed(keys))
    splits = split_rows(
        rows, SplitSpec(eval_fraction=0.3, test_fraction=0.3, group_by="group+focus")
    )
    assert sum(splits.groups(name) for name in SPLITS) == 3
    located = where(splits)
    assert located["A"] == located["B"] == located["C"]


def test_combined_keys_are_stable_under_reordering_and_added_rows():
    rows = [
        QARow(question=f"q{i}", answer="a", id=str(i), group=f"doc{i // 3}", focus=f"topic{i // 5}")
        for i in range(600)
    ]
    spec = SplitSpec(eval_fraction=0.2, test_fraction=0.2, group_by="focus+group")
    before = where(split_rows(rows, spec))
    extra = [QARow(question=f"x{i}", answer="a", id=f"x{i}", group=f"new{i}") for i in range(100)]
    shuffled = rows + extra
    random.Random(2).shuffle(shuffled)
    after = where(split_rows(shuffled, spec))
    assert {rid: after[rid] for rid in before} == before


def test_group_by_id():
    rows = [QARow(question="same question", answer=f"a{i}", id=f"id{i % 20}") for i in range(200)]
    splits = split_rows(rows, SplitSpec(eval_fraction=0.3, test_fraction=0.3, group_by="id"))
    assert_no_group_crosses(splits, lambda row: row.id)
    assert sum(splits.groups(name) for name in SPLITS) == 20


def test_summary_and_to_dict():
    rows = make_rows(100, per_group=3)
    splits = split_rows(rows, SplitSpec(eval_fraction=0.2, test_fraction=0.2, seed=1))
    data = json.loads(json.dumps(splits.to_dict()))
    for name in SPLITS:
        part = getattr(splits, name)
        assert data[name] == {"rows": len(part), "groups": len({r.group for r in part})}
    assert sum(data[name]["groups"] for name in SPLITS) == 100
    assert data["spec"]["group_by"] == "group" and data["spec"]["seed"] == 1
    summary = splits.summary()
    assert f"train {len(splits.train):,} rows / {data['train']['groups']:,} groups" in summary
    assert "grouped by group" in summary


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def medquad_rows(shared_data):
    from lorakit.data.sources import read_source
    from lorakit.plugins import Registries, make_plugin_manager

    registries = Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, disabled=())
    )
    rows = list(read_source(f"medquad:{shared_data / 'medquad'}", registries=registries))
    return [row for row in rows if row.answer.strip()]


def _focus(row: QARow) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in (row.focus or "").lower()).split())


@pytest.mark.parametrize("group_by", ["group", "focus", "group+focus"])
def test_medquad_no_group_crosses_splits(medquad_rows, group_by):
    splits = split_rows(
        medquad_rows, SplitSpec(eval_fraction=0.1, test_fraction=0.1, group_by=group_by)
    )
    assert len(splits.train) + len(splits.eval) + len(splits.test) == len(medquad_rows)
    if "group" in group_by:
        assert_no_group_crosses(splits, lambda row: row.group)
    if "focus" in group_by:
        assert_no_group_crosses(splits, _focus)
    for name in ("eval", "test"):
        share = len(getattr(splits, name)) / len(medquad_rows)
        assert 0.05 < share < 0.15, (name, share)


def test_medquad_some_documents_cover_several_foci(medquad_rows):
    foci: dict[str, set[str]] = defaultdict(set)
    for row in medquad_rows:
        foci[row.group or ""].add(_focus(row))
    assert any(len(f) > 1 for f in foci.values())  # CancerGov pages split into several files


def test_medquad_focus_spans_documents_so_a_document_split_leaks(medquad_rows):
    documents: dict[str, set[str]] = defaultdict(set)
    for row in medquad_rows:
        documents[_focus(row)].add(row.group or "")
    spanning = [focus for focus, docs in documents.items() if len(docs) > 1]
    assert len(spanning) > 100  # e.g. a disease with both a GARD and a GHR document
    by_document = split_rows(medquad_rows, SplitSpec(eval_fraction=0.1, test_fraction=0.1))
    train_focus = {_focus(r) for r in by_document.train}
    assert any(_focus(r) in train_focus for r in by_document.eval)


def test_medquad_split_is_stable_when_rows_are_reordered(medquad_rows):
    spec = SplitSpec(eval_fraction=0.1, test_fraction=0.1, group_by="focus", seed=5)
    before = where(split_rows(medquad_rows, spec))
    reversed_rows = list(reversed(medquad_rows))
    assert where(split_rows(reversed_rows, spec)) == before


# --------------------------------------------------------------------------- benchmark overlap


def edit_question(text: str) -> str:
    """A lightly edited copy: one word changed and different case and punctuation."""
    words = text.split()
    middle = len(words) // 2
    words[middle] = "patient" if words[middle].lower() != "patient" else "person"
    return " ".join(words).upper().replace(",", " ;")


@pytest.fixture(scope="module")
def medqa_rows(shared_data):
    from lorakit.data.sources import read_source
    from lorakit.plugins import Registries, make_plugin_manager

    registries = Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, disabled=())
    )
    return list(
        read_source(
            f"medqa:{shared_data / 'medqa' / 'us_4_options_sample.jsonl'}", registries=registries
        )
    )


def test_overlap_finds_planted_exact_and_near_copies(medquad_rows, medqa_rows):
    exact_source, near_source = medqa_rows[3], medqa_rows[7]
    planted = [
        QARow(question=exact_source.question.lower() + "  ", answer="x", origin="planted:1"),
        QARow(question=edit_question(near_source.question), answer="y", origin="planted:2"),
    ]
    train = medquad_rows[:5000] + planted + medquad_rows[5000:]
    report = benchmark_overlap(train, {"medqa": medqa_rows})
    medqa = report["medqa"]
    assert (medqa.questions, medqa.exact, medqa.near) == (len(medqa_rows), 1, 1)
    assert medqa.exact_examples == ((exact_source.origin, "planted:1"),)
    assert medqa.near_examples == ((near_source.origin, "planted:2"),)
    assert not report.clean
    data = json.loads(json.dumps(report.to_dict()))
    assert data["benchmarks"]["medqa"]["exact"] == 1 and data["threshold"] == 0.8


def test_overlap_finds_nothing_for_unrelated_text(medquad_rows, medqa_rows, shared_data):
    from lorakit.data.sources import read_source
    from lorakit.plugins import Registries, make_plugin_manager

    registries = Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, disabled=())
    )
    mmlu = list(read_source(f"mmlu:{shared_data / 'mmlu' / 'dev'}", registries=registries))
    report = benchmark_overlap(medquad_rows, {"medqa": medqa_rows, "mmlu": mmlu})
    assert report.clean
    assert [(b.name, b.exact, b.near) for b in report.benchmarks] == [
        ("medqa", 0, 0),
        ("mmlu", 0, 0),
    ]
    assert report["mmlu"].questions == len(mmlu) > 0


def test_overlap_on_small_inputs_and_thresholds():
    train = [
        QARow(
            question="What are the symptoms of asthma in young children?", answer="a", origin="t:1"
        ),
        QARow(question="What is diabetes?", answer="a", origin="t:2"),
    ]
    bench = [
        QARow(
            question="what are the symptoms of ASTHMA in young children", answer="b", origin="b:1"
        ),
        QARow(
            question="What are the symptoms of asthma in small children?", answer="b", origin="b:2"
        ),
        QARow(question="How is a broken wrist treated?", answer="b", origin="b:3"),
        QARow(question="   ", answer="b", origin="b:4"),
    ]
    strict = benchmark_overlap(train, {"b": bench}, threshold=1.0)["b"]
    assert (strict.questions, strict.exact, strict.near) == (3, 1, 0)
    loose = benchmark_overlap(train, {"b": bench}, threshold=0.3, ngram=2)["b"]
    assert (loose.exact, loose.near) == (1, 1)
    assert loose.near_examples == (("b:2", "t:1"),)
    assert benchmark_overlap([], {"b": bench})["b"].overlapping == 0


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"threshold": 1.2}, {"ngram": 0}, {"num_perm": 1}]
)
def test_overlap_rejects_bad_options(kwargs):
    with pytest.raises(ConfigError):
        benchmark_overlap([], {}, **kwargs)
