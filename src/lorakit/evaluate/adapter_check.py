"""Does an adapter fit the base model it is about to be applied to? Checked before any loading.

:func:`check_adapter_base` compares the base model the adapter records with the ``--model``
given, by name; :func:`check_adapter_shapes` compares the adapter's tensor shapes (read from the
header of ``adapter_model.safetensors``, no weights loaded) with the base model's layers (built
from its ``config.json`` on the meta device, no weights loaded). A mismatch is one
:class:`~lorakit.errors.ConfigError` naming the adapter and what differs, instead of PEFT's
traceback after the model has loaded.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from lorakit.errors import ConfigError

__all__ = ["adapter_tensor_shapes", "check_adapter_base", "check_adapter_shapes"]

_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?$"
)
_HEADER_LIMIT = 100 * 2**20


def _same_model(a: str, b: str) -> bool:
    from lorakit.model import resolve_model_path

    a, b = resolve_model_path(a.strip()), resolve_model_path(b.strip())
    if a.rstrip("/") == b.rstrip("/"):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return False


def check_adapter_base(adapter_dir: str | Path, model: str) -> str | None:
    """Check that an adapter was trained on ``model``; return the base it names.

    The rule: read ``base_model_name_or_path`` from the adapter's ``adapter_config.json``. The
    two names match when they are the same text (ignoring surrounding whitespace and a trailing
    ``/``), when both are existing local folders that resolve to the same folder (symlinks and
    relative paths resolved), or when both name lorakit's built-in ``tiny-phi3``. A hub id never
    matches a local folder, even a copy of that model: pass the name the adapter was trained
    with. An adapter that records no base cannot be checked and passes (``None`` is returned).

    Args:
        adapter_dir: the adapter folder (``save_pretrained`` output).
        model: the ``--model`` given: a hub id, a local folder or ``tiny-phi3``.

    Returns:
        The adapter's recorded base model, or ``None`` when it records none.

    Raises:
        ConfigError: no ``adapter_config.json``, unreadable JSON, or a different base model.
    """
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise ConfigError(
            "is not an adapter folder (no adapter_config.json)",
            file=str(adapter_dir),
            field="adapter",
            hint="pass the adapter folder a training run wrote (RUN_DIR/adapter)",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot read the adapter config: {exc}", file=str(config_path), field="adapter"
        ) from None
    recorded = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not recorded:
        return None
    if not _same_model(str(recorded), model):
        raise ConfigError(
            f"the adapter was trained on {recorded!r}, not on --model {model!r}",
            file=str(config_path),
            field="base_model_name_or_path",
            hint=f"pass --model {recorded}",
        )
    return str(recorded)


def adapter_tensor_shapes(adapter_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the adapter's ``adapter_model.safetensors``, read from the
    file's header (no weights are loaded); empty when the adapter has no safetensors file.

    Raises:
        ConfigError: the file is not a readable safetensors file.
    """
    path = Path(adapter_dir) / _WEIGHTS
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if not 2 <= size <= _HEADER_LIMIT:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(handle.read(size))
        return {
            key: tuple(int(n) for n in value["shape"])
            for key, value in header.items()
            if key != "__metadata__"
        }
    except (OSError, ValueError, struct.error, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(
            f"cannot read the adapter weights: {type(exc).__name__}: {exc}",
            file=str(path),
            field="adapter",
            hint="pass the adapter folder a training run wrote (RUN_DIR/adapter)",
        ) from None


def _meta_model(model: str) -> Any:
    """The base model's layers without weights, or ``None`` when its config cannot be read
    here (a hub id not in the cache, a model a plugin loads): loading it will say why."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorakit.model import resolve_model_path

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(model))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _sizes(module: Any, kind: str) -> tuple[int, str] | None:
    """The size the adapter tensor's checked axis must have, and what it is called."""
    if kind == "lora_A" and isinstance(getattr(module, "in_features", None), int):
        return int(module.in_features), "input features"
    if kind == "lora_B" and isinstance(getattr(module, "out_features", None), int):
        return int(module.out_features), "output features"
    if kind == "lora_embedding_A" and isinstance(getattr(module, "num_embeddings", None), int):
        return int(module.num_embeddings), "embedding rows"
    if kind == "lora_embedding_B" and isinstance(getattr(module, "embedding_dim", None), int):
        return int(module.embedding_dim), "embedding width"
    return None


def _differences(shapes: dict[str, tuple[int, ...]], base: Any) -> list[str]:
    modules = dict(base.named_modules())
    params = {name: tuple(p.shape) for name, p in base.named_parameters()}
    out = []
    for key, shape in sorted(shapes.items()):
        name = key.removeprefix(_PREFIX)
        match = _LORA_KEY.match(name)
        if match is None:  # a saved module (modules_to_save): the whole weight
            if name in params and params[name] != shape:
                out.append(
                    f"{name} is {list(shape)} in the adapter, {list(params[name])} in the model"
                )
            continue
        module = modules.get(match["module"])
        if module is None:
            out.append(f"the model has no module {match['module']}")
            continue
        expected = _sizes(module, match["kind"])
        if expected is None or len(shape) != 2:
            continue
        size, what = expected
        axis = 1 if match["kind"].endswith("A") else 0
        if shape[axis] != size:
            out.append(
                f"{match['module']} has {shape[axis]} {what} in the adapter, {size} in the model"
            )
    return list(dict.fromkeys(out))  # a module's A and B name it once


def check_adapter_shapes(adapter_dir: str | Path, model: str) -> None:
    """Check that the adapter's tensors fit ``model``'s layers, before either is loaded.

    Every LoRA ``A`` matrix must take the target layer's input features and every ``B`` matrix
    give its output features; a saved whole module (``modules_to_save``) must have the model's
    shape; every target layer must exist (no layer 30 of a 24-layer model). Nothing is checked
    when the adapter has no safetensors file or the model's config cannot be read here.

    Args:
        adapter_dir: the adapter folder (``save_pretrained`` output).
        model: the ``--model`` given: a hub id, a local folder or ``tiny-phi3``.

    Raises:
        ConfigError: one line naming the adapter and the first difference (and how many more).
    """
    shapes = adapter_tensor_shapes(adapter_dir)
    if not shapes:
        return
    base = _meta_model(model)
    if base is None:
        return
    found = _differences(shapes, base)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(
            f"the adapter does not fit --model {model!r}: {found[0]}{more}",
            file=str(adapter_dir),
            field="adapter",
            hint="pass the --model the adapter was trained on: the same sizes, not only the "
            "same name",
        )
