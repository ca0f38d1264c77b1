"""The fast decoding path (static KV cache, bucketed shapes, chunked read-back) gives exactly
the tokens of the dynamic path on the CPU in float32: batch 1 and a ragged batch, LoRA adapter
on and off, stop tokens, callbacks, cancel, reuse of a bucket. The tiny Phi-3, no mocks."""

from __future__ import annotations

from typing import Any

import pytest

from lorakit.answer import SamplingSpec, decode, last_decode_info

LENGTHS = [(7,), (5, 23, 12)]


@pytest.fixture(scope="module")
def model_and_tokenizer() -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorakit.testing import tiny_phi3_path

    path = tiny_phi3_path()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    )
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        init_lora_weights=False,  # a LoRA that changes the tokens
    )
    model = get_peft_model(base, config).eval()
    return model, AutoTokenizer.from_pretrained(path)


def make_prompts(lengths: tuple[int, ...], seed: int = 0) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(100, 1000) for _ in range(n)] for n in lengths]


def both(model: Any, tokenizer: Any, prompts: Any, settings: Any, **kw: Any) -> tuple[Any, Any]:
    dynamic = decode(model, tokenizer, prompts, settings, fast=False, **kw)
    assert last_decode_info()["path"] == "dynamic"
    fast = decode(model, tokenizer, prompts, settings, fast=True, **kw)
    assert last_decode_info()["path"] == "static"
    return dynamic, fast


@pytest.mark.parametrize("lengths", LENGTHS, ids=["batch1", "ragged3"])
@pytest.mark.parametrize("adapter", [True, False], ids=["adapter", "base"])
def test_fast_greedy_tokens_equal_the_dynamic_path(model_and_tokenizer, lengths, adapter):
    import contextlib

    model, tokenizer = model_and_tokenizer
    prompts = make_prompts(lengths)
    settings = SamplingSpec(max_new_tokens=20)
    with contextlib.nullcontext() if adapter else model.disable_adapter():
        dynamic, fast = both(model, tokenizer, prompts, settings)
    assert [d.token_ids for d in fast] == [d.token_ids for d in dynamic]
    assert fast == dynamic
    assert all(len(d.token_ids) == 20 and d.truncated for d in fast)
    info = decode(model, tokenizer, prompts, settings, fast=True) and last_decode_info()
    assert info["batch_bucket"] == {1: 1, 3: 4}[len(lengths)]
    assert info["length_bucket"] == 128


def test_the_adapter_changes_the_tokens_and_each_state_gets_its_own_bucket(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts((9, 4, 16))
    settings = SamplingSpec(max_new_tokens=12)
    on = decode(model, tokenizer, prompts, settings, fast=True)
    with model.disable_adapter():
        off = decode(model, tokenizer, prompts, settings, fast=True)
        assert off == decode(model, tokenizer, prompts, settings, fast=False)
    assert on != off
    assert decode(model, tokenizer, prompts, settings, fast=True) == on


def test_a_reused_bucket_ignores_the_previous_calls_cache(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    settings = SamplingSpec(max_new_tokens=16)
    long = make_prompts((60, 41, 33), seed=1)
    short = make_prompts((3, 2, 9), seed=2)
    decode(model, tokenizer, long, settings, fast=True)
    assert last_decode_info()["length_bucket"] == 128
    dynamic, fast = both(model, tokenizer, short, settings)
    assert fast == dynamic


def test_stop_tokens_end_rows_at_the_same_token(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts((6, 14, 10), seed=3)
    settings = SamplingSpec(max_new_tokens=24)
    free = decode(model, tokenizer, prompts, settings, fast=False)
    stop = free[1].token_ids[10]  # row 1 stops at its 11th token (past a read-back chunk)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop
    try:
        dynamic, fast = both(model, tokenizer, prompts, settings)
    finally:
        model.generation_config.eos_token_id = saved
    assert fast == dynamic
    cut = free[1].token_ids.index(stop)
    assert fast[1].token_ids == free[1].token_ids[:cut] and not fast[1].truncated
    assert stop not in fast[0].token_ids and stop not in fast[2].token_ids


def test_callbacks_and_cancel_match_the_dynamic_path(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts((8, 3, 19), seed=4)
    settings = [SamplingSpec(max_new_tokens=n) for n in (20, 5, 13)]

    def run(fast: bool) -> tuple[Any, list[tuple[int, int]], list[int]]:
        seen: list[tuple[int, int]] = []
        asked: list[int] = []

        def should_stop(row: int) -> bool:
            asked.append(row)
            return row == 0 and sum(1 for r, _ in seen if r == 0) >= 11  # a client went away

        out = decode(
            model,
            tokenizer,
            prompts,
            settings,
            on_token=lambda r, t: seen.append((r, t)),
            should_stop=should_stop,
            fast=fast,
        )
        return out, seen, asked

    dynamic, fast = run(False), run(True)
    assert fast == dynamic
    assert len(fast[0][0].token_ids) == 11  # cancelled after its 11th token
    uncancelled = decode(model, tokenizer, prompts, settings, fast=True)
    assert fast[0][1:] == uncancelled[1:]  # the other rows ran on
    assert fast[1] == [(r, t) for r, t in dynamic[1]]


def test_sampling_on_the_fast_path_is_seeded(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts((5, 12), seed=5)
    hot = SamplingSpec(max_new_tokens=16, temperature=1.2, top_p=0.9, seed=7)
    greedy = SamplingSpec(max_new_tokens=16)
    first = decode(model, tokenizer, prompts, [hot, greedy], fast=True)
    again = decode(model, tokenizer, prompts, [hot, greedy], fast=True)
    assert first == again
    assert first[1] == decode(model, tokenizer, prompts, greedy, fast=False)[1]
    assert first[0] != decode(model, tokenizer, prompts, greedy, fast=True)[0]


def test_auto_selection_and_fallbacks(model_and_tokenizer, monkeypatch):
    model, tokenizer = model_and_tokenizer
    prompts = make_prompts((4,))
    settings = SamplingSpec(max_new_tokens=3)
    decode(model, tokenizer, prompts, settings)  # the CPU: dynamic unless asked
    assert last_decode_info() == {"path": "dynamic", "reason": "off"}
    monkeypatch.setenv("LORAKIT_FAST_DECODE", "1")
    decode(model, tokenizer, prompts, settings)
    assert last_decode_info()["path"] == "static"
    monkeypatch.setenv("LORAKIT_FAST_DECODE", "0")
    decode(model, tokenizer, prompts, settings, fast=True)  # the argument wins
    assert last_decode_info()["path"] == "static"
    # Past the sliding window the prepared mask would differ: the dynamic path decodes.
    out = decode(model, tokenizer, make_prompts((2040,)), SamplingSpec(max_new_tokens=8), fast=True)
    info = last_decode_info()
    assert info["path"] == "dynamic" and "sliding window" in info["reason"]
    assert len(out[0].token_ids) <= 8


def test_adapter_weights_follow_a_16_bit_base_for_generation() -> None:
    """PEFT loads LoRA weights in float32; on a bf16 base the answer path casts them to bf16
    (16-bit adapter matmuls) and says so, and leaves a float32 model as it is."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lorakit.run_source import adapters_to_compute_dtype
    from lorakit.testing import tiny_phi3_path

    config = LoraConfig(r=4, target_modules=["qkv_proj", "down_proj"], init_lora_weights=False)
    fp32 = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_phi3_path()), config)
    assert adapters_to_compute_dtype(fp32) == ""
    assert {p.dtype for n, p in fp32.named_parameters() if "lora_" in n} == {torch.float32}

    base = AutoModelForCausalLM.from_pretrained(tiny_phi3_path(), dtype=torch.bfloat16)
    model = get_peft_model(base, config)
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in lora.items()}
    assert adapters_to_compute_dtype(model) == "adapter weights in bfloat16 for generation"
    after = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert {p.dtype for p in after.values()} == {torch.bfloat16}
    for name, value in before.items():
        assert torch.equal(after[name], value.to(torch.bfloat16))
    ids = torch.tensor([[5, 17, 301, 42]])
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    assert adapters_to_compute_dtype(model) == ""  # nothing left to cast
