"""MinHash signatures and the LSH index behind near_dedup and benchmark_overlap."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lorakit.data.minhash import (
    LSHIndex,
    MinHasher,
    jaccard,
    jaccard_estimate,
    lsh_params,
    normalize_text,
)

TEXT = " ".join(f"word{i} filler{i % 7}" for i in range(150))


def test_normalize_text_ignores_case_punctuation_and_spacing():
    assert normalize_text("  What is (are) Asthma ?\n\t") == "what is are asthma"
    assert normalize_text("Naïve T-cells, ÉTÉ_x") == "naïve t cells été x"
    assert normalize_text("") == ""


def test_signatures_are_stable_across_processes_and_hash_seeds():
    code = (
        "import json; from lorakit.data.minhash import MinHasher; "
        f"print(json.dumps(MinHasher(num_perm=16, seed=3).signature({TEXT[:200]!r}).tolist()))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1
    here = MinHasher(num_perm=16, seed=3).signature(TEXT[:200]).tolist()
    assert json.loads(outputs.pop()) == here


def test_seed_changes_the_permutations():
    assert not np.array_equal(MinHasher(seed=0).signature(TEXT), MinHasher(seed=1).signature(TEXT))


def test_estimate_tracks_the_exact_jaccard():
    words = TEXT.split()
    hasher = MinHasher(num_perm=256)
    for changed in (0, 3, 10, 30, 100):
        edited = words[:]
        for i in range(changed):
            edited[(i * 37) % len(edited)] = f"new{i}"
        other = " ".join(edited)
        exact = jaccard(TEXT, other)
        estimate = jaccard_estimate(hasher.signature(TEXT), hasher.signature(other))
        assert abs(estimate - exact) < 0.1, (changed, exact, estimate)


def test_batch_signatures_equal_single_ones():
    hasher = MinHasher(num_perm=32, ngram=3)
    texts = [TEXT, "", "two words", TEXT.upper()]
    batch = hasher.signatures(texts)
    assert batch.shape == (4, 32) and batch.dtype == np.uint32
    for row, text in zip(batch, texts, strict=True):
        assert np.array_equal(row, hasher.signature(text))
    assert np.array_equal(batch[0], batch[3])  # case is ignored
    assert hasher.signatures([]).shape == (0, 32)


def test_short_texts_are_one_shingle():
    assert jaccard("a b", "a b") == 1.0
    assert jaccard("a b", "b a") == 0.0
    assert jaccard("", "") == 1.0


def test_lsh_index_finds_verified_near_duplicates_only():
    hasher = MinHasher()
    index = LSHIndex(hasher.num_perm, 0.8)
    base = index.add(hasher.signature(TEXT))
    index.add(hasher.signature("completely different text about something else entirely here"))
    near = TEXT.replace("word10 ", "changed ")
    assert index.first_match(hasher.signature(near))[0] == base
    assert index.query(hasher.signature("unrelated words that share nothing with the others")) == []
    assert len(index) == 2


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9, 0.95])
def test_lsh_params_fit_the_signature(threshold):
    bands, rows = lsh_params(threshold, 128)
    assert bands * rows <= 128
    # a pair at the threshold is very likely a candidate; a pair far below is not
    assert 1 - (1 - threshold**rows) ** bands > 0.8
    assert 1 - (1 - (threshold - 0.3) ** rows) ** bands < 0.3
