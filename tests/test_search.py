"""``lorakit search``: real Optuna studies over real tiny runs (CPU, offline), through the CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("optuna")

from lorakit.cli import main

# Each trial: one optimizer step on 40 demo rows, an evaluation and a checkpoint.
TINY = (
    "--set",
    "data.limit=40",
    "--set",
    "training.max_steps=1",
    "--set",
    "training.eval_steps=1",
    "--set",
    "training.save_steps=1",
    "--set",
    "training.logging_steps=1",
    "--set",
    "data.tokenize.max_len=128",
    "--set",
    "training.tokens_per_batch=256",
)


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _study_trials(url: str, name: str = "medqa_phi3_tiny"):
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _search(folder: Path, *extra: str) -> list[str]:
    return ["search", "medqa_phi3_tiny", *TINY, "--dir", str(folder), "--no-progress", *extra]


def test_grid_of_six_trials_writes_its_table_and_best_recipe(tmp_path):
    from lorakit.plugins import Registries
    from lorakit.recipe_files import load_recipe
    from lorakit.run_report import RunReport

    folder = tmp_path / "search"
    result = CliRunner().invoke(
        main,
        _search(
            folder,
            "--space",
            "adapter.rank=4,8,16",
            "--space",
            "adapter.targets=attention|attention+mlp",
        ),
    )
    assert result.exit_code == 0, result.output
    assert "| trial | state | adapter.rank | adapter.targets | eval loss |" in result.output
    rows = _rows(folder)
    assert len(rows) == 6
    grid = {(r["adapter.rank"], r["adapter.targets"]) for r in rows}
    assert grid == {(k, t) for k in ("4", "8", "16") for t in ("attention", "attention+mlp")}
    complete = [r for r in rows if r["state"] == "complete"]
    # The median pruner waits for 5 trials: at most the sixth can be pruned.
    assert len(complete) >= 5 and all(r["state"] in ("complete", "pruned") for r in rows)
    by_setting = {}
    for row in complete:
        report = RunReport.from_run_dir(row["run_dir"])
        assert float(row["eval_loss"]) == pytest.approx(report.eval.loss)
        assert float(row["objective"]) == pytest.approx(report.eval.loss)
        assert int(row["trainable_parameters"]) == report.adapter["trainable_parameters"]
        assert float(row["tokens_per_s"]) > 0
        by_setting[(int(row["adapter.rank"]), row["adapter.targets"])] = int(
            row["trainable_parameters"]
        )
    # LoRA parameters grow linearly with the rank, and MLP targets add more.
    for (rank, targets), count in by_setting.items():
        if (rank * 2, targets) in by_setting:
            assert by_setting[(rank * 2, targets)] == 2 * count
        if targets == "attention" and (rank, "attention+mlp") in by_setting:
            assert by_setting[(rank, "attention+mlp")] > count
    best = min(complete, key=lambda r: float(r["eval_loss"]))
    markdown = (folder / "results.md").read_text(encoding="utf-8")
    assert f"Best: trial {best['trial']} (`*`)." in markdown
    recipe = load_recipe(str(folder / "best.toml"), Registries.from_plugin_manager().presets)
    assert recipe.adapter.rank == int(best["adapter.rank"])
    assert ",".join(recipe.adapter.targets) == best["adapter.targets"].replace("+", ",")
    assert recipe.training.max_steps == 1


@pytest.mark.slow
def test_search_killed_mid_trial_resumes_without_repeating_finished_trials(tmp_path):
    folder = tmp_path / "search"
    url = f"sqlite:///{folder / 'study.db'}"
    args = _search(
        folder, "--space", "adapter.rank=4,8,16", "--set", "training.max_steps=4", "--seed", "0"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lorakit.cli", *args], env=env, stdout=out, stderr=out
        )
    try:
        first_done = _wait_for_second_trial_checkpoint(folder, url, process, log)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finished_before = {t.number: Path(t.user_attrs["run_dir"]) / "report.json" for t in first_done}
    stamps = {n: path.stat().st_mtime_ns for n, path in finished_before.items()}

    result = CliRunner().invoke(main, args)  # the same command again
    assert result.exit_code == 0, result.output

    trials = _study_trials(url)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    ranks = sorted(int(t.params["adapter.rank"]) for t in complete)
    assert ranks == [4, 8, 16]  # every setting once: nothing repeated
    for number, path in finished_before.items():
        assert path.stat().st_mtime_ns == stamps[number], f"trial {number} ran again"
        assert number in {t.number for t in complete}
    cut = [t for t in trials if t.state.name == "FAIL"]
    assert len(cut) == 1 and cut[0].user_attrs["lorakit_note"] == "cut short; retried"
    retry = next(t for t in complete if t.user_attrs.get("lorakit_retry_of") == cut[0].number)
    assert retry.params == cut[0].params
    from lorakit.run_report import RunReport

    report = RunReport.from_run_dir(retry.user_attrs["run_dir"])
    assert report.resumed_from is not None and report.resumed_from.startswith("checkpoint-")
    assert report.steps == 4
    assert [r["state"] for r in _rows(folder)].count("complete") == 3


def _wait_for_second_trial_checkpoint(folder: Path, url: str, process, log: Path) -> list:
    """Block until one trial is complete and another has saved a checkpoint; return the
    complete trials."""
    from lorakit.checkpoints import latest_checkpoint

    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        if (folder / "study.db").exists():
            try:
                trials = _study_trials(url)
            except Exception:  # the study is not created yet
                trials = []
            done = [t for t in trials if t.state.name == "COMPLETE"]
            running = [t for t in trials if t.state.name == "RUNNING" and "run_dir" in t.user_attrs]
            if done and running:
                checkpoints = Path(running[0].user_attrs["run_dir"]) / "checkpoints"
                if latest_checkpoint(checkpoints) is not None:
                    return done
        time.sleep(0.2)
    raise AssertionError("the search did not reach its second trial in time")


@pytest.mark.slow
def test_two_processes_on_one_storage_split_the_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    space = ("--space", "adapter.rank=4,8", "--space", "adapter.targets=attention|mlp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    processes = []
    for name in ("a", "b"):
        with (tmp_path / f"{name}.log").open("wb") as out:
            command = _search(tmp_path / name, *space, "--storage", url, "--pruner", "none")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "lorakit.cli", *command],
                    env=env,
                    stdout=out,
                    stderr=out,
                )
            )
    for name, process in zip(("a", "b"), processes, strict=True):
        process.wait(timeout=300)
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert process.returncode == 0, log[-3000:]
    trials = _study_trials(url)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    settings = [(t.params["adapter.rank"], t.params["adapter.targets"]) for t in complete]
    assert sorted(settings) == sorted((r, t) for r in ("4", "8") for t in ("attention", "mlp")), (
        settings
    )
    trained = {
        name: [p for p in (tmp_path / name / "trials").glob("*") if (p / "report.json").exists()]
        for name in ("a", "b")
    }
    assert all(trained.values()), f"one process ran no trial: {trained}"
    assert sum(len(runs) for runs in trained.values()) == 4  # no setting trained twice
    # Each process's table lists the study's trials as they were when it finished; the
    # process that finished last saw all four complete.
    counts = [[r["state"] for r in _rows(tmp_path / name)].count("complete") for name in "ab"]
    assert max(counts) == 4 and min(counts) >= min(len(runs) for runs in trained.values())


def test_space_errors_name_the_setting(tmp_path):
    cases = [
        (("--space", "adapter.rnak=4,8"), "did you mean 'adapter.rank'"),
        (("--space", "adapter.rank=4,zero"), "--space adapter.rank"),
        (("--space", "training.learning_rate=3e-4..1e-4"), "LOW must be below HIGH"),
        (("--space", "adapter.rank=4..16", "--sampler", "grid"), "grid sampler needs lists"),
        (("--space", "adapter.rank=4..16"), "a TPE search needs --trials"),
        (("--space", "adapter.rank=4,8", "--objective", "bench:medqa"), "does not evaluate"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(main, ["search", "medqa_phi3_tiny", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_folder_of_another_search_is_refused(tmp_path):
    from lorakit.presets import medqa_phi3_tiny
    from lorakit.search import SearchParam, SearchSpec
    from lorakit.search.study import _check_folder

    spec = SearchSpec(space=[SearchParam.parse("adapter.rank=4,8", medqa_phi3_tiny)])
    _check_folder(tmp_path, spec.identity(medqa_phi3_tiny))
    _check_folder(tmp_path, spec.identity(medqa_phi3_tiny))  # the same search: resumed
    other = SearchSpec(space=[SearchParam.parse("adapter.rank=4,16", medqa_phi3_tiny)])
    with pytest.raises(Exception, match="holds another search"):
        _check_folder(tmp_path, other.identity(medqa_phi3_tiny))


def test_space_forms_parse_to_the_setting_types():
    from lorakit.presets import medqa_phi3_tiny
    from lorakit.search import SearchParam, SearchSpec, trial_dir_name

    rank = SearchParam.parse("adapter.rank=8,16,32", medqa_phi3_tiny)
    targets = SearchParam.parse("adapter.targets=attention|attention+mlp", medqa_phi3_tiny)
    lr = SearchParam.parse("training.learning_rate=1e-4..3e-4:log", medqa_phi3_tiny)
    steps = SearchParam.parse("training.max_steps=10..40", medqa_phi3_tiny)
    assert rank.choices == ("8", "16", "32")
    assert targets.choices == ("attention", "attention,mlp")
    assert (lr.low, lr.high, lr.log, lr.integer) == (1e-4, 3e-4, True, False)
    assert steps.integer and not steps.log
    grid = SearchSpec(space=[rank, targets])
    assert (grid.resolved_sampler, grid.n_trials) == ("grid", 6)
    assert SearchSpec(space=[rank, lr], trials=9).resolved_sampler == "tpe"
    assert SearchSpec(space=[rank], trials=10).n_trials == 3  # a grid has 3 points
    a = trial_dir_name({"adapter.rank": "8", "adapter.targets": "attention,mlp"})
    assert a == trial_dir_name({"adapter.targets": "attention,mlp", "adapter.rank": "8"})
    assert a != trial_dir_name({"adapter.rank": "16", "adapter.targets": "attention,mlp"})
    assert a.startswith("rank=8_targets=attention+mlp-")
