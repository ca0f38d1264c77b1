"""``Recipe.check()`` and ``lorakit check``: every problem at once, before a model loads."""

from __future__ import annotations

from click.testing import CliRunner

from lorakit.cli import main
from lorakit.presets import medqa_phi3_tiny


def test_recipe_check_returns_every_problem_at_once(registries):
    recipe = medqa_phi3_tiny.with_overrides(
        {
            "data.cleaners": "nope,drop_empty",
            "data.source": "jsonl:/no/such/file.jsonl",
            "data.template": "qaa",
            "evaluation.metrics": "token_f,rouge_l",
        }
    )
    problems = recipe.check(registries)
    messages = [p.format() for p in problems]
    assert len(problems) == 4, messages
    assert "unknown cleaner 'nope'" in messages[0]
    assert "/no/such/file.jsonl" in messages[1]
    assert "did you mean 'qa'?" in messages[2]
    assert "did you mean 'token_f1'?" in messages[3]


def test_a_sound_recipe_has_no_problems(registries):
    assert medqa_phi3_tiny.check(registries) == []


def test_cli_check_prints_every_problem_and_exits_2():
    runner = CliRunner(env={"COLUMNS": "300"})
    bad = runner.invoke(
        main,
        ["check", "medqa_phi3_tiny", "--set", "data.template=qaa", "--set", "evaluation.metrics=x"],
    )
    assert bad.exit_code == 2, bad.output
    assert bad.output.count("error:") == 2
    assert "2 problems in medqa_phi3_tiny" in bad.output
    good = runner.invoke(main, ["check", "medqa_phi3_tiny"])
    assert good.exit_code == 0 and "no problems found" in good.output
