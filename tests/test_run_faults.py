"""A run directory under faults: kills, a second process, full disks, read-only folders,
damaged or planted files. Each gets one clean line (exit 2) and never a half-written run
passed off as complete. Real runs of the tiny Phi-3 on the demo data, on the CPU."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorakit import ConfigError, LorakitError, hookimpl
from lorakit.plugins import make_plugin_manager
from lorakit.presets import medqa_phi3_tiny

pytestmark = pytest.mark.slow

SHORT = {
    "training.max_steps": 6,
    "training.eval_steps": 3,
    "training.save_steps": 3,
    "training.logging_steps": 1,
}
TIMING_KEYS = ("runtime", "per_second", "tokens_per_s")


def short_recipe(**overrides: object):
    return medqa_phi3_tiny.with_overrides({**SHORT, **overrides})


def cli(*args: str, env: dict[str, str] | None = None, **kw: object):
    """``lorakit ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", "from lorakit.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300", **(env or {})},
        **kw,  # type: ignore[arg-type]
    )


def train_args(run_dir: Path) -> list[str]:
    args = ["train", "medqa_phi3_tiny", "--run-dir", str(run_dir), "--no-progress"]
    for key, value in SHORT.items():
        args += ["--set", f"{key}={value}"]
    return args


def one_clean_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith(TIMING_KEYS)} for r in rows]


def test_resuming_a_run_stopped_after_its_final_checkpoint_trains_no_further(tmp_path):
    run_dir = tmp_path / "run"
    first = short_recipe().run(run_dir, show_progress=False)
    assert first.report.steps == 6
    summary_before = [r for r in records(run_dir) if "train_runtime" in r]
    # Killed after the final checkpoint, before the report: the report is what is missing.
    (run_dir / "report.json").unlink()
    shutil.rmtree(run_dir / "adapter")
    again = short_recipe().run(run_dir, show_progress=False)
    assert again.report.steps == 6
    assert again.report.resumed_from == "checkpoint-6"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "checkpoint-3",
        "checkpoint-6",
    ]
    assert [r for r in records(run_dir) if "train_runtime" in r] == summary_before
    assert again.report.best["verified"] is True
    assert again.report.eval.loss == pytest.approx(first.report.eval.loss, rel=1e-6)


def test_same_seed_gives_the_same_adapter_and_the_same_metrics(tmp_path):
    from safetensors.torch import load_file

    a = short_recipe().run(tmp_path / "a", show_progress=False)
    b = short_recipe().run(tmp_path / "b", show_progress=False)
    assert untimed(records(a.run_dir)) == untimed(records(b.run_dir))
    first_a = load_file(
        str(a.run_dir / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    )
    first_b = load_file(
        str(b.run_dir / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    )
    assert first_a.keys() == first_b.keys()
    assert all((first_a[k] == first_b[k]).all() for k in first_a)


def test_adapter_initialisation_follows_the_seed(tmp_path):
    from lorakit import runner

    def lora_a(seed: int, folder: Path):
        recipe = short_recipe(**{"training.seed": seed})
        ctx = runner.open_run(recipe, folder, show_progress=False)
        setup = runner.setup_model(ctx, runner.load_model(ctx))
        return {n: p.detach().clone() for n, p in setup.model.named_parameters() if "lora_A" in n}

    first, second, other = (
        lora_a(1, tmp_path / "1"),
        lora_a(1, tmp_path / "2"),
        lora_a(2, tmp_path / "3"),
    )
    assert all((first[k] == second[k]).all() for k in first)
    assert any((first[k] != other[k]).any() for k in first)


def test_report_and_metrics_say_what_the_run_cost(tmp_path):
    result = short_recipe().run(tmp_path / "run", show_progress=False)
    cost = result.report.cost
    assert cost is not None
    data = json.loads((result.run_dir / "data_report.json").read_text())
    # With packing every train example is trained once per pass; 6 steps see at least one row.
    assert 0 < cost.tokens_trained <= 6 * 2 * 256 * 2
    assert cost.tokens_per_s is not None and cost.tokens_per_s > 0
    assert set(cost.wall_s) >= {"load", "data", "train", "eval", "save", "total"}
    assert cost.device == "cpu" and cost.peak_gpu_allocated_gib is None
    evals = [r["eval_runtime"] for r in records(result.run_dir) if "eval_runtime" in r]
    assert len(evals) == 2  # steps 3 and 6
    assert cost.wall_s["train_evaluations"] == pytest.approx(sum(evals), abs=2e-3)
    assert 0 < cost.wall_s["train_evaluations"] < cost.wall_s["train"]
    logged = [r for r in records(result.run_dir) if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    tokens = [r["tokens"] for r in logged]
    assert tokens == sorted(tokens) and tokens[-1] == cost.tokens_trained
    assert data["tokenization"]["train"]["examples"] > 0
    on_disk = json.loads((result.run_dir / "report.json").read_text())
    assert on_disk["cost"]["tokens_trained"] == cost.tokens_trained
    assert "real tokens trained" in (result.run_dir / "report.md").read_text()


def test_a_second_run_into_the_same_directory_is_refused_while_the_first_holds_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from lorakit._fs import RunLock
                with RunLock(Path({str(run_dir)!r})):
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        line = one_clean_line(cli(*train_args(run_dir)))
        assert f"pid {holder.pid}" in line and str(run_dir) in line
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock file is stale, and the next run takes it over.
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)
    done = cli(*train_args(run_dir))
    assert done.returncode == 0, done.stderr
    steps = [r["step"] for r in records(run_dir) if "loss" in r]
    assert steps == sorted(set(steps))  # every record written once


def test_a_run_directory_under_a_file_is_one_clean_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = one_clean_line(cli(*train_args(blocker / "run")))
    assert "is a file, not a folder" in line
    done = cli(*train_args(blocker))  # click checks --run-dir itself: one line, exit 2
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "is a file" in done.stderr


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only for this process's children: by its mode for an ordinary
    user, by a read-only bind mount (or the immutable flag) for root, whom modes do not stop."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode == 0:
        remount = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True
        )
        try:
            if remount.returncode != 0:
                pytest.skip("cannot remount read-only here")
            yield
        finally:
            subprocess.run(["umount", str(folder)], capture_output=True)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root here can neither mount nor set the immutable flag")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


@pytest.mark.parametrize("where", ["parent", "run_dir"])
def test_a_read_only_folder_is_one_clean_line(tmp_path, where):
    parent = tmp_path / "runs"
    parent.mkdir()
    target = parent / "run"
    if where == "run_dir":
        target.mkdir()
    with read_only(target if where == "run_dir" else parent):
        line = one_clean_line(cli(*train_args(target)))
    assert str(target) in line or str(parent) in line
    assert "writable" in line
    assert not (target / "recipe.json").exists()


FSIZE_SCRIPT = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
sys.argv = ["lorakit", *{args!r}]
from lorakit.cli import main
main()
"""


def test_a_full_disk_stops_the_run_cleanly_and_it_resumes_afterwards(tmp_path):
    run_dir = tmp_path / "run"
    first = short_recipe().run(tmp_path / "probe", show_progress=False)
    sizes = [
        p.stat().st_size
        for p in (first.run_dir / "checkpoints" / "checkpoint-3").iterdir()
        if p.is_file()
    ]
    # Files of the first checkpoint up to the largest fit; the largest (the optimizer state)
    # does not: the save is cut short, as on a full disk.
    limit = max(sizes) - 1
    script = FSIZE_SCRIPT.format(limit=limit, args=train_args(run_dir))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    line = one_clean_line(done)
    assert "free disk space" in line
    assert not (run_dir / "report.json").exists()
    # The half-written checkpoint is never taken for one: the next run starts over.
    resumed = short_recipe().run(run_dir, show_progress=False)
    assert resumed.report.resumed_from is None
    assert resumed.report.steps == 6
    assert any("incomplete checkpoint checkpoint-3" in n for n in resumed.report.notes)


def _stop_at(step: int):
    class Stop:
        @hookimpl
        def lorakit_trainer_callbacks(self, recipe):
            from transformers import TrainerCallback

            class Raise(TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == step:
                        raise KeyboardInterrupt

            return [Raise()]

    return make_plugin_manager(plugins=[Stop()], disabled=())


def test_a_planted_file_in_the_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
    run_dir = tmp_path / "run"
    recipe = short_recipe(**{"training.max_steps": 9, "training.save_total_limit": None})
    with pytest.raises(KeyboardInterrupt):
        recipe.run(run_dir, plugin_manager=_stop_at(7), show_progress=False)
    latest = run_dir / "checkpoints" / "checkpoint-6"
    (latest / "trainer_state.json").write_text("{ planted")
    result = recipe.run(run_dir, show_progress=False)
    assert result.report.resumed_from == "checkpoint-3"
    assert result.report.steps == 9


def test_an_unreadable_trainer_state_is_one_clean_line(tmp_path):
    run_dir = tmp_path / "run"
    recipe = short_recipe(**{"training.max_steps": 9})
    with pytest.raises(KeyboardInterrupt):
        recipe.run(run_dir, plugin_manager=_stop_at(4), show_progress=False)
    state = run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json"
    # Same size, not JSON: it passes the size check and fails to load.
    text = state.read_text()
    state.write_text("x" * len(text))
    with pytest.raises(LorakitError, match="checkpoint-3") as info:
        recipe.run(run_dir, show_progress=False)
    assert "remove" in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("{ not json", "not valid JSON"), ("[1, 2]", "not an object")],
)
def test_a_damaged_recipe_json_is_one_clean_line(tmp_path, content, message):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.json").write_text(content)
    (run_dir / "metrics.jsonl").write_text("")
    line = one_clean_line(cli(*train_args(run_dir)))
    assert message in line and "recipe.json" in line


def test_what_a_killed_save_left_behind_is_removed_by_the_next_run(tmp_path):
    run_dir = tmp_path / "run"
    recipe = short_recipe()
    with pytest.raises(KeyboardInterrupt):
        recipe.run(run_dir, plugin_manager=_stop_at(4), show_progress=False)
    (run_dir / ".adapter-k1ll3d").mkdir()
    (run_dir / ".adapter-k1ll3d" / "adapter_model.safetensors").write_bytes(b"half")
    (run_dir / ".report.json.abc123").write_text("{")
    result = recipe.run(run_dir, show_progress=False)
    assert not (run_dir / ".adapter-k1ll3d").exists()
    assert not (run_dir / ".report.json.abc123").exists()
    assert any(".adapter-k1ll3d" in note for note in result.report.notes)


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../../x", "a/b", "", ".hidden"])
def test_a_recipe_name_is_a_name_not_a_path(tmp_path, name):
    with pytest.raises(ConfigError, match="is not a name"):
        medqa_phi3_tiny.with_overrides({"name": name})
    done = cli("train", "medqa_phi3_tiny", "--set", f"name={name}", cwd=tmp_path)
    assert "is not a name" in one_clean_line(done)
    assert not any(tmp_path.iterdir())


def test_a_training_split_smaller_than_one_batch_is_refused_with_packing(tmp_path):
    from lorakit.presets import DEMO_DATA

    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(DEMO_DATA.read_text().splitlines()[:12]) + "\n")
    recipe = short_recipe(
        **{"data.source": f"jsonl:{data}", "training.batch_size": 16, "training.packing": True}
    )
    with pytest.raises(ConfigError, match="fewer than one batch of 16"):
        recipe.run(tmp_path / "run", show_progress=False)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_learning_rate_must_be_finite(value):
    with pytest.raises(ConfigError, match=r"training\.learning_rate"):
        medqa_phi3_tiny.with_overrides({"training.learning_rate": value})


def test_ctrl_c_stops_at_a_step_with_a_checkpoint_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    args = [*train_args(run_dir), "--set", "training.max_steps=30"]
    child = subprocess.Popen(
        [sys.executable, "-c", "from lorakit.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("interrupted at step"))
    step = int(line.split()[3].rstrip(";"))
    assert line.endswith(f"resume from checkpoint-{step}")
    assert (run_dir / "checkpoints" / f"checkpoint-{step}" / "lorakit_checkpoint.json").is_file()
    assert not (run_dir / "report.json").exists()
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["resumed_from"] == f"checkpoint-{step}" and report["steps"] == 30
    assert sum("train_runtime" in r for r in records(run_dir)) == 1  # one summary, not two
