"""The decoding fast path on a GPU: the step captured as a CUDA graph gives the tokens of the
dynamic path, for one row and a ragged batch, with a LoRA adapter on; the answer path loads its
model so that this path is the one taken.

Run on a CUDA machine: ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _model(tmp_path):
    from peft import LoraConfig, get_peft_model

    from lorakit.run_source import load_model_and_adapters, quant_spec
    from lorakit.testing import tiny_phi3_path

    base, tokenizer, _ = load_model_and_adapters(tiny_phi3_path(), {}, quant=quant_spec("none"))
    torch.manual_seed(0)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        init_lora_weights=False,
        target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    )
    return get_peft_model(base, config).eval(), tokenizer


@pytest.mark.parametrize("lengths", [(9,), (5, 40, 17)])
def test_graph_path_gives_the_dynamic_paths_tokens(tmp_path, lengths):
    from lorakit.decoding import SamplingSpec, decode, last_decode_info

    model, tokenizer = _model(tmp_path)
    assert model.config._attn_implementation == "sdpa"
    gen = torch.Generator().manual_seed(len(lengths))
    prompts = [torch.randint(10, 2000, (n,), generator=gen).tolist() for n in lengths]
    settings = SamplingSpec(max_new_tokens=24)
    dynamic = decode(model, tokenizer, prompts, settings, fast=False)
    assert last_decode_info()["path"] == "dynamic"
    fast = decode(model, tokenizer, prompts, settings)  # auto: the fast path on a GPU
    info = last_decode_info()
    assert info["path"] == "graph", info
    assert [d.token_ids for d in fast] == [d.token_ids for d in dynamic]
    again = decode(model, tokenizer, prompts, settings)  # the captured bucket reused
    assert [d.token_ids for d in again] == [d.token_ids for d in dynamic]


def test_compiled_layers_are_captured_and_left_uncompiled(tmp_path, monkeypatch):
    """LORAKIT_COMPILE_DECODE=1: the captured step runs compiled decoder layers (the graph
    path is taken, agreement with the compiled step checked at capture), and the model's
    layers are not left compiled afterwards."""
    from lorakit.decoding import SamplingSpec, decode, last_decode_info
    from lorakit.fast import checkpoint_layers

    model, tokenizer = _model(tmp_path)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(10, 2000, (n,), generator=gen).tolist() for n in (6, 19)]
    monkeypatch.setenv("LORAKIT_COMPILE_DECODE", "1")
    out = decode(model, tokenizer, prompts, SamplingSpec(max_new_tokens=16))
    assert last_decode_info()["path"] == "graph", last_decode_info()
    assert all(len(d.token_ids) > 0 for d in out)
    assert all(layer._compiled_call_impl is None for layer in checkpoint_layers(model))
