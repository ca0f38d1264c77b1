"""`lorakit eval RUN_DIR`: model, adapter and template from the run; `--split test` scores the
run's own held-out split and writes the generated answers next to the report."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.presets import medqa_phi3_tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    recipe = medqa_phi3_tiny.with_overrides(
        {"training.max_steps": 4, "training.eval_steps": 2, "training.save_steps": 2}
    )
    return recipe.run(tmp_path_factory.mktemp("runs") / "run", show_progress=False).run_dir


def test_eval_run_dir_scores_its_own_test_split(run_dir):
    done = CliRunner().invoke(
        main,
        [
            "eval",
            str(run_dir),
            "--split",
            "test",
            "--metric",
            "token_f1",
            "--compare",
            "--limit",
            "3",
            "--max-new-tokens",
            "8",
            "--json",
            "--no-progress",
        ],
    )
    assert done.exit_code == 0, done.output
    result = json.loads(done.output.strip().splitlines()[-1])
    report = json.loads((run_dir / "report.json").read_text())
    # The same split, the same examples, the same adapter: the run's own test loss.
    assert result["adapter"]["loss"] == pytest.approx(report["test"]["loss"], rel=1e-4)
    assert result["adapter"]["tokens"] == report["test"]["tokens"]
    assert result["base"]["loss"] != result["adapter"]["loss"]
    assert result["notes"] == []
    assert result["adapter"]["free_text"]["n"] == 3
    lines = [
        json.loads(line)
        for line in (run_dir / "eval" / "test_answers_adapter.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 3
    assert set(lines[0]) == {"id", "question", "reference", "category", "answer", "scores", "error"}
    assert "token_f1" in lines[0]["scores"]


def test_eval_run_dir_checks_settings_before_the_model_loads(run_dir):
    done = CliRunner().invoke(
        main, ["eval", str(run_dir), "--split", "test", "--metric", "token_f", "--no-progress"]
    )
    assert done.exit_code == 2
    assert "did you mean 'token_f1'" in done.output
    nothing = CliRunner().invoke(main, ["eval", str(run_dir)])
    assert nothing.exit_code == 2 and "nothing to score" in nothing.output


def test_eval_of_an_unfinished_run_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    recipe = medqa_phi3_tiny
    (run_dir / "recipe.json").write_text(json.dumps({"hash": "x", "recipe": recipe.to_dict()}))
    done = CliRunner().invoke(main, ["eval", str(run_dir), "--split", "test"])
    assert done.exit_code == 2 and "did not finish" in done.output
