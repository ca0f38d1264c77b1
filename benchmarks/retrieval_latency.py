"""Latency of one query against a built index: lexical, dense and fused, query embedding
included, on MedQuAD questions (a seeded sample), with the machine's load average.

    python benchmarks/retrieval_latency.py INDEX_DIR [--data ../shared/data] [--n 300]

Build the index first (``lorakit index build medquad:../shared/data/medquad --out INDEX_DIR``
or ``benchmarks/retrieval.py``, which keeps it under its --work folder).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
    parser.add_argument("index", type=Path)
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    from lorakit.data.sources import read_source
    from lorakit.retrieval import load_index

    questions = [row.question for row in read_source(f"medquad:{args.data / 'medquad'}")]
    random.Random(0).shuffle(questions)
    sample = questions[: args.n]
    index = load_index(args.index)
    index.search(sample[0], k=args.k)  # warm-up: model load, first-call costs
    times: dict[str, list[float]] = {"lexical": [], "dense": [], "fused": []}
    for question in sample:  # modes interleaved: a busy machine slows all three alike
        for mode, kept in times.items():
            started = time.perf_counter()
            index.search(question, k=args.k, mode=mode)  # type: ignore[arg-type]
            kept.append((time.perf_counter() - started) * 1000)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    result = {
        "passages": len(index),
        "queries": len(sample),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "latency_ms": {m: {"p50": pct(v, 0.5), "p95": pct(v, 0.95)} for m, v in times.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
