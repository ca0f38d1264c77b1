"""``lorakit serve --engine vllm``: the production engine, vLLM's OpenAI server, with the runs'
adapters as LoRA modules.

vLLM cannot be installed on every machine (it needs a CUDA GPU); :func:`vllm_command` builds
the command and :func:`check_vllm_adapter` checks, without vLLM, that an adapter folder is one
vLLM's LoRA loader accepts for the base architecture. The rules come from vLLM's source:

* Phi-3 (``vllm/model_executor/models/phi3.py``) keeps its fused projections fused: its
  ``packed_modules_mapping`` is ``{"qkv_proj": ["qkv_proj"], "gate_up_proj": ["gate_up_proj"]}``,
  and the other LoRA-able layers are ``o_proj`` and ``down_proj``. A LoRA on ``q_proj`` (a
  Llama name) is refused with "expected target modules in [...] but received [...]".
* tensors are named ``base_model.model.<module path>.lora_A.weight`` / ``lora_B.weight``
  (PEFT's ``save_pretrained``);
* the rank must be at most ``--max-lora-rank``, one of 1, 8, 16, 32, 64, 128, 256, 320, 512;
* DoRA and LoRA biases are not supported; ``modules_to_save`` only for ``lm_head`` and
  ``embed_tokens``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

__all__ = ["VLLM_LORA_MODULES", "VLLM_LORA_RANKS", "check_vllm_adapter", "vllm_command"]

VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    "llama": frozenset(
        {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    ),
}
"""The module names vLLM applies LoRA to, per ``model_type`` (besides lm_head/embed_tokens)."""

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for ``--max-lora-rank``."""

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<kind>lora_A|lora_B)\.weight$")


def _config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the adapter config: {exc}", file=str(path), field="adapter"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("not a JSON object", file=str(path), field="adapter")
    return data


def check_vllm_adapter(adapter_dir: str | Path, model_type: str = "phi3") -> list[str]:
    """The reasons vLLM's LoRA loader would refuse this adapter (empty: it loads).

    Args:
        adapter_dir: a PEFT adapter folder (``RUN_DIR/adapter``).
        model_type: the base model's ``model_type`` (``phi3``, ``llama``).
    """
    from lorakit.evaluate.adapter_check import adapter_tensor_shapes

    folder = Path(adapter_dir)
    config = _config(folder)
    problems = []
    allowed = VLLM_LORA_MODULES.get(model_type)
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, vLLM loads LORA")
    if config.get("use_dora"):
        problems.append("DoRA adapters (use_dora) are not supported by vLLM")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("LoRA biases are not supported by vLLM")
    rank = config.get("r")
    ranks = [rank, *dict(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and 0 < r <= max(VLLM_LORA_RANKS) for r in ranks):
        problems.append(
            f"rank {rank} is above vLLM's largest --max-lora-rank {max(VLLM_LORA_RANKS)}"
        )
    saved = set(config.get("modules_to_save") or ())
    if saved - {"lm_head", "embed_tokens"}:
        problems.append(
            f"modules_to_save {sorted(saved)}: vLLM takes only lm_head and embed_tokens"
        )
    shapes = adapter_tensor_shapes(folder)
    if not shapes:
        problems.append("no adapter_model.safetensors")
    modules = set()
    for key in shapes:
        match = _KEY.match(key)
        if match is None:
            if not any(
                key.startswith(f"base_model.model.{m}") for m in ("lm_head", "model.embed_tokens")
            ):
                problems.append(
                    f"tensor {key!r} is not named base_model.model.<module>.lora_A/B.weight"
                )
            continue
        modules.add(match["module"].rsplit(".", 1)[-1])
    if allowed is not None:
        unexpected = sorted(modules - allowed)
        if unexpected:
            problems.append(
                f"vLLM's {model_type} LoRA layers are {sorted(allowed)}; the adapter has "
                f"{unexpected}"
            )
        targets = config.get("target_modules")
        if isinstance(targets, list) and set(targets) - allowed:
            problems.append(
                f"target_modules {sorted(set(targets) - allowed)} are not vLLM's {model_type} layers"
            )
    return problems


def vllm_command(
    base: str,
    adapters: dict[str, str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_model_len: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` command serving ``base`` with each adapter as a LoRA module.

    ``--max-lora-rank`` is the smallest value vLLM accepts that holds every adapter's rank.
    The base model loads in its own dtype (bf16): vLLM applies the LoRA on the full-precision
    base, not on the 4-bit base the QLoRA adapter was trained on (see the docs' "merge" section
    for what that changes).
    """
    rank = 1
    for path in adapters.values():
        config = _config(Path(path))
        ranks = [config.get("r", 8), *dict(config.get("rank_pattern") or {}).values()]
        rank = max(rank, *[int(r) for r in ranks])
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), VLLM_LORA_RANKS[-1])
    command = [
        "vllm",
        "serve",
        base,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        str(max_rank),
        "--max-loras",
        str(max(1, len(adapters))),
        "--lora-modules",
        *[f"{name}={Path(path).resolve()}" for name, path in adapters.items()],
    ]
    if api_key:
        command += ["--api-key", api_key]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    return [*command, *extra]
