"""Recipes as files (TOML, YAML, JSON, a run's recipe.json), `lorakit config show`, a readable
repr, and `lorakit train --dry-run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit import ConfigError
from lorakit.cli import _presets, main
from lorakit.presets import medqa_phi3, medqa_phi3_tiny
from lorakit.recipe_files import load_recipe, recipe_to_text


@pytest.mark.parametrize("fmt", ["toml", "yaml", "json"])
def test_config_show_round_trips_every_setting(tmp_path: Path, fmt: str):
    changed = medqa_phi3.with_overrides(
        {"adapter.rank": 32, "data.cleaners": "drop_empty;near_dedup:threshold=0.8"}
    )
    path = tmp_path / f"recipe.{fmt}"
    path.write_text(recipe_to_text(changed, fmt))
    assert load_recipe(str(path), _presets()) == changed


def test_a_recipe_file_changes_a_preset(tmp_path: Path):
    path = tmp_path / "r32.toml"
    path.write_text(
        'preset = "medqa_phi3_tiny"\nname = "tiny_r32"\n\n[adapter]\nrank = 32\n\n'
        "[training]\nmax_steps = 5\nlearning_rate = 1e-3\n"
    )
    recipe = load_recipe(str(path), _presets())
    assert recipe == medqa_phi3_tiny.with_overrides(
        {
            "name": "tiny_r32",
            "adapter.rank": 32,
            "training.max_steps": 5,
            "training.learning_rate": 1e-3,
        }
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('preset = "medqa_phi3"\n[adapter]\nrnk = 8\n', "did you mean 'adapter.rank'"),
        ('preset = "medqa_phi3"\n[adapter\n', "not valid TOML"),
        ("[adapter]\nrank = 8\n", "missing: name, model, data"),
        ('preset = "medqa_phi3"\n[training]\nlearning_rate = "fast"\n', "training.learning_rate"),
    ],
)
def test_a_bad_recipe_file_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(str(path), _presets())
    assert message in str(info.value) and str(path) in str(info.value)
    done = CliRunner().invoke(main, ["check", str(path)])
    assert done.exit_code == 2 and message in done.output


def test_a_run_directory_relaunches_its_recipe(tmp_path: Path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe = medqa_phi3_tiny.with_overrides({"adapter.rank": 4})
    (run_dir / "recipe.json").write_text(json.dumps({"hash": "x", "recipe": recipe.to_dict()}))
    assert load_recipe(str(run_dir), _presets()) == recipe


def test_cli_config_show_prints_a_file_that_trains(tmp_path: Path):
    done = CliRunner().invoke(
        main, ["config", "show", "medqa_phi3_tiny", "--set", "adapter.rank=8"]
    )
    assert done.exit_code == 0, done.output
    assert "[adapter]\nrank = 8\n" in done.output
    path = tmp_path / "tiny.toml"
    path.write_text(done.output)
    assert load_recipe(str(path), _presets()).adapter.rank == 8


def test_a_recipe_repr_has_one_setting_per_line():
    text = repr(medqa_phi3)
    lines = text.splitlines()
    assert lines[0] == "Recipe('medqa_phi3')"
    assert "  adapter.rank = 16" in lines
    assert max(len(line) for line in lines) < 120


@pytest.mark.slow
def test_dry_run_says_what_training_would_do_and_writes_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = CliRunner(env={"COLUMNS": "200"}).invoke(
        main, ["train", "medqa_phi3_tiny", "--dry-run", "--no-progress"]
    )
    assert done.exit_code == 0, done.output
    assert "nothing was trained or written" in done.output
    assert "60 optimizer steps" in done.output
    assert "trainable parameters on qkv_proj, o_proj, gate_up_proj, down_proj" in done.output
    assert not (tmp_path / "runs").exists()
