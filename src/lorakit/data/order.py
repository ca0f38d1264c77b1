"""The order training sees its items in: shuffled, a short-to-long curriculum, or length-grouped.

An *item* is what the trainer samples: a tokenised example, or a packed row (whose length,
for ordering, is that of its longest example). Every order is a permutation of the items per
epoch (each item exactly once per pass) and a pure function of the seed, the epoch and the
lengths, so a resumed run sees the same order as an uninterrupted one: the sampler derives
the epoch from the trainer's optimizer step, never from how often it was iterated.

- ``shuffle``: the trainer's own sampler, as before (seeded random order; without packing,
  ``training.group_by_length`` groups by length).
- ``length_curriculum``: over the first ``curriculum_share`` of the run's steps the items are
  drawn from a pool that grows from the shortest ``CURRICULUM_START`` of the items to all of
  them (linearly in the step, seeded draws without replacement); the rest of the run is
  shuffled. A competence-based curriculum (Platanios et al., NAACL 2019) that keeps every
  pass over the data whole.
- ``length_grouped``: a seeded shuffle cut into megabatches of ``MEGABATCH`` micro-batches,
  each sorted longest first, so a micro-batch holds examples of similar length.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, get_args

__all__ = [
    "CURRICULUM_START",
    "MEGABATCH",
    "ORDERS",
    "DataOrder",
    "OrderedSampler",
    "epoch_order",
]

DataOrder = Literal["shuffle", "length_curriculum", "length_grouped"]
ORDERS: tuple[str, ...] = get_args(DataOrder)

CURRICULUM_START = 0.1
"""The share of the shortest items the curriculum's pool holds at its first step."""

MEGABATCH = 50
"""Micro-batches per length-sorted megabatch of ``length_grouped`` (as transformers' sampler)."""


def _rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"lorakit-order:{seed}:{epoch}")


def epoch_order(
    lengths: Sequence[int],
    *,
    order: str,
    seed: int,
    epoch: int = 0,
    ramp: int = 0,
    micro_batch: int = 1,
) -> list[int]:
    """The item indices of one epoch in training order: each index exactly once.

    Args:
        lengths: the length (tokens) of every item.
        order: ``shuffle``, ``length_curriculum`` or ``length_grouped``.
        seed: the run's seed.
        epoch: the pass over the data (0 first).
        ramp: for the curriculum, the items (counted over the whole run, from its start)
            over which the pool grows to every item; 0 is a plain shuffle.
        micro_batch: items per micro-batch (megabatch size of ``length_grouped``).
    """
    n = len(lengths)
    rng = _rng(seed, epoch)
    if order == "length_curriculum":
        return _curriculum(lengths, rng, start=epoch * n, ramp=ramp)
    items = list(range(n))
    rng.shuffle(items)
    if order == "length_grouped":
        size = MEGABATCH * max(1, micro_batch)
        grouped: list[int] = []
        for begin in range(0, n, size):
            grouped.extend(sorted(items[begin : begin + size], key=lambda i: -lengths[i]))
        return grouped
    return items


def _curriculum(lengths: Sequence[int], rng: random.Random, *, start: int, ramp: int) -> list[int]:
    n = len(lengths)
    ties = [rng.random() for _ in range(n)]
    by_length = sorted(range(n), key=lambda i: (lengths[i], ties[i]))
    out: list[int] = []
    pool: list[int] = []
    eligible = 0  # by_length[:eligible] have entered the pool
    for position in range(n):
        step = start + position
        if step >= ramp:  # after the ramp: the rest of the epoch, shuffled
            rest = pool + by_length[eligible:]
            rng.shuffle(rest)
            out.extend(rest)
            break
        competence = CURRICULUM_START + (1.0 - CURRICULUM_START) * step / ramp
        limit = min(n, max(1, math.ceil(competence * n)))
        while eligible < limit:
            pool.append(by_length[eligible])
            eligible += 1
        if not pool:  # every eligible item was used this epoch: take the next shortest
            pool.append(by_length[eligible])
            eligible += 1
        pick = rng.randrange(len(pool))
        pool[pick], pool[-1] = pool[-1], pool[pick]
        out.append(pool.pop())
    return out


class OrderedSampler:
    """A sampler for the trainer's data loader that yields :func:`epoch_order`.

    The epoch is computed from the trainer's optimizer step when iteration starts
    (``step() // steps_per_epoch``, as transformers counts epochs on resume), so a run
    resumed mid-epoch skips into the very order it was trained on.

    Args:
        lengths: the length of every item (a packed row: its longest example).
        order: ``length_curriculum`` or ``length_grouped`` (``shuffle`` uses the trainer's).
        seed: the run's seed.
        micro_batch: items per micro-batch.
        grad_accum: micro-batches per optimizer step.
        total_steps: optimizer steps of the whole run.
        curriculum_share: the share of ``total_steps`` the curriculum ramps over.
        step: the trainer's current optimizer step.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        order: str,
        seed: int,
        micro_batch: int,
        grad_accum: int,
        total_steps: int,
        curriculum_share: float,
        step: Callable[[], int],
    ) -> None:
        self.lengths = list(lengths)
        self.order = order
        self.seed = seed
        self.micro_batch = micro_batch
        self.step = step
        batches = math.ceil(len(self.lengths) / micro_batch)
        self.steps_per_epoch = max(1, math.ceil(batches / grad_accum))
        self.ramp = round(curriculum_share * total_steps * micro_batch * grad_accum)

    def __len__(self) -> int:
        return len(self.lengths)

    def epoch_of(self, step: int) -> int:
        """The pass over the data that optimizer step ``step`` belongs to."""
        return step // self.steps_per_epoch

    def order_for_epoch(self, epoch: int) -> list[int]:
        """The items of ``epoch`` in training order."""
        return epoch_order(
            self.lengths,
            order=self.order,
            seed=self.seed,
            epoch=epoch,
            ramp=self.ramp,
            micro_batch=self.micro_batch,
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self.order_for_epoch(self.epoch_of(self.step())))
