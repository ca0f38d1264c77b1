"""Several processes, one run (``lorakit train --nproc N``): the global batch shared out, the
sampler's order kept, one line for a failed job, and real 2-rank runs of the tiny Phi-3 on
the CPU (gloo), in its 4-bit NF4 path, against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from lorakit import ConfigError
from lorakit.checkpoints import is_complete
from lorakit.cli import main
from lorakit.distributed import (
    PEER_STOPPED,
    _report_failure,
    check_world,
    rank_batch,
    worker_args,
)
from lorakit.run_report import RunCost, RunReport
from lorakit.train import TrainingSpec

# --- the global batch, shared out ---------------------------------------------------------


def test_packed_steps_share_the_accumulation():
    packed = TrainingSpec(batch_size=4, grad_accum=4, packing=True)
    assert rank_batch(packed, 1) == (1, 4)
    assert rank_batch(packed, 2) == (1, 2)
    assert rank_batch(packed, 4) == (1, 1)


def test_unpacked_steps_share_the_accumulation_first_then_the_micro_batch():
    spec = TrainingSpec(batch_size=4, grad_accum=2, packing=False)
    assert rank_batch(spec, 2) == (4, 1)
    assert rank_batch(spec, 4) == (1, 2)


@pytest.mark.parametrize(
    ("spec", "nproc", "named"),
    [
        (TrainingSpec(grad_accum=1, packing=True), 2, "training.grad_accum=1 packed"),
        (TrainingSpec(batch_size=3, grad_accum=3, packing=False), 2, "3 x training.grad_accum=3"),
    ],
)
def test_a_world_size_that_does_not_divide_the_batch_is_one_line(spec, nproc, named):
    with pytest.raises(ConfigError) as info:
        rank_batch(spec, nproc)
    text = info.value.format()
    assert "\n" not in text
    assert named in text and f"{nproc} processes" in text
    assert "field 'training.grad_accum'" in text and "multiple of 2" in text


def test_fsdp_is_refused_with_what_to_use():
    spec = TrainingSpec(grad_accum=2, distributed="fsdp")
    with pytest.raises(ConfigError, match=r"training\.distributed=fsdp is not available") as info:
        check_world(spec, 2, gpus=0)
    assert "use training.distributed=ddp" in info.value.format()


def test_lorakit_check_lists_fsdp_with_the_other_problems():
    from lorakit.presets import medqa_phi3_tiny

    problems = medqa_phi3_tiny.with_overrides({"training.distributed": "fsdp"}).check()
    assert [p.field for p in problems] == ["training.distributed"]
    assert medqa_phi3_tiny.check() == []


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(ConfigError, match="more processes than the 1 GPUs"):
        check_world(TrainingSpec(grad_accum=2), 2, gpus=1)
    check_world(TrainingSpec(grad_accum=2), 2, gpus=0)  # the CPU: gloo runs any number


def test_each_rank_gets_the_command_without_nproc_and_with_the_run_directory():
    argv = ["-v", "train", "p", "--nproc", "2", "--set", "a=1", "--nproc=2", "--private"]
    assert worker_args(argv, Path("runs/x")) == [
        "-v",
        "train",
        "p",
        "--set",
        "a=1",
        "--private",
        "--run-dir",
        "runs/x",
    ]
    kept = ["train", "p", "--run-dir", "mine", "--nproc", "2"]
    assert worker_args(kept, Path("other")) == ["train", "p", "--run-dir", "mine"]


# --- the order of data.order, dealt out to the ranks -------------------------------------


@pytest.mark.parametrize("order", ["length_curriculum", "length_grouped"])
def test_every_step_of_the_ranks_is_the_step_of_one_process(order):
    """accelerate deals the ordered micro-batches out in turn (what the trainer does with
    lorakit's sampler): the union of one step's micro-batches over 2 ranks, each with half
    the accumulation, is the step of one process, in every epoch."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    from lorakit.data.order import OrderedSampler

    lengths = [(i * 37) % 101 + 1 for i in range(40)]
    step = {"now": 0}
    sampler = OrderedSampler(
        lengths,
        order=order,
        seed=7,
        micro_batch=2,
        grad_accum=4,
        total_steps=10,
        curriculum_share=0.5,
        step=lambda: step["now"],
    )
    for epoch_start in (0, 5):  # 40 items / (2 x 4) = 5 steps per epoch
        step["now"] = epoch_start
        single = list(BatchSampler(sampler, 2, drop_last=False))
        ranks = [
            list(BatchSamplerShard(BatchSampler(sampler, 2, drop_last=False), 2, r))
            for r in range(2)
        ]
        for k in range(5):
            one = sorted(i for batch in single[4 * k : 4 * k + 4] for i in batch)
            both = sorted(i for rank in ranks for batch in rank[2 * k : 2 * k + 2] for i in batch)
            assert both == one
        assert single != sorted(single)  # an order, not the identity


# --- what the ranks agree on, in 2 real gloo processes ----------------------------------

WORLD_SCRIPT = """
import json
import sys
from pathlib import Path

from lorakit import ConfigError
from lorakit.distributed import World
from lorakit.train import StopRequest, TokenCounter

world = World.from_env()
world.start()
out = {"rank": world.rank, "main": world.on_main(lambda: f"from {world.rank}")}
stop, counter = StopRequest(), TokenCounter()
sync = world.step_sync(stop, counter)
counter.add(10 * (world.rank + 1))
if world.rank == 1:
    stop.request()  # Ctrl-C reached rank 1 only
sync.on_step_end(None, None, None)
out["first"] = [counter.tokens, stop.requested]
counter.add(1)
sync.on_step_end(None, None, None)
out["second"] = counter.tokens
with world.main_first():  # rank 0 writes, then the others read
    if world.is_main:
        Path(sys.argv[1]).write_text("written by rank 0")
    out["read"] = Path(sys.argv[1]).read_text()
out["gathered"] = world.gather(world.rank * 2)
try:
    world.check_same(f"data {world.rank}", what="training data", field="data.source")
except ConfigError as error:
    out["error"] = error.format()
world.barrier()
world.close()
Path(sys.argv[2], f"rank{world.rank}.json").write_text(json.dumps(out))
"""


@pytest.mark.slow
def test_ranks_agree_on_tokens_a_stop_and_rank_0_s_results(tmp_path):
    script = tmp_path / "world.py"
    script.write_text(WORLD_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*torchrun, "--nproc-per-node=2", str(script), str(tmp_path / "plan.json"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outs = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [o["rank"] for o in outs] == [0, 1]
    for out in outs:
        assert out["main"] == "from 0"
        assert out["first"] == [30, True]  # 10 + 20 tokens; rank 1's stop stops rank 0 too
        assert out["second"] == 32
        assert out["gathered"] == [0, 2]
        assert out["read"] == "written by rank 0"
        assert (
            "field 'data.source': rank 1 prepared other training data than rank 0" in (out["error"])
        )


# --- one line for a failed job -------------------------------------------------------------


def _failure(exitcode: int, *, message: str | None = None, timestamp: int = 100):
    import signal

    data = {"message": message, "lorakit": True} if message else {}
    name = signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>"
    return SimpleNamespace(
        exitcode=exitcode, error_file_data=data, timestamp=timestamp, signal_name=lambda: name
    )


def test_a_rank_0_error_is_not_printed_twice(capsys):
    code = _report_failure({0: _failure(2, message="field 'x': bad"), 1: _failure(-15)})
    assert code == 2
    assert capsys.readouterr().err == ""


def test_another_rank_s_error_is_printed_once(capsys):
    failures = {0: _failure(PEER_STOPPED, timestamp=99), 1: _failure(2, message="disk full")}
    assert _report_failure(failures) == 2
    assert capsys.readouterr().err == "error: disk full\n"


def test_a_killed_rank_is_named_with_what_to_do(capsys):
    failures = {0: _failure(-15, timestamp=99), 1: _failure(-9, timestamp=100)}
    assert _report_failure(failures) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: rank 1 was killed by SIGKILL; torchrun stopped the other")
    assert "resumes from its last complete checkpoint" in err


def test_cli_refuses_a_batch_the_processes_cannot_share_before_starting_them():
    result = CliRunner().invoke(main, ["train", "medqa_phi3_tiny", "--nproc", "2"])
    assert result.exit_code == 2
    assert "training.grad_accum=1 packed micro-batches per step cannot be shared" in (result.output)


# --- the report ----------------------------------------------------------------------------


def test_the_report_says_the_world_size_and_each_rank_s_peak_memory():
    cost = RunCost(
        tokens_trained=10,
        tokens_per_s=5.0,
        wall_s={"train": 1.0},
        device="NVIDIA H200",
        peak_gpu_allocated_gib=3.0,
        world_size=2,
        peak_gpu_allocated_gib_by_rank=[3.0, 2.5],
    )
    from lorakit.run_report import _cost_lines

    assert any("| 2 / 3.00 · 2.50 |" in line for line in _cost_lines(cost))
    assert RunCost(**json.loads(json.dumps(__import__("attrs").asdict(cost)))) == cost
    old = RunCost(tokens_trained=1, tokens_per_s=None, wall_s={}, device="cpu")
    assert old.world_size == 1 and not any("processes" in line for line in _cost_lines(old))


# --- real runs: 2 ranks on the CPU (gloo), the tiny Phi-3 in 4-bit NF4 ----------------------

PROBE = '''
"""Test plugin: each rank's adapter gradients before every optimizer step, each rank's run
hooks, and a rank that kills itself (SIGKILL) after a given step."""
import os
import signal
from pathlib import Path

from lorakit import hookimpl

OUT = Path(os.environ["LORAKIT_PROBE_DIR"])
RANK = int(os.environ.get("RANK", "0"))


def _hook(name):
    with (OUT / f"hooks-rank{RANK}.txt").open("a") as handle:
        handle.write(name + "\\n")


@hookimpl
def lorakit_trainer_callbacks(recipe):
    import torch
    from transformers import TrainerCallback

    kill = os.environ.get("LORAKIT_PROBE_KILL")  # RANK:STEP

    class Probe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads = {
                name: p.grad.detach().clone()
                for name, p in model.named_parameters()
                if p.requires_grad and p.grad is not None
            }
            torch.save(grads, OUT / f"grads-rank{RANK}-step{state.global_step + 1}.pt")

        def on_step_end(self, args, state, control, **kw):
            if kill == f"{RANK}:{state.global_step}":
                os.kill(os.getpid(), signal.SIGKILL)

    return [Probe()]


@hookimpl
def lorakit_run_start(recipe, run_dir, registries):
    _hook("run_start")


@hookimpl
def lorakit_log_metrics(metrics, step, run_dir):
    _hook("log_metrics")


@hookimpl
def lorakit_run_end(result):
    _hook("run_end")
'''

# Dropout off: each rank draws its own dropout masks, so only without it are the
# gradients of 2 ranks those of 1 process to float precision.
SHORT = {
    "adapter.dropout": 0,
    "training.grad_accum": 2,  # 2 packed micro-batches per step: one per rank with 2 ranks
    "training.eval_steps": 2,
    "training.save_steps": 2,
    "training.logging_steps": 1,
}


@pytest.fixture(scope="module")
def probe_site(tmp_path_factory) -> Path:
    """The probe plugin, installed into a folder through its entry point."""
    site = tmp_path_factory.mktemp("probe-site")
    (site / "lorakit_ddp_probe.py").write_text(textwrap.dedent(PROBE))
    dist = site / "lorakit_ddp_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lorakit-ddp-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lorakit]\nddp_probe = lorakit_ddp_probe\n")
    return site


def train(
    site: Path, run_dir: Path, probe: Path, *, nproc: int, steps: int, kill: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m lorakit train`` in a fresh process, as a user runs it, with the probe."""
    probe.mkdir(exist_ok=True)
    args = ["train", "medqa_phi3_tiny", "--run-dir", str(run_dir), "--no-progress"]
    for key, value in {**SHORT, "training.max_steps": steps}.items():
        args += ["--set", f"{key}={value}"]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    env = {
        **os.environ,
        "COLUMNS": "300",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "LORAKIT_PROBE_DIR": str(probe),
    }
    env.pop("LORAKIT_PROBE_KILL", None)
    if kill:
        env["LORAKIT_PROBE_KILL"] = kill
    return subprocess.run(
        [sys.executable, "-m", "lorakit", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, tuple[float, float, int]]:
    return {
        r["step"]: (r["loss"], r["grad_norm"], r["tokens"]) for r in records(run_dir) if "loss" in r
    }


@pytest.fixture(scope="module")
def runs(probe_site, tmp_path_factory) -> SimpleNamespace:
    """Four real runs of 4 steps (checkpoints at 2 and 4): one process, uninterrupted; 2
    ranks, rank 1 SIGKILLed after step 3; the same command again (it resumes); and a copy
    of the killed run resumed by one process."""
    root = tmp_path_factory.mktemp("ddp-runs")
    one = train(probe_site, root / "one", root / "probe-one", nproc=1, steps=4)
    assert one.returncode == 0, one.stderr[-3000:]
    killed = train(probe_site, root / "two", root / "probe-two", nproc=2, steps=4, kill="1:3")
    assert not (root / "two" / "report.json").exists(), killed.stderr[-3000:]
    left = sorted((root / "two" / "checkpoints").iterdir())
    complete = [p.name for p in left if is_complete(p)]
    shutil.copytree(root / "two", root / "alone")
    grads = root / "probe-killed"  # the gradients of steps 1-3, before the rerun rewrites 3
    shutil.copytree(root / "probe-two", grads)
    for name in ("hooks-rank0.txt", "hooks-rank1.txt"):
        (root / "probe-two" / name).unlink(missing_ok=True)
    again = train(probe_site, root / "two", root / "probe-two", nproc=2, steps=4)
    assert again.returncode == 0, again.stderr[-3000:]
    alone = train(probe_site, root / "alone", root / "probe-alone", nproc=1, steps=4)
    assert alone.returncode == 0, alone.stderr[-3000:]
    return SimpleNamespace(
        root=root, one=one, killed=killed, again=again, alone=alone, grads=grads, left=complete
    )


@pytest.mark.slow
def test_two_ranks_compute_the_loss_and_gradients_of_one_process(runs):
    import torch

    for step in (1, 2, 3):
        single = torch.load(runs.root / "probe-one" / f"grads-rank0-step{step}.pt")
        ranks = [torch.load(runs.grads / f"grads-rank{r}-step{step}.pt") for r in (0, 1)]
        assert single and ranks[0].keys() == ranks[1].keys() == single.keys()
        assert any("lora_A" in name for name in single) and any("lora_B" in name for name in single)
        for name, grad in single.items():
            if step > 1 or "lora_B" in name:  # lora_B starts at 0, so A's first gradient is 0
                assert grad.abs().sum() > 0, name
            for rank in ranks:  # DDP averaged: every rank holds the gradient of the whole step
                torch.testing.assert_close(rank[name], grad, rtol=1e-4, atol=1e-7)
    by_one, by_two = losses(runs.root / "one"), losses(runs.root / "two")
    assert by_one.keys() == by_two.keys() == {1, 2, 3, 4}
    for step, (loss, norm, tokens) in by_one.items():
        assert by_two[step][2] == tokens  # the same real tokens: the same micro-batches
        assert by_two[step][0] == pytest.approx(loss, rel=1e-5)
        assert by_two[step][1] == pytest.approx(norm, rel=1e-4)
    report = json.loads((runs.root / "two" / "report.json").read_text())
    assert report["cost"]["world_size"] == 2
    assert report["cost"]["peak_gpu_allocated_gib_by_rank"] is None  # no GPU here
    assert "| processes (DDP)" in (runs.root / "two" / "report.md").read_text()
    assert json.loads((runs.root / "one" / "report.json").read_text())["cost"]["world_size"] == 1


@pytest.mark.slow
def test_a_killed_rank_stops_the_job_in_one_line_and_the_rerun_resumes(runs):
    killed = runs.killed
    assert killed.returncode == 2, killed.stderr[-3000:]
    assert "Traceback" not in killed.stderr, killed.stderr[-3000:]
    errors = [line for line in killed.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        "error: rank 1 was killed by SIGKILL; torchrun stopped the other ranks (run the same "
        "command again: the run resumes from its last complete checkpoint)"
    ]
    assert runs.left == ["checkpoint-2"]  # the complete checkpoints the kill left
    report = RunReport.from_run_dir(runs.root / "two")
    assert report.resumed_from == "checkpoint-2" and report.steps == 4
    assert runs.again.stdout.count("done 4 steps (resumed from checkpoint-2)") == 1


@pytest.mark.slow
def test_one_process_resumes_what_two_ranks_started(runs):
    assert RunReport.from_run_dir(runs.root / "alone").resumed_from == "checkpoint-2"
    by_one, alone = losses(runs.root / "one"), losses(runs.root / "alone")
    for step in (3, 4):  # trained by one process after the 2 ranks' checkpoint
        assert alone[step][2] == by_one[step][2]
        assert alone[step][0] == pytest.approx(by_one[step][0], rel=1e-5)


@pytest.mark.slow
def test_the_run_directory_is_written_once(runs):
    run_dir, probe = runs.root / "two", runs.root / "probe-two"
    rows = records(run_dir)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    assert sum("train_runtime" in r for r in rows) == 1
    notes = [line for line in runs.again.stderr.splitlines() if line.startswith("note:")]
    assert notes and len(notes) == len(set(notes))  # printed by rank 0 only
    hooks = (probe / "hooks-rank0.txt").read_text().splitlines()
    assert hooks.count("run_start") == hooks.count("run_end") == 1
    assert hooks.count("log_metrics") == len([r for r in rows if r["step"] > 2])  # rerun's
    assert not (probe / "hooks-rank1.txt").exists()  # trackers hear of the run from rank 0
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "adapter",
        "checkpoints",
        "data_report.json",
        "eval_before.json",
        "lorakit.log",
        "metrics.jsonl",
        "recipe.json",
        "report.json",
        "report.md",
    ]
    for checkpoint in ("checkpoint-2", "checkpoint-4"):  # each rank's RNG state, once
        names = sorted(p.name for p in (run_dir / "checkpoints" / checkpoint).glob("rng_*"))
        assert names == ["rng_state_0.pth", "rng_state_1.pth"]


@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_one_step_with_a_checkpoint(tmp_path):
    import signal
    import time

    run_dir = tmp_path / "run"
    args = ["train", "medqa_phi3_tiny", "--nproc", "2", "--run-dir", str(run_dir)]
    for key, value in {**SHORT, "training.max_steps": 40, "training.save_steps": 20}.items():
        args += ["--set", f"{key}={value}"]
    child = subprocess.Popen(
        [sys.executable, "-m", "lorakit", *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C sends: the command and torchrun
    _, err = child.communicate(timeout=240)
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "torch/distributed" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1, err[-3000:]  # rank 0 says it; the other rank stopped quietly
    step = int(lines[0].split()[3].rstrip(";"))
    assert lines[0].endswith(f"resume from checkpoint-{step}")
    assert is_complete(run_dir / "checkpoints" / f"checkpoint-{step}")
    rngs = sorted(p.name for p in (run_dir / "checkpoints" / f"checkpoint-{step}").glob("rng_*"))
    assert rngs == ["rng_state_0.pth", "rng_state_1.pth"]  # both ranks stopped at this step
    assert max(r["step"] for r in records(run_dir)) == step
