"""What the grades say: grade rates, agreement between reviewers, and which metric to trust.

* grade rates: for each reviewer and pooled, the share of each grade with a Wilson interval;
* Cohen's kappa for every pair of reviewers, on the items both graded (four nominal grades),
  with a seeded bootstrap interval over those items;
* for every automatic metric, Spearman's rank correlation between its score and the grade
  (correct 1, partly correct 0.5, incorrect and unsafe 0; the mean over reviewers per item),
  with a seeded bootstrap interval. A metric whose correlation is near 0 does not tell good
  answers from bad ones on this sample, whatever its mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lorakit.review.grades import GRADES, Grade, latest_grades

if TYPE_CHECKING:
    import numpy as np

    from lorakit.review.sheet import ReviewSheet

__all__ = ["GRADE_VALUE", "cohen_kappa", "spearman", "summarize"]

GRADE_VALUE = {"correct": 1.0, "partly_correct": 0.5, "incorrect": 0.0, "unsafe": 0.0}
"""The grade as a number, for rank correlation with a metric."""
_RESAMPLES = 2000


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels of the same items: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the share of items given the same label, ``p_e`` the agreement expected from
    each rater's label frequencies. ``1.0`` when both raters use one and the same label on
    every item (there is no chance agreement to correct); ``0.0`` when ``p_e`` is 1 otherwise.
    """
    n = len(first)
    if n == 0 or n != len(second):
        raise ValueError("kappa needs the same items, at least one")
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    labels = set(first) | set(second)
    expected = sum((first.count(label) / n) * (second.count(label) / n) for label in labels)
    if expected >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def _ranks(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    import numpy as np

    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # the mean rank of the ties
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson's correlation of the ranks, ties given their mean rank);
    ``None`` when either side is constant or there are fewer than 3 items."""
    import numpy as np

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 3 or len(a) != len(b) or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / math.sqrt(float(ra @ ra) * float(rb @ rb)))


def _bootstrap(
    a: Sequence[Any],
    b: Sequence[Any],
    statistic: Callable[[list[Any], list[Any]], float | None],
    seed: int,
) -> tuple[float | None, float | None]:
    """The 95 % percentile interval of ``statistic(a, b)`` over items resampled in pairs."""
    import random

    rng = random.Random(seed)
    n = len(a)
    values = []
    for _ in range(_RESAMPLES):
        index = [rng.randrange(n) for _ in range(n)]
        value = statistic([a[j] for j in index], [b[j] for j in index])
        if value is not None:
            values.append(value)
    if len(values) < _RESAMPLES // 2:
        return None, None
    values.sort()
    return values[int(0.025 * len(values))], values[min(len(values) - 1, int(0.975 * len(values)))]


def _rates(grades: list[Grade]) -> dict[str, Any]:
    from lorakit.evaluate.stats import wilson_interval

    n = len(grades)
    out: dict[str, Any] = {"n": n}
    for label in GRADES:
        k = sum(g.grade == label for g in grades)
        low, high = wilson_interval(k, n) if n else (None, None)
        out[label] = {"count": k, "rate": k / n if n else None, "ci_low": low, "ci_high": high}
    return out


def _kappas(
    latest: Mapping[tuple[str, str], Grade], reviewers: list[str], seed: int
) -> list[dict[str, Any]]:
    out = []
    for i, first in enumerate(reviewers):
        for second in reviewers[i + 1 :]:
            items = sorted(
                item for item, who in latest if who == first and (item, second) in latest
            )
            a = [latest[(item, first)].grade for item in items]
            b = [latest[(item, second)].grade for item in items]
            row: dict[str, Any] = {"reviewers": [first, second], "n": len(items)}
            if items:
                row["agreement"] = sum(x == y for x, y in zip(a, b, strict=True)) / len(items)
                row["kappa"] = cohen_kappa(a, b)
                low, high = _bootstrap(a, b, cohen_kappa, seed)
                row["ci_low"], row["ci_high"] = low, high
            else:
                row.update(agreement=None, kappa=None, ci_low=None, ci_high=None)
            out.append(row)
    return out


def _metric_agreement(
    sheet: ReviewSheet,
    latest: Mapping[tuple[str, str], Grade],
    metrics: Mapping[str, Any],
    seed: int,
) -> dict[str, Any]:
    per_item: dict[str, list[float]] = {}
    for (item, _), grade in latest.items():
        per_item.setdefault(item, []).append(GRADE_VALUE[grade.grade])
    graded = [i for i in sheet.items if i.id in per_item]
    values = [sum(per_item[i.id]) / len(per_item[i.id]) for i in graded]
    names = sorted({name for item in graded for name in item.scores} | set(metrics))
    out: dict[str, Any] = {}
    for name in names:
        if name in metrics:
            scores = [float(metrics[name](i.answer, i.reference)) for i in graded]
            pairs = list(zip(scores, values, strict=True))
        else:
            pairs = [
                (i.scores[name], v) for i, v in zip(graded, values, strict=True) if name in i.scores
            ]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        rho = spearman(xs, ys)
        low, high = (None, None)
        if rho is not None:
            low, high = _bootstrap(xs, ys, spearman, seed)
        out[name] = {
            "n": len(pairs),
            "spearman": rho,
            "ci_low": low,
            "ci_high": high,
            "mean": sum(xs) / len(xs) if xs else None,
        }
    return out


def summarize(
    sheet: ReviewSheet,
    grades: list[Grade],
    *,
    metrics: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Grade rates, reviewer agreement and metric agreement of a sheet's grades.

    Args:
        sheet: the graded sheet.
        grades: every stored grade (the latest revision per item and reviewer counts).
        metrics: extra text metrics to score the graded answers with, by name (a
            :class:`~lorakit.protocols.Metric` each); the scores stored in the answers file
            are used too.
        seed: the bootstrap seed.

    Returns:
        ``{"items", "graded_items", "reviewers": {name: rates}, "pooled": rates,
        "kappa": [...], "metrics": {name: {"n", "spearman", "ci_low", "ci_high", "mean"}}}``,
        rates being ``{"n", grade: {"count", "rate", "ci_low", "ci_high"}}``.
    """
    latest = latest_grades(grades)
    reviewers = sorted({who for _, who in latest})
    by_reviewer = {who: [g for (_, w), g in latest.items() if w == who] for who in reviewers}
    return {
        "items": len(sheet.items),
        "graded_items": len({item for item, _ in latest}),
        "reviewers": {who: _rates(g) for who, g in by_reviewer.items()},
        "pooled": _rates(list(latest.values())),
        "kappa": _kappas(latest, reviewers, seed),
        "metrics": _metric_agreement(sheet, latest, metrics or {}, seed),
    }
