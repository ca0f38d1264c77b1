"""lorakit's varlen attention: boundaries, the fallbacks, and agreement with SDPA."""

from __future__ import annotations

import pytest

from lorakit.attention import VARLEN, cu_seq_lens, register_varlen
from lorakit.model import ModelSpec, resolve_attention
from lorakit.train import QACollator


def test_cu_seq_lens_marks_every_example_and_row_start():
    import torch

    bounds, longest = cu_seq_lens(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]))
    assert bounds.tolist() == [0, 3, 5, 9, 10]
    assert bounds.dtype == torch.int32
    assert longest == 4
    # A row starts a segment even when its positions do not restart (a cached continuation).
    bounds, longest = cu_seq_lens(torch.tensor([[5, 6, 7], [5, 6, 7]]))
    assert bounds.tolist() == [0, 3, 6]


def test_block_causal_mask_keeps_segments_and_window():
    import torch

    from lorakit.attention import _block_causal_mask

    mask = _block_causal_mask(torch.tensor([0, 2, 5], dtype=torch.int32), 5, None)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    windowed = _block_causal_mask(torch.tensor([0, 5], dtype=torch.int32), 5, 2)
    assert windowed[4].tolist() == [False, False, False, True, True]  # itself and one back


def test_auto_attention_needs_a_gpu_kernel_and_a_plain_causal_architecture(monkeypatch):
    import lorakit.attention as attention

    assert ModelSpec(name="x").attn_implementation == "auto"
    for cuda, dtype in ((False, "float32"), (True, "float32")):
        assert resolve_attention("auto", cuda=cuda, dtype_name=dtype, model_type="phi3") == "sdpa"
    monkeypatch.setattr(attention, "varlen_available", lambda: True)
    assert resolve_attention("auto", cuda=True, dtype_name="bfloat16", model_type="phi3") == (
        "varlen"
    )
    # Soft-capped or sink attention (gemma2, gpt_oss) is not what the kernel computes.
    for model_type in ("gemma2", "gpt_oss", None):
        assert (
            resolve_attention("auto", cuda=True, dtype_name="bfloat16", model_type=model_type)
            == "sdpa"
        )
    monkeypatch.setattr(attention, "varlen_available", lambda: False)  # old torch or GPU
    assert resolve_attention("auto", cuda=True, dtype_name="float16", model_type="phi3") == "sdpa"
    assert (
        resolve_attention("flex_attention", cuda=True, dtype_name="bfloat16", model_type="phi3")
        == "flex_attention"
    )


def test_varlen_refuses_soft_capping_and_sinks():
    import torch

    from lorakit import ConfigError
    from lorakit.attention import varlen_attention_forward

    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(ConfigError, match="soft-caps"):
        varlen_attention_forward(torch.nn.Module(), q, q, q, None, softcap=30.0)


@pytest.fixture()
def models(tiny_phi3):
    import torch
    from transformers import AutoModelForCausalLM

    def load(attn: str):
        model = AutoModelForCausalLM.from_pretrained(
            tiny_phi3, dtype=torch.float32, attn_implementation=attn
        ).eval()
        model.config.use_cache = False
        return model

    return load("sdpa"), load(register_varlen())


def _packed_batch(lengths: list[int], pad: int = 0):
    import torch

    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in lengths:
        ids = torch.randint(10, 200, (n,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100, *ids[1:]]})
    from lorakit.data.packing import packed_row
    from lorakit.data.tokenize import Example

    row = packed_row([Example(input_ids=r["input_ids"], labels=r["labels"]) for r in rows])
    return QACollator(pad, packed_length=sum(lengths) + 5)([row])


def test_varlen_model_uses_the_boundaries_and_matches_sdpa(models, monkeypatch):
    import torch

    import lorakit.attention as attention

    sdpa, varlen = models
    assert varlen.config._attn_implementation == VARLEN
    batch = _packed_batch([7, 12, 4])
    calls = []
    real = attention._block_causal_mask
    monkeypatch.setattr(
        attention,
        "_block_causal_mask",
        lambda bounds, total, window: calls.append(bounds.tolist()) or real(bounds, total, window),
    )
    with torch.no_grad():
        expected = sdpa(**batch).logits
        got = varlen(**batch).logits
        # The same boundaries read from position ids when the collator's are absent.
        bare = {k: v for k, v in batch.items() if not k.startswith(("cu_seq", "max_length"))}
        derived = varlen(**bare).logits
    assert calls[0] == [0, 7, 19, 23, 28]  # three examples, then the padding segment
    assert len(calls) == 2 * varlen.config.num_hidden_layers
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(got, derived)


def test_varlen_gradients_match_sdpa(models):
    sdpa, varlen = models
    batch = _packed_batch([9, 5, 11])
    grads = []
    for model in (sdpa, varlen):
        model.zero_grad()
        model(**batch).loss.backward()
        grads.append(model.model.layers[0].self_attn.qkv_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    assert (grads[0] - grads[1]).abs().max() < 1e-4


def test_varlen_padded_batches_and_generation_fall_back_to_sdpa(models, tiny_tokenizer):
    import torch

    sdpa, varlen = models
    from lorakit.data.tokenize import ensure_pad_token

    pad = ensure_pad_token(tiny_tokenizer)
    batch = QACollator(pad)(
        [
            {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, 8, 9]},
            {"input_ids": [11, 12], "labels": [-100, 12]},
        ]
    )
    with torch.no_grad():
        assert torch.allclose(varlen(**batch).logits, sdpa(**batch).logits, atol=1e-5)
    prompt = torch.tensor([[1, 30, 31, 32, 33]])
    outputs = []
    for model in (sdpa, varlen):
        model.config.use_cache = True
        outputs.append(
            model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=pad).tolist()
        )
    assert outputs[0] == outputs[1]


def test_varlen_batches_of_whole_rows_match_sdpa(models):
    """Several unpadded rows of one length: no row may attend to another, mask or no mask."""
    import torch

    sdpa, varlen = models
    ids = torch.randint(10, 200, (3, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = sdpa(input_ids=ids).logits
        for mask in (None, torch.ones_like(ids)):
            got = varlen(input_ids=ids, attention_mask=mask).logits
            assert torch.allclose(got, expected, atol=1e-4)


def test_answer_loss_does_not_depend_on_the_batch_size_with_varlen(models):
    import torch

    from lorakit.data.tokenize import Example
    from lorakit.evaluate.perplexity import answer_loss

    sdpa, varlen = models
    gen = torch.Generator().manual_seed(4)
    examples = []
    for _ in range(6):  # equal lengths: batches without padding
        ids = torch.randint(10, 200, (12,), generator=gen).tolist()
        examples.append(Example(input_ids=ids, labels=[-100] * 4 + ids[4:]))
    one = answer_loss(varlen, examples, QACollator(0), batch_size=1)
    six = answer_loss(varlen, examples, QACollator(0), batch_size=6)
    reference = answer_loss(sdpa, examples, QACollator(0), batch_size=6)
    assert one.loss == pytest.approx(six.loss, abs=1e-5)
    assert six.loss == pytest.approx(reference.loss, abs=1e-5)


def test_varlen_continues_after_a_cache_without_a_mask(models):
    import torch

    sdpa, varlen = models
    ids = torch.randint(10, 200, (1, 14), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = sdpa(input_ids=ids).logits
        first = varlen(input_ids=ids[:, :8], use_cache=True)
        rest = varlen(input_ids=ids[:, 8:], past_key_values=first.past_key_values, use_cache=True)
    assert torch.allclose(rest.logits, full[:, 8:], atol=1e-4)


def test_varlen_mask_is_none_only_for_a_fresh_unpadded_batch():
    """Whichever keyword names transformers uses (q_length / q_offset, or cache_position)."""
    import torch

    from lorakit.attention import _varlen_mask

    common = {"batch_size": 1, "kv_length": 6, "attention_mask": None}
    assert _varlen_mask(q_length=6, q_offset=0, kv_offset=0, **common) is None
    assert _varlen_mask(cache_position=torch.arange(6), kv_offset=0, **common) is None
    after_cache = _varlen_mask(q_length=2, q_offset=4, kv_offset=0, **common)
    assert after_cache is not None and after_cache.shape[-2:] == (2, 6)
    padded = _varlen_mask(
        q_length=6,
        q_offset=0,
        kv_offset=0,
        **{**common, "attention_mask": torch.tensor([[1] * 5 + [0]]).bool()},
    )
    assert padded is not None and not bool(padded[0, 0, 5, 5])
