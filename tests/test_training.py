"""End-to-end QLoRA training on the CPU: the tiny Phi-3 in 4-bit NF4 on real MedQuAD rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lorakit import ConfigError, hookimpl
from lorakit.plugins import make_plugin_manager
from lorakit.presets import medqa_phi3_tiny
from lorakit.train import TrainingDiverged

pytestmark = pytest.mark.slow


def medquad_recipe(shared_data: Path, **overrides: object):
    settings = {
        "data.source": f"medquad:{shared_data / 'medquad' / '3_GHR_QA'}",
        "data.fields": "",
        "data.limit": 240,
        "data.split.group_by": "group+focus",
        "data.split.eval_fraction": 0.15,
        "data.split.test_fraction": 0.05,
        "data.tokenize.max_len": 192,
        "training.max_steps": 40,
        "training.eval_steps": 10,
        "training.save_steps": 10,
        "training.logging_steps": 5,
        "training.save_total_limit": 2,
    }
    settings.update(overrides)
    return medqa_phi3_tiny.with_overrides(settings)


@pytest.fixture(scope="module")
def finished_run(shared_data, tmp_path_factory):
    recipe = medquad_recipe(shared_data)
    return recipe, recipe.run(tmp_path_factory.mktemp("runs") / "run", show_progress=False)


def test_training_lowers_answer_only_eval_loss(finished_run):
    _, result = finished_run
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["status"] == "complete"
    assert report["steps"] == 40
    assert report["eval"]["loss"] < report["eval"]["loss_before"] - 0.1
    assert report["eval"]["perplexity"] == pytest.approx(
        2.718281828 ** report["eval"]["loss"], rel=1e-6
    )
    assert report["train"]["final_loss"] is not None
    assert report["data"]["rows_read"] == 240
    assert report["adapter"]["targets"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert "eval perplexity" in (result.run_dir / "report.md").read_text()
    for name in ("recipe.json", "data_report.json", "metrics.jsonl", "eval_before.json"):
        assert (result.run_dir / name).is_file(), name


def test_best_checkpoint_is_the_one_loaded(finished_run):
    from safetensors.torch import load_file

    _, result = finished_run
    records = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    evals = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert sorted(evals) == [10, 20, 30, 40]
    best_step = min(evals, key=evals.get)
    assert result.report.best["step"] == best_step
    assert result.report.best["verified"] is True
    # The best checkpoint is chosen by the report's own measure: token-weighted answer-only loss.
    assert result.report.best["eval_loss"] == pytest.approx(result.report.eval.loss, rel=1e-6)
    best = load_file(
        result.run_dir / "checkpoints" / f"checkpoint-{best_step}" / "adapter_model.safetensors"
    )
    final = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert best.keys() == final.keys()
    for key in best:
        assert (best[key] == final[key]).all(), key


def test_adapter_reloads_and_reproduces_logits(finished_run):
    import torch
    from peft import PeftModel

    from lorakit.model import QuantizedModelBuilder, disable_cpu_inference_path

    recipe, result = finished_run
    batch = result.tokenizer("What is the outlook for Alagille syndrome?", return_tensors="pt")
    trained = result.model.eval()
    with torch.no_grad():
        expected = trained(**batch).logits
    base = QuantizedModelBuilder(recipe.model).build().model
    reloaded = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    disable_cpu_inference_path(reloaded)
    with torch.no_grad():
        got = reloaded(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(
        base.get_base_model()(**batch).logits if hasattr(base, "get_base_model") else got,
        expected + 1,
    )


def test_finished_run_directory_is_never_overwritten(finished_run):
    recipe, result = finished_run
    with pytest.raises(ConfigError, match="already holds a finished run"):
        recipe.run(result.run_dir, show_progress=False)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from lorakit import hookimpl
    from lorakit.plugins import make_plugin_manager
    from test_training import medquad_recipe
    from pathlib import Path

    class KillAfterCheckpoint:
        @hookimpl
        def lorakit_trainer_callbacks(self, recipe):
            from transformers import TrainerCallback

            class Kill(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == {kill_at}:
                        os.kill(os.getpid(), signal.SIGKILL)

            return [Kill()]

    pm = make_plugin_manager(plugins=[KillAfterCheckpoint()], disabled=())
    medquad_recipe(Path({shared!r})).run({run_dir!r}, plugin_manager=pm, show_progress=False)
    """
)


@pytest.mark.parametrize(("kill_at", "resumed_from"), [(16, "checkpoint-10"), (5, None)])
def test_killed_run_resumes_from_its_last_checkpoint(shared_data, tmp_path, kill_at, resumed_from):
    run_dir = tmp_path / "killed"
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent),
        shared=str(shared_data),
        run_dir=str(run_dir),
        kill_at=kill_at,
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy()
    )
    assert done.returncode == -9, done.stderr[-3000:]
    assert (run_dir / "checkpoints" / "checkpoint-10").is_dir() == (resumed_from is not None)
    assert not (run_dir / "report.json").exists()
    assert not (run_dir / "adapter").exists()
    logged_before = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(logged_before) > (10 if resumed_from else 0)  # records the resume must drop

    result = medquad_recipe(shared_data).run(run_dir, show_progress=False)
    assert result.report.resumed_from == resumed_from
    assert result.report.steps == 40
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in records if "loss" in r]
    eval_steps = [r["step"] for r in records if "eval_loss" in r]
    # One record per step across the kill: the resumed run logs on from the checkpoint.
    assert loss_steps == sorted(set(loss_steps)) and loss_steps[-1] == 40
    assert eval_steps == [10, 20, 30, 40]
    if resumed_from:
        assert "resumed from `checkpoint-10`" in (run_dir / "report.md").read_text()


def test_other_recipe_cannot_resume_a_run(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.json").write_text(json.dumps({"hash": "0", "recipe": {}}))
    (run_dir / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(ConfigError, match="different recipe"):
        medquad_recipe(shared_data).run(run_dir, show_progress=False)


def test_nan_loss_stops_the_run_with_a_clear_error(shared_data, tmp_path):
    class PoisonAdapter:
        @hookimpl
        def lorakit_trainer_callbacks(self, recipe):
            import torch
            from transformers import TrainerCallback

            class Poison(TrainerCallback):
                def on_step_begin(self, args, state, control, model=None, **kw):
                    if state.global_step == 3:
                        for name, param in model.named_parameters():
                            if "lora_B" in name:
                                with torch.no_grad():
                                    param.fill_(float("nan"))

            return [Poison()]

    pm = make_plugin_manager(plugins=[PoisonAdapter()], disabled=())
    run_dir = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match="became nan at step 4") as info:
        medquad_recipe(shared_data).run(run_dir, plugin_manager=pm, show_progress=False)
    assert "learning_rate" in str(info.value)
    assert not (run_dir / "report.json").exists()
    assert not (run_dir / "adapter").exists()


def test_dataset_smaller_than_one_batch_is_a_clear_error(shared_data, tmp_path):
    recipe = medquad_recipe(
        shared_data, **{"data.limit": 6, "training.batch_size": 8, "training.packing": False}
    )
    with pytest.raises(ConfigError, match="fewer than one batch"):
        recipe.run(tmp_path / "small", show_progress=False)


def test_cli_train_tiny_preset(tmp_path):
    from click.testing import CliRunner

    from lorakit.cli import main

    run_dir = tmp_path / "cli"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        main,
        [
            "train",
            "medqa_phi3_tiny",
            "--run-dir",
            str(run_dir),
            "--no-progress",
            "--set",
            "training.max_steps=20",
            "--set",
            "training.eval_steps=10",
            "--set",
            "training.save_steps=10",
            "--max-memory-gb",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "done 20 steps" in result.output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["rows_read"] == 98
    recipe = json.loads((run_dir / "recipe.json").read_text())
    assert recipe["recipe"]["training"]["max_memory_gb"] == 8.0
    assert "no CUDA GPU: training.max_memory_gb=8.0 is ignored" in report["notes"]
    negative = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, ["train", "medqa_phi3_tiny", "--max-memory-gb", "-1"]
    )
    assert negative.exit_code == 2 and "training.max_memory_gb" in negative.output
    words = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, ["train", "medqa_phi3_tiny", "--max-memory-gb", "lots"]
    )
    assert words.exit_code == 2 and "neither a number of GiB, 'auto' nor 'off'" in words.output
    # 'off' turns a recipe's budget off (without a GPU, a budget shows as a note).
    for budget, note in (("8", True), ("off", False)):
        dry = CliRunner(env={"COLUMNS": "200"}).invoke(
            main,
            [
                "train",
                "medqa_phi3_tiny",
                "--set",
                "training.max_memory_gb=8",
                "--max-memory-gb",
                budget,
                "--dry-run",
            ],
        )
        assert dry.exit_code == 0, dry.output
        assert ("training.max_memory_gb=8.0 is ignored" in dry.output) is note
    bad = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, ["train", "medqa_phi3_tiny", "--set", "adapter.rnk=8"]
    )
    assert bad.exit_code == 2 and "did you mean 'adapter.rank'" in bad.output
    unknown = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["train", "medqa_phi3_tny"])
    assert unknown.exit_code == 2 and "did you mean 'medqa_phi3_tiny'" in unknown.output


def test_run_report_scores_benchmarks_for_base_and_adapter(shared_data, tmp_path):
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "training.max_steps": 10,
            "training.eval_steps": 5,
            "training.save_steps": 5,
            "evaluation.benchmarks": f"mmlu_medical:{shared_data / 'mmlu' / 'dev'}",
            "evaluation.limit": 12,
            "evaluation.metrics": "token_f1,rouge_l",
            "evaluation.max_new_tokens": 16,
        }
    )
    result = recipe.run(tmp_path / "bench", show_progress=False)
    benchmarks = result.report.benchmarks
    assert set(benchmarks) == {"mmlu_medical", "heldout"}
    for side in ("base", "adapter"):
        mmlu = benchmarks["mmlu_medical"][side]
        assert mmlu["n"] == 12
        assert 0 <= mmlu["ci_low"] <= mmlu["accuracy"] <= mmlu["ci_high"] <= 1
    compare = benchmarks["mmlu_medical"]["compare"]
    assert compare["measure"] == "accuracy"
    assert compare["ci_low"] <= compare["delta"] <= compare["ci_high"]
    heldout = benchmarks["heldout"]
    # The adapter's heldout perplexity is the report's test perplexity (same rows, same model).
    assert heldout["adapter"]["perplexity"] == pytest.approx(
        result.report.test["perplexity"], rel=1e-4
    )
    assert "| mmlu_medical | 12 |" in (result.run_dir / "report.md").read_text()
    for side in ("base", "adapter"):
        scores = heldout[side]["free_text"]
        assert scores["n"] == min(
            12, len(result.report.test and [0] * result.report.test["examples"])
        )
        assert set(scores["metrics"]) == {"token_f1", "rouge_l"}
    assert "| token_f1 |" in (result.run_dir / "report.md").read_text()


def test_resume_refuses_data_that_changed(tmp_path):
    from lorakit.presets import DEMO_DATA

    data = tmp_path / "qa.jsonl"
    data.write_text(DEMO_DATA.read_text(encoding="utf-8"), encoding="utf-8")
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "data.source": f"jsonl:{data}",
            "training.max_steps": 10,
            "training.eval_steps": 5,
            "training.save_steps": 5,
        }
    )

    class StopAtSeven:
        @hookimpl
        def lorakit_trainer_callbacks(self, recipe):
            from transformers import TrainerCallback

            class Stop(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == 7:
                        raise KeyboardInterrupt

            return [Stop()]

    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        recipe.run(
            run_dir,
            plugin_manager=make_plugin_manager(plugins=[StopAtSeven()], disabled=()),
            show_progress=False,
        )
    assert (run_dir / "checkpoints" / "checkpoint-5").is_dir()
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines[:-10]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="the data changed since this run started"):
        recipe.run(run_dir, show_progress=False)
