"""Agreement with lm-evaluation-harness: the same items, prompts and continuations scored by both.

lm-evaluation-harness (PyPI ``lm_eval``) scores custom tasks written here as task YAML files over
local JSON lines (no hub): its ``HFLM`` wrapper loads the tiny Phi-3 folder, its Jinja templates
rebuild lorakit's documented prompt from the raw fields, its ``first_n`` sampler picks the
exemplars, and its own ``acc`` / ``acc_norm`` decide each item. The test asserts that both
build the same context strings, that every item's per-option log-likelihoods agree within
1e-4, and that the chosen options (``acc`` and ``acc_norm``) are identical.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from lorakit.evaluate.benchmarks import BENCHMARKS, MMLU_MEDICAL_SUBJECTS, load_benchmark
from lorakit.evaluate.mcq import MCQPrompt, score_loglikelihood
from lorakit.evaluate.spec import BenchSpec

lm_eval = pytest.importorskip(
    "lm_eval",
    reason="lm-evaluation-harness is not installed (pip install lm_eval) - agreement not checked",
)
yaml = pytest.importorskip("yaml")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _speed_benchmark():
    """benchmarks/eval_vs_lm_eval.py: its task writer rebuilds lorakit's prompt for the harness."""
    spec = importlib.util.spec_from_file_location(
        "eval_vs_lm_eval", ROOT / "benchmarks" / "eval_vs_lm_eval.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _speed_benchmark()
MMLU_DESCRIPTION = BENCH.MMLU_DESCRIPTION
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def harness(tiny_phi3):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_phi3), device="cpu", batch_size=8, dtype="float32")


@pytest.fixture(scope="module")
def tiny_lm(tiny_phi3):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_phi3), AutoTokenizer.from_pretrained(tiny_phi3)


def _task(folder, name, rows, choices, description=""):
    BENCH.write_task(folder, name, rows, choices, description)


def _run_harness(harness, folder, tasks, shots, limit=None):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    out = lm_eval.simple_evaluate(
        model=harness,
        tasks=tasks,
        task_manager=manager,
        num_fewshot=shots,
        limit=limit,
        **BENCH.HARNESS_SETTINGS,
    )
    return {name: sorted(out["samples"][name], key=lambda s: s["doc_id"]) for name in tasks}


def _compare(samples, rows, scores, contexts):
    import numpy as np

    assert len(samples) == len(rows)
    report = {"items": len(rows), "contexts": 0, "acc": 0, "acc_norm": 0, "metrics": 0}
    report["norm_differs"] = sum(  # items where acc_norm picks another option than acc
        a != b for a, b in zip(scores.choices(), scores.choices("chars"), strict=True)
    )
    max_diff = 0.0
    ours_acc, ours_norm = scores.choices(), scores.choices("chars")
    for i, sample in enumerate(samples):
        theirs = np.array([float(resp[0][0]) for resp in sample["resps"]])
        ours = np.array(scores.loglikelihoods[i])
        assert theirs.shape == ours.shape
        max_diff = max(max_diff, float(np.abs(theirs - ours).max()))
        report["contexts"] += sample["arguments"][0][0] == contexts[i]
        lengths = np.array(scores.choice_lengths[i], dtype=float)
        report["acc"] += int(np.argmax(theirs)) == ours_acc[i]
        report["acc_norm"] += int(np.argmax(theirs / lengths)) == ours_norm[i]
        # the harness's own per-item metrics say the same right or wrong
        gold = rows[i].answer_index
        report["metrics"] += float(sample["acc"]) == float(ours_acc[i] == gold) and float(
            sample["acc_norm"]
        ) == float(ours_norm[i] == gold)
    report["max_ll_diff"] = max_diff
    return report


def _lorakit(tiny_lm, bench_name, location, *, limit, shots, choices):
    model, tokenizer = tiny_lm
    bench = BENCHMARKS[bench_name]
    items, pool = load_benchmark(bench, location, limit=limit)
    spec = BenchSpec(
        choices=choices,
        shots=shots,
        fewshot_by_category=bench.fewshot_by_category,
        description=bench.description,
        batch_size=8,
    )
    scores = score_loglikelihood(model, tokenizer, items, spec, fewshot=pool)
    from lorakit.evaluate.mcq import select_exemplars

    contexts = [
        MCQPrompt.from_spec(spec).context(
            row, select_exemplars(row, pool, shots, by_category=spec.fewshot_by_category)
        )
        for row in items
    ]
    return items, scores, contexts


def _assert_agree(report, label):
    print(f"lm_eval {lm_eval.__version__} agreement, {label}: {report}")
    n = report["items"]
    assert report["contexts"] == n, f"{label}: prompts differ"
    assert report["max_ll_diff"] < TOLERANCE, f"{label}: log-likelihoods differ"
    assert report["acc"] == n, f"{label}: acc choices differ"
    assert report["acc_norm"] == n, f"{label}: acc_norm choices differ"
    assert report["metrics"] == n, f"{label}: the harness's acc / acc_norm differ"


def test_mmlu_medical_two_shot_letters_agree(tiny_lm, harness, shared_data, tmp_path):
    location = str(shared_data / "mmlu" / "dev")
    items, scores, contexts = _lorakit(
        tiny_lm, "mmlu_medical", location, limit=None, shots=2, choices="letters"
    )
    by_subject = {s: [r for r in items if r.category == s] for s in MMLU_MEDICAL_SUBJECTS}
    for subject, rows in by_subject.items():
        _task(tmp_path, f"lk_mmlu_{subject}", rows, "letters", MMLU_DESCRIPTION)
    samples = _run_harness(harness, tmp_path, [f"lk_mmlu_{s}" for s in by_subject], shots=2)
    ordered = [s for subject in by_subject for s in samples[f"lk_mmlu_{subject}"]]
    index = {id(r): i for i, r in enumerate(items)}
    order = [index[id(r)] for subject in by_subject for r in by_subject[subject]]
    assert order == list(range(len(items)))  # dev files are read subject by subject
    _assert_agree(_compare(ordered, items, scores, contexts), "mmlu_medical 2-shot letters")


@pytest.mark.parametrize(("choices", "shots"), [("letters", 0), ("texts", 1)])
def test_medqa_agrees(tiny_lm, harness, shared_data, tmp_path, choices, shots):
    location = str(shared_data / "medqa" / "us_4_options_sample.jsonl")
    items, scores, contexts = _lorakit(
        tiny_lm, "medqa", location, limit=20, shots=shots, choices=choices
    )
    _, pool = load_benchmark(BENCHMARKS["medqa"], location)
    _task(tmp_path, f"lk_medqa_{choices}", pool, choices)
    samples = _run_harness(harness, tmp_path, [f"lk_medqa_{choices}"], shots=shots, limit=20)
    report = _compare(samples[f"lk_medqa_{choices}"], items, scores, contexts)
    _assert_agree(report, f"medqa {shots}-shot {choices}")


def test_pubmedqa_with_context_agrees(tiny_lm, harness, shared_data, tmp_path):
    location = str(shared_data / "pubmedqa" / "ori_pqal_train.json")
    items, scores, contexts = _lorakit(
        tiny_lm, "pubmedqa", location, limit=10, shots=0, choices="texts"
    )
    _task(tmp_path, "lk_pubmedqa", items, "texts")
    samples = _run_harness(harness, tmp_path, ["lk_pubmedqa"], shots=0)
    _assert_agree(_compare(samples["lk_pubmedqa"], items, scores, contexts), "pubmedqa texts")


def test_speed_benchmark_scores_both_and_they_agree(shared_data, tmp_path):
    """benchmarks/eval_vs_lm_eval.py runs both scorers on the real files and reports their
    speeds and per-item agreement (the GPU comparison uses the same script)."""
    import os
    import subprocess
    import sys

    root = ROOT
    out = tmp_path / "speed.json"
    subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "eval_vs_lm_eval.py"),
            "--model=tiny",
            f"--data={shared_data}",
            "--benches=medqa,mmlu_medical",
            "--limit=6",
            "--batch-sizes=4",
            f"--out={out}",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        timeout=600,
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["bench"] for r in rows] == ["medqa", "mmlu_medical"]
    for row in rows:
        assert row["agree"] == row["items"] > 0
        assert row["lorakit_items_per_s"] > 0 and row["lm_eval_scoring_items_per_s"] > 0
        assert row["lm_eval_scoring_items_per_s"] >= row["lm_eval_items_per_s"]
