"""Padding-free packing: several tokenised examples in one row, attention kept within each.

A packed row concatenates examples; its ``position_ids`` restart at 0 at every
example. Given no attention mask, the model's attention (transformers builds a
block-diagonal causal mask from restarting positions; flash/varlen kernels read
the same boundaries) never crosses an example boundary. Labels are concatenated
unchanged: each example starts with prompt tokens labelled -100, so no token is
trained to predict the next example's first token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lorakit.errors import ConfigError

__all__ = ["pack_examples", "packed_row"]

IGNORE = -100


def pack_examples(lengths: Sequence[int], capacity: int, *, seed: int = 0) -> list[list[int]]:
    """Group example indices into rows of at most ``capacity`` tokens (first-fit decreasing).

    Returns the rows (lists of indices, each in ascending length order within a row is not
    guaranteed), shuffled with ``seed`` so training order does not follow length. An example
    longer than ``capacity`` is an error: truncate to ``max_len`` first.
    """
    if capacity < 1:
        raise ConfigError(
            f"packing capacity must be positive, got {capacity}", field="training.tokens_per_batch"
        )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[int] = []
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise ConfigError(
                f"an example of {size} tokens does not fit a packed row of {capacity}",
                field="training.tokens_per_batch",
                hint="raise training.tokens_per_batch to at least data.tokenize.max_len",
            )
        for r, room in enumerate(free):
            if size <= room:
                rows[r].append(index)
                free[r] -= size
                break
        else:
            rows.append([index])
            free.append(capacity - size)
    random.Random(seed).shuffle(rows)
    return rows


def packed_row(examples: Sequence[Any]) -> dict[str, list[int]]:
    """One row from ``examples``: concatenated ids and labels, positions restarting per example."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for example in examples:
        ids = list(example.input_ids)
        if example.labels and example.labels[0] != IGNORE:
            raise ConfigError(
                f"example {getattr(example, 'origin', '?')} starts with a supervised token; packing "
                "needs every example to start with its (masked) prompt",
            )
        input_ids.extend(ids)
        labels.extend(example.labels)
        position_ids.extend(range(len(ids)))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
