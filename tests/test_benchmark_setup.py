"""The throughput benchmark trains the model ``lorakit train`` trains: same phases, same
patched modules, same trainer settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lorakit import hookimpl
from lorakit.plugins import make_plugin_manager
from lorakit.presets import medqa_phi3_tiny

pytestmark = pytest.mark.slow

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
VOLATILE = {"output_dir", "logging_dir", "run_name"}


def load_benchmark_module():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fingerprint(model, args) -> dict:
    """What the setup decided: trainer arguments, patched LoRA layers, checkpointed layers,
    trainable parameters, attention and dtype."""
    from lorakit.fast import checkpoint_layers

    return {
        "args": {k: v for k, v in args.to_dict().items() if k not in VOLATILE},
        "fused": sorted(n for n, m in model.named_modules() if getattr(m, "lorakit_fused", False)),
        "checkpointed": [bool(layer.gradient_checkpointing) for layer in checkpoint_layers(model)],
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "attention": model.config._attn_implementation,
        "use_cache": model.config.use_cache,
        "lora_a": {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n},
    }


def test_benchmark_model_and_trainer_are_the_runners(tmp_path):
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "training.max_steps": 2,
            "training.eval_steps": 2,
            "training.save_steps": 2,
            "training.checkpoint_every": 2,
        }
    )
    seen: dict = {}

    class Capture:
        @hookimpl
        def lorakit_trainer_callbacks(self, recipe):
            from transformers import TrainerCallback

            class OnBegin(TrainerCallback):
                def on_train_begin(self, args, state, control, model=None, **kw):
                    seen["run"] = fingerprint(model, args)

            return [OnBegin()]

    result = recipe.run(
        tmp_path / "run",
        plugin_manager=make_plugin_manager(plugins=[Capture()], disabled=()),
        show_progress=False,
    )
    bench = load_benchmark_module()
    examples = bench.synthetic_examples([40, 60, 80], n=32, seed=0)
    trainer, notes = bench.lorakit_trainer(recipe, tmp_path / "bench", examples, [])
    measured = fingerprint(trainer.model, trainer.args)
    run = seen["run"]
    assert measured["fused"] and measured["fused"] == run["fused"]
    assert measured["checkpointed"] == run["checkpointed"] == [True, False]
    for key in ("args", "trainable", "attention", "use_cache"):
        assert measured[key] == run[key], key
    # The same seed gives the same adapter initialisation in both.
    assert all((measured["lora_a"][k] == run["lora_a"][k]).all() for k in run["lora_a"])
    assert any(note.startswith("lean LoRA forward") for note in notes)
    assert any(note.startswith("lean LoRA forward") for note in result.report.notes)
