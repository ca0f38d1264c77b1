"""Rows/s for reading, cleaning and tokenising all of MedQuAD with the tiny Phi-3 tokenizer.

    python benchmarks/data_pipeline.py [--data ../shared/data/medquad] [--repeat 3]

Prints one table (best of --repeat runs per stage) and the end-to-end figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "medquad"
    parser.add_argument("--data", type=Path, default=default.resolve())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"MedQuAD not found at {args.data}; pass --data DIR")

    from transformers import AutoTokenizer

    from lorakit import __version__
    from lorakit.data.cleaners import DEFAULT_CLEANERS, clean_rows
    from lorakit.data.pipeline import DataSpec, read_rows
    from lorakit.data.tokenize import TokenizeSpec, ensure_pad_token, tokenize_rows
    from lorakit.plugins import Registries
    from lorakit.testing import tiny_phi3_path

    registries = Registries.from_plugin_manager()
    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3_path())
    ensure_pad_token(tokenizer)
    template = registries.templates.resolve("qa")()
    spec = DataSpec(source=f"medquad:{args.data}")

    best: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        rows = read_rows(spec, registries=registries)
        t1 = time.perf_counter()
        kept, _report = clean_rows(rows, DEFAULT_CLEANERS, registries.cleaners)
        t2 = time.perf_counter()
        examples, _tok = tokenize_rows(kept, tokenizer, template, TokenizeSpec())
        t3 = time.perf_counter()
        for stage, seconds, n in (
            ("read", t1 - t0, len(rows)),
            ("clean", t2 - t1, len(rows)),
            ("tokenise", t3 - t2, len(kept)),
            ("end to end", t3 - t0, len(rows)),
        ):
            best[stage] = min(best.get(stage, float("inf")), seconds)
            counts[stage] = n

    print(
        f"lorakit {__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, {args.data}"
    )
    print(f"{'stage':<12}{'rows':>10}{'seconds':>10}{'rows/s':>12}")
    for stage, seconds in best.items():
        print(f"{stage:<12}{counts[stage]:>10,}{seconds:>10.2f}{counts[stage] / seconds:>12,.0f}")
    print(f"best of {args.repeat}; {len(examples):,} examples from {counts['read']:,} rows")


if __name__ == "__main__":
    main()
