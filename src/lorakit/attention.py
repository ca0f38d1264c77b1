"""Variable-length attention for packed rows.

A packed row holds several examples; attention must stay within each. transformers'
SDPA path does that with a dense block-diagonal mask, which costs the attention of one
long sequence (4k to 16k tokens) instead of many short ones. ``varlen`` instead runs
PyTorch's variable-length flash attention (``torch.nn.attention.varlen``) over the
examples' boundaries, which the collator passes as ``cu_seq_lens_q`` / ``max_length_q``
(the names transformers' flash-attention kwargs use), or which are read from restarting
``position_ids``.

Unpadded batches of whole rows run the kernel with one segment per row. Padded batches
(an attention mask), queries after a KV cache, and machines without the kernel (the CPU,
float32, GPUs older than sm80, torch < 2.11) take a correct fallback: SDPA with the mask,
or SDPA with a block-diagonal mask built from the same boundaries. Soft-capped attention
and attention sinks are refused.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from lorakit.errors import ConfigError

__all__ = [
    "VARLEN",
    "VARLEN_ARCHITECTURES",
    "cu_seq_lens",
    "register_varlen",
    "varlen_available",
]

VARLEN = "lorakit_varlen"
"""The name under which the kernel is registered with transformers' attention interface."""


VARLEN_ARCHITECTURES = frozenset({"phi3", "llama", "mistral", "qwen2", "qwen3"})
"""Model types whose attention is plain causal softmax attention (no soft-capping, sinks
or bidirectional parts), which ``auto`` may run with the varlen kernel."""


@functools.cache
def _varlen_fn() -> Any:
    """PyTorch's ``varlen_attn`` with ``window_size`` and ``scale`` (torch >= 2.11), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn if {"window_size", "scale"} <= params.keys() else None


def varlen_available() -> bool:
    """Whether this torch has the varlen kernel and a GPU that runs flash attention (sm80+)."""
    import torch

    return (
        _varlen_fn() is not None
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability() >= (8, 0)
    )


def cu_seq_lens(position_ids: Any) -> tuple[Any, int]:
    """Cumulative example boundaries (int32, over the flattened batch) and the longest example.

    ``position_ids`` is (batch, length). An example starts where its position id is 0, and
    every row starts one, whatever its first position id.
    """
    import torch

    length = position_ids.shape[-1]
    flat = position_ids.reshape(-1)
    index = torch.arange(flat.numel(), device=flat.device)
    starts = torch.nonzero((flat == 0) | (index % length == 0)).reshape(-1)
    end = torch.tensor([flat.numel()], device=flat.device, dtype=starts.dtype)
    bounds = torch.cat([starts, end]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def _block_causal_mask(bounds: Any, total: int, window: int | None) -> Any:
    """A (total, total) boolean mask: causal within each segment of ``bounds``, nothing across."""
    import torch

    index = torch.arange(total, device=bounds.device)
    segment = torch.bucketize(index, bounds[1:].to(index.dtype), right=True)
    mask = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    if window is not None:
        mask &= index[None, :] > index[:, None] - window
    return mask


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention function: (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ConfigError(
            "varlen attention computes plain causal attention: this model soft-caps its "
            "attention scores or uses attention sinks",
            field="model.attn_implementation",
            hint="use eager or flex_attention for this model",
        )
    batch, heads, length, dim = query.shape
    if attention_mask is not None or key.shape[2] != length:
        # A padded batch, or decoding against a cache: plain SDPA is right and fast.
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    bounds = kwargs.get("cu_seq_lens_q")
    longest = kwargs.get("max_length_q")
    if bounds is None or longest is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            return sdpa_attention_forward(
                module, query, key, value, None, scaling=scaling, **kwargs
            )
        # A model may pass one (1, length) row of positions for a whole batch.
        bounds, longest = cu_seq_lens(position_ids.expand(batch, length))
    bounds = bounds.to(device=query.device, dtype=torch.int32)
    total = batch * length
    q = query.transpose(1, 2).reshape(total, heads, dim)
    k = key.transpose(1, 2).reshape(total, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(total, value.shape[1], dim)
    if k.shape[1] != heads:  # grouped-query attention: one key/value head per group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    window = sliding_window if sliding_window is not None and longest > sliding_window else None
    varlen_attn = _varlen_fn()
    if (
        varlen_attn is not None
        and query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and not dropout
    ):
        # window_size (left, right): (-1, 0) is causal; (W - 1, 0) keeps W keys per query,
        # as transformers' sliding window does.
        left = -1 if window is None else window - 1
        out = varlen_attn(
            q, k, v, bounds, bounds, longest, longest, scale=scaling, window_size=(left, 0)
        )
    else:
        mask = _block_causal_mask(bounds, total, window)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=mask,
            dropout_p=dropout,
            scale=scaling,
        ).transpose(0, 1)
    return out.reshape(batch, length, heads, dim), None


def _varlen_mask(**kwargs: Any) -> Any:
    """No mask for an unpadded batch without a cache (the kernel reads the example
    boundaries); SDPA's mask otherwise (padding, or queries after cached keys)."""
    from transformers.masking_utils import sdpa_mask

    queries = kwargs.get("q_length")
    if queries is None and kwargs.get("cache_position") is not None:  # transformers < 5.2x
        queries = kwargs["cache_position"].shape[0]
    fresh = queries == kwargs.get("kv_length") and not (
        kwargs.get("q_offset") or kwargs.get("kv_offset")
    )
    if kwargs.get("attention_mask") is None and fresh:
        return None
    return sdpa_mask(**kwargs)


@functools.cache
def register_varlen() -> str:
    """Register ``varlen`` with transformers (once); returns the name to load a model with."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, _varlen_mask)
    return VARLEN
