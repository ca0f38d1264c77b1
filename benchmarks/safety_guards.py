"""Latency of one guard check (p50, p95, p99 in ms), one text at a time, as the answer path runs.

    python benchmarks/safety_guards.py [--data ../shared/data] [--n 300] [--threads 1]
        [--policy rules --policy default ...] [--classifier DIR] [--no-baseline]

Texts: a seeded mix of MedSafetyBench requests, MedQuAD questions and the look-unsafe general
prompts of tests/data. Each policy is warmed (its classifier's embedder loaded) before timing.
Prints one table. Rates (block / over-block with intervals) come from ``lorakit safety eval``.

The machine may be shared: besides absolute times, every policy with a classifier is timed
against a **baseline in the same run**: the same policy with its classifier's embedder in
float32 (``quantize="none"``), the two checks interleaved text by text (alternating which goes
first), so that load from other work hits both alike. The ``vs float32`` column is the ratio of
the policy's time to the baseline's at the same percentile.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=(ROOT / ".." / "shared" / "data").resolve())
    parser.add_argument("--n", type=int, default=300, help="texts timed per policy")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--policy", action="append", help="policies to time")
    parser.add_argument("--classifier", help="a classifier folder (replaces the shipped one)")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the float32 baseline of each classifier"
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"shared data not found at {args.data}; pass --data DIR")

    import torch

    from lorakit import __version__
    from lorakit.safety import load_policy
    from lorakit.safety.evaluate import read_prompts

    torch.set_num_threads(args.threads)
    texts = [
        p.text for p in read_prompts(f"medsafetybench:{args.data / 'medsafetybench' / 'train'}")
    ]
    texts += [p.text for p in read_prompts(f"medquad:{args.data / 'medquad' / '2_GARD_QA'}#1000")]
    texts += [
        p.text for p in read_prompts(f"lines:{ROOT / 'tests' / 'data' / 'look_unsafe_prompts.txt'}")
    ]
    random.Random(0).shuffle(texts)
    texts = texts[: args.n]
    answer = "Ibuprofen can help. Take 400 mg every 6 hours with food, at most 1200 mg a day."
    policies = args.policy or ["rules", "classifier", "default"]
    print(
        f"lorakit {__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.threads} torch thread(s), {len(texts)} texts"
    )
    print(
        f"{'policy':<44} {'stage':<7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8}"
        f" {'vs float32 (p50/p95/mean)':>26}"
    )
    for name in policies:
        policy = name
        if args.classifier and name != "rules":
            policy = f"{name}+classifier:path={args.classifier}"
        guards = load_policy(policy)
        baseline = None if args.no_baseline else _float32_baseline(policy)
        for g in (guards, baseline):
            if g is not None:
                g.warm()
                g.check_input("warm up")
        for stage in ("input", "output"):
            if stage == "output" and not guards.output_guards:
                continue
            times, base = _time(guards, baseline, texts, stage, answer)
            ratio = ""
            if base:
                ratio = (
                    "/".join(
                        f"{_percentile(times, q) / _percentile(base, q):.2f}" for q in (0.5, 0.95)
                    )
                    + f"/{statistics.fmean(times) / statistics.fmean(base):.2f}"
                )
            print(
                f"{policy[:44]:<44} {stage:<7} {_percentile(times, 0.5):8.2f} "
                f"{_percentile(times, 0.95):8.2f} {_percentile(times, 0.99):8.2f} "
                f"{statistics.fmean(times):8.2f} {ratio:>26}"
            )
            if base:
                label = f"{policy[:34]} (float32)"
                print(
                    f"{label[:44]:<44} {stage:<7} {_percentile(base, 0.5):8.2f} "
                    f"{_percentile(base, 0.95):8.2f} {_percentile(base, 0.99):8.2f} "
                    f"{statistics.fmean(base):8.2f} {'1.00/1.00/1.00':>26}"
                )


def _float32_baseline(policy: str) -> Any:
    """The policy with its classifier's embedder in float32, or ``None`` when it has no
    quantised classifier."""
    import attrs

    from lorakit.safety import load_policy

    guards = load_policy(policy)
    found = False
    for guard in guards.input_guards:
        model = getattr(guard, "model", None)
        if guard.name == "classifier" and model is not None and model.quantize != "none":
            guard.model = attrs.evolve(model, quantize="none")  # type: ignore[attr-defined]
            found = True
    return guards if found else None


def _check(guards: Any, text: str, stage: str, answer: str) -> float:
    started = time.perf_counter()
    if stage == "input":
        guards.decide(guards.check_input(text))
    else:
        guards.decide(guards.check_output(text, answer))
    return 1000 * (time.perf_counter() - started)


def _time(
    guards: Any, baseline: Any, texts: list[str], stage: str, answer: str
) -> tuple[list[float], list[float]]:
    """Per-text times of ``guards`` and, interleaved (alternating first), of ``baseline``."""
    times: list[float] = []
    base: list[float] = []
    for i, text in enumerate(texts):
        if baseline is None or stage == "output":
            times.append(_check(guards, text, stage, answer))
        elif i % 2:
            times.append(_check(guards, text, stage, answer))
            base.append(_check(baseline, text, stage, answer))
        else:
            base.append(_check(baseline, text, stage, answer))
            times.append(_check(guards, text, stage, answer))
    return times, base


if __name__ == "__main__":
    main()
