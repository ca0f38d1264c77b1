"""LoRA adapters: ``AdapterSpec`` and target modules resolved per architecture."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from lorakit._validators import number
from lorakit.errors import ConfigError, did_you_mean

__all__ = ["ARCHITECTURE_TARGETS", "AdapterSpec", "apply_adapter", "resolve_targets"]

# Linear layers of each architecture, by group. Phi-3 fuses q/k/v and gate/up.
ARCHITECTURE_TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "phi3": {"attention": ("qkv_proj", "o_proj"), "mlp": ("gate_up_proj", "down_proj")},
    **{
        model_type: {
            "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
            "mlp": ("gate_proj", "up_proj", "down_proj"),
        }
        for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    },
}
GROUPS = ("attention", "mlp", "all-linear")


def _targets(value: Sequence[str] | str) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(kw_only=True)
class AdapterSpec:
    """A LoRA adapter.

    Attributes:
        rank: LoRA rank ``r``.
        alpha: scaling numerator; the update is scaled by ``alpha / rank``
            (``alpha / sqrt(rank)`` with ``rslora``).
        dropout: dropout on the adapter's input.
        targets: groups (``attention``, ``mlp``, ``all-linear``) or module names
            (``qkv_proj``), resolved against the loaded architecture.
        rslora: rank-stabilised scaling, ``alpha / sqrt(rank)``.
        dora: weight-decomposed LoRA (DoRA); slower, sometimes better at low rank.
    """

    rank: int = attrs.field(default=16, validator=number("adapter", gt=0))
    alpha: int = attrs.field(default=32, validator=number("adapter", gt=0))
    dropout: float = attrs.field(
        default=0.1, converter=float, validator=number("adapter", ge=0, lt=1)
    )
    targets: tuple[str, ...] = attrs.field(default=("attention", "mlp"), converter=_targets)
    rslora: bool = False
    dora: bool = False


def _linear_names(model: Any) -> list[str]:
    """Leaf names of the model's linear layers (4-bit ones included), without the output head."""
    import torch

    names = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in (
            "Linear4bit",
            "Linear8bitLt",
        )
        if is_linear and not full_name.endswith("lm_head"):
            names.add(full_name.rsplit(".", 1)[-1])
    return sorted(names)


def resolve_targets(model: Any, targets: Sequence[str]) -> list[str]:
    """Module names for ``targets`` on this model: groups are expanded per architecture.

    Raises:
        ConfigError: a group the architecture has no mapping for, or a module name
            that is not a linear layer of the model.
    """
    present = _linear_names(model)
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    groups = ARCHITECTURE_TARGETS.get(model_type)
    resolved: list[str] = []
    for target in targets:
        if target == "all-linear":
            names: Sequence[str] = present
        elif target in ("attention", "mlp"):
            if groups is None:
                raise ConfigError(
                    f"no {target!r} module names known for architecture {model_type!r}",
                    field="adapter.targets",
                    hint=f"name modules directly (linear layers here: {', '.join(present)}) or use all-linear",
                )
            names = groups[target]
        else:
            names = (target,)
        for name in names:
            if name not in present:
                raise ConfigError(
                    f"{name!r} is not a linear layer of this {model_type} model",
                    field="adapter.targets",
                    hint=did_you_mean(name, [*present, *GROUPS])
                    or f"linear layers: {', '.join(present)}",
                )
            if name not in resolved:
                resolved.append(name)
    if not resolved:
        raise ConfigError("no adapter targets", field="adapter.targets", hint="e.g. attention,mlp")
    return resolved


def apply_adapter(
    model: Any, spec: AdapterSpec, *, gradient_checkpointing: bool = True
) -> tuple[Any, list[str]]:
    """Freeze the base model, enable input grads and checkpointing, and wrap it with LoRA.

    Returns the PEFT model and the resolved target module names.
    """
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, spec.targets)
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        # transformers 5.2x renamed gradient to activation checkpointing; accept both.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        model.enable_input_require_grads()
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        use_rslora=spec.rslora,
        use_dora=spec.dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    for param in peft_model.parameters():
        if param.requires_grad and param.dtype != _float32():
            param.data = param.data.float()
    return peft_model, targets


def _float32() -> Any:
    import torch

    return torch.float32
