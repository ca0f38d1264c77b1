"""Variable-length attention for packed rows.

A packed row holds several examples; attention must stay within each. transformers'
SDPA path does that with a dense block-diagonal mask, which costs the attention of one
long sequence (4k to 16k tokens) instead of many short ones. ``varlen`` instead runs
PyTorch's variable-length flash attention (``torch.nn.attention.varlen``) over the
examples' boundaries, which the collator passes as ``cu_seq_lens_q`` / ``max_length_q``
(the names transformers' flash-attention kwargs use), or which are read from restarting
``position_ids``.

Padded batches (an attention mask), decoding with a cache, and machines without the
kernel (the CPU, float32) take a correct fallback: SDPA with the mask, or SDPA with a
block-diagonal mask built from the same boundaries.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["VARLEN", "cu_seq_lens", "register_varlen", "varlen_available"]

VARLEN = "lorakit_varlen"
"""The name under which the kernel is registered with transformers' attention interface."""


@functools.cache
def _varlen_fn() -> tuple[Any, bool] | None:
    """PyTorch's ``varlen_attn`` and whether it takes ``window_size`` (torch >= 2.11), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, "window_size" in inspect.signature(varlen_attn).parameters


def varlen_available() -> bool:
    """Whether this torch has variable-length flash attention and a CUDA GPU to run it."""
    import torch

    return _varlen_fn() is not None and torch.cuda.is_available()


def cu_seq_lens(position_ids: Any) -> tuple[Any, int]:
    """Cumulative example boundaries (int32, over the flattened batch) and the longest example.

    Every example, and every row, starts where its position id is 0.
    """
    import torch

    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
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
        bounds, longest = cu_seq_lens(position_ids)
    bounds = bounds.to(device=query.device, dtype=torch.int32)
    total = batch * length
    q = query.transpose(1, 2).reshape(total, heads, dim)
    k = key.transpose(1, 2).reshape(total, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(total, value.shape[1], dim)
    if k.shape[1] != heads:  # grouped-query attention: one key/value head per group
        k = k.repeat_interleave(heads // k.shape[1], dim=1)
        v = v.repeat_interleave(heads // v.shape[1], dim=1)
    window = sliding_window if sliding_window is not None and longest > sliding_window else None
    found = _varlen_fn()
    fast = (
        found is not None
        and query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and (window is None or found[1])
        and not dropout
    )
    if fast:
        assert found is not None
        varlen_attn, has_window = found
        causal = (
            {"window_size": (-1 if window is None else window - 1, 0)}
            if has_window
            else {"is_causal": True}
        )
        out = varlen_attn(q, k, v, bounds, bounds, longest, longest, scale=scaling, **causal)
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
    """No mask for unpadded or packed batches (the kernel reads the boundaries); SDPA's otherwise."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**kwargs)


@functools.cache
def register_varlen() -> str:
    """Register ``varlen`` with transformers (once); returns the name to load a model with."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, _varlen_mask)
    return VARLEN
