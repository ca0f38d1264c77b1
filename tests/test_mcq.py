"""Multiple-choice scoring: prompt, tokenisation, batching, choices, generation, sanity anchors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import attrs
import pytest

from lorakit.data.rows import QARow
from lorakit.errors import ConfigError, DataError
from lorakit.evaluate.base import (
    ERROR_KINDS,
    MetricResult,
    ModelMetric,
    accuracy_result,
)
from lorakit.evaluate.loglikelihood import (
    LoglikelihoodScores,
    choose,
    encode_pairs,
    loglikelihoods,
    resolve_max_length,
)
from lorakit.evaluate.mcq import (
    MCQAccuracy,
    MCQPrompt,
    parse_reply,
    score_loglikelihood,
    score_mcq,
    select_exemplars,
)
from lorakit.evaluate.spec import BenchSpec

torch = pytest.importorskip("torch")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_lm(tiny_phi3):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3)
    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    return model, tokenizer


@pytest.fixture(scope="module")
def medqa_rows(shared_data):
    from lorakit.data.sources import read_source

    return list(read_source(f"medqa:{shared_data / 'medqa' / 'us_4_options_sample.jsonl'}"))


@pytest.fixture(scope="module")
def mmlu_rows(shared_data):
    from lorakit.data.sources import read_source

    return list(read_source(f"mmlu:{shared_data / 'mmlu' / 'dev'}"))


@pytest.fixture(scope="module")
def medmcqa_rows(shared_data):
    from lorakit.data.sources import read_source

    return list(read_source(f"medmcqa:{shared_data / 'medmcqa' / 'dev.json'}"))


class FavouriteTokenLM(torch.nn.Module):
    """A fake causal LM whose next-token distribution always favours one token id."""

    def __init__(self, vocab_size: int, favoured: int, *, keep: bool = True) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab_size = vocab_size
        self.favoured = favoured
        self.keep = keep
        self.rows = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, **kw):
        if "logits_to_keep" in kw and not self.keep:
            raise TypeError("unexpected keyword argument 'logits_to_keep'")
        keep = kw.get("logits_to_keep") or input_ids.shape[1]
        self.rows += input_ids.shape[0]
        logits = torch.zeros(input_ids.shape[0], keep, self.vocab_size)
        logits[..., self.favoured] = 10.0
        return SimpleNamespace(logits=logits)


class FixedReplyLM(torch.nn.Module):
    """A fake generator that answers every prompt with the same tokens."""

    def __init__(self, reply_ids: list[int]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.reply = torch.tensor(reply_ids)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=8, **kw):
        reply = self.reply[:max_new_tokens].expand(input_ids.shape[0], -1)
        return torch.cat([input_ids, reply], dim=1)


def _letter_id(tokenizer, letter: str) -> int:
    return tokenizer("Answer: " + letter)["input_ids"][-1]


def _rotate_gold_first(row: QARow) -> QARow:
    gold = row.answer_index
    options = (row.options[gold], *row.options[:gold], *row.options[gold + 1 :])
    return attrs.evolve(row, options=options, answer_letter="A")


# --------------------------------------------------------------------------- sanity anchors


def test_gold_loglikelihoods_score_100_percent():
    golds = [0, 3, 1, 2, 2]
    lls = tuple(tuple(-1.0 if j == g else -5.0 for j in range(4)) for g in golds)
    scores = LoglikelihoodScores(
        loglikelihoods=lls,
        greedy=tuple((False,) * 4 for _ in golds),
        choice_lengths=tuple((1, 1, 1, 1) for _ in golds),
        choice_bytes=tuple((1, 1, 1, 1) for _ in golds),
        truncated=(False,) * len(golds),
    )
    for normalize in ("none", "chars", "bytes"):
        result = accuracy_result("mcq_accuracy", scores.choices(normalize), golds)
        assert result.value == 1.0
        assert result.errors["wrong_option"] == 0


def test_scorer_fed_gold_answers_scores_100_percent_end_to_end(tiny_tokenizer, medqa_rows):
    # Put every gold option first and let a fake model always say " A": the whole scoring path
    # (prompt, tokens, batches, argmax, Wilson) must give 100 %.
    rows = [_rotate_gold_first(row) for row in medqa_rows]
    model = FavouriteTokenLM(len(tiny_tokenizer), _letter_id(tiny_tokenizer, "A"))
    result = score_mcq(model, tiny_tokenizer, rows, BenchSpec(batch_size=16))
    assert (result.value, result.n) == (1.0, 50)
    assert result.extra["acc_norm"] == 1.0
    assert result.ci_high == 1.0
    assert result.ci_low == pytest.approx(0.9287, abs=1e-4)  # Wilson 50/50


def test_always_a_scores_the_share_of_a_answers_on_medmcqa(tiny_tokenizer, medmcqa_rows):
    model = FavouriteTokenLM(len(tiny_tokenizer), _letter_id(tiny_tokenizer, "A"))
    result = score_mcq(model, tiny_tokenizer, medmcqa_rows, BenchSpec(batch_size=128))
    assert result.n == 4183
    assert round(result.value * result.n) == 1348
    assert result.value == pytest.approx(1348 / 4183)
    assert set(result.choices) == {0}
    assert result.errors["wrong_option"] == 4183 - 1348
    # per subject: the same always-A rule, subject by subject
    for subject, score in result.per_category.items():
        in_subject = [r for r in medmcqa_rows if r.category == subject]
        assert score.n == len(in_subject)
        assert score.correct == sum(r.answer_letter == "A" for r in in_subject)
    assert sum(s.n for s in result.per_category.values()) == 4183
    # one forward row per item: the four one-token letters share their input
    assert result.extra["forward_rows"] == 4183
    assert model.rows == 4183


def test_pubmedqa_majority_class_is_55_2_percent(shared_data):
    from lorakit.data.sources import read_source

    rows = list(read_source(f"pubmedqa:{shared_data / 'pubmedqa' / 'ori_pqal_train.json'}"))
    yes = rows[0].options.index("yes")
    result = accuracy_result("mcq_accuracy", [yes] * len(rows), [row.answer_index for row in rows])
    assert (result.n, round(result.value * result.n)) == (500, 276)
    assert result.value == pytest.approx(0.552)
    assert (round(result.ci_low, 4), round(result.ci_high, 4)) == (0.5082, 0.5950)


# --------------------------------------------------------------------------- prompt


ROW = QARow(
    question="  Which organ makes insulin? ",
    answer="Pancreas",
    options=("Liver", " Pancreas", "Kidney"),
    answer_letter="B",
    category="college_medicine",
    origin="x.jsonl:3",
)


def test_prompt_format_letters_and_texts():
    assert MCQPrompt().question_block(ROW) == (
        "Which organ makes insulin?\nA. Liver\nB. Pancreas\nC. Kidney\nAnswer:"
    )
    assert MCQPrompt().continuations(ROW) == [" A", " B", " C"]
    texts = MCQPrompt(choices="texts")
    assert texts.question_block(ROW) == "Which organ makes insulin?\nAnswer:"
    assert texts.continuations(ROW) == [" Liver", " Pancreas", " Kidney"]
    assert texts.exemplar(ROW) == "Which organ makes insulin?\nAnswer: Pancreas"


def test_prompt_with_context_description_and_exemplars():
    with_context = attrs.evolve(ROW, context="BACKGROUND: islets.", id="2")
    prompt = MCQPrompt(description="About {category}.\n\n")
    text = prompt.context(with_context, [ROW])
    assert text == (
        "About college medicine.\n\n"
        "Which organ makes insulin?\nA. Liver\nB. Pancreas\nC. Kidney\nAnswer: B\n\n"
        "Context: BACKGROUND: islets.\nQuestion: Which organ makes insulin?\n"
        "A. Liver\nB. Pancreas\nC. Kidney\nAnswer:"
    )


def test_chat_template_prompt_has_no_delimiter(tiny_lm, medqa_rows):
    model, tokenizer = tiny_lm
    spec = BenchSpec(chat_template=True)
    assert MCQPrompt.from_spec(spec).continuations(medqa_rows[0])[0] == "A"
    result = score_mcq(model, tokenizer, medqa_rows[:4], spec)
    assert result.n == 4 and result.extra["chat_template"] is True


def test_select_exemplars_skips_the_item_and_keeps_file_order(medqa_rows):
    assert select_exemplars(medqa_rows[0], medqa_rows, 2) == medqa_rows[1:3]
    assert select_exemplars(medqa_rows[5], medqa_rows, 2) == medqa_rows[0:2]
    assert select_exemplars(medqa_rows[1], medqa_rows, 2) == [medqa_rows[0], medqa_rows[2]]
    assert select_exemplars(medqa_rows[0], medqa_rows, 0) == []


def test_select_exemplars_by_category(medqa_rows):
    row = next(r for r in medqa_rows if r.category == "step2&3")
    chosen = select_exemplars(row, medqa_rows, 3, by_category=True)
    assert all(ex.category == "step2&3" and ex is not row for ex in chosen)
    with pytest.raises(ConfigError, match=r"shots=30 but only 22 exemplars of category"):
        select_exemplars(row, medqa_rows, 30, by_category=True)


# --------------------------------------------------------------------------- tokens


def test_encode_pairs_moves_trailing_space_into_the_continuation(tiny_tokenizer):
    a = encode_pairs(tiny_tokenizer, ["Answer: "], [["A"]])
    b = encode_pairs(tiny_tokenizer, ["Answer:"], [[" A"]])
    assert a == b
    context, conts, mismatches = b
    whole = tiny_tokenizer.encode("Answer: A")
    assert context[0] == tiny_tokenizer.encode("Answer:")
    assert context[0] + conts[0][0] == whole
    assert whole[0] == tiny_tokenizer.bos_token_id and mismatches == 0


def test_encode_pairs_adds_no_second_bos(tiny_tokenizer):
    context, _, _ = encode_pairs(tiny_tokenizer, ["<s>Answer:"], [[" A"]])
    assert context[0].count(tiny_tokenizer.bos_token_id) == 1


def test_encode_pairs_rejects_an_empty_continuation(tiny_tokenizer):
    with pytest.raises(ConfigError, match="encodes to no token"):
        encode_pairs(tiny_tokenizer, ["Answer:"], [[""]])


def test_resolve_max_length(tiny_lm):
    model, tokenizer = tiny_lm
    assert resolve_max_length(model, tokenizer) == 4096
    assert resolve_max_length(SimpleNamespace(config=None), SimpleNamespace()) == 2048


# --------------------------------------------------------------------------- choosing


def test_choose_takes_the_first_maximum_and_normalises_by_length():
    assert choose([-2.0, -1.0, -1.0]) == 1
    # the long option has the higher sum per character
    assert choose([-3.0, -8.0], [1, 10]) == 1
    assert choose([-3.0, -8.0]) == 0
    with pytest.raises(ConfigError):
        choose([])


def test_acc_norm_and_acc_bytes_differ_on_non_ascii_options():
    scores = LoglikelihoodScores(
        loglikelihoods=((-4.0, -6.1),),
        greedy=((False, False),),
        choice_lengths=((4, 6),),
        choice_bytes=((4, 12),),
        truncated=(False,),
    )
    assert scores.choices() == [0]
    assert scores.choices("chars") == [0]  # -1.0 vs -1.017
    assert scores.choices("bytes") == [1]  # -1.0 vs -0.508


# --------------------------------------------------------------------------- batching


def test_batches_do_not_change_the_scores(tiny_lm, mmlu_rows):
    model, tokenizer = tiny_lm
    rows = mmlu_rows[:8]
    spec = BenchSpec(choices="texts")
    one = score_loglikelihood(model, tokenizer, rows, attrs.evolve(spec, batch_size=1))
    many = score_loglikelihood(model, tokenizer, rows, attrs.evolve(spec, batch_size=7))
    for a, b in zip(one.loglikelihoods, many.loglikelihoods, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert one.choices() == many.choices()
    assert one.choices("chars") == many.choices("chars")
    assert one.forward_rows == one.requests == 32  # multi-token options share nothing


def test_a_model_without_logits_to_keep_gives_the_same_result(tiny_tokenizer, medqa_rows):
    favoured = _letter_id(tiny_tokenizer, "C")
    keep = FavouriteTokenLM(len(tiny_tokenizer), favoured)
    full = FavouriteTokenLM(len(tiny_tokenizer), favoured, keep=False)
    a = score_loglikelihood(keep, tiny_tokenizer, medqa_rows[:6])
    b = score_loglikelihood(full, tiny_tokenizer, medqa_rows[:6])
    flat = [ll for lls in a.loglikelihoods for ll in lls]
    assert flat == pytest.approx([ll for lls in b.loglikelihoods for ll in lls])
    assert a.choices() == b.choices() == [2] * 6


def test_loglikelihoods_match_a_single_unpadded_forward(tiny_lm):
    model, _ = tiny_lm
    requests = [([1, 50, 60, 70], [80, 90]), ([1, 50], [60]), ([1, 5, 6, 7, 8, 9, 10], [11])]
    lls, greedy, cut, rows = loglikelihoods(model, requests, batch_size=3, max_length=4096)
    for (context, continuation), ll in zip(requests, lls, strict=True):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        expected = sum(
            float(logprobs[len(context) - 1 + i, token]) for i, token in enumerate(continuation)
        )
        assert ll == pytest.approx(expected, abs=1e-4)
    assert cut == [False, False, False] and rows == 3 and len(greedy) == 3


def test_too_long_sequences_are_cut_on_the_left_and_counted(tiny_lm, medqa_rows):
    model, tokenizer = tiny_lm
    rows = medqa_rows[:5]
    result = score_mcq(model, tokenizer, rows, BenchSpec(max_length=40))
    assert result.errors["prompt_truncated"] == 5
    # the same as scoring the kept 41 tokens with room to spare
    spec = BenchSpec()
    contexts = [MCQPrompt.from_spec(spec).context(row) for row in rows]
    ctx, conts, _ = encode_pairs(
        tokenizer, contexts, [MCQPrompt.from_spec(spec).continuations(r) for r in rows]
    )
    requests = [(ctx[i], c) for i, cs in enumerate(conts) for c in cs]
    cut_lls, _, cut, _ = loglikelihoods(model, requests, max_length=40)
    kept = [((c + x)[-41:][: -len(x)], x) for c, x in requests]
    full_lls, _, not_cut, _ = loglikelihoods(model, kept, max_length=4096)
    assert all(cut) and not any(not_cut)
    assert cut_lls == pytest.approx(full_lls, abs=1e-4)


def test_progress_counts_finished_items(tiny_lm, mmlu_rows):
    model, tokenizer = tiny_lm
    for choices in ("letters", "texts"):
        seen: list[int] = []
        score_mcq(
            model,
            tokenizer,
            mmlu_rows[:9],
            BenchSpec(choices=choices, batch_size=4),
            progress=seen.append,
        )
        assert sum(seen) == 9 and all(n > 0 for n in seen)


def test_the_model_keeps_its_training_flag(tiny_lm, medqa_rows):
    model, tokenizer = tiny_lm
    model.train()
    try:
        score_mcq(model, tokenizer, medqa_rows[:2])
        assert model.training
    finally:
        model.eval()


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize(
    ("reply", "choices", "expected"),
    [
        ("B", "letters", (1, None)),
        ("The answer is (C).", "letters", (2, None)),
        ("**D** because", "letters", (3, None)),
        ("Answer: A. Liver", "letters", (0, None)),
        ("Aspirin helps", "letters", (-1, "no_parsable_answer")),
        ("E", "letters", (-1, "no_parsable_answer")),  # beyond the 4 options
        ("pancreas, clearly", "letters", (1, None)),
        ("I cannot give medical advice; please consult a doctor.", "letters", (-1, "refusal")),
        ("I'm sorry, but I can't help with that.", "letters", (-1, "refusal")),
        ("I can't be sure, but B.", "letters", (1, None)),
        ("", "letters", (-1, "no_parsable_answer")),
        ("kidney. A study shows", "texts", (2, None)),
        ("Liverpool", "texts", (-1, "no_parsable_answer")),
    ],
)
def test_parse_reply(reply, choices, expected):
    row = QARow(
        question="q",
        answer="Pancreas",
        options=("Liver", "Pancreas", "Kidney", "Heart"),
        answer_letter="B",
    )
    assert parse_reply(reply, row, choices) == expected


@pytest.mark.parametrize(
    ("reply", "kind", "value"),
    [
        (" B.", None, None),
        (" I cannot answer that.", "refusal", 0.0),
        (" zzz", "no_parsable_answer", 0.0),
    ],
)
def test_generation_mode_error_taxonomy(tiny_tokenizer, medqa_rows, reply, kind, value):
    rows = medqa_rows[:10]
    ids = tiny_tokenizer(reply, add_special_tokens=False)["input_ids"]
    result = score_mcq(FixedReplyLM(ids), tiny_tokenizer, rows, BenchSpec(mode="generate"))
    assert set(result.errors) == set(ERROR_KINDS)
    if kind is None:
        assert set(result.choices) == {1}
        assert result.value == sum(r.answer_letter == "B" for r in rows) / 10
        assert result.errors["wrong_option"] == 10 - round(result.value * 10)
    else:
        assert result.errors[kind] == 10 and result.value == value
        assert set(result.choices) == {-1} and result.errors["wrong_option"] == 0


def test_generation_mode_on_the_tiny_model(tiny_lm, medqa_rows):
    model, tokenizer = tiny_lm
    result = score_mcq(
        model, tokenizer, medqa_rows[:6], BenchSpec(mode="generate", reply_tokens=4, batch_size=4)
    )
    errors = result.errors
    answered = sum(1 for c in result.choices if c >= 0)
    assert errors["no_parsable_answer"] + errors["refusal"] == 6 - answered
    assert errors["wrong_option"] + sum(result.correct) == answered
    assert "acc_norm" not in result.extra


# --------------------------------------------------------------------------- the metric object


def test_mcq_accuracy_is_a_model_metric(tiny_lm, medqa_rows):
    model, tokenizer = tiny_lm
    metric = MCQAccuracy()
    assert isinstance(metric, ModelMetric) and metric.name == "mcq_accuracy"
    result = metric.evaluate(model, tokenizer, medqa_rows[:8], shots=1, batch_size=4)
    assert isinstance(result, MetricResult) and result.n == 8
    assert result.ci_low <= result.value <= result.ci_high
    assert set(result.per_category) <= {"step1", "step2&3"}
    data = result.to_dict()
    assert {"name", "value", "n", "ci_low", "ci_high", "per_category", "errors", "extra"} <= set(
        data
    )
    assert "choices" not in data and len(result.to_dict(per_item=True)["choices"]) == 8


def test_mcq_accuracy_rejects_bad_options_and_rows(tiny_lm, medqa_rows):
    model, tokenizer = tiny_lm
    metric = MCQAccuracy()
    with pytest.raises(ConfigError, match="did you mean 'shots'"):
        metric.evaluate(model, tokenizer, medqa_rows[:2], shot=2)
    with pytest.raises(ConfigError, match="'letters' or 'texts'"):
        metric.evaluate(model, tokenizer, medqa_rows[:2], choices="words")
    with pytest.raises(ConfigError, match="zero items"):
        metric.evaluate(model, tokenizer, [])
    free = QARow(question="What is a fever?", answer="A raised temperature.", origin="f.jsonl:7")
    with pytest.raises(DataError, match=r"f\.jsonl:7.*options"):
        metric.evaluate(model, tokenizer, [medqa_rows[0], free])


def test_never_a_score_over_zero_items():
    with pytest.raises(ConfigError, match="zero items"):
        MetricResult(name="x", value=0.0, n=0)
    with pytest.raises(ConfigError, match="zero items"):
        accuracy_result("x", [], [])


def test_perplexity_metric(tiny_lm, shared_data):
    from lorakit.data.sources import read_source
    from lorakit.data.templates import qa_template
    from lorakit.data.tokenize import TokenizeSpec, tokenize_rows
    from lorakit.evaluate.perplexity import Perplexity, answer_loss
    from lorakit.train import QACollator

    model, tokenizer = tiny_lm
    rows = list(read_source(f"medquad:{shared_data / 'medquad' / '5_NIDDK_QA'}"))[:6]
    seen: list[int] = []
    result = Perplexity().evaluate(model, tokenizer, rows, max_len=256, progress=seen.append)
    assert isinstance(Perplexity(), ModelMetric)
    assert result.name == "perplexity" and result.n == 6 and sum(seen) == 6
    assert result.value == pytest.approx(math.exp(result.extra["loss"]))
    assert result.ci_low is None and result.errors["prompt_too_long"] == 0
    examples, report = tokenize_rows(rows, tokenizer, qa_template(), TokenizeSpec(max_len=256))
    direct = answer_loss(model, examples, QACollator(0))
    assert result.extra["loss"] == pytest.approx(direct.loss, rel=1e-5)
    assert result.errors["answer_truncated"] == report.truncated > 0
    with pytest.raises(ConfigError, match="did you mean 'max_len'"):
        Perplexity().evaluate(model, tokenizer, rows, max_length=8)
    with pytest.raises(ConfigError, match="zero items"):
        Perplexity().evaluate(model, tokenizer, [])


def test_metrics_are_registered_through_the_hook():
    import lorakit.evaluate.plugin as plugin
    from lorakit.plugins import DEFAULT_PLUGINS, Registries, make_plugin_manager

    extra = () if plugin.__name__ in DEFAULT_PLUGINS else (plugin,)
    pm = make_plugin_manager(entry_points=False, plugins=extra, disabled=())
    registries = Registries.from_plugin_manager(pm)
    for name in ("mcq_accuracy", "perplexity"):
        metric = registries.metrics.resolve(name)
        assert isinstance(metric, ModelMetric) and metric.name == name


def test_importing_the_plugin_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, lorakit.evaluate.plugin, lorakit.evaluate.benchmarks, "
        "lorakit.evaluate.session, lorakit.evaluate.adapter_check, lorakit.plugins; "
        "print(any(m == 'torch' or m.startswith(('torch.', 'transformers')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
