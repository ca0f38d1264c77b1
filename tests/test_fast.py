"""The fast path's pieces that run anywhere: selective checkpointing, the memory planner, Liger modes."""

from __future__ import annotations

import pytest

from lorakit import ConfigError
from lorakit.fast import apply_liger, checkpoint_layers, plan_memory, set_checkpointing


@pytest.fixture()
def checkpointed_model(tiny_phi3):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def test_set_checkpointing_full_selective_none(checkpointed_model):
    layers = checkpoint_layers(checkpointed_model)
    assert len(layers) == 2  # the tiny Phi-3's decoder layers
    set_checkpointing(checkpointed_model, 2)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    set_checkpointing(checkpointed_model, None)
    assert not any(layer.gradient_checkpointing for layer in layers)
    set_checkpointing(checkpointed_model, 1)
    assert all(layer.gradient_checkpointing for layer in layers)


class FakeCuda:
    """Stands in for torch.cuda's memory counters: peak = tokens x cost of the checkpointing mode."""

    def __init__(self, model, cost):
        self.model, self.cost, self.peak = model, cost, 0.0

    def step(self, tokens):
        kept = sum(not layer.gradient_checkpointing for layer in checkpoint_layers(self.model))
        self.peak = tokens * self.cost[kept] * 2**30


@pytest.fixture()
def fake_cuda(monkeypatch, checkpointed_model):
    import torch

    fake = FakeCuda(checkpointed_model, cost={2: 3e-3, 1: 2e-3, 0: 1e-3})  # GiB per token
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: fake.peak)
    return fake


def test_plan_memory_picks_the_fastest_setting_that_fits(checkpointed_model, fake_cuda):
    # 4096 tokens: none 12.3 GiB, every 2nd 8.2, every layer 4.1 (limit 0.9 x 10 = 9 GiB).
    plan = plan_memory(
        checkpointed_model,
        10,
        tokens_per_batch=4096,
        grad_accum=4,
        min_tokens=1024,
        step=fake_cuda.step,
    )
    assert (plan.checkpoint_every, plan.tokens_per_batch, plan.grad_accum) == (2, 4096, 4)
    assert [t[0] for t in plan.tried] == ["None", "2"]
    assert "selective checkpointing" in plan.describe()


def test_plan_memory_halves_the_micro_batch_keeping_tokens_per_step(checkpointed_model, fake_cuda):
    plan = plan_memory(
        checkpointed_model,
        4,
        tokens_per_batch=4096,
        grad_accum=4,
        min_tokens=1024,
        step=fake_cuda.step,
    )
    # Every layer at 4096 tokens needs 4.1 GiB > 3.6: halve to 2048 x 8, where every 2nd fits? 4.1 no; full 2.05 yes.
    assert (plan.tokens_per_batch, plan.grad_accum, plan.checkpoint_every) == (2048, 8, 1)
    assert plan.tokens_per_batch * plan.grad_accum == 4096 * 4


def test_plan_memory_says_when_nothing_fits(checkpointed_model, fake_cuda):
    with pytest.raises(ConfigError, match="needs more than") as info:
        plan_memory(
            checkpointed_model,
            1,
            tokens_per_batch=2048,
            grad_accum=1,
            min_tokens=1024,
            step=fake_cuda.step,
        )
    assert info.value.field == "training.max_memory_gb"


def test_liger_modes_on_a_machine_without_what_it_needs(checkpointed_model):
    import importlib.util

    import torch

    if importlib.util.find_spec("liger_kernel") is not None and torch.cuda.is_available():
        pytest.skip("Liger can be applied here")
    assert apply_liger(checkpointed_model, "off") is None
    assert apply_liger(checkpointed_model, "auto") is None
    with pytest.raises(ConfigError, match="cannot apply Liger kernels"):
        apply_liger(checkpointed_model, "on")


def test_every_checkpointing_mode_gives_the_same_gradients(tiny_phi3):
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.adapter import AdapterSpec, apply_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_phi3, dtype=torch.float32)
    base.config.use_cache = False
    model, _ = apply_adapter(base, AdapterSpec(rank=4, dropout=0.0), gradient_checkpointing=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    model.train()
    ids = torch.randint(10, 400, (2, 24))
    grads = {}
    for every in (None, 2, 1):
        set_checkpointing(model, every)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[every] = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    for every in (2, 1):
        assert all(
            torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[None], grads[every], strict=True)
        )


def _count_addmm(monkeypatch):
    """Count the lean forward's fused products (PEFT's forward never calls ``torch.addmm``)."""
    import torch

    calls = []
    real = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _lora_model(path, *, dropout=0.0, dora=False, quant=False, dtype=None):
    """The tiny Phi-3 with a LoRA adapter whose weights are the same on every call."""
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.adapter import AdapterSpec, apply_adapter
    from lorakit.model import disable_cpu_inference_path

    kwargs = {}
    if quant:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, **kwargs)
    disable_cpu_inference_path(base)
    base.config.use_cache = False
    model, _ = apply_adapter(
        base, AdapterSpec(rank=4, dropout=dropout, dora=dora), gradient_checkpointing=False
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model.train()


def _loss_and_grads(model, ids, seed=0):
    import torch

    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks for both models
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


@pytest.mark.parametrize(
    ("dropout", "quant"), [(0.0, False), (0.1, False), (0.1, True)], ids=["plain", "dropout", "nf4"]
)
def test_fused_lora_gives_peft_logits_and_gradients(tiny_phi3, dropout, quant, monkeypatch):
    import torch

    from lorakit.fast import fuse_lora

    ids = torch.randint(10, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    peft = _lora_model(tiny_phi3, dropout=dropout, quant=quant)
    fused = _lora_model(tiny_phi3, dropout=dropout, quant=quant)
    layers = fuse_lora(fused)
    assert layers == fused.config.num_hidden_layers * 4  # qkv, o, gate_up, down
    assert fuse_lora(fused) == 0  # once only
    calls = _count_addmm(monkeypatch)
    logits_a, grads_a = _loss_and_grads(peft, ids)
    assert calls == []
    logits_b, grads_b = _loss_and_grads(fused, ids)
    assert len(calls) == layers  # every layer took the lean path
    assert torch.allclose(logits_a, logits_b, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, grads_b[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("model_dtype", ["float32", "bfloat16"])
def test_fused_lora_under_autocast_is_as_accurate_as_peft(tiny_phi3, model_dtype, monkeypatch):
    """As lorakit trains on a GPU: autocast, float32 adapters, the base model in float32 or
    bf16. The two differ by rounding; against float32, the fused one is no worse."""
    import torch

    from lorakit.fast import fuse_lora

    dtype = getattr(torch, model_dtype)
    ids = torch.randint(10, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    logits_ref, grads_ref = _loss_and_grads(_lora_model(tiny_phi3), ids)
    peft = _lora_model(tiny_phi3, dtype=dtype)
    fused = _lora_model(tiny_phi3, dtype=dtype)
    layers = fuse_lora(fused)
    calls = _count_addmm(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits_a, grads_a = _loss_and_grads(peft, ids)
        logits_b, grads_b = _loss_and_grads(fused, ids)
    assert len(calls) == layers
    assert logits_b.dtype == logits_a.dtype

    def error(x, ref):
        return float((x.float() - ref).norm() / ref.norm())

    assert error(logits_b, logits_ref) <= 1.25 * error(logits_a, logits_ref)
    for name, ref in grads_ref.items():
        assert error(grads_b[name], ref) <= 1.25 * error(grads_a[name], ref) + 1e-3, name


def test_fused_lora_keeps_peft_forward_for_disabled_merged_and_dora(tiny_phi3, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.fast import fuse_lora

    ids = torch.randint(10, 400, (1, 16), generator=torch.Generator().manual_seed(0))
    base = AutoModelForCausalLM.from_pretrained(tiny_phi3, dtype=torch.float32).eval()
    fused = _lora_model(tiny_phi3)
    fuse_lora(fused)
    fused.eval()
    with torch.no_grad():
        adapted = fused(input_ids=ids).logits
        with fused.disable_adapter():
            assert torch.allclose(fused(input_ids=ids).logits, base(input_ids=ids).logits)
        fused.merge_adapter()
        assert torch.allclose(fused(input_ids=ids).logits, adapted, atol=1e-5)
        fused.unmerge_adapter()
    dora_peft = _lora_model(tiny_phi3, dora=True).eval()
    dora_fused = _lora_model(tiny_phi3, dora=True).eval()
    fuse_lora(dora_fused)
    calls = _count_addmm(monkeypatch)
    with torch.no_grad():
        assert torch.equal(dora_peft(input_ids=ids).logits, dora_fused(input_ids=ids).logits)
        with fused.disable_adapter():
            fused(input_ids=ids)
    assert calls == []
