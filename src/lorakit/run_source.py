"""Load what a trained run needs to answer: its base model (quantised as trained), its
adapters by name, and what ``recipe.json`` says about template and options."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lorakit.errors import ConfigError

__all__ = ["RunSource", "load_model_and_adapters", "quant_spec"]


def quant_spec(name: str) -> Any:
    """The :class:`~lorakit.model.QuantSpec` of ``nf4``, ``fp4`` or ``none``."""
    from lorakit.model import QuantSpec

    if name not in ("nf4", "fp4", "none"):
        raise ConfigError(
            f"unknown quantisation {name!r}", field="--quant", hint="use nf4, fp4 or none"
        )
    return QuantSpec(method=name)  # type: ignore[arg-type]


def load_model_and_adapters(
    model_name: str,
    adapters: Mapping[str, str | Path],
    *,
    quant: Any = None,
    plugin_manager: Any = None,
) -> tuple[Any, Any, list[str]]:
    """Load a base model once and attach every adapter under its name.

    Each adapter is checked against the base (its recorded base model, its tensor shapes)
    before anything loads. Returns ``(model, tokenizer, notes)``; the model is a PEFT model
    when there is at least one adapter (its first adapter active), else the base model.

    Raises:
        ConfigError: an adapter trained on another base, or that does not fit it.
    """
    from lorakit.evaluate.adapter_check import check_adapter_base, check_adapter_shapes
    from lorakit.model import ModelSpec, QuantizedModelBuilder

    for path in adapters.values():
        check_adapter_base(path, model_name)
        check_adapter_shapes(path, model_name)
    # sdpa: the decoding fast path (static cache, CUDA graph) needs an attention that takes a
    # prepared mask; on a GPU, "auto" would pick the varlen kernel that packed training uses.
    spec = ModelSpec(
        name=model_name,
        quant=quant if quant is not None else quant_spec("nf4"),
        attn_implementation="sdpa",
    )
    loaded = QuantizedModelBuilder(spec, plugin_manager=plugin_manager).build()
    model = loaded.model
    first = True
    for name, path in adapters.items():
        if first:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
            first = False
        else:
            model.load_adapter(str(path), adapter_name=name)
    notes = list(loaded.notes)
    if adapters:
        model.set_adapter(next(iter(adapters)))
        cast = adapters_to_compute_dtype(model)
        if cast:
            notes.append(cast)
    model.eval()
    return model, loaded.tokenizer, notes


def adapters_to_compute_dtype(model: Any) -> str:
    """Cast the LoRA weights to the model's 16-bit compute dtype (PEFT loads them in float32):
    the adapter products then run as 16-bit tensor-core matmuls, without a cast of every
    activation; what a note says ("" when nothing was cast)."""
    import torch

    dtype = model.get_input_embeddings().weight.dtype
    if dtype not in (torch.bfloat16, torch.float16):
        return ""
    cast = 0
    for name, param in model.named_parameters():
        if "lora_" in name and param.dtype != dtype:
            param.data = param.data.to(dtype)
            cast += 1
    return f"adapter weights in {str(dtype).removeprefix('torch.')} for generation" if cast else ""


def _run_recipe(run_dir: Path) -> dict[str, Any]:
    from lorakit.recipe import load_recipe_dict

    if not run_dir.is_dir():
        raise ConfigError(
            "no such run directory", file=str(run_dir), hint="pass a folder `lorakit train` wrote"
        )
    recipe = load_recipe_dict(run_dir)
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise ConfigError(
            "the run has no adapter/ (it did not finish)",
            file=str(run_dir),
            field="adapter",
            hint="finish the run with `lorakit train ... --run-dir` first",
        )
    return recipe


@attrs.frozen(kw_only=True)
class RunSource:
    """What the answer path needs from a run directory: base model, quantisation, adapter,
    template and its options, read from ``recipe.json``."""

    name: str
    model: str
    quant: str
    adapter: Path
    template: str
    template_options: Mapping[str, Any]

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> RunSource:
        """Read the run's ``recipe.json``.

        Raises:
            ConfigError: not a run directory, or a run without a finished adapter.
        """
        folder = Path(run_dir)
        recipe = _run_recipe(folder)
        where = str(folder / "recipe.json")
        try:
            model = recipe["model"]["name"]
            quant = recipe["model"].get("quant", {}).get("method", "nf4")
            data = recipe["data"]
            template = data.get("template", "qa")
            options = data.get("template_options", {}) or {}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"recipe.json lacks {exc}", file=where, field="recipe", hint="restore the file"
            ) from None
        if not isinstance(model, str) or not isinstance(options, Mapping):
            raise ConfigError("recipe.json is damaged", file=where, field="recipe.model.name")
        name = str(recipe.get("name") or folder.name)
        return cls(
            name=name,
            model=model,
            quant=str(quant),
            adapter=folder / "adapter",
            template=str(template),
            template_options=dict(options),
        )
