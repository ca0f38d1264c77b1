"""MinHash signatures and an LSH index for finding near-duplicate texts.

Texts are normalised (lowercase, punctuation replaced by spaces, whitespace
collapsed), split into words and turned into a *set* of word n-gram shingles.
The Jaccard similarity of two shingle sets is estimated by the fraction of
positions where their MinHash signatures agree; an ``LSHIndex`` (bands x
rows) finds candidate pairs without comparing every pair, and each candidate is
verified against the threshold with that estimate.

Everything is deterministic: words are hashed with BLAKE2b (not Python's
per-process randomised ``hash``), and the hash permutations are drawn from
a seeded ``numpy.random.Generator``. Equal seeds give equal signatures on
every machine and in every process.

The permutations are multiply-shift hashes ``(a * x + b) mod 2**64`` with an
odd ``a``, keeping the upper 32 bits; ``min`` commutes with the shift, so the
minimum is taken over 64-bit values and shifted once.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Iterable, Sequence

import attrs
import numpy as np
import numpy.typing as npt

__all__ = [
    "LSHIndex",
    "MinHasher",
    "expected_error",
    "jaccard",
    "jaccard_estimate",
    "lsh_params",
    "normalize_text",
    "shingle_hashes",
    "words",
]

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]

_NON_WORD = re.compile(r"[\W_]+")
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _ascii_table() -> bytes:
    table = bytearray(b" " * 256)
    for code in range(128):
        char = chr(code)
        if char.isalnum():
            table[code] = ord(char.lower())
    return bytes(table)


_ASCII_TABLE = _ascii_table()


def words(text: str) -> list[str]:
    """The words of ``text`` after normalisation: lowercase, split at anything not a letter or digit."""
    if text.isascii():
        # Fast path, same result as the regular expression for ASCII text.
        return text.encode("ascii").translate(_ASCII_TABLE).decode("ascii").split()
    return _NON_WORD.sub(" ", text.lower()).split()


def normalize_text(text: str) -> str:
    """``text`` lowercased, punctuation replaced by spaces, whitespace collapsed and stripped.

    Two texts that differ only in case, punctuation or spacing normalise to the
    same string: ``"What is (are) Asthma ?"`` -> ``"what is are asthma"``.
    """
    return " ".join(words(text))


@functools.lru_cache(maxsize=1 << 18)
def _word_digest(word: str) -> bytes:
    return hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()


def _mix64(x: U64) -> U64:
    """The splitmix64 finaliser, in place on a fresh array: spreads every input bit over the output."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
    return x


def _word_hashes(tokens: Sequence[str]) -> U64:
    if not tokens:
        return np.zeros(0, dtype=np.uint64)
    raw = b"".join(map(_word_digest, tokens))
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def _ngram_hashes(hashes: U64, ngram: int) -> U64:
    """64-bit hashes of the word n-grams of one text (one hash of all words when shorter)."""
    n = len(hashes)
    if n == 0:
        # The empty text: one shingle, so that two empty texts compare equal.
        return np.zeros(1, dtype=np.uint64)
    width = min(ngram, n)
    count = n - width + 1
    with np.errstate(over="ignore"):
        out = hashes[:count].copy()
        for k in range(1, width):
            out *= _NGRAM_MULT
            out += hashes[k : k + count]
    return _mix64(out)


def shingle_hashes(text: str, ngram: int = 5) -> U64:
    """The sorted, distinct 64-bit hashes of the word ``ngram``-grams of normalised ``text``.

    A text of fewer than ``ngram`` words is one shingle (all its words); the
    empty text is one fixed shingle, so two empty texts are identical.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    return np.unique(_ngram_hashes(_word_hashes(words(text)), ngram))


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """The exact Jaccard similarity of the shingle sets of two texts (for checks and tests)."""
    sa, sb = shingle_hashes(a, ngram), shingle_hashes(b, ngram)
    inter = len(np.intersect1d(sa, sb, assume_unique=True))
    union = len(sa) + len(sb) - inter
    return inter / union if union else 1.0


def jaccard_estimate(a: npt.NDArray[np.uint32], b: npt.NDArray[np.uint32]) -> float:
    """The Jaccard estimate of two MinHash signatures: the fraction of equal positions."""
    if a.shape != b.shape:
        raise ValueError(f"signatures of different lengths: {a.shape} and {b.shape}")
    length: int = a.shape[-1]
    return float(np.count_nonzero(a == b)) / length


def _positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@attrs.frozen
class MinHasher:
    """Computes MinHash signatures of texts.

    Attributes:
        num_perm: number of hash permutations (signature length). The standard
            error of the Jaccard estimate is about ``sqrt(J * (1 - J) / num_perm)``.
        ngram: words per shingle.
        seed: seed of the permutations; signatures are comparable only between
            hashers with equal ``num_perm`` and ``seed``.
    """

    num_perm: int = 128
    ngram: int = 5
    seed: int = 0
    _a: U64 = attrs.field(init=False, repr=False, eq=False)
    _b: U64 = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        _positive_int("num_perm", self.num_perm, 2)
        _positive_int("ngram", self.ngram)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        a = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64, endpoint=False)
        b = rng.integers(0, 2**64, size=self.num_perm, dtype=np.uint64, endpoint=False)
        object.__setattr__(self, "_a", a | np.uint64(1))
        object.__setattr__(self, "_b", b)

    def _shingles(self, text: str) -> U64:
        return _ngram_hashes(_word_hashes(words(text)), self.ngram)

    def signature(self, text: str) -> U32:
        """The signature of one text: ``num_perm`` unsigned 32-bit values."""
        x = self._shingles(text)
        values: U64 = np.multiply.outer(x, self._a)  # wraps modulo 2**64
        values += self._b[None, :]
        mins: U64 = values.min(axis=0)
        signature: U32 = (mins >> np.uint64(32)).astype(np.uint32)
        return signature

    def signatures(self, texts: Iterable[str]) -> U32:
        """Signatures of many texts, one row each: shape ``(len(texts), num_perm)``."""
        rows = [self.signature(text) for text in texts]
        if not rows:
            return np.empty((0, self.num_perm), dtype=np.uint32)
        return np.stack(rows)


def _probability(s: npt.NDArray[np.float64], bands: int, rows: int) -> npt.NDArray[np.float64]:
    """Probability that two texts of Jaccard ``s`` share at least one band."""
    result: npt.NDArray[np.float64] = 1.0 - (1.0 - s**rows) ** bands
    return result


@functools.lru_cache(maxsize=256)
def lsh_params(
    threshold: float, num_perm: int, false_positive_weight: float = 0.05
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` for a Jaccard ``threshold``.

    Minimises the weighted area of false positives (pairs below the threshold
    that become candidates) and false negatives (pairs above it that do not).
    Candidates are verified afterwards, so false negatives weigh more by
    default: a missed duplicate cannot be recovered, an extra candidate costs
    one comparison.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    _positive_int("num_perm", num_perm, 2)
    below = np.linspace(0.0, threshold, 201)
    above = np.linspace(threshold, 1.0, 201)
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        if rows < 1:
            break
        fp = float(np.mean(_probability(below, bands, rows))) * threshold
        fn = float(np.mean(1.0 - _probability(above, bands, rows))) * (1.0 - threshold)
        cost = false_positive_weight * fp + (1.0 - false_positive_weight) * fn
        if best is None or cost < best[0] - 1e-12:
            best = (cost, bands, rows)
    assert best is not None
    return best[1], best[2]


class LSHIndex:
    """Locality-sensitive hashing over MinHash signatures, with verified matches.

    Signatures are cut into ``bands`` bands of ``rows`` values; two signatures
    sharing any whole band are candidates, and a candidate is a match when its
    ``jaccard_estimate`` is at least ``threshold``. Keys are the insertion
    numbers ``0, 1, 2, ...`` returned by ``add``.

    Args:
        num_perm: signature length.
        threshold: the Jaccard estimate a candidate must reach, in ``(0, 1]``.
        bands: number of bands; with ``None``, ``lsh_params`` chooses bands and rows.
    """

    def __init__(self, num_perm: int, threshold: float, bands: int | None = None) -> None:
        if bands is None:
            bands, rows = lsh_params(threshold, num_perm)
        else:
            _positive_int("bands", bands)
            rows = num_perm // bands
            if rows < 1:
                raise ValueError(
                    f"{bands} bands need at least {bands} permutations, got {num_perm}"
                )
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.num_perm = num_perm
        self.threshold = threshold
        self.bands = bands
        self.rows = rows
        self._tables: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self._store: U32 = np.empty((64, num_perm), dtype=np.uint32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def signature(self, key: int) -> U32:
        """The signature added under ``key``."""
        if not 0 <= key < self._size:
            raise KeyError(key)
        signature: U32 = self._store[key]
        return signature

    def _band_keys(self, sig: U32) -> list[bytes]:
        if sig.shape != (self.num_perm,):
            raise ValueError(
                f"expected a signature of length {self.num_perm}, got shape {sig.shape}"
            )
        raw = sig.tobytes()
        width = self.rows * sig.itemsize
        return [raw[i * width : (i + 1) * width] for i in range(self.bands)]

    def add(self, sig: U32) -> int:
        """Index ``sig``; returns its key."""
        key = self._size
        for table, band in zip(self._tables, self._band_keys(sig), strict=True):
            table.setdefault(band, []).append(key)
        if key == len(self._store):
            grown = np.empty((2 * len(self._store), self.num_perm), dtype=np.uint32)
            grown[:key] = self._store
            self._store = grown
        self._store[key] = sig
        self._size += 1
        return key

    def add_many(self, sigs: U32) -> list[int]:
        """Index every row of ``sigs`` (shape ``(n, num_perm)``); returns their keys."""
        return [self.add(sig) for sig in sigs]

    def candidates(self, sig: U32) -> list[int]:
        """Keys sharing at least one band with ``sig``, sorted, not yet verified."""
        found: set[int] = set()
        for table, band in zip(self._tables, self._band_keys(sig), strict=True):
            bucket = table.get(band)
            if bucket:
                found.update(bucket)
        return sorted(found)

    def query(self, sig: U32) -> list[tuple[int, float]]:
        """Verified matches of ``sig``: ``(key, jaccard estimate)`` pairs, in key order."""
        keys = self.candidates(sig)
        if not keys:
            return []
        cand = self._store[keys]
        scores = np.count_nonzero(cand == sig[None, :], axis=1) / self.num_perm
        return [
            (k, float(s)) for k, s in zip(keys, scores, strict=True) if s >= self.threshold - 1e-12
        ]

    def first_match(self, sig: U32) -> tuple[int, float] | None:
        """The earliest added key matching ``sig`` and its estimate, or ``None``."""
        matches = self.query(sig)
        return matches[0] if matches else None

    def best_match(self, sig: U32) -> tuple[int, float] | None:
        """The key with the highest estimate for ``sig`` (earliest on ties), or ``None``."""
        matches = self.query(sig)
        if not matches:
            return None
        return max(matches, key=lambda m: (m[1], -m[0]))


def expected_error(num_perm: int, similarity: float) -> float:
    """The standard error of the Jaccard estimate at ``similarity`` with ``num_perm`` permutations."""
    return math.sqrt(similarity * (1.0 - similarity) / num_perm)
