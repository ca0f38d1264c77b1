"""Latency of one guard check (p50, p95, p99 in ms), one text at a time, as the answer path runs.

    python benchmarks/safety_guards.py [--data ../shared/data] [--n 300] [--threads 1]
        [--policy rules --policy default ...] [--classifier DIR]

Texts: a seeded mix of MedSafetyBench requests, MedQuAD questions and the look-unsafe general
prompts of tests/data. Each policy is warmed (its classifier's embedder loaded) before timing.
Prints one table. Rates (block / over-block with intervals) come from ``lorakit safety eval``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path

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
    print(f"{'policy':<44} {'stage':<7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name in policies:
        policy = name
        if args.classifier and name != "rules":
            policy = f"{name}+classifier:path={args.classifier}"
        guards = load_policy(policy)
        guards.warm()
        guards.check_input("warm up")
        for stage in ("input", "output"):
            if stage == "output" and not guards.output_guards:
                continue
            times = []
            for text in texts:
                started = time.perf_counter()
                if stage == "input":
                    guards.decide(guards.check_input(text))
                else:
                    guards.decide(guards.check_output(text, answer))
                times.append(1000 * (time.perf_counter() - started))
            print(
                f"{policy[:44]:<44} {stage:<7} {_percentile(times, 0.5):8.2f} "
                f"{_percentile(times, 0.95):8.2f} {_percentile(times, 0.99):8.2f} "
                f"{statistics.fmean(times):8.2f}"
            )


if __name__ == "__main__":
    main()
