"""lorakit's varlen attention on a GPU: the flash kernel agrees with SDPA on packed rows.

Run on a CUDA machine: ``pytest -m gpu tests/gpu``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_varlen_kernel_matches_sdpa_on_packed_rows(monkeypatch):
    from transformers import AutoModelForCausalLM

    import lorakit.attention as attention
    from lorakit.attention import VARLEN, register_varlen, varlen_available
    from lorakit.data.packing import packed_row
    from lorakit.data.tokenize import Example
    from lorakit.testing import tiny_phi3_path
    from lorakit.train import QACollator

    if not varlen_available():
        pytest.skip("this torch has no torch.nn.attention.varlen")
    register_varlen()
    gen = torch.Generator().manual_seed(0)
    examples = []
    for n in (37, 120, 9, 200, 64):
        ids = torch.randint(10, 2000, (n,), generator=gen).tolist()
        examples.append(Example(input_ids=ids, labels=[-100] * 3 + ids[3:]))
    batch = QACollator(0, packed_length=512)([packed_row(examples)])
    batch = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}

    def fallback(*args):
        raise AssertionError("the CPU reference path ran on the GPU")

    monkeypatch.setattr(attention, "_block_causal_mask", fallback)
    results = {}
    for attn, dtype in (
        ("sdpa", torch.float32),
        ("sdpa", torch.bfloat16),
        (VARLEN, torch.bfloat16),
    ):
        model = AutoModelForCausalLM.from_pretrained(
            tiny_phi3_path(), dtype=dtype, attn_implementation=attn, device_map="cuda"
        )
        model.config.use_cache = False
        out = model(**batch)
        out.loss.backward()
        grad = model.model.layers[0].self_attn.qkv_proj.weight.grad.float()
        results[attn, dtype] = (out.logits.float(), grad)
    ref_logits, ref_grad = results["sdpa", torch.float32]

    def error(x, ref):
        return float((x - ref).norm() / ref.norm())

    # In bf16 the flash kernel is as close to float32 as SDPA is (to rounding).
    sdpa_logits, sdpa_grad = results["sdpa", torch.bfloat16]
    varlen_logits, varlen_grad = results[VARLEN, torch.bfloat16]
    assert error(varlen_logits, ref_logits) <= 1.5 * error(sdpa_logits, ref_logits) + 1e-3
    assert error(varlen_grad, ref_grad) <= 1.5 * error(sdpa_grad, ref_grad) + 1e-3
