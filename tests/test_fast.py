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
