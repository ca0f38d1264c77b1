"""Kernel table of one-token decode steps on the full-size Phi-3-mini (random weights, bf16,
LoRA r16 as PEFT loads it): eager steps with transformers' dynamic cache, batch 1 and 32,
5 steps each, sorted by GPU time. Shows what a step spends its time on besides the weights::

    python3 benchmarks/decode_profile.py > profile.txt
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from generation_speed import build_mini, prompts


def main() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile

    from lorakit.model import ModelSpec, QuantSpec, load_hf_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_mini(Path(tmp))
        spec = ModelSpec(
            name=str(folder), quant=QuantSpec(method="none"), attn_implementation="sdpa"
        )
        config = LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            init_lora_weights=False,
        )
        model = get_peft_model(load_hf_model(spec).model, config).eval()
        for batch in (1, 32):
            ids = torch.tensor(prompts(batch, 256, 32000, 0), device="cuda")
            with torch.inference_mode():
                out = model(input_ids=ids, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1:].argmax(-1)
                for _ in range(3):
                    model(input_ids=token, past_key_values=past, use_cache=True)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        model(input_ids=token, past_key_values=past, use_cache=True)
                    torch.cuda.synchronize()
            print(f"=== batch {batch}")
            table = prof.key_averages().table(
                sort_by="cuda_time_total", row_limit=22, max_name_column_width=70
            )
            print(table)


if __name__ == "__main__":
    main()
