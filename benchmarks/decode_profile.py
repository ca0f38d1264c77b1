"""Kernel table of one-token decode steps on the full-size Phi-3-mini (random weights, bf16,
LoRA r16 as PEFT loads it): eager steps with transformers' dynamic cache, batch 1 and 32,
5 steps each, sorted by GPU time. Shows what a step spends its time on besides the weights::

    python3 benchmarks/decode_profile.py > profile.txt

``--size tiny`` profiles the tiny Phi-3 instead (on the CPU: CPU time), to try the script.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from generation_speed import build_mini, prompts

from lorakit.model import TINY_PHI3


def main() -> None:
    import argparse

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile

    from lorakit.model import ModelSpec, QuantSpec, load_hf_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["mini", "tiny"], default="mini")
    size = parser.parse_args().size
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    activity, column = (
        (ProfilerActivity.CUDA, "cuda_time_total")
        if cuda
        else (ProfilerActivity.CPU, "cpu_time_total")
    )
    with tempfile.TemporaryDirectory() as tmp:
        name = str(build_mini(Path(tmp))) if size == "mini" else TINY_PHI3
        spec = ModelSpec(name=name, quant=QuantSpec(method="none"), attn_implementation="sdpa")
        config = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            init_lora_weights=False,
        )
        model = get_peft_model(load_hf_model(spec).model, config).eval()
        for batch in (1, 32):
            vocab = min(32000, model.config.vocab_size)
            ids = torch.tensor(prompts(batch, 256, vocab, 0), device=device)
            with torch.inference_mode():
                out = model(input_ids=ids, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1:].argmax(-1)
                for _ in range(3):
                    model(input_ids=token, past_key_values=past, use_cache=True)
                if cuda:
                    torch.cuda.synchronize()
                with profile(activities=[activity]) as prof:
                    for _ in range(5):
                        model(input_ids=token, past_key_values=past, use_cache=True)
                    if cuda:
                        torch.cuda.synchronize()
            print(f"=== batch {batch}")
            table = prof.key_averages().table(
                sort_by=column, row_limit=22, max_name_column_width=70
            )
            print(table)


if __name__ == "__main__":
    main()
