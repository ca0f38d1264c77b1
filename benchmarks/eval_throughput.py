"""Items/s of multiple-choice benchmark scoring (log-likelihood, batched, length-sorted).

    python benchmarks/eval_throughput.py [--model tiny-phi3|random-phi3-mini|PATH]
        [--bench medqa:PATH] [--limit 200] [--batch-size 8] [--device auto|cpu|cuda]
        [--dtype auto|float32|bfloat16|float16] [--shots 0] [--choices letters|texts]
        [--mode loglikelihood|generate] [--tokenizer PATH]

``--model random-phi3-mini`` builds Phi-3-mini-4k-instruct's architecture (3.8 B parameters,
32 layers, hidden 3072, vocabulary 32064) with random weights directly on the device, so the
figure needs no download; its tokenizer is the tiny Phi-3's (``--tokenizer`` to change it),
whose smaller vocabulary makes sequences longer than the real tokenizer's (a conservative
figure). The first few items are scored once as a warm-up and not timed.

Prints one JSON line: the benchmark, model, device, dtype, items, requests, forward rows,
seconds, ``items_per_s`` and ``requests_per_s``, accuracy, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from lorakit.testing import PHI3_MINI_CONFIG

DEFAULT_BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "medqa"


def _load(args: argparse.Namespace, device: str, dtype: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from lorakit.model import resolve_model_path
    from lorakit.testing import tiny_phi3_path

    if args.model == "random-phi3-mini":
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or tiny_phi3_path())
        config = Phi3Config(
            **{
                **PHI3_MINI_CONFIG,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            }
        )
        config._attn_implementation = args.attn
        torch.manual_seed(0)
        with torch.device(device):
            model = Phi3ForCausalLM(config).to(dtype)
        return model.eval(), tokenizer
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation=args.attn, device_map={"": device}
    )
    return model.eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-phi3")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument(
        "--bench", default=f"medqa:{(DEFAULT_BENCH / 'us_4_options_sample.jsonl').resolve()}"
    )
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16")
    )
    parser.add_argument("--shots", type=int, default=None)
    parser.add_argument("--choices", default=None, choices=("letters", "texts"))
    parser.add_argument("--mode", default="loglikelihood", choices=("loglikelihood", "generate"))
    parser.add_argument("--attn", default="sdpa")
    parser.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()

    import attrs
    import torch
    import transformers

    from lorakit import __version__
    from lorakit.evaluate.benchmarks import load_benchmark, parse_bench, run_benchmark
    from lorakit.evaluate.spec import BenchSpec

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = args.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)

    bench, location = parse_bench(args.bench)
    items, _pool = load_benchmark(bench, location, limit=args.limit)
    t0 = time.perf_counter()
    model, tokenizer = _load(args, device, dtype)
    load_seconds = time.perf_counter() - t0
    spec = BenchSpec(
        shots=args.shots, choices=args.choices, mode=args.mode, batch_size=args.batch_size
    )
    if args.warmup:
        warmup = attrs.evolve(spec, limit=min(args.warmup, len(items)))
        run_benchmark(model, tokenizer, bench, location, warmup)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = run_benchmark(model, tokenizer, bench, location, attrs.evolve(spec, limit=args.limit))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    extra = result.metric.extra
    params = sum(p.numel() for p in model.parameters())
    record = {
        "bench": bench.name,
        "model": args.model,
        "parameters": params,
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "mode": result.mode,
        "choices": result.choices,
        "shots": result.shots,
        "batch_size": args.batch_size,
        "n": result.n,
        "requests": extra.get("requests"),
        "forward_rows": extra.get("forward_rows"),
        "seconds": round(result.seconds, 3),
        "items_per_s": round(result.items_per_second, 2),
        "requests_per_s": round(extra["requests"] / result.seconds, 2)
        if "requests" in extra
        else None,
        "accuracy": result.accuracy,
        "load_seconds": round(load_seconds, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.startswith("cuda")
        else None,
        "versions": {
            "lorakit": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
