"""Several processes, one run: ``lorakit train --nproc N`` under torchrun, with DDP.

The recipe fixes the *global* batch: ``training.batch_size`` x ``training.grad_accum`` items
per optimizer step (packed rows with ``training.packing``). With N processes each rank
trains ``grad_accum / N`` micro-batches per step (or, without packing, ``batch_size / N``
items per micro-batch), so the same recipe takes the same steps on the same examples with
one process or several, and a run resumes with any number of processes that divides its
global batch.

Each rank holds the whole (4-bit) model on its own device; gradients of the adapter are
averaged by ``torch.nn.parallel.DistributedDataParallel`` (NCCL on GPUs, gloo on the CPU).
The item order of ``data.order`` (and packing) is computed identically on every rank and
its micro-batches dealt out in turn (``accelerate``'s batch sharding: rank r takes
micro-batches r, r + N, ...), so the union of one step's micro-batches over the ranks is
the step of a single process.

Rank 0 alone holds the run directory's lock and writes the run directory (recipe, data
report, metrics, checkpoints, adapter, report); it alone evaluates while the others wait,
and the others leave once training ends, returning the run rank 0 wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs

from lorakit.errors import ConfigError, LorakitError

if TYPE_CHECKING:
    from lorakit.recipe import Recipe, RunResult
    from lorakit.train import StopRequest, TokenCounter, TrainingSpec

__all__ = [
    "PEER_STOPPED",
    "STEP_TIMEOUT",
    "WAIT_TIMEOUT",
    "World",
    "check_launch",
    "check_world",
    "launch",
    "launch_train",
    "rank_batch",
    "rank_errors",
    "torchrun",
    "worker_args",
]

T = TypeVar("T")

WAIT_TIMEOUT = dt.timedelta(hours=12)
"""How long the other ranks wait for rank 0's evaluation, saving and report."""

STEP_TIMEOUT = dt.timedelta(minutes=30)
"""How long a collective of training (the gradients' all-reduce) may wait: transformers'
``ddp_timeout``."""

PEER_STOPPED = 86
"""Exit code of a rank that stopped because another rank of the job failed."""

_WAIT_GROUP: list[Any] = []  # the gloo group the ranks wait on rank 0 through (see World.start)


def _group() -> Any:
    return _WAIT_GROUP[0] if _WAIT_GROUP else None


@attrs.frozen(kw_only=True)
class World:
    """This process's place among the processes of a run (one process: rank 0 of 1).

    Every method is a no-op, or returns its argument, in a single process; with several,
    every rank must call it at the same point of the run.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """From torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (none: one process)."""
        env = os.environ if env is None else env
        return cls(
            rank=int(env.get("RANK", "0")),
            size=int(env.get("WORLD_SIZE", "1")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def start(self) -> None:
        """Join the job's process group (NCCL on GPUs, gloo on the CPU) if not yet joined.

        Rank 0's solo work (evaluation, saving, the report) is waited on through a second,
        gloo group with a long timeout, so a long evaluation never trips NCCL's watchdog.
        """
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=STEP_TIMEOUT)
        if not _WAIT_GROUP:
            _WAIT_GROUP.append(dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT))

    def close(self) -> None:
        """Leave the process group (at the end of a worker process)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        _WAIT_GROUP.clear()
        if dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=_group())

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=_group())
        return cast(T, box[0])

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, by rank, on every rank."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=_group())
        return values

    def all_sum(self, values: Sequence[int]) -> list[int]:
        """The element-wise sum of ``values`` over the ranks."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.int64)
        dist.all_reduce(tensor, group=_group())
        return [int(v) for v in tensor.tolist()]

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0 alone; the other ranks wait and get its result."""
        return self.broadcast(work() if self.is_main else cast(T, None))

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it may write what the others then read). The block
        must hold no collective: the other ranks wait outside it."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def lock(self, run_dir: Path) -> contextlib.AbstractContextManager[Any]:
        """The run directory's lock, taken by rank 0 only (the others never write there)."""
        from lorakit._fs import RunLock

        return RunLock(run_dir) if self.is_main else contextlib.nullcontext()

    def check(self, training: TrainingSpec) -> None:
        """:func:`check_world` for this world and the GPUs this process sees."""
        if self.distributed:
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            check_world(training, self.size, gpus=gpus)

    def run_hooks(self, plugin_manager: Any) -> Any:
        """The plugins' hooks on rank 0; elsewhere a stand-in whose every call does nothing
        (trackers and reporters hear of the run once)."""
        return plugin_manager.hook if self.is_main else _NoHooks()

    def finished_run(self, run_dir: Path, model: Any, tokenizer: Any) -> RunResult:
        """On a rank other than 0 after training: wait until rank 0 has evaluated, saved and
        reported, and return the run as rank 0 wrote it (with this rank's model, which
        holds the same adapter)."""
        from lorakit.recipe import RunResult
        from lorakit.run_report import RunReport

        self.barrier()
        return RunResult(
            run_dir=run_dir,
            adapter_dir=run_dir / "adapter",
            report=RunReport.from_run_dir(run_dir),
            model=model,
            tokenizer=tokenizer,
        )

    def check_same(self, value: str, *, what: str, field: str) -> None:
        """Raise :class:`ConfigError` when a rank's ``value`` differs from rank 0's."""
        values = self.gather(value)
        differing = [rank for rank, v in enumerate(values) if v != values[0]]
        if differing:
            raise ConfigError(
                f"rank {differing[0]} prepared other {what} than rank 0",
                field=field,
                hint="every process must read the same files: use a path all of them see, "
                "and no source that changes between reads",
            )

    def peak_memory_gib(self) -> tuple[float, ...] | None:
        """Each rank's peak GPU memory allocated so far, in GiB, by rank (``None`` off a GPU)."""
        import torch

        if not torch.cuda.is_available():
            return None
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return tuple(self.gather(peak))

    def step_sync(self, stop: StopRequest, counter: TokenCounter) -> Any:
        """A ``TrainerCallback`` run at the end of every optimizer step: the real tokens of
        every rank are added to ``counter`` (so throughput and checkpoints count the whole
        job), and when any rank was asked to stop (Ctrl-C) every rank stops at this step."""
        from transformers import TrainerCallback

        world = self

        class StepSync(TrainerCallback):
            def __init__(self) -> None:
                self.synced = counter.session_tokens

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                local = counter.session_tokens - self.synced
                tokens, stops = world.all_sum([local, int(stop.requested)])
                counter.tokens += tokens - local
                counter.session_tokens += tokens - local
                self.synced = counter.session_tokens
                if stops:
                    stop.request()

        return StepSync()


class _NoHooks:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda **kwargs: None


def rank_batch(training: TrainingSpec, world_size: int) -> tuple[int, int]:
    """(items per micro-batch, micro-batches per step) of each of ``world_size`` processes
    that together train the recipe's global batch.

    The accumulation is shared out first (each rank keeps the micro-batch a single process
    trains, and so its memory); without packing, the micro-batch otherwise.

    Raises:
        ConfigError: ``world_size`` divides neither.
    """
    batch = 1 if training.packing else training.batch_size
    accum = training.grad_accum
    if accum % world_size == 0:
        return batch, accum // world_size
    if batch % world_size == 0:
        return batch // world_size, accum
    if training.packing:
        raise ConfigError(
            f"training.grad_accum={accum} packed micro-batches per step cannot be shared by "
            f"{world_size} processes",
            field="training.grad_accum",
            hint=f"set training.grad_accum to a multiple of {world_size} and divide "
            "training.tokens_per_batch by as much to keep the tokens per step, or run "
            "--nproc with a divisor of training.grad_accum",
        )
    raise ConfigError(
        f"training.batch_size={batch} x training.grad_accum={accum} examples per step cannot "
        f"be shared by {world_size} processes",
        field="training.grad_accum",
        hint=f"make training.grad_accum or training.batch_size a multiple of {world_size}, "
        "or run --nproc with a divisor of one of them",
    )


def check_world(training: TrainingSpec, world_size: int, *, gpus: int) -> None:
    """Refuse, in one line, what ``world_size`` processes cannot train (``gpus``: CUDA
    devices visible; 0 on a CPU, where gloo runs any number of processes)."""
    if training.distributed == "fsdp":  # see docs/multi-gpu.md: not run on GPUs yet
        raise ConfigError(
            "training.distributed=fsdp is not available yet: FSDP runs on CUDA GPUs only "
            "(accelerate has no CPU FSDP) and lorakit's FSDP-QLoRA path has not been run "
            "on several GPUs, so it is not shipped",
            field="training.distributed",
            hint="use training.distributed=ddp: each process holds the whole 4-bit model",
        )
    if gpus and world_size > gpus:
        raise ConfigError(
            f"--nproc {world_size} asks for more processes than the {gpus} GPUs visible",
            field="training.distributed",
            hint=f"run --nproc {gpus} or fewer (one process per GPU)",
        )
    rank_batch(training, world_size)


# --- launching -----------------------------------------------------------------------------

_TORCHRUN = "import sys; from lorakit.distributed import torchrun; sys.exit(torchrun(sys.argv[1:]))"


def worker_args(argv: Sequence[str], run_dir: Path) -> list[str]:
    """The command line of each rank: ``argv`` without ``--nproc``, with ``--run-dir``
    (every rank must write into the same, already chosen folder)."""
    out: list[str] = []
    skip = False
    has_run_dir = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        has_run_dir = has_run_dir or arg == "--run-dir" or arg.startswith("--run-dir=")
        out.append(arg)
    return out if has_run_dir else [*out, "--run-dir", str(run_dir)]


def check_launch(recipe: Recipe, nproc: int) -> None:
    """Refuse, before any process starts, a launch of ``nproc`` ranks that cannot run."""
    import torch

    world = World.from_env()
    if world.distributed:
        raise ConfigError(
            f"--nproc {nproc} starts processes, and this is already rank {world.rank} of "
            f"{world.size}",
            field="training.distributed",
            hint="drop --nproc when launching with torchrun yourself",
        )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    check_world(recipe.training, nproc, gpus=gpus)


def launch_train(recipe: Recipe, nproc: int, run_dir: str | None, argv: Sequence[str]) -> int:
    """``lorakit train`` (command line ``argv``) in ``nproc`` processes; the exit code.

    The recipe's problems and the batch's split are checked here first, once; the run
    directory is chosen here, so that every rank writes into the same one.
    """
    from lorakit.recipe import default_run_dir

    check_launch(recipe, nproc)
    problems = recipe.check()
    if problems:
        raise problems[0]
    folder = Path(run_dir) if run_dir is not None else default_run_dir(recipe.name)
    return launch(worker_args(argv, folder), nproc)


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``lorakit ARGV`` in ``nproc`` processes on this machine through torchrun
    (``torch.distributed.run``, standalone rendezvous) and return the job's exit code.

    Ctrl-C reaches torchrun, which passes it once to every rank: they stop together after
    the current step with a checkpoint (torchrun waits 30 s, then kills them).
    """
    command = [
        sys.executable,
        "-c",
        _TORCHRUN,
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--module",
        "lorakit",
        *argv,
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    process = subprocess.Popen(command, env=env)
    if threading.current_thread() is not threading.main_thread():
        return process.wait()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def torchrun(argv: Sequence[str]) -> int:
    """``torch.distributed.run`` with ``argv``; its multi-line failure report is replaced by
    one ``error:`` line for the rank that failed first (none when rank 0 printed its own).
    Returns the exit code for the whole job."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun's own log lines (its loggers set their own levels, so each one is quietened).
    ours = ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")
    for name in [*logging.Logger.manager.loggerDict, *ours]:
        if name.startswith(ours):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(argv)))
    except ChildFailedError as error:
        return _report_failure(error.failures)
    except SignalException as error:
        return 128 + int(error.sigval)
    return 0


def _recorded(failure: Any) -> str | None:
    data = failure.error_file_data
    return str(data["message"]) if isinstance(data, dict) and data.get("lorakit") else None


def _report_failure(failures: Mapping[int, Any]) -> int:
    main = failures.get(0)
    if main is not None and main.exitcode in (2, 130):
        return int(main.exitcode)  # rank 0 printed its own line (or the interruption)

    def cause(item: tuple[int, Any]) -> tuple[bool, bool, int, int]:
        rank, failure = item
        bystander = failure.exitcode in (PEER_STOPPED, -signal.SIGTERM)
        return bystander, _recorded(failure) is None, failure.timestamp, rank

    rank, failure = min(failures.items(), key=cause)
    message = _recorded(failure)
    if message is None:
        code = failure.exitcode
        how = (
            f"was killed by {failure.signal_name()}"
            if code < 0
            else f"stopped with exit code {code} (its output is above)"
        )
        message = LorakitError(
            f"rank {rank} {how}; torchrun stopped the other ranks",
            hint="run the same command again: the run resumes from its last complete checkpoint",
        ).format()
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def _record(message: str) -> None:
    """Leave ``message`` in torchrun's error file of this rank, for the one failure line."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(
            json.dumps({"message": message, "timestamp": int(time.time()), "lorakit": True}),
            encoding="utf-8",
        )


def _peer_lost(error: BaseException) -> bool:
    """True for the error a collective raises when another rank's process has gone."""
    try:
        from torch.distributed import DistError
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    text = str(error)
    return isinstance(error, DistError) or (
        isinstance(error, RuntimeError)
        and any(mark in text for mark in ("Connection closed by peer", "Connection reset"))
    )


@contextlib.contextmanager
def rank_errors(world: World) -> Iterator[None]:
    """Around a rank's run: one line for the whole job.

    Rank 0 raises as a single process does (the command line prints it); the other ranks
    leave their :class:`LorakitError` in torchrun's error file and exit quietly, and a
    rank whose collective failed because another rank's process has gone exits with
    :data:`PEER_STOPPED`, so that :func:`torchrun` names the rank that failed first. A
    rank that finished leaves the process group.
    """
    from lorakit.train import RunInterrupted

    try:
        yield
        world.close()
    except RunInterrupted:
        if world.is_main:
            raise
        raise SystemExit(130) from None
    except LorakitError as error:
        _record(error.format())
        if world.is_main:
            raise
        raise SystemExit(2) from None
    except Exception as error:
        if world.distributed and _peer_lost(error):
            raise SystemExit(PEER_STOPPED) from None
        raise
