"""The report of a finished run: the typed :class:`~lorakit.run_report.RunReport`, its
cost, the check of the best checkpoint, and the data and template hashes of the run card."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.errors import LorakitError

if TYPE_CHECKING:
    from lorakit.model import LoadedModel
    from lorakit.recipe import Recipe
    from lorakit.run_phases_train import TrainOutcome
    from lorakit.run_report import RunCost, RunReport
    from lorakit.runner import ModelSetup, RunContext, RunData
    from lorakit.train_data import TokenCounter

__all__ = [
    "build_report",
    "data_hash",
    "run_cost",
    "template_hash",
    "verify_best_checkpoint",
]


def build_report(
    ctx: RunContext,
    loaded: LoadedModel,
    setup: ModelSetup,
    data: RunData,
    before: Mapping[str, Any],
    outcome: TrainOutcome,
    results: Mapping[str, Any],
    benchmarks: Mapping[str, Any] | None,
) -> RunReport:
    """The typed report of the finished run."""
    from lorakit.recipe import versions
    from lorakit.run_report import EvalSummary, RunReport, TrainSummary

    records = _read_metrics(ctx.run_dir / "metrics.jsonl")
    after = results["after"]
    data_report = data.prepared.report.to_dict()
    return RunReport(
        status="complete",
        recipe=ctx.recipe.name,
        run_dir=str(ctx.run_dir),
        started=ctx.started.isoformat(timespec="seconds"),
        finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        resumed_from=outcome.resumed_from,
        steps=outcome.steps,
        train=TrainSummary.from_records(records, len(data.prepared.examples["train"])),
        eval=EvalSummary(
            loss_before=before["loss"],
            perplexity_before=before["perplexity"],
            loss=after["loss"],
            perplexity=after["perplexity"],
            tokens=after["tokens"],
        ),
        test=results["test"],
        eval_by_source=results.get("by_source"),
        benchmarks=benchmarks,
        best=results["best"],
        adapter={
            "path": str(ctx.run_dir / "adapter"),
            "targets": list(setup.targets),
            "trainable_parameters": sum(
                p.numel() for p in setup.model.parameters() if p.requires_grad
            ),
        },
        data={
            k: data_report[k] for k in ("rows_read", "rows_kept", "kind", "dropped", "split", "mix")
        },
        cost=run_cost(ctx, outcome.counter, outcome.peak_gpu_gib_by_rank),
        notes=tuple(ctx.notes),
        run_card={
            "versions": versions(),
            "device": loaded.device,
            "compute_dtype": loaded.compute_dtype,
            "data_hash": data.digest,
            "template_hash": template_hash(loaded.tokenizer, ctx.recipe),
        },
    )


def run_cost(
    ctx: RunContext,
    counter: TokenCounter | None,
    peak_by_rank: tuple[float, ...] | None = None,
) -> RunCost:
    """Tokens, throughput, wall time per phase (with ``train_evaluations``, the evaluations
    inside ``train``), the device and its peak memory; with several processes, their number
    and each one's peak GPU memory while training."""
    import torch

    from lorakit.run_report import RunCost

    gib = 2**30
    cuda = torch.cuda.is_available()
    wall = {k: round(v, 3) for k, v in ctx.wall_s.items()}
    if counter is not None and counter.eval_seconds:  # part of "train"
        wall["train_evaluations"] = round(counter.eval_seconds, 3)
    wall["total"] = round((dt.datetime.now(dt.timezone.utc) - ctx.started).total_seconds(), 3)
    rate = counter.rate() if counter is not None else None
    return RunCost(
        tokens_trained=counter.tokens if counter is not None else 0,
        tokens_per_s=round(rate, 1) if rate is not None else None,
        wall_s=wall,
        device=torch.cuda.get_device_name() if cuda else "cpu",
        peak_gpu_allocated_gib=round(torch.cuda.max_memory_allocated() / gib, 3) if cuda else None,
        peak_gpu_reserved_gib=round(torch.cuda.max_memory_reserved() / gib, 3) if cuda else None,
        world_size=ctx.world.size,
        peak_gpu_allocated_gib_by_rank=peak_by_rank if ctx.world.distributed else None,
    )


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def verify_best_checkpoint(outcome: TrainOutcome, model: Any) -> dict[str, Any]:
    """Check that the adapter in memory equals the best checkpoint's adapter, bit for bit."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lorakit.checkpoints import checkpoint_step

    best_dir = outcome.best_checkpoint
    if best_dir is None:
        raise LorakitError(
            "training kept no best checkpoint", hint="set training.eval_steps below the run's steps"
        )
    saved = load_file(str(Path(best_dir) / "adapter_model.safetensors"))
    current = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    mismatched = [
        k
        for k, v in saved.items()
        if k not in current or not torch.equal(current[k].to(v.dtype), v)
    ]
    if mismatched or len(saved) != len(current):
        raise LorakitError(
            f"the adapter in memory differs from the best checkpoint {best_dir} in {len(mismatched)} tensors",
            hint="this is a bug in checkpoint loading; the checkpoints are intact on disk",
        )
    return {
        "checkpoint": Path(best_dir).name,
        "step": checkpoint_step(best_dir),
        "eval_loss": outcome.best_metric,
        "verified": True,
        "tensors_compared": len(saved),
    }


def data_hash(examples: Mapping[str, list[Any]]) -> str:
    """SHA-256 over the token ids and labels of every split, in order."""
    digest = hashlib.sha256()
    for name in sorted(examples):
        digest.update(name.encode())
        for example in examples[name]:
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()


def template_hash(tokenizer: Any, recipe: Recipe) -> str:
    """SHA-256 over the tokenizer's chat template and the recipe's template settings."""
    text = json.dumps(
        {
            "chat_template": getattr(tokenizer, "chat_template", None),
            "template": recipe.data.template,
            "options": dict(recipe.data.template_options),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()
