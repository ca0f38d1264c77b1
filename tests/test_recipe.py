"""Training settings, the collator, the trainer factory's checks, presets, overrides and run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from lorakit._fs import replace_dir_atomic, write_text_atomic
from lorakit.adapter import AdapterSpec
from lorakit.data.tokenize import Example
from lorakit.errors import ConfigError
from lorakit.model import ModelSpec, QuantSpec
from lorakit.overrides import apply_overrides, dotted_keys, parse_assignment
from lorakit.presets import medqa_phi3, medqa_phi3_speed, medqa_phi3_tiny
from lorakit.recipe import Recipe, prepare_run_dir
from lorakit.train import (
    QACollator,
    TrainerFactory,
    TrainingSpec,
    effective_warmup,
    resolve_optimizer,
    total_steps,
)


def example(n: int, prompt: int = 1) -> Example:
    ids = list(range(10, 10 + n))
    return Example(input_ids=ids, labels=[-100] * prompt + ids[prompt:])


def feature(n: int, prompt: int = 1) -> dict[str, list[int]]:
    """One collator input, as the trainer's dataset yields it."""
    e = example(n, prompt)
    return {"input_ids": e.input_ids, "labels": e.labels}


# --- steps and warmup --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "examples", "world", "expected"),
    [
        ({"max_steps": 60}, 10_000, 1, 60),
        ({"batch_size": 4, "grad_accum": 4}, 160, 1, 10),
        ({"batch_size": 4, "grad_accum": 4}, 161, 1, 11),  # a last, partial step still counts
        ({"batch_size": 4, "grad_accum": 1, "epochs": 2}, 10, 1, 6),
        ({"batch_size": 4, "grad_accum": 2}, 32, 2, 2),  # two devices share the examples
        ({"batch_size": 4, "grad_accum": 4, "epochs": 0.5}, 320, 1, 10),
        ({"batch_size": 4, "grad_accum": 4}, 1, 1, 1),
    ],
)
def test_total_steps(settings, examples, world, expected):
    args = TrainingSpec(**settings)
    assert total_steps(args, examples, world_size=world) == expected


def test_warmup_is_capped_to_a_tenth_of_a_short_run():
    args = medqa_phi3_tiny.training
    assert args.warmup_steps == 100
    steps = total_steps(args, 10_000)
    assert steps == 60
    assert effective_warmup(args, steps) == 6
    assert effective_warmup(TrainingSpec(warmup_steps=100), 5000) == 100
    assert effective_warmup(TrainingSpec(warmup_steps=100, max_warmup_fraction=0.5), 60) == 30
    assert effective_warmup(TrainingSpec(warmup_steps=0), 60) == 0


class _StopTraining(Exception):
    pass


def _trainer_max_steps(model, args: TrainingSpec, n: int, tmp_path: Path) -> int:
    """The number of optimizer steps the transformers Trainer itself plans for ``n`` examples."""
    from transformers import TrainerCallback

    seen: dict[str, int] = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen["max_steps"] = state.max_steps
            raise _StopTraining

    factory = TrainerFactory(args, tmp_path / "checkpoints", callbacks=[Probe()])
    trainer = factory.create(model, None, [example(6)] * n, [example(6)], pad_id=0)
    with pytest.raises(_StopTraining):
        trainer.train()
    return seen["max_steps"]


@pytest.mark.parametrize(("epochs", "n"), [(1.0, 20), (3.0, 20), (2.0, 18)])
def test_total_steps_agree_with_the_trainer(tiny_phi3: Path, tmp_path: Path, epochs, n):
    """The warmup cap is computed from total_steps: it must be the Trainer's own count.

    The Trainer rounds the optimizer steps of one epoch up, then multiplies by the epochs:
    ceil(epochs * ceil(batches / grad_accum)).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    args = TrainingSpec(
        epochs=epochs,
        batch_size=4,
        grad_accum=4,
        optimizer="adamw_torch",
        eval_steps=1000,
        save_steps=1000,
        group_by_length=False,
        packing=False,
    )
    assert total_steps(args, n) == _trainer_max_steps(model, args, n, tmp_path)


# --- training settings -------------------------------------------------------------------------


def test_save_steps_must_be_a_multiple_of_eval_steps_to_keep_the_best():
    with pytest.raises(ConfigError, match="multiple of eval_steps") as info:
        TrainingSpec(eval_steps=100, save_steps=150, load_best=True)
    assert info.value.field == "training.save_steps"
    assert "training.save_steps=100" in str(info.value)
    assert TrainingSpec(eval_steps=100, save_steps=150, load_best=False).save_steps == 150
    assert TrainingSpec(eval_steps=50, save_steps=150).save_steps == 150


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "sgd"},
        {"scheduler": "exponential"},
        {"batch_size": 0},
        {"learning_rate": 0},
        {"max_warmup_fraction": 1.5},
        {"max_steps": 0},
    ],
)
def test_bad_training_settings_are_rejected(settings):
    with pytest.raises((ValueError, ConfigError), match=next(iter(settings))):
        TrainingSpec(**settings)


# --- collator ----------------------------------------------------------------------------------


def test_collator_pads_on_the_right_with_masked_labels():
    batch = QACollator(pad_id=7)([feature(3), feature(5, prompt=2)])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 7, 7], [10, 11, 12, 13, 14]]
    assert batch["labels"].tolist() == [[-100, 11, 12, -100, -100], [-100, -100, 12, 13, 14]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_collator_rounds_the_length_up_to_a_multiple():
    batch = QACollator(0, pad_to_multiple_of=64)([feature(3), feature(70)])
    assert batch["input_ids"].shape == (2, 128)
    assert batch["labels"][0, 3:].eq(-100).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 70]
    assert QACollator(0, pad_to_multiple_of=64)([feature(64)])["input_ids"].shape == (1, 64)
    assert QACollator(0)([feature(3), feature(70)])["input_ids"].shape == (2, 70)


def test_collator_rounding_never_goes_past_max_len():
    collate = QACollator(0, pad_to_multiple_of=64, max_len=100)
    assert collate([feature(70)])["input_ids"].shape == (1, 100)
    assert collate([feature(30)])["input_ids"].shape == (1, 64)


# --- optimizer fallback ------------------------------------------------------------------------


def test_optimizer_falls_back_without_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError
    for name in ("paged_adamw_8bit", "adamw_8bit", "paged_adamw_32bit"):
        optimizer, warning = resolve_optimizer(name)
        assert optimizer == "adamw_torch"
        assert warning is not None
        assert "bitsandbytes" in warning
        assert name in warning
    assert resolve_optimizer("adamw_torch") == ("adamw_torch", None)


def test_optimizer_is_kept_with_bitsandbytes():
    pytest.importorskip("bitsandbytes")
    assert resolve_optimizer("paged_adamw_8bit") == ("paged_adamw_8bit", None)


def test_trainer_factory_notes_the_fallback(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    factory = TrainerFactory(TrainingSpec(max_steps=60), tmp_path)
    arguments = factory.training_arguments(100)
    assert arguments.optim == "adamw_torch"
    assert arguments.warmup_steps == 6
    assert any("bitsandbytes" in note for note in factory.notes)


# --- trainer factory checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "eval_", "field", "message"),
    [
        ([], [example(4)], "data", "training split is empty"),
        ([example(4)] * 3, [example(4)], "training.batch_size", "fewer than one batch of 4"),
        ([example(4)] * 8, [], "data.split.eval_fraction", "evaluation split is empty"),
    ],
)
def test_trainer_factory_rejects_unusable_splits(tmp_path: Path, train, eval_, field, message):
    factory = TrainerFactory(TrainingSpec(batch_size=4, packing=False), tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        factory.create(object(), None, train, eval_, pad_id=0)
    assert info.value.field == field
    assert f"field {field!r}" in str(info.value)


# --- presets -----------------------------------------------------------------------------------


def test_medqa_phi3_has_the_seed_values():
    r = medqa_phi3
    assert r.name == "medqa_phi3"
    assert r.model.name == "microsoft/Phi-3-mini-4k-instruct"
    assert r.model.quant == QuantSpec(method="nf4", double_quant=True, compute_dtype="auto")
    assert r.adapter == AdapterSpec(rank=16, alpha=32, dropout=0.1, targets=("attention", "mlp"))
    assert (r.adapter.rslora, r.adapter.dora) == (False, False)
    assert r.data.tokenize.max_len == 1024
    t = r.training
    assert t.optimizer == "paged_adamw_8bit"
    assert t.scheduler == "cosine"
    assert t.warmup_steps == 100
    assert t.learning_rate == 2e-4
    assert (t.batch_size, t.epochs) == (4, 1.0)
    # Packed, a step holds the seed's 4 x 4 rows of up to 1024 tokens, as 2 micro-batches.
    assert t.packing is True
    assert (t.tokens_per_batch, t.grad_accum) == (8192, 2)
    assert t.tokens_per_batch * t.grad_accum == 4 * 4 * r.data.tokenize.max_len
    assert t.gradient_checkpointing is True
    assert (t.eval_steps, t.save_steps) == (100, 100)
    assert t.load_best is True
    # On a GPU the memory plan keeps the fastest setting that fits the memory free there; the
    # speed mode and the CPU demo train exactly as written.
    assert t.max_memory_gb == "auto"
    assert medqa_phi3_speed.training.max_memory_gb is None
    assert medqa_phi3_tiny.training.max_memory_gb is None


def test_importing_presets_imports_no_torch():
    code = (
        "import sys, lorakit.presets\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') "
        "if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


# --- overrides ---------------------------------------------------------------------------------


def test_overrides_set_nested_dotted_paths_and_leave_the_original_alone():
    r = medqa_phi3.with_overrides(
        {"adapter.rank": 32, "model.quant.method": "fp4", "data.split.seed": 7}
    )
    assert r.adapter.rank == 32
    assert r.model.quant.method == "fp4"
    assert r.model.quant.double_quant is True
    assert r.data.split.seed == 7
    assert r.adapter.alpha == medqa_phi3.adapter.alpha
    assert medqa_phi3.adapter.rank == 16
    assert medqa_phi3.model.quant.method == "nf4"


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("adapter.rank", "32", 32),
        ("adapter.dropout", "0.05", 0.05),
        ("training.learning_rate", "3e-4", 3e-4),
        ("training.epochs", "2", 2.0),
        ("training.load_best", "false", False),
        ("training.gradient_checkpointing", "no", False),
        ("adapter.rslora", "True", True),
        ("training.max_steps", "None", None),
        ("training.max_steps", "50", 50),
        ("training.pad_to_multiple_of", "none", None),
        ("model.quant.compute_dtype", "bfloat16", "bfloat16"),
        ("adapter.targets", "attention, mlp,qkv_proj", ("attention", "mlp", "qkv_proj")),
        ("model.name", "tiny-phi3", "tiny-phi3"),
    ],
)
def test_string_values_are_parsed_to_the_field_type(key, text, expected):
    r = medqa_phi3.with_overrides({key: text})
    value = attrs.asdict(r, recurse=False)
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_command_line_assignments_round_trip():
    key, value = parse_assignment(" training.eval_steps = 50 ")
    assert (key, value) == ("training.eval_steps", "50")
    r = medqa_phi3.with_overrides({key: value, "training.save_steps": "100"})
    assert r.training.eval_steps == 50
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("adapter.rank")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("=32")


def test_settings_checked_together_change_together():
    with pytest.raises(ConfigError, match="multiple of eval_steps"):
        medqa_phi3.with_overrides({"training.eval_steps": "30"})
    r = medqa_phi3.with_overrides({"training.eval_steps": "50", "training.save_steps": "150"})
    assert (r.training.eval_steps, r.training.save_steps) == (50, 150)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("adapter.rnak", "adapter.rank"),
        ("adaptr.rank", "adapter.rank"),
        ("training.warmup", "training.warmup_steps"),
        ("model.quant.metod", "model.quant.method"),
    ],
)
def test_unknown_key_suggests_the_nearest(key, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'") as info:
        medqa_phi3.with_overrides({key: 1})
    assert info.value.field == key
    assert "unknown setting" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("adapter.rank", "sixteen"),
        ("training.load_best", "maybe"),
        ("model.quant.method", "nf5"),
        ("training.epochs", "one"),
        ("adapter.rank", -1),
        ("adapter.targets", 5),
    ],
)
def test_wrong_value_is_a_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        medqa_phi3.with_overrides({key: value})
    assert info.value.field == key
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("adapter.rank", 16.5), ("adapter.rank", True), ("training.batch_size", 2.5)],
)
def test_python_values_of_the_wrong_type_are_rejected(key, value):
    """``with_overrides({"adapter.rank": 16.5})`` must not build a recipe with a fractional rank."""
    with pytest.raises(ConfigError) as info:
        medqa_phi3.with_overrides({key: value})
    assert info.value.field == key


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("model.attn_implementation", "flash", "flash_attention_2"),
        ("training.optimizer", "adamw", "adamw_torch"),
        ("training.scheduler", "cosin", "cosine"),
    ],
)
def test_a_value_outside_the_choices_gives_one_readable_line(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        medqa_phi3.with_overrides({key: value})
    message = str(info.value)
    assert info.value.field == key
    assert allowed in message
    assert "Attribute(" not in message  # no attrs internals in a line users read


@pytest.mark.parametrize(
    ("key", "value"),
    [("data.limit", "0"), ("data.tokenize.max_len", "1"), ("data.split.eval_fraction", "1.5")],
)
def test_a_value_rejected_by_a_nested_spec_names_the_full_key(key, value):
    with pytest.raises(ConfigError) as info:
        medqa_phi3.with_overrides({key: value})
    assert info.value.field == key


@pytest.mark.parametrize("key", ["adapter", "model.quant", "training"])
def test_a_group_cannot_be_set_to_one_value(key):
    with pytest.raises(ConfigError, match="group of settings") as info:
        medqa_phi3.with_overrides({key: 3})
    assert info.value.field == key
    assert f"{key}." in str(info.value)  # lists the settings inside


def test_a_group_can_be_replaced_by_a_spec_and_leaves_have_no_sub_settings():
    adapter = AdapterSpec(rank=8, alpha=16)
    assert medqa_phi3.with_overrides({"adapter": adapter}).adapter == adapter
    with pytest.raises(ConfigError, match="no sub-settings"):
        medqa_phi3.with_overrides({"adapter.rank.value": 3})


def test_dotted_keys_lists_every_leaf():
    keys = dotted_keys(medqa_phi3)
    assert {"adapter.rank", "model.quant.method", "data.split.seed", "training.eval_steps"} <= set(
        keys
    )
    assert "adapter" not in keys
    assert "model.quant" not in keys
    assert len(keys) == len(set(keys))


def test_apply_overrides_works_on_any_spec():
    spec = apply_overrides(ModelSpec(name="m"), {"quant.double_quant": "off", "name": "x"})
    assert spec == ModelSpec(name="x", quant=QuantSpec(double_quant=False))


# --- recipe data and run directories -----------------------------------------------------------


@pytest.mark.parametrize("recipe", [medqa_phi3, medqa_phi3_tiny], ids=lambda r: r.name)
def test_to_dict_is_json_serialisable(recipe: Recipe):
    data = recipe.to_dict()
    text = json.dumps(data)  # no default=str: every value must be plain JSON
    back = json.loads(text)
    assert back == data
    assert back["adapter"]["targets"] == list(recipe.adapter.targets)
    assert back["training"]["warmup_steps"] == recipe.training.warmup_steps
    assert back["model"]["quant"]["method"] == "nf4"


def test_prepare_run_dir_creates_a_new_run(tmp_path: Path):
    run_dir = tmp_path / "runs" / "first"
    assert prepare_run_dir(run_dir, medqa_phi3_tiny) is False
    stored = json.loads((run_dir / "recipe.json").read_text())
    assert stored["recipe"] == medqa_phi3_tiny.to_dict()
    assert stored["hash"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["recipe.json"]


def test_prepare_run_dir_accepts_an_empty_existing_folder(tmp_path: Path):
    assert prepare_run_dir(tmp_path, medqa_phi3_tiny) is False
    assert (tmp_path / "recipe.json").is_file()


def test_prepare_run_dir_resumes_the_same_recipe(tmp_path: Path):
    prepare_run_dir(tmp_path, medqa_phi3_tiny)
    (tmp_path / "checkpoints").mkdir()
    same = medqa_phi3_tiny.with_overrides({"adapter.rank": "16"})
    assert prepare_run_dir(tmp_path, same) is True


def test_prepare_run_dir_refuses_a_finished_run(tmp_path: Path):
    prepare_run_dir(tmp_path, medqa_phi3_tiny)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match="finished run") as info:
        prepare_run_dir(tmp_path, medqa_phi3_tiny)
    assert info.value.file == str(tmp_path)


def test_prepare_run_dir_refuses_a_folder_that_is_not_a_run(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a lorakit run"):
        prepare_run_dir(tmp_path, medqa_phi3_tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_prepare_run_dir_refuses_another_recipes_run(tmp_path: Path):
    prepare_run_dir(tmp_path, medqa_phi3_tiny)
    (tmp_path / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    other = medqa_phi3_tiny.with_overrides({"adapter.rank": 8})
    with pytest.raises(ConfigError, match="different recipe"):
        prepare_run_dir(tmp_path, other)


def test_prepare_run_dir_restarts_an_attempt_that_never_checkpointed(tmp_path: Path):
    prepare_run_dir(tmp_path, medqa_phi3_tiny)
    (tmp_path / "data_report.json").write_text("{}")
    fixed = medqa_phi3_tiny.with_overrides({"adapter.rank": 8})
    assert prepare_run_dir(tmp_path, fixed) is False
    stored = json.loads((tmp_path / "recipe.json").read_text())
    assert stored["recipe"]["adapter"]["rank"] == 8
    assert not (tmp_path / "data_report.json").exists()


def test_write_text_atomic_replaces_and_leaves_no_temporary_files(tmp_path: Path):
    target = tmp_path / "report.md"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second ✓\n")
    assert target.read_text(encoding="utf-8") == "second ✓\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_write_text_atomic_cleans_up_after_a_failure(tmp_path: Path):
    target = tmp_path / "report.md"
    target.write_text("old\n")

    with pytest.raises(TypeError):
        write_text_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_replace_dir_atomic_replaces_an_existing_folder(tmp_path: Path):
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "old.bin").write_text("old")
    source = tmp_path / ".adapter-new"
    source.mkdir()
    (source / "adapter_model.safetensors").write_text("new")
    replace_dir_atomic(source, target)
    assert [p.name for p in target.iterdir()] == ["adapter_model.safetensors"]
    assert not source.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]

    fresh = tmp_path / ".adapter-2"
    fresh.mkdir()
    (fresh / "x").write_text("x")
    replace_dir_atomic(fresh, tmp_path / "other")
    assert (tmp_path / "other" / "x").read_text() == "x"


def test_template_options_and_cleaner_chains_from_strings():
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "data.template_options": "system=Answer briefly,include_context=false",
            "data.cleaners": "normalize_whitespace;near_dedup:threshold=0.85,ngram=3",
        }
    )
    assert dict(recipe.data.template_options) == {
        "system": "Answer briefly",
        "include_context": False,
    }
    assert [c.name for c in recipe.data.cleaners] == ["normalize_whitespace", "near_dedup"]
    assert dict(recipe.data.cleaners[1].options) == {"threshold": 0.85, "ngram": 3}


def test_every_setting_is_documented():
    from lorakit.overrides import dotted_keys
    from lorakit.presets import medqa_phi3

    text = (
        Path(__file__).resolve().parents[1] / "docs" / "reference" / "configuration.md"
    ).read_text()
    missing = [key for key in dotted_keys(medqa_phi3) if f"`{key}`" not in text]
    assert not missing, f"settings missing from docs/reference/configuration.md: {missing}"
