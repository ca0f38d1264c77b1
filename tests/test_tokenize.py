"""Templates and tokenisation: label masks, truncation, drops, the report, pad and stop tokens."""

from __future__ import annotations

import copy
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lorakit.data.rows import QARow
from lorakit.data.templates import QATemplate
from lorakit.data.tokenize import (
    IGNORE_INDEX,
    TokenizeReport,
    TokenizeSpec,
    ensure_pad_token,
    stop_token_ids,
    tokenize_rows,
)
from lorakit.errors import ConfigError

FEVER = QARow(question="What is a fever?", answer="A raised body temperature.", origin="t:1")
LONG = QARow(
    question="What are the symptoms of asthma?",
    answer=" ".join(["Wheezing, shortness of breath, chest tightness and coughing."] * 20),
    origin="t:2",
)
MCQ = QARow(
    question="Which vitamin deficiency causes scurvy?",
    answer="Vitamin C",
    options=("Vitamin A", "Vitamin C", "Vitamin D", "Vitamin K"),
    answer_letter="B",
    origin="t:3",
)
PUBMED = QARow(
    question="Does exercise lower blood pressure?",
    answer="yes",
    context="We studied 120 adults.\n\nBlood pressure fell after 12 weeks.",
    origin="t:4",
)


@pytest.fixture(scope="module")
def tokenizer(tiny_phi3: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3)


@pytest.fixture()
def fresh_tokenizer(tiny_phi3: Path):
    """A tokenizer this test may change (pad token, chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3)


def _tokens(tokenizer, *names: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(name) for name in names]


def _prompt_ids(tokenizer, template, row: QARow) -> list[int]:
    text = tokenizer.apply_chat_template(
        [dict(m) for m in template.prompt(row)], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text)["input_ids"]


def _whole_ids(tokenizer, template, row: QARow) -> list[int]:
    messages = [dict(m) for m in template.prompt(row)]
    messages.append({"role": "assistant", "content": template.answer(row)})
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False))["input_ids"]


def _supervised(example) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


# ----------------------------------------------------------------------------- templates


def test_qa_is_registered_by_the_builtin_plugin(registries):
    entry = registries.templates.entry("qa")
    assert entry.plugin == "lorakit.data.templates"
    template = entry.obj(system="Be careful.", include_context=False)
    assert isinstance(template, QATemplate)
    assert template.system == "Be careful."


def test_qa_rejects_unknown_and_mistyped_options(registries):
    factory = registries.templates.resolve("qa")
    with pytest.raises(ConfigError, match="did you mean 'system'"):
        factory(sytem="Be careful.")
    with pytest.raises(ConfigError, match="include_context"):
        factory(include_context="no")


def test_free_text_rendering():
    template = QATemplate()
    assert template.prompt(FEVER) == [{"role": "user", "content": "What is a fever?"}]
    assert template.answer(FEVER) == "A raised body temperature."
    padded = QARow(question="  What is a fever? \n", answer="\n A raised body temperature. ")
    assert template.prompt(padded) == template.prompt(FEVER)
    assert template.answer(padded) == template.answer(FEVER)


def test_mcq_rendering():
    template = QATemplate(system="Answer with the letter of the correct option.")
    assert template.prompt(MCQ) == [
        {"role": "system", "content": "Answer with the letter of the correct option."},
        {
            "role": "user",
            "content": "Which vitamin deficiency causes scurvy?\n"
            "A. Vitamin A\nB. Vitamin C\nC. Vitamin D\nD. Vitamin K",
        },
    ]
    assert template.answer(MCQ) == "B. Vitamin C"


def test_context_rendering():
    user = QATemplate().prompt(PUBMED)[-1]["content"]
    assert user == (
        "Context:\nWe studied 120 adults.\n\nBlood pressure fell after 12 weeks.\n\n"
        "Question:\nDoes exercise lower blood pressure?"
    )
    assert QATemplate(include_context=False).prompt(PUBMED)[-1]["content"] == PUBMED.question
    mcq_with_context = QARow(
        question="Is it effective?",
        answer="yes",
        options=("yes", "no", "maybe"),
        answer_letter="A",
        context="A trial.",
    )
    assert QATemplate().prompt(mcq_with_context)[-1]["content"] == (
        "Context:\nA trial.\n\nQuestion:\nIs it effective?\nA. yes\nB. no\nC. maybe"
    )


# ----------------------------------------------------------------------------- label masks


def test_prompt_masked_answer_and_end_supervised_tail_masked(tokenizer):
    template = QATemplate(system="You are a careful medical assistant.")
    (example,), report = tokenize_rows([FEVER], tokenizer, template, TokenizeSpec())
    prompt = _prompt_ids(tokenizer, template, FEVER)
    n = len(prompt)
    assert example.input_ids[:n] == prompt
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.input_ids.count(tokenizer.bos_token_id) == 1
    assert example.labels[:n] == [IGNORE_INDEX] * n
    end, eot = _tokens(tokenizer, "<|end|>", "<|endoftext|>")
    supervised = _supervised(example)
    assert tokenizer.decode(supervised) == "A raised body temperature.<|end|>"
    assert supervised[-1] == end and supervised.count(end) == 1
    # Everything after <|end|> (here only <|endoftext|>: Phi-3's <|end|> eats the newline) is masked.
    last = max(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    assert example.input_ids[last] == end
    assert example.input_ids[last + 1 :] == [eot]
    assert example.labels[last + 1 :] == [IGNORE_INDEX]
    # Supervised positions carry their own ids; the rest of the sequence is untouched.
    assert example.labels[n : last + 1] == example.input_ids[n : last + 1]
    assert example.origin == "t:1"
    assert report.supervised_tokens == len(supervised) == example.supervised
    assert report.total_tokens == len(example.input_ids)


def test_mcq_answer_supervised_as_letter_and_option(tokenizer):
    (example,), _ = tokenize_rows([MCQ], tokenizer, QATemplate(), TokenizeSpec())
    assert tokenizer.decode(_supervised(example)) == "B. Vitamin C<|end|>"


@pytest.mark.parametrize("system", [None, "You are a careful medical assistant."])
def test_prompt_plus_completion_is_the_whole_conversation(tokenizer, real_rows, system):
    template = QATemplate(system=system)
    examples, report = tokenize_rows(real_rows, tokenizer, template, TokenizeSpec(max_len=100_000))
    assert len(examples) == len(real_rows)
    assert report.boundary_mismatches == 0
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    for row, example in zip(real_rows, examples, strict=True):
        assert example.input_ids == _whole_ids(tokenizer, template, row), row.origin
        n = len(_prompt_ids(tokenizer, template, row))
        assert set(example.labels[:n]) == {IGNORE_INDEX}
        supervised = _supervised(example)
        assert supervised[-1] == end
        assert tokenizer.decode(supervised[:-1]) == template.answer(row), row.origin


def test_answers_starting_with_whitespace_tokenise_as_in_the_whole_conversation(tokenizer):
    class Verbatim:  # keeps the answer's whitespace, unlike "qa"
        def prompt(self, row):
            return [{"role": "user", "content": row.question}]

        def answer(self, row):
            return row.answer

    rows = [
        QARow(question="Q1", answer="\n   Indented answer.\n"),
        QARow(question="Q2", answer=" leading space"),
        QARow(question="Q3", answer="\tTabbed"),
    ]
    examples, _ = tokenize_rows(rows, tokenizer, Verbatim(), TokenizeSpec())
    for row, example in zip(rows, examples, strict=True):
        assert example.input_ids == _whole_ids(tokenizer, Verbatim(), row)


def test_boundary_is_right_for_a_tokenizer_that_marks_only_the_first_word(tokenizer, real_rows):
    """A Metaspace(prepend_scheme="first") tokenizer (Llama-style in transformers 5) puts "▁"
    before the first word of a text but not after a special token, so a completion tokenised
    on its own differs from the same text inside the conversation."""
    from tokenizers import pre_tokenizers

    first_only = copy.deepcopy(tokenizer)
    first_only.backend_tokenizer.normalizer = None
    first_only.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first", split=False
    )
    template = QATemplate()
    row = real_rows[0]
    prompt_text = first_only.apply_chat_template(
        template.prompt(row), tokenize=False, add_generation_prompt=True
    )
    whole = _whole_ids(first_only, template, row)
    naive = (
        first_only(prompt_text)["input_ids"]
        + first_only(
            first_only.apply_chat_template(
                [*template.prompt(row), {"role": "assistant", "content": template.answer(row)}],
                tokenize=False,
            )[len(prompt_text) :],
            add_special_tokens=False,
        )["input_ids"]
    )
    assert naive != whole  # the pitfall is real for this tokenizer
    examples, _ = tokenize_rows(real_rows, first_only, template, TokenizeSpec(max_len=100_000))
    for r, example in zip(real_rows, examples, strict=True):
        assert example.input_ids == _whole_ids(first_only, template, r), r.origin


# ----------------------------------------------------------------------------- truncation and drops


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tokenizer):
    template = QATemplate()
    n = len(_prompt_ids(tokenizer, template, LONG))
    spec = TokenizeSpec(max_len=n + 5)
    examples, report = tokenize_rows([FEVER, LONG], tokenizer, template, spec)
    fever, long = examples
    assert report.truncated == 1
    assert report.truncated_origins == ("t:2",)
    assert len(long.input_ids) == n + 5
    assert long.input_ids[:n] == _prompt_ids(tokenizer, template, LONG)
    assert long.supervised == 5
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end not in _supervised(long)  # the end token is lost
    assert end in _supervised(fever)
    assert report.length["max"] == len(_whole_ids(tokenizer, template, LONG)) > spec.max_len


def test_cutting_only_the_masked_tail_is_not_truncation(tokenizer):
    template = QATemplate()
    whole = _whole_ids(tokenizer, template, FEVER)
    (example,), report = tokenize_rows(
        [FEVER], tokenizer, template, TokenizeSpec(max_len=len(whole) - 1)
    )
    assert report.truncated == 0
    assert example.input_ids == whole[:-1]  # <|endoftext|> cut, <|end|> kept and supervised
    assert _supervised(example)[-1] == tokenizer.convert_tokens_to_ids("<|end|>")


def test_prompt_filling_max_len_is_dropped_and_counted(tokenizer):
    rows = [
        QARow(question=f"Question {i} about diabetes?", answer="Yes.", origin=f"t:{i}")
        for i in range(7)
    ]
    examples, report = tokenize_rows(rows, tokenizer, QATemplate(), TokenizeSpec(max_len=4))
    assert examples == []
    assert report.rows == 7
    assert report.examples == 0
    assert report.zero_supervised == 7
    assert report.zero_supervised_origins == tuple(f"t:{i}" for i in range(5))
    assert sum(b.count for b in report.histogram) == 0


def test_prompt_exactly_max_len_is_dropped(tokenizer):
    n = len(_prompt_ids(tokenizer, QATemplate(), FEVER))
    examples, report = tokenize_rows([FEVER], tokenizer, QATemplate(), TokenizeSpec(max_len=n))
    assert examples == [] and report.zero_supervised == 1
    (example,), report = tokenize_rows(
        [FEVER], tokenizer, QATemplate(), TokenizeSpec(max_len=n + 1)
    )
    assert example.supervised == 1 and report.truncated == 1


# ----------------------------------------------------------------------------- the report


def test_histogram_and_lengths(tokenizer, real_rows):
    spec = TokenizeSpec(max_len=256)
    examples, report = tokenize_rows(real_rows, tokenizer, QATemplate(), spec)
    assert report.examples == len(examples) == sum(b.count for b in report.histogram)
    assert report.rows == len(real_rows) == report.examples + report.zero_supervised
    bins = report.histogram
    assert bins[0].low == 1 and bins[-2].high == spec.max_len and bins[-1].high is None
    assert all(a.high is not None and b.low == a.high + 1 for a, b in itertools.pairwise(bins))
    kept = {e.origin for e in examples}
    lengths = [  # untruncated lengths of the kept examples
        len(_whole_ids(tokenizer, QATemplate(), row)) for row in real_rows if row.origin in kept
    ]
    assert bins[-1].count == sum(1 for n in lengths if n > spec.max_len) > 0
    assert 0 < report.truncated <= bins[-1].count
    long_prompts = [
        row for row in real_rows if len(_prompt_ids(tokenizer, QATemplate(), row)) >= spec.max_len
    ]
    assert report.zero_supervised == len(long_prompts) > 0  # long PubMedQA contexts
    stats = report.length
    assert stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"] == max(lengths)
    assert report.total_tokens == sum(len(e.input_ids) for e in examples)
    assert all(len(e.input_ids) <= spec.max_len for e in examples)
    assert report.supervised_tokens == sum(e.supervised for e in examples)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["histogram"][-1] == {
        "bucket": ">256",
        "low": 257,
        "high": None,
        "count": bins[-1].count,
    }
    assert data["truncated"] == report.truncated


def test_empty_report():
    report = TokenizeReport.empty(TokenizeSpec(max_len=128))
    assert report.examples == report.rows == 0
    assert report.length["max"] == 0
    assert sum(b.count for b in report.histogram) == 0
    assert report.to_dict()["max_len"] == 128


def test_progress_and_batches(tokenizer):
    rows = [QARow(question=f"Q{i}?", answer=f"A{i}.", origin=f"t:{i}") for i in range(5)]
    calls: list[int] = []
    examples, _ = tokenize_rows(
        iter(rows), tokenizer, QATemplate(), TokenizeSpec(batch_size=2), progress=calls.append
    )
    assert calls == [2, 2, 1]
    assert [e.origin for e in examples] == [r.origin for r in rows]


@pytest.mark.parametrize(
    ("options", "field"),
    [({"max_len": 0}, "max_len"), ({"max_len": 1.5}, "max_len"), ({"batch_size": 0}, "batch_size")],
)
def test_spec_is_validated(options, field):
    with pytest.raises(ConfigError, match=field):
        TokenizeSpec(**options)


def test_no_chat_template_is_a_config_error(fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template") as info:
        tokenize_rows([FEVER], fresh_tokenizer, QATemplate(), TokenizeSpec())
    assert info.value.hint and "chat_template" in info.value.hint


# ----------------------------------------------------------------------------- pad and stop tokens


def test_stop_token_ids(tokenizer):
    stops = stop_token_ids(tokenizer)
    assert set(_tokens(tokenizer, "<|end|>", "<|endoftext|>", "<|assistant|>")) <= stops
    assert tokenizer.eos_token_id in stops
    assert tokenizer.convert_tokens_to_ids("<unk>") not in stops
    assert 12345 in stop_token_ids(tokenizer, extra=[12345])


def test_ensure_pad_token_replaces_a_pad_that_is_a_stop_token(fresh_tokenizer):
    size = len(fresh_tokenizer)
    assert fresh_tokenizer.pad_token_id in stop_token_ids(fresh_tokenizer)  # as shipped
    pad = ensure_pad_token(fresh_tokenizer)
    assert pad == fresh_tokenizer.pad_token_id
    assert pad not in stop_token_ids(fresh_tokenizer)
    assert fresh_tokenizer.pad_token == "<unk>"
    assert len(fresh_tokenizer) == size  # nothing added, nothing to resize
    assert ensure_pad_token(fresh_tokenizer) == pad


def test_ensure_pad_token_sets_a_missing_pad_and_avoids_extra_stops(fresh_tokenizer):
    fresh_tokenizer.pad_token = None
    unk = fresh_tokenizer.unk_token_id
    pad = ensure_pad_token(fresh_tokenizer, extra_stop_ids=[unk])
    assert pad != unk
    assert fresh_tokenizer.pad_token == "<|placeholder1|>"


def test_ensure_pad_token_keeps_a_good_pad(fresh_tokenizer):
    fresh_tokenizer.pad_token = "<|placeholder6|>"
    assert ensure_pad_token(fresh_tokenizer) == fresh_tokenizer.convert_tokens_to_ids(
        "<|placeholder6|>"
    )


def test_ensure_pad_token_fails_without_a_candidate():
    class Bare:
        chat_template = None
        eos_token_id = 1
        pad_token_id = 1
        bos_token_id = 0
        unk_token = None
        added_tokens_decoder: dict[int, str] = {}  # noqa: RUF012
        name_or_path = ""

        def get_vocab(self) -> dict[str, int]:
            return {"<s>": 0, "</s>": 1, "a": 2}

    with pytest.raises(ConfigError, match="pad token"):
        ensure_pad_token(Bare())


# ----------------------------------------------------------------------------- real rows


@pytest.fixture(scope="module")
def real_rows(shared_data: Path) -> list[QARow]:
    """A few hundred real rows: MedQuAD free text, PubMedQA with context, MedMCQA options."""
    rows: list[QARow] = []
    for subset in sorted((shared_data / "medquad").glob("[0-9]*_*")):
        for path in sorted(subset.glob("*.xml"))[:15]:
            for pair in ET.parse(path).getroot().iter("QAPair"):
                question = pair.findtext("Question") or ""
                answer = pair.findtext("Answer") or ""
                if question.strip() and answer.strip():
                    rows.append(
                        QARow(question=question, answer=answer, origin=f"{path}:{pair.get('pid')}")
                    )
    pubmed = json.loads((shared_data / "pubmedqa" / "ori_pqal_train.json").read_text())
    for pmid, item in list(pubmed.items())[:30]:
        rows.append(
            QARow(
                question=item["QUESTION"],
                answer=item["LONG_ANSWER"],
                context="\n\n".join(item["CONTEXTS"]),
                origin=f"pubmedqa:{pmid}",
            )
        )
    with (shared_data / "medmcqa" / "dev.json").open(encoding="utf-8") as lines:
        for n, line in zip(range(60), lines, strict=False):
            item = json.loads(line)
            options = tuple(item[k] for k in ("opa", "opb", "opc", "opd"))
            letter = "ABCD"[item["cop"] - 1]
            rows.append(
                QARow(
                    question=item["question"],
                    answer=options["ABCD".index(letter)],
                    options=options,
                    answer_letter=letter,
                    origin=f"medmcqa:{n + 1}",
                )
            )
    assert len(rows) > 200
    return rows
