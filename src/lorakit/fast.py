"""The fast path: fused Liger kernels, a leaner LoRA forward, selective checkpointing, and a
GPU memory budget."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit._fs import read_json_object, write_json_atomic
from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.train import TrainingSpec

__all__ = [
    "MemoryPlan",
    "apply_liger",
    "fit_memory_budget",
    "fuse_lora",
    "plan_memory",
    "set_checkpointing",
]

GIB = 2**30


def apply_liger(model: Any, mode: str) -> str | None:
    """Apply Liger Kernel's fused kernels to ``model`` in place; return a note, or None.

    ``mode`` is ``auto`` (apply when installed, on CUDA, for a supported architecture),
    ``on`` (the same, but fail when any of that is missing) or ``off``.
    """
    if mode == "off":
        return None
    import torch

    model_type = getattr(model.config, "model_type", "?")
    reason = None
    if importlib.util.find_spec("liger_kernel") is None:
        reason = "Liger Kernel is not installed (pip install 'lorakit[fast]')"
    elif not torch.cuda.is_available():
        reason = "Liger kernels need a CUDA GPU"
    else:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

        apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
        if apply is None:
            reason = f"Liger Kernel does not support the {model_type} architecture"
        else:
            try:
                apply(model=model)
            except Exception as error:  # a Liger release that does not fit this transformers
                reason = f"applying Liger kernels failed ({type(error).__name__}: {error})"
                if mode == "auto":
                    return f"{reason}; training without them"
            else:
                return f"applied Liger kernels to {model_type} (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy)"
    if mode == "on":
        raise ConfigError(
            f"cannot apply Liger kernels: {reason}",
            field="training.liger",
            hint="set training.liger=auto",
        )
    return None


def fuse_lora(model: Any) -> int:
    """Give every plain LoRA layer of a PEFT ``model`` a leaner forward; returns how many.

    PEFT computes ``base(x) + B(A(dropout(x))) * scaling`` in separate kernels, casts the
    input to the adapter's float32 first (unquantised layers) or clones the base output
    (4-bit layers). The lean forward computes ``addmm(base(x), A(dropout(x)), B^T,
    alpha=scaling)``: the scaling and the sum happen inside the second product, in the
    compute dtype under autocast, and nothing is copied. The function is the same;
    floating-point results differ by rounding only. Layers with DoRA, a LoRA bias, several
    active adapters, merged or disabled adapters keep PEFT's forward for that call.
    """
    kinds = _lora_linear_kinds()
    count = 0
    for module in model.modules():
        if type(module) in kinds and not getattr(module, "lorakit_fused", False):
            module.forward = functools.partial(_lean_lora_forward, module, module.forward)
            module.lorakit_fused = True
            count += 1
    return count


def _lora_linear_kinds() -> tuple[type, ...]:
    from peft.tuners.lora.layer import Linear

    kinds: list[type] = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # bitsandbytes missing
        pass
    else:
        kinds.append(Linear4bit)
    return tuple(kinds)


def _lean_lora_forward(
    module: Any, peft_forward: Callable[..., Any], x: Any, *args: Any, **kwargs: Any
) -> Any:
    import torch
    import torch.nn.functional as F

    if (
        args
        or kwargs
        or module.disable_adapters
        or module.merged
        or not getattr(module, "cast_input_dtype_enabled", True)
    ):
        return peft_forward(x, *args, **kwargs)
    active = [name for name in module.active_adapters if name in module.lora_A]
    if len(active) != 1 or active[0] in module.lora_variant:
        return peft_forward(x, *args, **kwargs)
    name = active[0]
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    if lora_a.bias is not None or lora_b.bias is not None:
        return peft_forward(x, *args, **kwargs)
    result = module.base_layer(x)
    device = x.device.type
    autocast = torch.is_autocast_enabled(device)
    # As PEFT: under autocast the products run in the autocast dtype; without it, the
    # input is cast to the adapter's dtype.
    h = module.lora_dropout[name](x if autocast else x.to(lora_a.weight.dtype))
    h = F.linear(h, lora_a.weight)
    scaling = module.scaling[name]
    product_dtype = torch.get_autocast_dtype(device) if autocast else h.dtype
    if result.dtype != product_dtype:  # keep the base output's precision
        return result + (F.linear(h, lora_b.weight) * scaling).to(result.dtype)
    width = result.shape[-1]
    fused = torch.addmm(
        result.reshape(-1, width), h.reshape(-1, h.shape[-1]), lora_b.weight.t(), alpha=scaling
    )
    return fused.view(result.shape)


def checkpoint_layers(model: Any) -> list[Any]:
    """The decoder layers that can recompute their activations (transformers' checkpointing layers)."""
    return [
        m
        for m in model.modules()
        if any(cls.__name__ == "GradientCheckpointingLayer" for cls in type(m).__mro__)
    ]


def set_checkpointing(model: Any, every: int | None, *, count: int | None = None) -> None:
    """Recompute every layer (``every=1``), every n-th layer (selective), or none (``None``);
    or, with ``count``, the first ``count`` layers (the memory plan's choice: each layer's
    activations cost the same, so which layers does not change the peak).

    Checkpointing must have been enabled once on the model (``apply_adapter`` does it);
    this switches individual decoder layers on or off.
    """
    layers = checkpoint_layers(model)
    for index, layer in enumerate(layers):
        if count is not None:
            layer.gradient_checkpointing = index < count
        else:
            layer.gradient_checkpointing = every is not None and index % every == 0


Trial = tuple[int, int, float, float]
"""One measured setting: (layers recomputed, tokens per micro-batch, peak GiB, tokens/s);
a peak of ``inf`` ran out of memory."""


@attrs.frozen
class MemoryPlan:
    """The checkpointing and micro-batch size chosen for a memory budget, with what was measured."""

    checkpointed: int
    layers: int
    tokens_per_batch: int
    grad_accum: int
    peak_gib: float
    budget_gib: float
    tokens_per_s: float
    tried: tuple[Trial, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], layers: int) -> MemoryPlan:
        """From :meth:`to_dict`'s JSON (a stored ``memory_plan.json``; one written by an
        earlier version, with ``checkpoint_every``, too)."""
        if "checkpointed" in data:
            checkpointed = int(data["checkpointed"])
        else:  # every n-th layer: ceil(layers / n) of them, none for null
            every = data["checkpoint_every"]
            checkpointed = 0 if every is None else -(-layers // int(every))
        return cls(
            checkpointed=checkpointed,
            layers=int(data.get("layers", layers)),
            tokens_per_batch=int(data["tokens_per_batch"]),
            grad_accum=int(data["grad_accum"]),
            peak_gib=float(data["peak_gib"]),
            budget_gib=float(data.get("budget_gib", 0.0)),
            tokens_per_s=float(data.get("tokens_per_s", 0.0)),
            tried=tuple(
                (int(t[0]), int(t[1]), float(t[2]), float(t[3]))
                for t in data["tried"]
                if len(t) == 4  # an earlier version's trials had no timing
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """As JSON-able data."""
        return attrs.asdict(self)

    def describe(self) -> str:
        if self.checkpointed == 0:
            mode = "no checkpointing"
        elif self.checkpointed >= self.layers:
            mode = "full checkpointing"
        else:
            mode = f"selective checkpointing ({self.checkpointed} of {self.layers} layers)"
        return (
            f"memory budget {self.budget_gib:.1f} GiB: {mode}, {self.tokens_per_batch} tokens "
            f"per micro-batch x {self.grad_accum}, measured peak {self.peak_gib:.2f} GiB, "
            f"{self.tokens_per_s:,.0f} tokens/s in the trial step"
        )


def plan_memory(
    model: Any,
    budget_gib: float,
    *,
    tokens_per_batch: int,
    grad_accum: int,
    min_tokens: int,
    step: Callable[[int], None],
    headroom: float = 0.9,
    measure: Callable[[int], tuple[float, float]] | None = None,
) -> MemoryPlan:
    """Pick the fastest measured setting whose peak fits ``budget_gib`` x ``headroom``.

    At ``tokens_per_batch`` tokens per micro-batch, then at half and a quarter of it, and
    smaller still while nothing fits (down to ``min_tokens``; ``grad_accum`` doubles each
    time, so the tokens per optimizer step stay the same), it tries recomputing all layers,
    three quarters, half, a quarter and none, in that order, until one does not fit (less
    recomputation needs more memory), then bisects between the last that fit and the first
    that did not (the fewest layers recomputed that fit), and times each that fits. A
    micro-batch size at which no recomputation fits ends the search: no smaller one is faster.
    ``step(tokens)`` runs one forward and backward pass of a worst-case micro-batch;
    ``measure(tokens)`` (default: ``step`` twice on the GPU, the second timed) returns its
    peak GiB and seconds.
    """
    import math
    import time

    import torch

    def on_gpu(tokens: int) -> tuple[float, float]:
        torch.cuda.empty_cache()
        step(tokens)  # shapes, allocator and kernels warm
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step(tokens)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / GIB, time.perf_counter() - start

    measure = measure or on_gpu
    layers = len(checkpoint_layers(model))
    counts = sorted({layers, 3 * layers // 4, layers // 2, layers // 4, 0}, reverse=True)
    limit = budget_gib * headroom
    explore_floor = tokens_per_batch // 4
    tried: list[Trial] = []
    best: MemoryPlan | None = None

    def fits(count: int, tokens: int, accum: int) -> bool:
        nonlocal best
        set_checkpointing(model, None, count=count)
        try:
            peak, seconds = measure(tokens)
        except torch.OutOfMemoryError:
            peak, seconds = math.inf, math.inf
        model.zero_grad(set_to_none=True)
        ok = peak <= limit
        rate = round(tokens / seconds, 1) if ok and seconds > 0 else 0.0
        tried.append((count, tokens, round(peak, 3), rate))
        if ok and (best is None or rate > best.tokens_per_s):
            best = MemoryPlan(count, layers, tokens, accum, round(peak, 3), budget_gib, rate, ())
        return ok

    tokens, accum = tokens_per_batch, grad_accum
    while True:
        fitted: int | None = None  # the fewest layers recomputed that fit so far
        for count in counts:
            if fits(count, tokens, accum):
                fitted = count
                continue
            # Between the last count that fit and this one: bisect to the fewest that fit.
            low, high = count, fitted
            while high is not None and high - low > 1:
                middle = (low + high) // 2
                if fits(middle, tokens, accum):
                    high = middle
                else:
                    low = middle
            break
        smaller = tokens // 2
        if (
            fitted == 0  # nothing recomputed fits: no smaller micro-batch is faster
            or smaller < min_tokens
            or (best is not None and smaller < explore_floor)
        ):
            break
        tokens, accum = smaller, accum * 2
    if best is None:
        raise ConfigError(
            f"even full checkpointing with {tokens} tokens per micro-batch needs more than "
            f"{limit:.1f} GiB ({headroom:.0%} of the {budget_gib:.1f} GiB budget)",
            field="training.max_memory_gb",
            hint="raise the budget, lower data.tokenize.max_len, or use a smaller model",
        )
    set_checkpointing(model, None, count=best.checkpointed)
    return attrs.evolve(best, tried=tuple(tried))


def fit_memory_budget(
    model: Any, training: TrainingSpec, max_len: int, plan_file: Path
) -> tuple[TrainingSpec, str]:
    """Choose checkpointing and the packed micro-batch size that fit ``training.max_memory_gb``
    (``"auto"``: the GPU memory free when the plan is made, plus what this process holds,
    within the process's memory fraction when one is set; without a CUDA GPU or packing,
    ``"auto"`` keeps the recipe's settings).

    The plan is stored in ``plan_file`` so that a resumed run trains exactly as it started.
    """
    import torch

    auto = training.max_memory_gb == "auto"
    if not torch.cuda.is_available():
        if auto:  # the recipe's own settings, as planned for a machine without a GPU
            return training, ""
        return training, f"no CUDA GPU: training.max_memory_gb={training.max_memory_gb} is ignored"
    if not training.packing:
        if auto:
            return (
                training,
                "no memory plan: training.max_memory_gb=auto sizes packed micro-batches",
            )
        raise ConfigError(
            "the memory budget sizes packed micro-batches",
            field="training.max_memory_gb",
            hint="set training.packing=true, or drop the budget and set training.batch_size",
        )
    assert training.max_memory_gb is not None
    device = next(p.device for p in model.parameters())
    if auto:
        free, total = torch.cuda.mem_get_info(device)
        budget = (free + torch.cuda.memory_reserved(device)) / GIB
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if fraction is not None:  # a cap set with torch.cuda.set_per_process_memory_fraction
            budget = min(budget, fraction(device) * total / GIB)
    else:
        budget = float(training.max_memory_gb)
    vocab = model.config.vocab_size

    def step(tokens: int) -> None:
        model.train()
        ids = torch.randint(10, vocab - 1, (1, tokens), device=device)
        positions = (torch.arange(tokens, device=device) % max_len).unsqueeze(0)
        labels = ids.clone()
        labels[:, 0] = -100
        loss = model(input_ids=ids, labels=labels, position_ids=positions).loss
        loss.backward()

    capacity = training.tokens_per_batch or training.batch_size * max_len
    layers = len(checkpoint_layers(model))
    if plan_file.exists():
        plan = MemoryPlan.from_dict(read_json_object(plan_file, "the memory plan"), layers)
    else:
        plan = plan_memory(
            model,
            budget,
            tokens_per_batch=capacity,
            grad_accum=training.grad_accum,
            min_tokens=max_len,
            step=step,
        )
        write_json_atomic(plan_file, plan.to_dict())
    set_checkpointing(model, None, count=plan.checkpointed)
    chosen = attrs.evolve(
        training,
        tokens_per_batch=plan.tokens_per_batch,
        grad_accum=plan.grad_accum,
        gradient_checkpointing=plan.checkpointed > 0,
    )
    return chosen, plan.describe()
