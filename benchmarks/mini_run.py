"""A run directory for the full-size Phi-3-mini architecture with random weights, without
training, for speed and load tests on a GPU (no hub needed): ``mini/`` (the checkpoint, bf16,
the tiny tokenizer) and ``mini-run/`` (``recipe.json`` of ``medqa_phi3`` on that checkpoint, and
a non-zero LoRA adapter on every linear layer, r16).

    python benchmarks/mini_run.py OUT_DIR
    python benchmarks/serve_load.py --run-dir OUT_DIR/mini-run --max-batch 32 --max-tokens 64
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from generation_speed import build_mini

    from lorakit._fs import write_json_atomic
    from lorakit.presets import medqa_phi3
    from lorakit.recipe import recipe_hash

    mini = out / "mini"
    mini.mkdir(parents=True, exist_ok=True)
    build_mini(mini)
    run = out / "mini-run"
    run.mkdir(parents=True, exist_ok=True)
    recipe = medqa_phi3.with_overrides({"model.name": str(mini)})
    write_json_atomic(
        run / "recipe.json", {"hash": recipe_hash(recipe), "recipe": recipe.to_dict()}
    )
    model = AutoModelForCausalLM.from_pretrained(mini, dtype=torch.bfloat16)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        init_lora_weights=False,
        target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    )
    get_peft_model(model, config).save_pretrained(run / "adapter")
    return run


if __name__ == "__main__":
    print("run directory:", main(Path(sys.argv[1])))
