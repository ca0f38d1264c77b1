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


def test_set_checkpointing_by_count(checkpointed_model):
    layers = checkpoint_layers(checkpointed_model)
    set_checkpointing(checkpointed_model, None, count=1)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    set_checkpointing(checkpointed_model, None, count=0)
    assert not any(layer.gradient_checkpointing for layer in layers)


class Costs:
    """A memory and time model standing in for GPU measurements: each layer whose activations
    are kept costs memory per token; each recomputed layer costs time; every step has a fixed
    overhead (so small micro-batches are slower per token)."""

    def __init__(self, model, oom_from_kept=None):
        self.model, self.oom_from_kept, self.calls = model, oom_from_kept, []

    def measure(self, tokens):
        import torch

        layers = checkpoint_layers(self.model)
        kept = sum(not layer.gradient_checkpointing for layer in layers)
        self.calls.append((len(layers) - kept, tokens))
        if self.oom_from_kept is not None and kept >= self.oom_from_kept:
            raise torch.OutOfMemoryError("CUDA out of memory (modelled)")
        peak = 0.5 + tokens * (0.5e-3 + kept * 1e-3)  # GiB
        seconds = tokens * 1e-6 * (1 + 0.3 * (len(layers) - kept) / len(layers)) + 1e-3
        return peak, seconds


def _plan(model, budget, costs, tokens=4096, accum=4):
    return plan_memory(
        model,
        budget,
        tokens_per_batch=tokens,
        grad_accum=accum,
        min_tokens=1024,
        step=lambda tokens: None,
        measure=costs.measure,
    )


def test_plan_memory_keeps_the_fastest_measured_setting_that_fits(checkpointed_model):
    costs = Costs(checkpointed_model)
    # Limit 9 GiB. 4096 tokens: all recomputed 2.55 GiB, one layer 6.64, none 10.74 (too
    # much); 2048 tokens: none fits (5.62), but the fixed overhead makes it slower per token,
    # and the search ends there.
    plan = _plan(checkpointed_model, 10, costs)
    assert (plan.checkpointed, plan.tokens_per_batch, plan.grad_accum) == (1, 4096, 4)
    assert [t[:2] for t in plan.tried] == [
        (count, tokens) for tokens in (4096, 2048) for count in (2, 1, 0)
    ]
    assert plan.tried[2][2] > 9 and plan.tried[2][3] == 0.0  # measured, did not fit, not timed
    assert plan.tokens_per_s == max(t[3] for t in plan.tried)
    assert "selective checkpointing (1 of 2 layers)" in plan.describe()
    layers = checkpoint_layers(checkpointed_model)
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]  # left as chosen


def test_plan_memory_bisects_to_the_fewest_layers_recomputed_that_fit():
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=16,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
    )  # fmt: skip
    model = Phi3ForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    costs = Costs(model)
    # Limit 9 GiB at 4096 tokens: 2.55 GiB + 4.1 per layer kept. 12 recomputed (4 kept) does
    # not fit; between 16 and 12, 14 (2 kept, 10.74) does not and 15 (one kept, 6.64) does.
    plan = _plan(model, 10, costs)
    assert [t[0] for t in plan.tried if t[1] == 4096] == [16, 12, 14, 15]
    assert (plan.checkpointed, plan.tokens_per_batch) == (15, 4096)
    assert "selective checkpointing (15 of 16 layers)" in plan.describe()
    assert sum(layer.gradient_checkpointing for layer in checkpoint_layers(model)) == 15


def test_plan_memory_stops_at_no_recomputation(checkpointed_model):
    costs = Costs(checkpointed_model)
    plan = _plan(checkpointed_model, 40, costs)
    assert (plan.checkpointed, plan.tokens_per_batch) == (0, 4096)
    assert costs.calls == [(2, 4096), (1, 4096), (0, 4096)]  # nothing smaller is faster
    assert "no checkpointing" in plan.describe()


def test_plan_memory_halves_the_micro_batch_keeping_tokens_per_step(checkpointed_model):
    costs = Costs(checkpointed_model)
    # Limit 2.25 GiB: at 4096 tokens even full recomputation needs 2.55; at 2048 it needs 1.52.
    plan = _plan(checkpointed_model, 2.5, costs)
    assert (plan.tokens_per_batch, plan.grad_accum, plan.checkpointed) == (2048, 8, 2)
    assert plan.tokens_per_batch * plan.grad_accum == 4096 * 4
    assert "full checkpointing" in plan.describe()


def test_plan_memory_goes_below_a_quarter_only_while_nothing_fits(checkpointed_model):
    costs = Costs(checkpointed_model)
    # Limit 1.08 GiB: full recomputation needs 4.6 / 2.55 / 1.52 GiB at 8192 / 4096 / 2048
    # tokens and 1.01 at 1024, an eighth of the micro-batch.
    plan = _plan(checkpointed_model, 1.2, costs, tokens=8192, accum=1)
    assert (plan.tokens_per_batch, plan.grad_accum, plan.checkpointed) == (1024, 8, 2)


def test_plan_memory_counts_out_of_memory_as_not_fitting(checkpointed_model):
    costs = Costs(checkpointed_model, oom_from_kept=1)
    plan = _plan(checkpointed_model, 40, costs)
    assert plan.checkpointed == 2
    assert plan.tried[1][2] == float("inf")


def test_plan_memory_says_when_nothing_fits(checkpointed_model):
    with pytest.raises(ConfigError, match="needs more than") as info:
        _plan(checkpointed_model, 1, Costs(checkpointed_model), tokens=2048, accum=1)
    assert info.value.field == "training.max_memory_gb"


def test_a_stored_plan_of_either_format_is_read_back(checkpointed_model, tmp_path):
    import json

    from lorakit.fast import MemoryPlan

    plan = _plan(checkpointed_model, 10, Costs(checkpointed_model))
    stored = json.loads(json.dumps(plan.to_dict()))  # what memory_plan.json holds
    assert MemoryPlan.from_dict(stored, layers=2) == plan
    earlier = {  # written by an earlier version: every n-th layer, untimed trials
        "checkpoint_every": 2,
        "tokens_per_batch": 4096,
        "grad_accum": 4,
        "peak_gib": 8.2,
        "tried": [["None", 4096, 12.3], ["2", 4096, 8.2]],
    }
    old = MemoryPlan.from_dict(earlier, layers=32)
    assert (old.checkpointed, old.layers, old.tokens_per_batch, old.tried) == (16, 32, 4096, ())
    assert MemoryPlan.from_dict({**earlier, "checkpoint_every": None}, layers=32).checkpointed == 0


def test_memory_budget_setting_takes_gib_or_auto():
    from lorakit.train import TrainingSpec

    assert TrainingSpec(max_memory_gb="auto").max_memory_gb == "auto"
    assert TrainingSpec(max_memory_gb=11).max_memory_gb == 11
    for bad in ("lots", -1, 0):
        with pytest.raises(ConfigError) as info:
            TrainingSpec(max_memory_gb=bad)
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
