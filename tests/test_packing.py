"""Padding-free packing: same loss as one by one, no attention across examples, labels unchanged."""

from __future__ import annotations

import pytest

from lorakit import ConfigError
from lorakit.data.packing import pack_examples, packed_row
from lorakit.data.rows import QARow
from lorakit.data.tokenize import TokenizeSpec, ensure_pad_token, tokenize_rows
from lorakit.train import QACollator

ROWS = [
    QARow(
        question="What is a fever?",
        answer="A body temperature above the normal range.",
        origin="r1",
    ),
    QARow(question="How is anemia found?", answer="A blood test counts red cells.", origin="r2"),
    QARow(
        question="Why wash hands?", answer="It removes germs that spread infections.", origin="r3"
    ),
]


@pytest.fixture(params=["sdpa", "varlen"])
def model_and_examples(request, tiny_phi3, tiny_tokenizer, registries):
    """The tiny Phi-3 with SDPA (block-diagonal mask) and with lorakit's varlen attention
    (on the CPU: its reference path over the same example boundaries)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.attention import register_varlen

    ensure_pad_token(tiny_tokenizer)
    template = registries.templates.resolve("qa")()
    examples, _ = tokenize_rows(ROWS, tiny_tokenizer, template, TokenizeSpec(max_len=256))
    attn = register_varlen() if request.param == "varlen" else request.param
    model = AutoModelForCausalLM.from_pretrained(
        tiny_phi3, dtype=torch.float32, attn_implementation=attn
    ).eval()
    model.config.use_cache = False  # as lorakit trains: no cache, so packed rows are detected
    return model, examples, tiny_tokenizer.pad_token_id


def test_pack_examples_first_fit_and_capacity():
    rows = pack_examples([5, 3, 4, 2, 6], capacity=8, seed=0)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]
    lengths = [5, 3, 4, 2, 6]
    assert all(sum(lengths[i] for i in row) <= 8 for row in rows)
    assert len(rows) == 3  # 20 tokens in rows of 8: three is the fewest
    with pytest.raises(ConfigError, match="does not fit a packed row of 8"):
        pack_examples([9], capacity=8)


def test_packed_row_keeps_labels_and_restarts_positions(model_and_examples):
    _, examples, _ = model_and_examples
    row = packed_row(examples)
    assert row["labels"] == [label for e in examples for label in e.labels]
    assert row["input_ids"] == [t for e in examples for t in e.input_ids]
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    assert starts == [
        0,
        len(examples[0].input_ids),
        len(examples[0].input_ids) + len(examples[1].input_ids),
    ]


def test_packed_loss_equals_token_weighted_mean_of_single_losses(model_and_examples):
    import torch

    model, examples, pad_id = model_and_examples
    collate = QACollator(pad_id)
    total = 0.0
    tokens = 0
    with torch.no_grad():
        for example in examples:
            batch = collate([{"input_ids": example.input_ids, "labels": example.labels}])
            n = sum(1 for label in example.labels[1:] if label != -100)
            total += float(model(**batch).loss) * n
            tokens += n
        packed = QACollator(pad_id, pad_to_multiple_of=64)([packed_row(examples)])
        assert "attention_mask" not in packed
        packed_loss = float(model(**packed).loss)
    assert packed_loss == pytest.approx(total / tokens, abs=1e-4)


def test_no_token_attends_across_an_example_boundary(model_and_examples):
    import torch

    model, examples, pad_id = model_and_examples
    first, second = examples[0], examples[1]
    changed_first = type(first)(
        input_ids=[first.input_ids[0]] + [(t + 7) % 100 + 10 for t in first.input_ids[1:]],
        labels=first.labels,
        origin=first.origin,
    )
    collate = QACollator(pad_id)

    def logits_of_second(a, *, packed: bool):
        row = packed_row([a, second])
        if not packed:  # plain concatenation: one sequence, positions running on
            row["position_ids"] = list(range(len(row["input_ids"])))
        with torch.no_grad():
            out = model(**collate([row])).logits[0]
        return out[len(a.input_ids) :]

    same = logits_of_second(first, packed=True)
    assert torch.allclose(same, logits_of_second(changed_first, packed=True), atol=1e-5)
    # The same check fails without the document boundaries: the test can tell.
    plain = logits_of_second(first, packed=False)
    assert not torch.allclose(plain, logits_of_second(changed_first, packed=False), atol=1e-3)
    # And the packed logits of the second example equal its logits alone.
    with torch.no_grad():
        alone = model(**collate([{"input_ids": second.input_ids, "labels": second.labels}])).logits[
            0
        ]
    assert torch.allclose(same, alone, atol=1e-4)


def test_packing_refuses_an_example_that_starts_supervised():
    from lorakit.data.tokenize import Example

    with pytest.raises(ConfigError, match="starts with a supervised token"):
        packed_row([Example(input_ids=[1, 2], labels=[1, 2], origin="x")])
