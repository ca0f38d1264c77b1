"""Generation speed: new tokens per second at several batch sizes, plain ``generate`` against
``generate`` with a static KV cache and lorakit's serving decode loop (lorakit.decoding.decode),
in the same process on the same model with a LoRA adapter attached (what is served).

CPU, tiny model (seconds)::

    python benchmarks/generation_speed.py --size tiny --batches 1,8 --prompt-len 32 --new-tokens 16

H200, full-size Phi-3-mini with random weights (bf16, then 4-bit)::

    python benchmarks/generation_speed.py --size mini --quant none --batches 1,8,32
    python benchmarks/generation_speed.py --size mini --quant nf4 --batches 1,8,32

Modes: ``generate``, ``static`` (``generate`` with ``cache_implementation="static"``),
``lorakit`` (the serving path) and ``compiled`` (the serving path with
``LORAKIT_COMPILE_DECODE=1``); ``--merge`` merges the adapter into the bf16 weights first.
Prompts are random token ids (no stop token), greedy decoding; tokens/s counts the new tokens
actually generated (a row that hits a stop token early counts fewer). Prints one table and,
with ``--out``, writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from lorakit.testing import PHI3_MINI_CONFIG


def build_mini(folder: Path) -> Path:
    """A full-size Phi-3-mini with random weights (bf16), saved with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from lorakit.testing import tiny_phi3_path

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Phi3ForCausalLM(Phi3Config(**PHI3_MINI_CONFIG)).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_phi3_path()).save_pretrained(folder)
    del model
    return folder


def load(size: str, quant: str, folder: Path, rank: int) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model

    from lorakit.model import TINY_PHI3, ModelSpec, QuantSpec, load_hf_model
    from lorakit.run_source import adapters_to_compute_dtype

    name = TINY_PHI3 if size == "tiny" else str(build_mini(folder))
    loaded = load_hf_model(
        ModelSpec(name=name, quant=QuantSpec(method=quant), attn_implementation="sdpa")  # type: ignore[arg-type]
    )
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        init_lora_weights=False,  # non-zero: the adapter's work is really done
    )
    model = get_peft_model(loaded.model, config)
    adapters_to_compute_dtype(model)  # as lorakit's answer path loads adapters
    model.eval()
    return model, loaded.tokenizer


def prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, min(vocab, 32000) - 1, (batch, length), generator=g).tolist()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_generate(model: Any, tokenizer: Any, ids: list[list[int]], new: int, static: bool) -> int:
    import torch

    device = next(model.parameters()).device
    input_ids = torch.tensor(ids, device=device)
    kwargs: dict[str, Any] = {"cache_implementation": "static"} if static else {}
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    return int(out[:, input_ids.shape[1] :].numel())


def run_lorakit(model: Any, tokenizer: Any, ids: list[list[int]], new: int) -> int:
    from lorakit.decoding import SamplingSpec, decode

    results = decode(model, tokenizer, ids, SamplingSpec(max_new_tokens=new))
    return sum(len(r.token_ids) for r in results)


def run_lorakit_compiled(model: Any, tokenizer: Any, ids: list[list[int]], new: int) -> int:
    import os

    os.environ["LORAKIT_COMPILE_DECODE"] = "1"
    try:
        return run_lorakit(model, tokenizer, ids, new)
    finally:
        del os.environ["LORAKIT_COMPILE_DECODE"]


MODES = {
    "generate": lambda m, t, i, n: run_generate(m, t, i, n, static=False),
    "static": lambda m, t, i, n: run_generate(m, t, i, n, static=True),
    "lorakit": run_lorakit,
    "compiled": run_lorakit_compiled,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "mini"], default="tiny")
    parser.add_argument("--quant", choices=["none", "nf4"], default="none")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--modes", default="generate,static,lorakit")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per cell (best kept)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge the adapter into the bf16 weights first (what `lorakit merge` serves)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load(args.size, args.quant, Path(tmp), args.rank)
        if args.merge:
            model.merge_adapter()
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        rows = []
        for batch in [int(b) for b in args.batches.split(",")]:
            ids = prompts(batch, args.prompt_len, len(tokenizer), seed=batch)
            for mode in args.modes.split(","):
                fn = MODES[mode]
                sync()
                start = time.perf_counter()
                fn(model, tokenizer, ids, min(4, args.new_tokens))  # warm-up (compiles, caches)
                sync()
                warmup = time.perf_counter() - start
                best = None
                for _ in range(args.repeats):
                    sync()
                    start = time.perf_counter()
                    made = fn(model, tokenizer, ids, args.new_tokens)
                    sync()
                    seconds = time.perf_counter() - start
                    rate = made / seconds
                    best = rate if best is None or rate > best else best
                row = {
                    "batch": batch,
                    "mode": mode,
                    "new_tokens_per_s": round(best or 0, 1),
                    "warmup_s": round(warmup, 1),
                }
                # which decoding path ran: graph, static or dynamic
                if mode in ("lorakit", "compiled"):
                    from lorakit.decoding import last_decode_info

                    row["decode"] = last_decode_info()
                rows.append(row)
                print(
                    f"batch {batch:>3} {mode:>9}: {best:,.1f} new tokens/s {row.get('decode', '')}"
                )
    header = (
        f"{args.size} Phi-3 ({args.quant}, LoRA r{args.rank}{' merged' if args.merge else ''}) "
        f"on {device}; prompt "
        f"{args.prompt_len}, {args.new_tokens} new tokens, greedy; best of {args.repeats}"
    )
    print(f"\n{header}\n\n| batch | " + " | ".join(args.modes.split(",")) + " |")
    print("|---" * (1 + len(args.modes.split(","))) + "|")
    for batch in sorted({r["batch"] for r in rows}):
        cells = [f"{r['new_tokens_per_s']:,.1f}" for r in rows if r["batch"] == batch]
        print(f"| {batch} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"setup": header, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
