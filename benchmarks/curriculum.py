"""Eval loss at equal training tokens: data.order shuffle vs length_curriculum (tiny Phi-3, CPU).

    python benchmarks/curriculum.py [--data ../shared/data/medquad/3_GHR_QA] [--seeds 0 1 2]
        [--rows 600] [--tokens 16000] [--steps 48] [--out benchmarks/results]

Each arm trains the same recipe (``medqa_phi3_tiny`` on real MedQuAD rows, packed) through
the runner's phases, stops at the first optimizer step where the real tokens trained reach
``--tokens``, and scores the answer-only eval loss of that adapter (no best-checkpoint
selection). The curriculum ramps over ``data.curriculum_share`` of ``--steps``. Writes
``DATE-curriculum-cpu.json`` and ``.md`` with each run, the mean and the spread over seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ARMS = ("shuffle", "length_curriculum")


def stop_at_tokens(budget: int, counter: dict[str, Any]) -> Any:
    """A callback stopping training once ``counter["trainer"]`` has trained ``budget`` tokens."""
    from transformers import TrainerCallback

    class StopAtTokens(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if counter["trainer"].lorakit_counter.tokens >= budget:
                control.should_training_stop = True

    return StopAtTokens()


def one_run(recipe: Any, budget: int) -> dict[str, Any]:
    """Train ``recipe`` to ``budget`` tokens with the runner's phases; the eval loss there."""
    from lorakit import runner

    with tempfile.TemporaryDirectory(prefix="lorakit-curriculum-") as tmp:
        ctx = runner.open_run(recipe, Path(tmp) / "run", show_progress=False)
        runner.preflight(ctx)
        loaded = runner.load_model(ctx)
        data = runner.prepare_run_data(ctx, loaded.tokenizer)
        setup = runner.setup_model(ctx, loaded)
        holder: dict[str, Any] = {}
        trainer = runner.build_trainer(
            ctx,
            setup,
            data.prepared.examples["train"],
            data.eval_examples,
            callbacks=[stop_at_tokens(budget, holder)],
        )
        holder["trainer"] = trainer
        started = time.perf_counter()
        outcome = runner.train(ctx, trainer)
        seconds = time.perf_counter() - started
        results = runner.evaluate(ctx, setup, data, outcome)
    return {
        "steps": outcome.steps,
        "tokens": outcome.counter.tokens,
        "eval_loss": results["after"]["loss"],
        "eval_tokens": results["after"]["tokens"],
        "train_s": round(seconds, 1),
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    parser.add_argument("--data", type=Path, default=(shared / "medquad" / "3_GHR_QA").resolve())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--tokens", type=int, default=16000)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"MedQuAD not found at {args.data}; pass --data DIR")

    import torch

    from lorakit import __version__
    from lorakit.presets import medqa_phi3_tiny

    torch.set_num_threads(2)
    base = medqa_phi3_tiny.with_overrides(
        {
            "data.source": f"medquad:{args.data}",
            "data.fields": "",
            "data.limit": args.rows,
            "data.split.group_by": "group+focus",
            "data.curriculum_share": args.share,
            "training.max_steps": args.steps,
            "training.load_best": False,
            "training.eval_steps": 10 * args.steps,
            "training.save_steps": 10 * args.steps,
        }
    )
    runs = []
    for seed in args.seeds:
        for arm in ARMS:
            recipe = base.with_overrides({"data.order": arm, "training.seed": seed})
            result = {"order": arm, "seed": seed, **one_run(recipe, args.tokens)}
            print(json.dumps(result), flush=True)
            runs.append(result)
    by_arm = {arm: [r for r in runs if r["order"] == arm] for arm in ARMS}
    deltas = [
        c["eval_loss"] - s["eval_loss"]
        for s, c in zip(by_arm["shuffle"], by_arm["length_curriculum"], strict=True)
    ]
    report = {
        "benchmark": "curriculum",
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/curriculum.py "
        + f"--rows {args.rows} --tokens {args.tokens} --steps {args.steps} --share {args.share} "
        + "--seeds "
        + " ".join(map(str, args.seeds)),
        "data": str(args.data.name),
        "model": "tiny-phi3 (random init, lorakit.testing), 4-bit NF4 on the CPU",
        "lorakit": __version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "token_budget": args.tokens,
        "runs": runs,
        "eval_loss": {arm: summary([r["eval_loss"] for r in rs]) for arm, rs in by_arm.items()},
        "tokens": {arm: summary([float(r["tokens"]) for r in rs]) for arm, rs in by_arm.items()},
        "curriculum_minus_shuffle": summary(deltas),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{report['date']}-curriculum-cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Curriculum vs shuffle at equal training tokens ({report['date']}, CPU)",
        "",
        f"`{report['command']}`: {report['model']}, MedQuAD {report['data']}, "
        f"stop at {report['token_budget']:,} real tokens trained.",
        "",
        "| order | seed | steps | tokens trained | eval loss |",
        "|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        lines.append(
            f"| {run['order']} | {run['seed']} | {run['steps']} | {run['tokens']:,} | "
            f"{run['eval_loss']:.4f} |"
        )
    lines += ["", "| order | eval loss mean | sd | min | max |", "|---|---|---|---|---|"]
    for arm, s in report["eval_loss"].items():
        lines.append(
            f"| {arm} | {s['mean']:.4f} | {s['sd']:.4f} | {s['min']:.4f} | {s['max']:.4f} |"
        )
    d = report["curriculum_minus_shuffle"]
    lines += [
        "",
        f"Curriculum minus shuffle, paired by seed: {d['mean']:+.4f} "
        f"(sd {d['sd']:.4f}, from {d['min']:+.4f} to {d['max']:+.4f}).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
