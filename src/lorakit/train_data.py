"""What the trainer reads: the padding :class:`QACollator`, the map-style
:class:`ExampleDataset` and :class:`PackedDataset`, and the :class:`TokenCounter` of real
tokens trained."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import attrs

__all__ = ["REAL_TOKENS", "ExampleDataset", "PackedDataset", "QACollator", "TokenCounter"]


class QACollator:
    """Pads a batch on the right: input ids with ``pad_id``, labels with -100, attention mask 0.

    Packed rows (features with ``position_ids``) get no attention mask: their padding is
    one more segment whose positions restart at 0, so no real token attends to it. They
    also carry the example boundaries (``cu_seq_lens_q``, ``max_length_q``) that
    variable-length attention reads.
    """

    def __init__(
        self,
        pad_id: int,
        *,
        pad_to_multiple_of: int | None = None,
        max_len: int | None = None,
        packed_length: int | None = None,
        count_tokens: bool = False,
    ) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of
        self.max_len = max_len
        self.packed_length = packed_length
        self.count_tokens = count_tokens

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        packed = "position_ids" in features[0]
        lengths = [len(f["input_ids"]) for f in features]
        longest = max(lengths)
        if packed and self.packed_length is not None:
            # One shape for every packed row: kernels and compiled attention are built once.
            longest = max(longest, self.packed_length)
        elif self.multiple:
            rounded = math.ceil(longest / self.multiple) * self.multiple
            # Unpacked rows are not padded beyond max_len by the rounding.
            cap = None if packed or self.max_len is None else max(self.max_len, longest)
            longest = rounded if cap is None else min(rounded, cap)
        ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        extra = torch.zeros((len(features), longest), dtype=torch.long)
        for i, (f, n) in enumerate(zip(features, lengths, strict=True)):
            ids[i, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            if packed:  # positions restart per example; the padding is one more segment
                extra[i, :n] = torch.as_tensor(f["position_ids"], dtype=torch.long)
                extra[i, n:] = torch.arange(longest - n)
            else:  # attention mask
                extra[i, :n] = 1
        batch: dict[str, Any]
        if not packed:
            batch = {"input_ids": ids, "labels": labels, "attention_mask": extra}
        else:
            from lorakit.attention import cu_seq_lens

            # Example boundaries for variable-length attention, computed once per batch here
            # rather than in every layer (other attention implementations ignore them).
            bounds, widest = cu_seq_lens(extra)
            batch = {
                "input_ids": ids,
                "labels": labels,
                "position_ids": extra,
                "cu_seq_lens_q": bounds,
                "cu_seq_lens_k": bounds,
                "max_length_q": widest,
                "max_length_k": widest,
            }
        if self.count_tokens:  # taken out again before the model sees the batch
            batch[REAL_TOKENS] = sum(lengths)
        return batch


REAL_TOKENS = "lorakit_real_tokens"
"""The batch key under which a counting :class:`QACollator` passes the batch's real tokens."""


@attrs.define
class TokenCounter:
    """Real (non-padding) tokens trained, over the whole run and in this process, and the
    seconds this process spent in evaluations during training."""

    tokens: int = 0
    session_tokens: int = 0
    started: float | None = None
    seconds: float = 0.0
    eval_seconds: float = 0.0

    def add(self, tokens: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        self.tokens += tokens
        self.session_tokens += tokens

    def stop(self) -> None:
        """End this process's training time."""
        if self.started is not None:
            self.seconds += time.perf_counter() - self.started
            self.started = None

    def rate(self) -> float | None:
        """Tokens per second trained by this process so far."""
        elapsed = self.seconds + (
            time.perf_counter() - self.started if self.started is not None else 0.0
        )
        return self.session_tokens / elapsed if elapsed > 0 and self.session_tokens else None


class ExampleDataset:
    """A map-style dataset over tokenised examples (``input_ids``, ``labels``)."""

    def __init__(self, examples: Sequence[Any]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": list(example.input_ids), "labels": list(example.labels)}

    def lengths(self) -> list[int]:
        """Tokens of every item (what length-aware orders sort by)."""
        return [len(e.input_ids) for e in self.examples]


class PackedDataset:
    """Examples packed into rows of at most ``capacity`` tokens (see :mod:`lorakit.data.packing`)."""

    def __init__(self, examples: Sequence[Any], capacity: int, *, seed: int = 0) -> None:
        from lorakit.data.packing import pack_examples

        self.examples = examples
        self.rows = pack_examples([len(e.input_ids) for e in examples], capacity, seed=seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        from lorakit.data.packing import packed_row

        return packed_row([self.examples[i] for i in self.rows[index]])

    def lengths(self) -> list[int]:
        """Per packed row, the tokens of its longest example (what length-aware orders sort by)."""
        return [max(len(self.examples[i].input_ids) for i in row) for row in self.rows]
