"""Data strategy: training order (curriculum, length-grouped) and dataset mixing, on real data."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from lorakit import ConfigError, hookimpl
from lorakit.data.order import CURRICULUM_START, OrderedSampler, epoch_order
from lorakit.data.splits import group_keys
from lorakit.plugins import make_plugin_manager
from lorakit.presets import medqa_phi3_tiny

GENERAL = "general/alpaca_seed_tasks.jsonl"


# --------------------------------------------------------------------------- order


def test_every_order_is_a_seeded_permutation_of_the_epoch():
    lengths = [(i * 37) % 101 + 1 for i in range(500)]
    for order in ("shuffle", "length_curriculum", "length_grouped"):
        first = epoch_order(lengths, order=order, seed=3, epoch=1, ramp=400, micro_batch=2)
        assert sorted(first) == list(range(500))
        assert first == epoch_order(lengths, order=order, seed=3, epoch=1, ramp=400, micro_batch=2)
        assert first != epoch_order(lengths, order=order, seed=4, epoch=1, ramp=400, micro_batch=2)
        assert first != epoch_order(lengths, order=order, seed=3, epoch=2, ramp=400, micro_batch=2)


def test_curriculum_ramps_from_short_to_long_then_shuffles():
    lengths = [(i * 7919) % 1000 + 1 for i in range(1000)]
    order = epoch_order(lengths, order="length_curriculum", seed=0, ramp=600)
    seen = [lengths[i] for i in order]
    # Draw k comes from the pool of the shortest items, which grows linearly from
    # CURRICULUM_START of them to all of them over the ramp.
    ranked = sorted(lengths)
    for k in range(600):
        pool = math.ceil((CURRICULUM_START + (1 - CURRICULUM_START) * k / 600) * 1000)
        assert seen[k] <= ranked[pool - 1], k
    windows = [statistics.mean(seen[k : k + 100]) for k in range(0, 600, 100)]
    assert windows == sorted(windows), windows  # rising through the ramp
    plain = [lengths[i] for i in epoch_order(lengths, order="shuffle", seed=0)]
    assert statistics.mean(seen[:100]) < 0.5 * statistics.mean(plain[:100])
    # A later epoch past the ramp is an ordinary shuffle: no trend.
    late = [
        lengths[i]
        for i in epoch_order(lengths, order="length_curriculum", seed=0, epoch=1, ramp=600)
    ]
    assert abs(statistics.mean(late[:300]) - statistics.mean(late[-300:])) < 100


def test_length_grouped_sorts_each_megabatch_longest_first():
    lengths = [(i * 31) % 97 + 1 for i in range(1000)]
    order = epoch_order(lengths, order="length_grouped", seed=1, micro_batch=4)
    for start in range(0, 1000, 200):
        chunk = [lengths[i] for i in order[start : start + 200]]
        assert chunk == sorted(chunk, reverse=True)


def test_sampler_takes_its_epoch_from_the_optimizer_step():
    step = {"now": 0}
    sampler = OrderedSampler(
        list(range(1, 41)),
        order="length_curriculum",
        seed=5,
        micro_batch=2,
        grad_accum=2,
        total_steps=30,
        curriculum_share=0.5,
        step=lambda: step["now"],
    )
    assert sampler.steps_per_epoch == 10 and sampler.ramp == 60 and len(sampler) == 40
    first = list(sampler)
    step["now"] = 17  # a run resumed mid-way through its second pass
    assert list(sampler) == sampler.order_for_epoch(1) != first
    step["now"] = 3
    assert list(sampler) == first


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"data.order": "curriculum"}, "data.order"),
        ({"data.curriculum_share": "0"}, "data.curriculum_share"),
        ({"data.curriculum_share": 1.5}, "data.curriculum_share"),
        ({"data.mix": "instructions:x@1.5"}, "data.mix[0].weight"),
        ({"data.mix": "instructions:x@0.5,jsonl:y@0.6"}, "data.mix"),
        ({"data.mix": "instructions:x"}, "data.mix[0]"),
        ({"data.mix": "nowhere@0.1"}, "data.mix[0].source"),
        ({"data.mix": [{"source": "jsonl:y", "weight": 0.1, "wieght": 2}]}, "data.mix[0]"),
    ],
)
def test_bad_data_strategy_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as caught:
        medqa_phi3_tiny.with_overrides(overrides)
    assert caught.value.field == field
    assert "\n" not in str(caught.value) and field in str(caught.value)


def test_mix_from_a_toml_recipe_file_and_from_set(tmp_path, shared_data):
    from click.testing import CliRunner

    from lorakit.cli import main
    from lorakit.plugins import Registries
    from lorakit.recipe_files import load_recipe, recipe_to_text

    presets = Registries.from_plugin_manager(make_plugin_manager(entry_points=False)).presets
    general = shared_data / GENERAL
    path = tmp_path / "mixed.toml"
    path.write_text(
        'preset = "medqa_phi3_tiny"\n[data]\norder = "length_curriculum"\n'
        "curriculum_share = 0.3\n"
        f'mix = [{{source = "instructions:{general}", weight = 0.15, cleaners = ["drop_empty"]}}]\n'
    )
    recipe = load_recipe(str(path), presets)
    (entry,) = recipe.data.mix
    assert (entry.weight, [c.name for c in entry.cleaners or ()]) == (0.15, ["drop_empty"])
    assert recipe.data.order == "length_curriculum" and recipe.data.curriculum_share == 0.3
    again = tmp_path / "again.toml"
    again.write_text(recipe_to_text(recipe))
    assert load_recipe(str(again), presets) == recipe
    from_set = medqa_phi3_tiny.with_overrides({"data.mix": f"instructions:{general}@0.15"})
    assert from_set.data.mix[0].source == entry.source and from_set.data.mix[0].cleaners is None
    runner = CliRunner(env={"COLUMNS": "300"})
    good = runner.invoke(main, ["check", str(path)])
    assert good.exit_code == 0, good.output
    bad = runner.invoke(main, ["check", str(path), "--set", "data.mix=instructions:/no/such@0.1"])
    assert bad.exit_code == 2 and "/no/such" in bad.output, bad.output


# --------------------------------------------------------------------------- mixing


def _mixed(shared_data: Path, **overrides: object):
    settings: dict[str, object] = {
        "data.source": f"medquad:{shared_data / 'medquad' / '3_GHR_QA'}",
        "data.fields": "",
        "data.limit": 240,
        "data.split.group_by": "group+focus",
        "data.split.eval_fraction": 0.15,
        "data.split.test_fraction": 0.05,
        "data.tokenize.max_len": 192,
    }
    settings.update(overrides)
    return medqa_phi3_tiny.with_overrides(settings)


@pytest.mark.parametrize("safety_weight", [0.05, 0.4])
def test_mix_reaches_the_requested_shares_with_exact_counts(
    shared_data, tiny_tokenizer, registries, safety_weight
):
    from lorakit.data.pipeline import prepare_data

    recipe = _mixed(
        shared_data,
        **{
            "data.mix": (
                f"instructions:{shared_data / GENERAL}@0.15;"
                f"medsafetybench:{shared_data / 'medsafetybench' / 'train'}@{safety_weight}"
            )
        },
    )
    data = prepare_data(recipe.data, tiny_tokenizer, registries=registries)
    mix = data.report.mix
    assert mix is not None
    names = [part.name for part in mix.parts]
    assert names == ["medquad", "instructions", "medsafetybench"]
    total = len(data.examples["train"])
    assert total == mix.train == sum(part.train for part in mix.parts)
    for part, weight in zip(mix.parts, [0.85 - safety_weight, 0.15, safety_weight], strict=True):
        assert abs(part.train - weight * total) <= 1, (part.name, part.train, weight * total)
        assert part.train == part.available + part.repeated - part.left_out
        assert len(data.by_source[part.name]["train"]) == part.train
    by_name = {part.name: part for part in mix.parts}
    assert by_name["medquad"].repeated == by_name["medquad"].left_out == 0
    # 0.4 of the data from MedSafetyBench's 900 rows needs no repeats; general data at 0.15
    # of ~310 medical examples needs only part of its 175 tasks.
    assert by_name["instructions"].left_out > 0
    report = data.report.to_dict()
    assert report["mix"]["sources"][1]["share"] == pytest.approx(0.15, abs=1 / total)
    assert report["rows_kept"] == sum(p.rows_kept for p in mix.parts)
    assert "instructions/drop_empty" in report["dropped"]
    # Splits stay grouped per source: no group on two sides, eval/test never resampled.
    for name, part in by_name.items():
        assert len(data.by_source[name]["eval"]) == part.eval
    rows = data.splits
    for split_a, split_b in (("train", "eval"), ("train", "test"), ("eval", "test")):
        a = set(group_keys(rows.split(split_a), "group+focus"))
        b = set(group_keys(rows.split(split_b), "group+focus"))
        assert not a & b


def test_a_small_source_is_repeated_up_to_its_share(shared_data, tiny_tokenizer, registries):
    from lorakit.data.pipeline import prepare_data

    recipe = _mixed(
        shared_data,
        **{"data.mix": f"instructions:{shared_data / GENERAL}@0.6", "data.limit": 400},
    )
    mix = prepare_data(recipe.data, tiny_tokenizer, registries=registries).report.mix
    assert mix is not None
    general = mix.parts[1]
    assert general.repeated > 0 and general.left_out == 0
    assert abs(general.train - 0.6 * mix.train) <= 1


# --------------------------------------------------------------------------- runs


class _Stop(Exception):
    pass


class _StopAfter:
    """A plugin that stops the run (an exception, as a crash would) after step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def lorakit_trainer_callbacks(self, recipe):
        from transformers import TrainerCallback

        stop_at = self.step

        class Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == stop_at:
                    raise _Stop

        return [Stop()]


@pytest.fixture()
def training_batches(monkeypatch):
    """Every packed training row the collator builds, in order (evaluation is not packed)."""
    from lorakit.train import QACollator

    seen: list[tuple[int, ...]] = []
    collate = QACollator.__call__

    def recording(self, features):
        if "position_ids" in features[0]:
            seen.extend(tuple(f["input_ids"]) for f in features)
        return collate(self, features)

    monkeypatch.setattr(QACollator, "__call__", recording)
    return seen


@pytest.mark.slow
def test_curriculum_run_resumes_in_the_same_order_and_reports_each_source(
    shared_data, tmp_path, training_batches
):
    recipe = _mixed(
        shared_data,
        **{
            "data.order": "length_curriculum",
            "data.curriculum_share": 0.6,
            "data.mix": f"instructions:{shared_data / GENERAL}@0.15",
            "training.max_steps": 12,
            "training.eval_steps": 4,
            "training.save_steps": 4,
        },
    )
    whole = recipe.run(tmp_path / "whole", show_progress=False)
    straight = list(training_batches[:12])
    training_batches.clear()

    interrupted = tmp_path / "interrupted"
    pm = make_plugin_manager(plugins=[_StopAfter(6)], disabled=())
    with pytest.raises(_Stop):
        recipe.run(interrupted, plugin_manager=pm, show_progress=False)
    first = list(training_batches[:6])
    training_batches.clear()
    resumed = recipe.run(interrupted, show_progress=False)
    assert resumed.report.resumed_from == "checkpoint-4"
    assert first == straight[:6]
    assert list(training_batches[:8]) == straight[4:12]  # resumed after checkpoint-4

    report = json.loads((whole.run_dir / "report.json").read_text())
    assert set(report["eval_by_source"]) == {"medquad", "instructions"}
    for loss in report["eval_by_source"].values():
        assert loss["loss"] > 0 and loss["tokens"] > 0
    assert report["data"]["mix"]["sources"][1]["name"] == "instructions"
    assert "| instructions | 0.150 |" in (whole.run_dir / "report.md").read_text()


# --------------------------------------------------------------------------- general data


def test_instructions_source_reads_every_layout(shared_data, tmp_path):
    from lorakit.data.sources import read_source
    from lorakit.errors import DataError

    seeds = list(read_source(f"instructions:{shared_data / GENERAL}"))
    assert len(seeds) >= 175 and all(row.question and row.answer for row in seeds)
    assert seeds[0].group == "instructions/seed_task_0" and seeds[0].id == "seed_task_0/0"
    other = tmp_path / "other.jsonl"
    other.write_text(
        '{"instruction": "Add", "input": "2 and 3", "output": "5"}\n'
        '{"instruction": "Name a colour", "context": "", "response": "Red", "category": "open_qa"}\n'
    )
    alpaca, dolly = read_source(f"instructions:{other}")
    assert (alpaca.question, alpaca.answer) == ("Add\n\n2 and 3", "5")
    assert (dolly.question, dolly.answer, dolly.category) == ("Name a colour", "Red", "open_qa")
    other.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError) as caught:
        list(read_source(f"instructions:{other}"))
    assert caught.value.field == "instruction" and caught.value.line == 1
