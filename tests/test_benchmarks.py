"""Named benchmarks on the real files in ../shared/data, with the tiny Phi-3; comparisons; bad input."""

from __future__ import annotations

import json
import os

import pytest

from lorakit.errors import ConfigError, DataError
from lorakit.evaluate.benchmarks import (
    BENCHMARKS,
    MMLU_MEDICAL_SUBJECTS,
    Benchmark,
    BenchmarkResult,
    check_adapter_base,
    compare,
    load_benchmark,
    parse_bench,
    run_benchmark,
)

pytest.importorskip("torch")

LIMIT = 8


@pytest.fixture(scope="module")
def tiny_lm(tiny_phi3):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_phi3), AutoTokenizer.from_pretrained(tiny_phi3)


@pytest.fixture(scope="module")
def bench_paths(shared_data):
    return {
        "medqa": str(shared_data / "medqa" / "us_4_options_sample.jsonl"),
        "medmcqa": str(shared_data / "medmcqa" / "dev.json"),
        "pubmedqa": str(shared_data / "pubmedqa" / "ori_pqal_train.json"),
        "mmlu_medical": str(shared_data / "mmlu" / "dev"),
        "heldout": f"medquad:{shared_data / 'medquad' / '5_NIDDK_QA'}",
    }


# --------------------------------------------------------------------------- names


def test_parse_bench():
    bench, location = parse_bench("medqa:data/x.jsonl")
    assert bench is BENCHMARKS["medqa"] and location == "data/x.jsonl"
    bench, location = parse_bench("heldout:jsonl:C:/data/test.jsonl")
    assert bench.name == "heldout" and location == "jsonl:C:/data/test.jsonl"
    assert parse_bench("MMLU_Medical:dev")[0].subjects == MMLU_MEDICAL_SUBJECTS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("medqa", "needs a location: write medqa:PATH"),
        ("medqa:", "needs a location"),
        ("medqaa:x.jsonl", "did you mean 'medqa'"),
        ("usmle:x.jsonl", "benchmarks: heldout, medmcqa, medqa, mmlu_medical, pubmedqa"),
        ("heldout:test.jsonl", "has no scheme"),
    ],
)
def test_parse_bench_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_bench(text)


def test_builtin_benchmarks():
    assert set(BENCHMARKS) == {"medqa", "medmcqa", "pubmedqa", "mmlu_medical", "heldout"}
    assert BENCHMARKS["pubmedqa"].choices == "texts"
    assert BENCHMARKS["heldout"].metric == "perplexity"
    assert all(b.shots == 0 for b in BENCHMARKS.values())


# --------------------------------------------------------------------------- every benchmark


@pytest.mark.parametrize("name", ["medqa", "medmcqa", "pubmedqa", "mmlu_medical"])
def test_every_mcq_benchmark_runs_on_the_real_files(tiny_lm, bench_paths, name):
    model, tokenizer = tiny_lm
    seen: list[int] = []

    class Progress:
        def task(self, description, total=None):
            assert total == LIMIT and name in description
            return seen.append

    result = run_benchmark(
        model, tokenizer, f"{name}:{bench_paths[name]}", limit=LIMIT, progress=Progress()
    )
    assert isinstance(result, BenchmarkResult)
    assert result.n == LIMIT and sum(seen) == LIMIT
    assert 0.0 <= result.ci_low <= result.accuracy <= result.ci_high <= 1.0
    assert result.acc_norm is not None and result.perplexity is None
    assert result.choices == BENCHMARKS[name].choices
    data = json.loads(json.dumps(result.to_dict()))
    assert list(data)[:5] == ["bench", "n", "accuracy", "ci_low", "ci_high"]
    assert data["bench"] == name and data["n"] == LIMIT
    assert sum(c["n"] for c in data["per_category"].values()) in (0, LIMIT)
    assert data["errors"]["prompt_truncated"] == 0


def test_heldout_is_scored_by_perplexity(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    result = run_benchmark(
        model, tokenizer, "heldout", bench_paths["heldout"], limit=4, max_len=256
    )
    assert result.n == 4 and result.accuracy is None and result.perplexity > 1.0
    data = result.to_dict()
    assert data["accuracy"] is None and data["perplexity"] == result.perplexity
    assert {"loss", "tokens"} <= set(data)


def test_heldout_takes_rows_directly(tiny_lm, shared_data):
    from lorakit.data.sources import read_source

    model, tokenizer = tiny_lm
    rows = list(read_source(f"medquad:{shared_data / 'medquad' / '5_NIDDK_QA'}"))[:3]
    result = run_benchmark(model, tokenizer, "heldout", rows=rows, max_len=128)
    assert result.n == 3 and result.location == "(rows)"
    with pytest.raises(ConfigError, match="no rows"):
        run_benchmark(model, tokenizer, "heldout", rows=[])


def test_mmlu_medical_scores_per_subject_with_same_subject_exemplars(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    items, _ = load_benchmark(BENCHMARKS["mmlu_medical"], bench_paths["mmlu_medical"])
    assert len(items) == 30 and {r.category for r in items} == set(MMLU_MEDICAL_SUBJECTS)
    result = run_benchmark(
        model, tokenizer, "mmlu_medical", bench_paths["mmlu_medical"], shots=2, batch_size=16
    )
    assert set(result.per_category) == set(MMLU_MEDICAL_SUBJECTS)
    assert all(score["n"] == 5 for score in result.per_category.values())
    assert result.shots == 2
    # five dev rows per subject: four exemplars at most besides the item
    with pytest.raises(ConfigError, match="shots=5 but only 4 exemplars of category"):
        run_benchmark(model, tokenizer, "mmlu_medical", bench_paths["mmlu_medical"], shots=5)


def test_mmlu_test_folder_takes_exemplars_from_dev(tmp_path, shared_data):
    (tmp_path / "dev").symlink_to(shared_data / "mmlu" / "dev")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "anatomy_test.csv").write_text('"What is it?",a,b,c,d,B\n')
    (tmp_path / "test" / "astronomy_test.csv").write_text('"Stars?",a,b,c,d,A\n')
    items, pool = load_benchmark(BENCHMARKS["mmlu_medical"], str(tmp_path / "test"))
    assert [r.question for r in items] == ["What is it?"]
    assert len(pool) == 30 and all(r.origin.startswith(str(tmp_path / "dev")) for r in pool)


def test_limit_keeps_the_first_items_and_exemplars_come_from_the_whole_file(bench_paths):
    items, pool = load_benchmark(BENCHMARKS["medqa"], bench_paths["medqa"], limit=3)
    assert len(items) == 3 and len(pool) == 50 and pool[:3] == items
    with pytest.raises(ConfigError, match="limit must be"):
        load_benchmark(BENCHMARKS["medqa"], bench_paths["medqa"], limit=0)


# --------------------------------------------------------------------------- bad input


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return str(path)


MEDQA_OK = {
    "question": "Q?",
    "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
    "answer": "b",
    "answer_idx": "B",
    "meta_info": "step1",
}


def test_wrong_format_is_a_named_error(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    with pytest.raises(DataError, match=r"us_4_options_sample\.jsonl:1.*'opa'"):
        run_benchmark(model, tokenizer, "medmcqa", bench_paths["medqa"])
    with pytest.raises(DataError, match=r"sample\.jsonl:2: invalid JSON.*pubmedqa: reads"):
        run_benchmark(model, tokenizer, "pubmedqa", bench_paths["medqa"])


def test_options_missing_is_a_named_error(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    bad = dict(MEDQA_OK)
    del bad["options"]
    path = _write(tmp_path / "medqa.jsonl", [MEDQA_OK, bad])
    with pytest.raises(DataError, match=r"medqa\.jsonl:2: field 'options'"):
        run_benchmark(model, tokenizer, "medqa", path)


def test_answer_letter_not_among_options_is_a_named_error(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    path = _write(tmp_path / "medqa.jsonl", [MEDQA_OK, {**MEDQA_OK, "answer_idx": "E"}])
    with pytest.raises(DataError, match=r"medqa\.jsonl:2: field 'answer_idx': answer letter 'E'"):
        run_benchmark(model, tokenizer, "medqa", path)
    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    (mmlu / "anatomy_dev.csv").write_text("Q?,a,b,c,d,F\n")
    with pytest.raises(DataError, match=r"anatomy_dev\.csv:1: field 'answer'.*'F'"):
        run_benchmark(model, tokenizer, "mmlu_medical", str(mmlu))


def test_free_text_rows_in_an_mcq_benchmark_are_a_named_error(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    bench = Benchmark(name="custom", scheme="jsonl")
    path = _write(tmp_path / "free.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(DataError, match=r"free\.jsonl:1: field 'options'"):
        run_benchmark(model, tokenizer, bench, path)


def test_no_medical_subjects_and_zero_items_are_errors(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    mmlu = tmp_path / "mmlu"
    mmlu.mkdir()
    (mmlu / "astronomy_dev.csv").write_text("Q?,a,b,c,d,A\n")
    with pytest.raises(DataError, match="holds no rows of the mmlu_medical subjects"):
        run_benchmark(model, tokenizer, "mmlu_medical", str(mmlu))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError):
        run_benchmark(model, tokenizer, "medqa", str(empty))
    with pytest.raises(ConfigError, match="unknown benchmark"):
        run_benchmark(model, tokenizer, "usmle", "x")


# --------------------------------------------------------------------------- compare


def test_compare_base_and_adapter_over_the_same_items(tiny_lm, tmp_path_factory, bench_paths):
    from transformers import AutoModelForCausalLM

    from lorakit.testing import build_tiny_phi3

    model, tokenizer = tiny_lm
    other = AutoModelForCausalLM.from_pretrained(
        build_tiny_phi3(tmp_path_factory.mktemp("other"), seed=1)
    )
    path = bench_paths["mmlu_medical"]
    base = run_benchmark(model, tokenizer, "mmlu_medical", path, batch_size=16)
    adapter = run_benchmark(other, tokenizer, "mmlu_medical", path, batch_size=16)
    same = compare(base, base)
    assert (same.delta, same.ci_low, same.ci_high, same.significant) == (0.0, 0.0, 0.0, False)
    diff = compare(base, adapter, seed=1)
    assert diff.delta == pytest.approx(adapter.accuracy - base.accuracy)
    assert diff.ci_low <= diff.delta <= diff.ci_high
    assert set(diff.per_category) == set(MMLU_MEDICAL_SUBJECTS)
    assert diff.to_dict()["measure"] == "accuracy"
    fewer = run_benchmark(other, tokenizer, "mmlu_medical", path, limit=10)
    with pytest.raises(ConfigError, match="different items"):
        compare(base, fewer)
    medqa = run_benchmark(model, tokenizer, "medqa", bench_paths["medqa"], limit=2)
    with pytest.raises(ConfigError, match="cannot compare benchmark"):
        compare(base, medqa)


def test_compare_perplexity(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    held = run_benchmark(model, tokenizer, "heldout", bench_paths["heldout"], limit=2, max_len=128)
    result = compare(held, held)
    assert (result.measure, result.delta, result.ci_low) == ("perplexity", 0.0, None)


# --------------------------------------------------------------------------- adapter vs base


def _adapter(tmp_path, base):
    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def test_check_adapter_base_accepts_the_same_model(tmp_path):
    model_dir = tmp_path / "models" / "phi3"
    model_dir.mkdir(parents=True)
    (tmp_path / "link").symlink_to(model_dir)
    adapter = _adapter(tmp_path, str(model_dir))
    assert check_adapter_base(adapter, str(model_dir) + "/") == str(model_dir)
    assert check_adapter_base(adapter, str(tmp_path / "link"))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert check_adapter_base(adapter, "models/phi3")
    finally:
        os.chdir(cwd)
    hub = _adapter(tmp_path, "microsoft/Phi-3-mini-4k-instruct")
    assert check_adapter_base(hub, "microsoft/Phi-3-mini-4k-instruct")


def test_check_adapter_base_rejects_another_model(tmp_path):
    adapter = _adapter(tmp_path, "microsoft/Phi-3-mini-4k-instruct")
    with pytest.raises(
        ConfigError, match=r"trained on 'microsoft/Phi-3-mini-4k-instruct'.*--model 'x/y'"
    ):
        check_adapter_base(adapter, "x/y")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match="not on --model"):
        check_adapter_base(adapter, str(other))
    with pytest.raises(ConfigError, match=r"no adapter_config\.json"):
        check_adapter_base(tmp_path / "nowhere", "x/y")
    (adapter / "adapter_config.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read the adapter config"):
        check_adapter_base(adapter, "x/y")
    (adapter / "adapter_config.json").write_text("{}")
    assert check_adapter_base(adapter, "x/y") is None


def test_a_location_given_twice_is_an_error(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    with pytest.raises(ConfigError, match="names its location"):
        run_benchmark(model, tokenizer, f"medqa:{bench_paths['medqa']}", bench_paths["medqa"])
    result = run_benchmark(model, tokenizer, "medqa", bench_paths["medqa"], limit=2)
    assert result.n == 2
