"""The built-in cleaners, the cleaning chain and its report."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from lorakit.data.cleaners import (
    DEFAULT_CLEANERS,
    CleanerSpec,
    CleaningReport,
    check_cleaners,
    clean_rows,
)
from lorakit.data.rows import QARow
from lorakit.errors import ConfigError, PluginError
from lorakit.hookspecs import hookimpl
from lorakit.plugins import Registries, make_plugin_manager
from lorakit.protocols import Drop

LONG_ANSWER = (
    "Asthma is a chronic disease of the airways that carry air in and out of the lungs. "
    "In people who have asthma the inside walls of the airways are inflamed and swollen, "
    "which makes them very sensitive; they tend to react strongly to inhaled allergens "
    "such as pollen, dust mites and animal dander. When the airways react, the muscles "
    "around them tighten and the airways narrow, so less air flows into the lungs. "
    "Symptoms include wheezing, coughing, chest tightness and shortness of breath, often "
    "worse at night or early in the morning. Treatment combines long-term control "
    "medicines, such as inhaled corticosteroids, with quick-relief inhalers for attacks. "
    "Doctors diagnose asthma from the medical history, a physical exam and lung function "
    "tests such as spirometry, which measures how much air a person can breathe out and how "
    "fast. An asthma action plan, written with the doctor, says which medicines to take every "
    "day, how to recognise worsening symptoms, and when to seek emergency care. Avoiding known "
    "triggers, such as tobacco smoke, air pollution and respiratory infections, reduces the "
    "number of attacks, and most people with asthma can lead normal, active lives."
)


def qa(question: str, answer: str, origin: str = "", **kwargs: object) -> QARow:
    return QARow(question=question, answer=answer, origin=origin, **kwargs)  # type: ignore[arg-type]


def run(
    registries: Registries, rows: list[QARow], *specs: str
) -> tuple[list[QARow], CleaningReport]:
    return clean_rows(rows, [CleanerSpec.parse(s) for s in specs], registries.cleaners)


def assert_invariant(report: CleaningReport) -> None:
    for step in report.steps:
        assert step.rows_in == step.rows_out + sum(step.dropped.values()), step
    assert report.rows_in == report.rows_out + report.total_dropped


# --------------------------------------------------------------------------- registration


def test_builtin_cleaners_are_registered_by_the_builtin_plugin(registries):
    names = set(registries.cleaners.names())
    assert {
        "normalize_whitespace",
        "lowercase",
        "drop_empty",
        "exact_dedup",
        "near_dedup",
        "length_filter",
    } <= names
    assert registries.cleaners.entry("near_dedup").plugin == "lorakit.data.cleaners"


def test_default_chain_is_normalize_drop_empty_exact_then_near():
    assert [s.name for s in DEFAULT_CLEANERS] == [
        "normalize_whitespace",
        "drop_empty",
        "exact_dedup",
        "near_dedup",
    ]
    assert "lowercase" not in {s.name for s in DEFAULT_CLEANERS}


# --------------------------------------------------------------------------- normalize_whitespace


def test_normalize_whitespace_tidies_every_text_field(registries):
    messy = QARow(
        question="  What  is\tasthma ?  ",
        answer="  Line one  \t with   tabs  \r\n\n\n\n   Line two\u00a0 here  \n",
        options=(" a  b ", "c"),
        answer_letter="B",
        context="ctx \t\t one\n\n\n\nctx two",
        explanation="  why  ",
        origin="f:1",
    )
    tidy = qa("Already tidy?", "Yes.\n\nTwo paragraphs.", origin="f:2")
    kept, report = run(registries, [messy, tidy], "normalize_whitespace")
    out = kept[0]
    assert out.question == "What is asthma ?"
    assert out.answer == "Line one with tabs\n\nLine two here"
    assert out.options == ("a b", "c")
    assert out.context == "ctx one\n\nctx two"
    assert out.explanation == "why"
    assert out.origin == "f:1" and out.answer_letter == "B"
    assert kept[1] is tidy
    step = report.steps[0]
    assert (step.rows_in, step.rows_out, step.changed, dict(step.dropped)) == (2, 2, 1, {})


def test_normalize_whitespace_keeps_single_blank_lines_and_line_breaks(registries):
    row = qa("q", "- item one\n- item two\n\nNext paragraph")
    kept, report = run(registries, [row], "normalize_whitespace")
    assert kept[0].answer == "- item one\n- item two\n\nNext paragraph"
    assert report.steps[0].changed == 0


# --------------------------------------------------------------------------- lowercase


def test_lowercase_is_off_by_default_and_case_survives_the_default_chain(registries):
    row = qa("Is BRCA1 linked to breast cancer ?", "Yes: BRCA1 variants; give 5 mL, not 5 ML.")
    kept, _ = clean_rows([row], DEFAULT_CLEANERS, registries.cleaners)
    assert kept[0].question == row.question and kept[0].answer == row.answer


def test_lowercase_lowercases_question_answer_options_and_context(registries):
    row = QARow(
        question="Which GENE?",
        answer="BRCA1",
        options=("BRCA1", "TP53"),
        answer_letter="A",
        context="Some CONTEXT",
        explanation="Kept AS IS",
    )
    kept, report = run(registries, [row], "lowercase")
    out = kept[0]
    assert (out.question, out.answer, out.options, out.context) == (
        "which gene?",
        "brca1",
        ("brca1", "tp53"),
        "some context",
    )
    assert out.answer_letter == "A" and out.explanation == "Kept AS IS"
    assert report.steps[0].changed == 1


# --------------------------------------------------------------------------- drop_empty


def test_drop_empty_counts_empty_questions_and_answers_separately(registries):
    rows = [
        qa("q1", "a1", "f:1"),
        qa("   ", "a2", "f:2"),
        qa("q3", "", "f:3"),
        qa("q4", " \n\t ", "f:4"),
        qa("", "", "f:5"),
    ]
    kept, report = run(registries, rows, "drop_empty")
    assert [r.origin for r in kept] == ["f:1"]
    step = report.step("drop_empty")
    assert dict(step.dropped) == {"empty question": 2, "empty answer": 2}
    assert step.examples == (
        ("f:2", "empty question"),
        ("f:3", "empty answer"),
        ("f:4", "empty answer"),
        ("f:5", "empty question"),
    )
    assert_invariant(report)


# --------------------------------------------------------------------------- exact_dedup


def test_exact_dedup_keeps_the_first_and_compares_normalised_text(registries):
    rows = [
        qa("What is asthma?", "A lung disease.", "f:1"),
        qa("what is ASTHMA ?", "A  lung disease", "f:2"),  # same after normalising
        qa("What is asthma?", "A different answer.", "f:3"),  # same question only
        qa("What causes asthma?", "A lung disease.", "f:4"),  # same answer only
    ]
    kept, report = run(registries, rows, "exact_dedup")
    assert [r.origin for r in kept] == ["f:1", "f:3", "f:4"]
    step = report.step("exact_dedup")
    assert dict(step.dropped) == {"exact duplicate": 1}
    assert step.examples[0][0] == "f:2" and "f:1" in step.examples[0][1]


@pytest.mark.parametrize(
    ("key", "kept_origins"),
    [
        ("question", ["f:1", "f:4"]),
        ("answer", ["f:1", "f:3"]),
        ("question_answer", ["f:1", "f:3", "f:4"]),
    ],
)
def test_exact_dedup_key_option(registries, key, kept_origins):
    rows = [
        qa("What is asthma?", "A lung disease.", "f:1"),
        qa("What is asthma?", "A lung disease.", "f:2"),
        qa("What is asthma?", "A different answer.", "f:3"),
        qa("What causes asthma?", "A lung disease.", "f:4"),
    ]
    kept, report = run(registries, rows, f"exact_dedup:key={key}")
    assert [r.origin for r in kept] == kept_origins
    assert_invariant(report)


def test_exact_dedup_rejects_an_unknown_key(registries):
    with pytest.raises(ConfigError, match="question_answer") as info:
        run(registries, [], "exact_dedup:key=questions")
    assert "did you mean 'question'" in str(info.value)


# --------------------------------------------------------------------------- near_dedup


def lightly_edited(text: str) -> str:
    """One word changed, case and punctuation changed: what a copy-edited duplicate looks like."""
    return text.replace("chronic", "lasting", 1).replace("Symptoms", "SYMPTOMS").replace(";", ",")


def test_near_dedup_drops_a_lightly_edited_copy_and_names_the_kept_row(registries):
    rows = [
        qa("What is asthma?", LONG_ANSWER, "medquad/asthma.xml:3"),
        qa("what is asthma ?", lightly_edited(LONG_ANSWER), "medquad/asthma-copy.xml:9"),
    ]
    kept, report = run(registries, rows, "near_dedup")
    assert [r.origin for r in kept] == ["medquad/asthma.xml:3"]
    step = report.step("near_dedup")
    assert dict(step.dropped) == {"near duplicate": 1}
    origin, reason = step.examples[0]
    assert origin == "medquad/asthma-copy.xml:9"
    assert "near duplicate" in reason and "medquad/asthma.xml:3" in reason


def test_near_dedup_keeps_distinct_rows_on_a_shared_topic(registries):
    other = (
        "Chronic obstructive pulmonary disease is a progressive lung disease, most often caused "
        "by years of smoking, that makes it hard to breathe out. Damage to the air sacs and "
        "airways traps air in the lungs. It is diagnosed with spirometry and treated with "
        "bronchodilators, pulmonary rehabilitation and, above all, by stopping smoking."
    )
    rows = [
        qa("What is asthma?", LONG_ANSWER, "f:1"),
        qa("What is COPD?", other, "f:2"),
        qa("What is asthma?", "A chronic disease of the airways.", "f:3"),
    ]
    kept, report = run(registries, rows, "near_dedup")
    assert [r.origin for r in kept] == ["f:1", "f:2", "f:3"]
    assert report.step("near_dedup").dropped == {}


def test_near_dedup_threshold_option_is_used(registries):
    rows = [
        qa("What is asthma?", LONG_ANSWER, "f:1"),
        qa("What is asthma?", lightly_edited(LONG_ANSWER), "f:2"),
    ]
    kept, _ = run(registries, rows, "near_dedup:threshold=1.0")
    assert len(kept) == 2  # not identical, so kept at threshold 1
    kept, _ = run(registries, rows, "near_dedup:threshold=0.8,num_perm=256,ngram=3")
    assert len(kept) == 1


@pytest.mark.parametrize(
    "text",
    [
        "near_dedup:threshold=1.5",
        "near_dedup:threshold=0",
        "near_dedup:threshold=high",
        "near_dedup:num_perm=0",
        "near_dedup:ngram=true",
    ],
)
def test_near_dedup_rejects_bad_option_values(registries, text):
    with pytest.raises(ConfigError, match="near_dedup"):
        run(registries, [], text)


# --------------------------------------------------------------------------- length_filter


def test_length_filter_drops_by_each_bound_and_names_it(registries):
    rows = [
        qa("Fine question?", "A fine answer.", "f:1"),
        qa("Q?", "A fine answer.", "f:2"),
        qa("Fine question?", "x" * 50, "f:3"),
        qa("Fine question?", "ok", "f:4"),
        qa("Fine question but far too long?", "A fine answer.", "f:5"),
    ]
    spec = "length_filter:min_question_chars=5,max_question_chars=20,min_answer_chars=5,max_answer_chars=40"
    kept, report = run(registries, rows, spec)
    assert [r.origin for r in kept] == ["f:1"]
    assert dict(report.steps[0].dropped) == {
        "question shorter than 5 chars": 1,
        "answer longer than 40 chars": 1,
        "answer shorter than 5 chars": 1,
        "question longer than 20 chars": 1,
    }
    assert_invariant(report)


def test_length_filter_without_bounds_keeps_everything(registries):
    rows = [qa("q", "a"), qa("q" * 10_000, "a" * 100_000)]
    kept, report = run(registries, rows, "length_filter")
    assert len(kept) == 2 and report.total_dropped == 0


@pytest.mark.parametrize(
    "text",
    [
        "length_filter:min_answer_chars=10,max_answer_chars=5",
        "length_filter:max_answer_chars=-1",
        "length_filter:max_answer_chars=1.5",
    ],
)
def test_length_filter_rejects_bad_bounds(registries, text):
    with pytest.raises(ConfigError, match="length_filter"):
        run(registries, [], text)


# --------------------------------------------------------------------------- options and specs


def test_unknown_option_names_the_cleaner_and_option_with_a_suggestion(registries):
    with pytest.raises(ConfigError) as info:
        run(registries, [qa("q", "a")], "near_dedup:treshold=0.8")
    message = str(info.value)
    assert "'near_dedup'" in message and "'treshold'" in message
    assert "did you mean 'threshold'" in message


def test_unknown_option_of_a_cleaner_without_options(registries):
    with pytest.raises(ConfigError, match="'drop_empty' has no option 'strict'"):
        run(registries, [], "drop_empty:strict=true")


def test_unknown_cleaner_suggests_the_closest(registries):
    with pytest.raises(ConfigError, match="did you mean 'near_dedup'"):
        run(registries, [], "near_dedupe")


def test_options_are_checked_before_any_row_is_read(registries):
    def rows():
        raise AssertionError("read a row")
        yield  # pragma: no cover

    with pytest.raises(ConfigError):
        clean_rows(
            rows(),
            [CleanerSpec("drop_empty"), CleanerSpec.parse("near_dedup:x=1")],
            registries.cleaners,
        )


def test_check_cleaners_parses_and_validates_without_rows(registries):
    specs = check_cleaners(
        ["drop_empty", CleanerSpec("near_dedup", {"threshold": 0.8})], registries.cleaners
    )
    assert specs == (CleanerSpec("drop_empty"), CleanerSpec("near_dedup", {"threshold": 0.8}))
    with pytest.raises(ConfigError, match="did you mean 'near_dedup'"):
        check_cleaners(["drop_empty", "near_dedupe"], registries.cleaners)


@pytest.mark.parametrize(
    ("text", "name", "options"),
    [
        ("drop_empty", "drop_empty", {}),
        (" near_dedup : threshold = 0.85 ", "near_dedup", {"threshold": 0.85}),
        ("near_dedup:threshold=1,num_perm=64", "near_dedup", {"threshold": 1, "num_perm": 64}),
        ("length_filter:max_answer_chars=none", "length_filter", {"max_answer_chars": None}),
        (
            "x:flag=true,other=False,name=abc,q='1'",
            "x",
            {"flag": True, "other": False, "name": "abc", "q": "1"},
        ),
        ("x:small=1e-3,neg=-2", "x", {"small": 0.001, "neg": -2}),
    ],
)
def test_cleaner_spec_parse(text, name, options):
    spec = CleanerSpec.parse(text)
    assert spec == CleanerSpec(name, options)
    assert type(spec.options.get("threshold", 0.0)) is type(options.get("threshold", 0.0))
    assert CleanerSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "text", ["", ":threshold=1", "near_dedup:threshold", "near_dedup:=1", "x:a=1,a=2"]
)
def test_cleaner_spec_parse_errors(text):
    with pytest.raises(ConfigError):
        CleanerSpec.parse(text)


def test_cleaner_spec_is_frozen_and_json_able():
    spec = CleanerSpec("near_dedup", {"threshold": 0.85})
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    assert json.loads(json.dumps(spec.to_dict())) == {
        "name": "near_dedup",
        "options": {"threshold": 0.85},
    }
    assert CleanerSpec("drop_empty").options == {}


def test_clean_rows_accepts_strings_and_a_lazy_stream(registries):
    rows = (qa(f"question {i}", f"answer {i % 3}") for i in range(6))
    kept, report = clean_rows(rows, ["drop_empty", "exact_dedup:key=answer"], registries.cleaners)
    assert [r.question for r in kept] == ["question 0", "question 1", "question 2"]
    assert report.rows_in == 6 and report.rows_out == 3


def test_clean_rows_reports_progress_per_row(registries):
    ticks: list[int] = []
    clean_rows(
        [qa("q", "a"), qa("q", ""), qa("q", "a")],
        DEFAULT_CLEANERS,
        registries.cleaners,
        progress=ticks.append,
    )
    assert ticks == [1, 1, 1]


# --------------------------------------------------------------------------- the report


def test_report_counts_every_row_and_serialises(registries):
    rows = [
        qa("  What is asthma? ", LONG_ANSWER, "f:1"),
        qa("What is asthma?", LONG_ANSWER, "f:2"),  # exact copy after whitespace
        qa("What is asthma ?", lightly_edited(LONG_ANSWER), "f:3"),  # near copy
        qa("Empty?", "", "f:4"),
        qa("", "No question", "f:5"),
        qa("What is COPD?", "A lung disease caused mostly by smoking.", "f:6"),
    ]
    kept, report = clean_rows(rows, DEFAULT_CLEANERS, registries.cleaners)
    assert [r.origin for r in kept] == ["f:1", "f:6"]
    assert (report.rows_in, report.rows_out, report.total_dropped) == (6, 2, 4)
    assert report.dropped == {
        "empty answer": 1,
        "empty question": 1,
        "exact duplicate": 1,
        "near duplicate": 1,
    }
    assert [(s.name, s.rows_in, s.rows_out) for s in report.steps] == [
        ("normalize_whitespace", 6, 6),
        ("drop_empty", 6, 4),
        ("exact_dedup", 4, 3),
        ("near_dedup", 3, 2),
    ]
    assert report.step("normalize_whitespace").changed == 1
    assert_invariant(report)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rows_in"] == 6 and data["rows_out"] == 2
    assert data["steps"][3]["examples"][0][0] == "f:3"
    assert data["steps"][0]["changed"] == 1


def test_report_keeps_at_most_five_examples(registries):
    rows = [qa(f"q{i}", "", f"f:{i}") for i in range(12)]
    _, report = run(registries, rows, "drop_empty")
    assert report.steps[0].dropped == {"empty answer": 12}
    assert [origin for origin, _ in report.steps[0].examples] == [f"f:{i}" for i in range(5)]


def test_examples_fall_back_to_id_or_position(registries):
    rows = [qa("q", "", id="abc"), qa("q", "")]
    _, report = run(registries, rows, "drop_empty")
    assert [origin for origin, _ in report.steps[0].examples] == ["id abc", "row 2"]


def test_empty_chain_passes_every_row(registries):
    rows = [qa("q", "a"), qa("q", "a")]
    kept, report = clean_rows(rows, [], registries.cleaners)
    assert kept == rows and report.rows_in == report.rows_out == 2 and report.steps == ()


def _plugin_registries(plugin: object) -> Registries:
    return Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, disabled=(), plugins=[plugin])
    )


def test_a_cleaner_returning_none_is_counted_under_its_name():
    class Plugin:
        @hookimpl
        def lorakit_register_cleaners(self, register):
            register("no_short", lambda: lambda row: None if len(row.answer) < 3 else row)

    kept, report = clean_rows(
        [qa("q", "ab"), qa("q", "abc")],
        [CleanerSpec("no_short")],
        _plugin_registries(Plugin()).cleaners,
    )
    assert len(kept) == 1 and report.steps[0].dropped == {"no_short": 1}
    assert_invariant(report)


def test_a_cleaner_returning_something_else_is_a_plugin_error():
    class Plugin:
        @hookimpl
        def lorakit_register_cleaners(self, register):
            register("broken", lambda: lambda row: row.answer)

    with pytest.raises(PluginError, match="'broken' returned str"):
        clean_rows([qa("q", "a")], [CleanerSpec("broken")], _plugin_registries(Plugin()).cleaners)


def test_a_plugin_cleaner_factory_with_options_is_checked_too():
    class Plugin:
        @hookimpl
        def lorakit_register_cleaners(self, register):
            def banned(*, word: str = "spam"):
                return lambda row: Drop(f"contains {word}") if word in row.answer else row

            register("banned", banned)

    registries = _plugin_registries(Plugin())
    kept, report = clean_rows(
        [qa("q", "eggs"), qa("q", "ham")], ["banned:word=ham"], registries.cleaners
    )
    assert [r.answer for r in kept] == ["eggs"] and report.dropped == {"contains ham": 1}
    with pytest.raises(ConfigError, match="did you mean 'word'"):
        clean_rows([], ["banned:words=ham"], registries.cleaners)


# --------------------------------------------------------------------------- real data


def test_default_chain_on_medquad(shared_data, registries):
    from lorakit.data.sources import read_source

    rows = list(read_source(f"medquad:{shared_data / 'medquad'}", registries=registries))
    start = time.perf_counter()
    kept, report = clean_rows(rows, DEFAULT_CLEANERS, registries.cleaners)
    elapsed = time.perf_counter() - start
    assert_invariant(report)
    assert report.rows_in == len(rows) and report.rows_out == len(kept)
    # Subset 12 (MedlinePlus herbs and supplements) has every answer removed upstream.
    herbs = [r for r in rows if "12_MPlusHerbsSupplements" in (r.group or "")]
    assert herbs and all(not r.answer.strip() for r in herbs)
    assert report.step("drop_empty").dropped.get("empty answer", 0) >= len(herbs)
    assert not any("12_MPlusHerbsSupplements" in (r.group or "") for r in kept)
    # Templated answers repeat verbatim and nearly verbatim across documents.
    assert report.step("exact_dedup").total_dropped > 0
    assert report.step("near_dedup").total_dropped > 0
    assert all("near duplicate" in reason for _, reason in report.step("near_dedup").examples)
    assert Counter(r.question + r.answer for r in kept).most_common(1)[0][1] == 1
    assert elapsed < 60, f"default chain took {elapsed:.1f}s on {len(rows)} rows"
