"""Named benchmarks on the real files in ../shared/data, with the tiny Phi-3; comparisons; bad input."""

from __future__ import annotations

import json
import os

import pytest

from lorakit.errors import ConfigError, DataError
from lorakit.evaluate.adapter_check import check_adapter_base
from lorakit.evaluate.benchmarks import (
    BENCHMARKS,
    MMLU_MEDICAL_SUBJECTS,
    Benchmark,
    BenchmarkResult,
    load_benchmark,
    parse_bench,
    run_benchmark,
)
from lorakit.evaluate.compare import compare
from lorakit.evaluate.spec import BenchSpec

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
        ("medqa", r"has no path and .*medqa holds no download .*--bench medqa:PATH"),
        ("medqa:", "run lorakit data get medqa"),
        ("heldout", "needs a location: write heldout:jsonl:FILE"),
        ("medqaa:x.jsonl", "did you mean 'medqa'"),
        ("usmle:x.jsonl", "benchmarks: heldout, medmcqa, medqa, mmlu_medical, pubmedqa"),
        ("heldout:test.jsonl", "has no scheme"),
    ],
)
def test_parse_bench_errors(text, message, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_DATA_HOME", str(tmp_path))  # nothing fetched
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
        model,
        tokenizer,
        f"{name}:{bench_paths[name]}",
        spec=BenchSpec(limit=LIMIT),
        progress=Progress(),
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
        model, tokenizer, "heldout", bench_paths["heldout"], BenchSpec(limit=4, max_len=256)
    )
    assert result.n == 4 and result.accuracy is None and result.perplexity > 1.0
    data = result.to_dict()
    assert data["accuracy"] is None and data["perplexity"] == result.perplexity
    assert {"loss", "tokens"} <= set(data)


def test_heldout_takes_rows_directly(tiny_lm, shared_data):
    from lorakit.data.sources import read_source

    model, tokenizer = tiny_lm
    rows = list(read_source(f"medquad:{shared_data / 'medquad' / '5_NIDDK_QA'}"))[:3]
    result = run_benchmark(model, tokenizer, "heldout", spec=BenchSpec(max_len=128), rows=rows)
    assert result.n == 3 and result.location == "(rows)"
    with pytest.raises(ConfigError, match="no rows"):
        run_benchmark(model, tokenizer, "heldout", rows=[])


def test_mmlu_medical_scores_per_subject_with_same_subject_exemplars(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    items, _ = load_benchmark(BENCHMARKS["mmlu_medical"], bench_paths["mmlu_medical"])
    assert len(items) == 30 and {r.category for r in items} == set(MMLU_MEDICAL_SUBJECTS)
    result = run_benchmark(
        model,
        tokenizer,
        "mmlu_medical",
        bench_paths["mmlu_medical"],
        BenchSpec(shots=2, batch_size=16),
    )
    assert set(result.per_category) == set(MMLU_MEDICAL_SUBJECTS)
    assert all(score["n"] == 5 for score in result.per_category.values())
    assert result.shots == 2
    # five dev rows per subject: four exemplars at most besides the item
    with pytest.raises(ConfigError, match="shots=5 but only 4 exemplars of category"):
        run_benchmark(
            model, tokenizer, "mmlu_medical", bench_paths["mmlu_medical"], BenchSpec(shots=5)
        )


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
    base = run_benchmark(model, tokenizer, "mmlu_medical", path, BenchSpec(batch_size=16))
    adapter = run_benchmark(other, tokenizer, "mmlu_medical", path, BenchSpec(batch_size=16))
    same = compare(base, base)
    assert (same.delta, same.ci_low, same.ci_high, same.significant) == (0.0, 0.0, 0.0, False)
    diff = compare(base, adapter, seed=1)
    assert diff.delta == pytest.approx(adapter.accuracy - base.accuracy)
    assert diff.ci_low <= diff.delta <= diff.ci_high
    assert set(diff.per_category) == set(MMLU_MEDICAL_SUBJECTS)
    assert diff.to_dict()["measure"] == "accuracy"
    fewer = run_benchmark(other, tokenizer, "mmlu_medical", path, BenchSpec(limit=10))
    with pytest.raises(ConfigError, match="different items"):
        compare(base, fewer)
    medqa = run_benchmark(model, tokenizer, "medqa", bench_paths["medqa"], BenchSpec(limit=2))
    with pytest.raises(ConfigError, match="cannot compare benchmark"):
        compare(base, medqa)


def test_compare_perplexity(tiny_lm, bench_paths):
    model, tokenizer = tiny_lm
    held = run_benchmark(
        model, tokenizer, "heldout", bench_paths["heldout"], BenchSpec(limit=2, max_len=128)
    )
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
    result = run_benchmark(model, tokenizer, "medqa", bench_paths["medqa"], BenchSpec(limit=2))
    assert result.n == 2


def test_check_adapter_shapes_reads_only_the_safetensors_header(tmp_path, tiny_phi3):
    from lorakit.evaluate.adapter_check import adapter_tensor_shapes, check_adapter_shapes

    adapter = _adapter(tmp_path, str(tiny_phi3))
    check_adapter_shapes(adapter, str(tiny_phi3))  # no weights file: nothing to compare
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ConfigError, match=r"adapter_model\.safetensors: field 'adapter'"):
        adapter_tensor_shapes(adapter)
    from safetensors.numpy import save_file

    numpy = pytest.importorskip("numpy")
    key = "base_model.model.model.layers.0.self_attn.qkv_proj.lora_{}.weight"
    save_file(
        {
            key.format("A"): numpy.zeros((4, 64), "float32"),
            key.format("B"): numpy.zeros((192, 4), "float32"),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    assert adapter_tensor_shapes(adapter)[key.format("B")] == (192, 4)
    check_adapter_shapes(adapter, str(tiny_phi3))  # fits
    check_adapter_shapes(adapter, str(tmp_path / "not-a-model"))  # no config here: loading says why
    save_file(
        {
            key.format("A"): numpy.zeros((4, 64), "float32"),
            key.format("B"): numpy.zeros((96, 4), "float32"),
        },
        str(adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(ConfigError, match="qkv_proj has 96 output features in the adapter, 192 in"):
        check_adapter_shapes(adapter, str(tiny_phi3))


# --------------------------------------------------------------------------- the spec


def test_bench_spec_validates_and_fills_the_benchmark_defaults():
    spec = BenchSpec(text_metrics="token_f1, rouge_l")
    assert spec.text_metrics == ("token_f1", "rouge_l")
    mmlu = spec.for_benchmark(BENCHMARKS["mmlu_medical"])
    assert (mmlu.choices, mmlu.shots, mmlu.fewshot_by_category) == ("letters", 0, True)
    assert mmlu.description.startswith("The following are multiple choice questions")
    mine = BenchSpec(choices="texts", shots=2, fewshot_by_category=False, description="")
    assert mine.for_benchmark(BENCHMARKS["mmlu_medical"]) == mine
    assert BenchSpec().for_benchmark(BENCHMARKS["pubmedqa"]).choices == "texts"
    for bad, field in [
        ({"limit": 0}, "limit"),
        ({"shots": -1}, "shots"),
        ({"choices": "words"}, "choices"),
        ({"mode": "sample"}, "mode"),
        ({"batch_size": True}, "batch_size"),
        ({"chat_template": "yes"}, "chat_template"),
        ({"text_metrics": [1]}, "text_metrics"),
        ({"template_options": "system"}, "template_options"),
    ]:
        with pytest.raises(ConfigError, match=f"field '{field}'"):
            BenchSpec(**bad)


def test_bench_spec_from_recipe():
    from lorakit.presets import medqa_phi3_tiny

    recipe = medqa_phi3_tiny.with_overrides(
        {
            "evaluation.limit": 5,
            "evaluation.shots": 1,
            "evaluation.metrics": "token_f1",
            "evaluation.max_new_tokens": 16,
            "data.template_options": "system=Be brief.",
            "data.tokenize.max_len": 256,
        }
    )
    spec = BenchSpec.from_recipe(recipe)
    assert (spec.limit, spec.shots, spec.chat_template) == (5, 1, recipe.evaluation.chat_template)
    assert spec.batch_size == recipe.training.eval_batch_size and spec.max_len == 256
    assert spec.text_metrics == ("token_f1",) and spec.max_new_tokens == 16
    assert (spec.template, dict(spec.template_options)) == ("qa", {"system": "Be brief."})


def test_check_benchmarks_reads_every_file(bench_paths, tmp_path, registries):
    from lorakit.evaluate.benchmarks import check_benchmarks

    parsed = check_benchmarks(
        [f"medqa:{bench_paths['medqa']}", (BENCHMARKS["heldout"], bench_paths["heldout"])],
        registries=registries,
    )
    assert [(b.name, loc) for b, loc in parsed] == [
        ("medqa", bench_paths["medqa"]),
        ("heldout", bench_paths["heldout"]),
    ]
    with pytest.raises(DataError, match=r"missing\.jsonl"):
        check_benchmarks([f"medqa:{tmp_path / 'missing.jsonl'}"], registries=registries)
    with pytest.raises(ConfigError, match="did you mean 'pubmedqa'"):
        check_benchmarks(["pubmed:x"], registries=registries)


# --------------------------------------------------------------------------- one evaluation path


@pytest.fixture(scope="module")
def peft_lm(tiny_phi3):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # make the adapter change the model
    return peft_model, AutoTokenizer.from_pretrained(tiny_phi3)


def test_compare_with_base_scores_both_sides_of_every_benchmark(peft_lm, bench_paths, tiny_lm):
    from lorakit.evaluate.session import compare_with_base

    model, tokenizer = peft_lm
    seen: list[str] = []

    class Progress:
        def task(self, description, total=None):
            seen.append(description)
            return lambda n: None

    spec = BenchSpec(limit=4, max_len=128)
    benches = [f"mmlu_medical:{bench_paths['mmlu_medical']}", f"heldout:{bench_paths['heldout']}"]
    results = compare_with_base(model, tokenizer, benches, spec, progress=Progress())
    assert [r.bench for r in results] == ["mmlu_medical", "heldout"]
    assert seen == [
        "Scoring mmlu_medical (base)",
        "Scoring mmlu_medical (adapter)",
        "Scoring heldout (base)",
        "Scoring heldout (adapter)",
    ]
    mmlu, held = results
    plain = run_benchmark(tiny_lm[0], tokenizer, "mmlu_medical", bench_paths["mmlu_medical"], spec)
    assert mmlu.base.metric.choices == plain.metric.choices  # adapter off = the base model
    assert mmlu.comparison == compare(mmlu.base, mmlu.adapter)
    assert held.comparison.measure == "perplexity" and held.comparison.delta != 0
    assert set(mmlu.to_dict()) == {"base", "adapter", "compare"}
    with pytest.raises(ConfigError, match="needs a PEFT model with an adapter"):
        compare_with_base(tiny_lm[0], tokenizer, benches, spec)


def test_evaluate_run_reports_benchmarks_and_the_test_split(
    peft_lm, bench_paths, registries, monkeypatch
):
    from lorakit.data.pipeline import prepare_data
    from lorakit.evaluate import generate
    from lorakit.evaluate.perplexity import answer_loss
    from lorakit.evaluate.session import evaluate_run
    from lorakit.presets import medqa_phi3_tiny
    from lorakit.train import QACollator

    system = "You are a careful medical assistant."
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "evaluation.benchmarks": f"mmlu_medical:{bench_paths['mmlu_medical']}",
            "evaluation.limit": 4,
            "evaluation.metrics": "token_f1,rouge_l",
            "evaluation.max_new_tokens": 8,
            "data.template_options": f"system={system}",
        }
    )
    model, tokenizer = peft_lm
    data = prepare_data(recipe.data, tokenizer, registries=registries)
    prompts: list[list[int]] = []
    real = generate.generate_from_ids

    def spy(model, tokenizer, ids, *args, **kwargs):
        prompts.extend(ids)
        return real(model, tokenizer, ids, *args, **kwargs)

    monkeypatch.setattr(generate, "generate_from_ids", spy)
    collate = QACollator(tokenizer.pad_token_id)
    report = evaluate_run(
        model,
        tokenizer,
        recipe,
        test_examples=data.examples["test"],
        test_rows=list(data.splits.test),
        collate=collate,
        progress=None,
        registries=registries,
    )
    json.dumps(report)
    assert set(report) == {"mmlu_medical", "heldout"}
    mmlu = report["mmlu_medical"]
    assert set(mmlu) == {"base", "adapter", "compare"}
    assert mmlu["base"]["n"] == mmlu["adapter"]["n"] == 4
    assert list(mmlu["adapter"])[:5] == ["bench", "n", "accuracy", "ci_low", "ci_high"]
    assert mmlu["adapter"]["shots"] == 0 and "free_text" not in mmlu["adapter"]
    assert mmlu["compare"]["measure"] == "accuracy"
    held = report["heldout"]
    assert set(held) == {"base", "adapter", "compare"}
    assert (
        set(held["compare"]) == {"measure", "delta"} and held["compare"]["measure"] == "perplexity"
    )
    for side in ("base", "adapter"):
        assert set(held[side]) == {"loss", "perplexity", "tokens", "examples", "free_text"}
        assert held[side]["free_text"]["n"] == min(4, len(data.splits.test))
        assert set(held[side]["free_text"]["metrics"]) == {"token_f1", "rouge_l"}
        assert "items" not in held[side]["free_text"]
    direct = answer_loss(
        model, data.examples["test"], collate, batch_size=recipe.training.eval_batch_size
    )
    assert held["adapter"] == {**direct.to_dict(), "free_text": held["adapter"]["free_text"]}
    # Generated answers are prompted with the run's own template and its system prompt.
    assert len(prompts) == 2 * held["base"]["free_text"]["n"]
    assert all(system in tokenizer.decode(ids) for ids in prompts)
