"""The model builder, LoRA adapters and the answer-only loss, on the tiny Phi-3 in 4-bit NF4 on the CPU.

The trap guarded here: on a CPU with AVX512-BF16, a bitsandbytes ``Linear4bit`` switches for good
to a packed, inference-only weight layout at its first no-grad forward in eval mode; that path has
no autograd kernel, so every LoRA gradient after an evaluation (or a ``generate``) is wrong.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorakit.adapter import AdapterSpec, apply_adapter, resolve_targets
from lorakit.data.tokenize import Example
from lorakit.errors import ConfigError
from lorakit.evaluate.perplexity import answer_loss
from lorakit.hookspecs import hookimpl
from lorakit.model import (
    TINY_PHI3,
    LoadedModel,
    ModelSpec,
    QuantizedModelBuilder,
    QuantSpec,
    resolve_compute_dtype,
)
from lorakit.testing import isolated_plugin_manager
from lorakit.train import QACollator

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

PHI3_ATTENTION = ["qkv_proj", "o_proj"]
PHI3_MLP = ["gate_up_proj", "down_proj"]
# bitsandbytes warns when a backward pass runs through its packed CPU kernel (the trap itself).
NO_AUTOGRAD_WARNING = "ignore:.*autograd kernel was not registered:UserWarning"


def cpu_has_avx512_bf16() -> bool:
    """What bitsandbytes itself checks before it takes the packed CPU inference path."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def linear4bit_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def build(path: Path, **spec) -> LoadedModel:
    return QuantizedModelBuilder(ModelSpec(name=str(path), **spec)).build()


@pytest.fixture(scope="module")
def loaded(tiny_phi3: Path) -> LoadedModel:
    """The tiny Phi-3 in 4-bit NF4, for read-only checks (tests that change it load their own)."""
    return build(tiny_phi3)


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


# --- compute dtype and spec validation ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cuda", "bf16", "expected"),
    [
        ("auto", False, False, "float32"),
        ("auto", True, True, "bfloat16"),
        ("auto", True, False, "float16"),
        ("bfloat16", False, False, "float32"),
        ("float16", False, False, "float32"),
        ("float32", False, False, "float32"),
        ("float16", True, True, "float16"),
        ("float32", True, True, "float32"),
        ("bfloat16", True, True, "bfloat16"),
    ],
)
def test_resolve_compute_dtype(name, cuda, bf16, expected):
    assert resolve_compute_dtype(name, cuda=cuda, bf16_supported=bf16) == expected


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: QuantSpec(method="int8"), "method"),
        (lambda: QuantSpec(compute_dtype="fp16"), "compute_dtype"),
        (lambda: ModelSpec(name="m", attn_implementation="flash"), "attn_implementation"),
    ],
)
def test_spec_validation_names_the_field(make, field):
    with pytest.raises((ValueError, ConfigError), match=field):
        make()


def test_specs_are_frozen_keyword_only_with_qlora_defaults():
    spec = ModelSpec(name="m")
    assert spec.quant == QuantSpec(method="nf4", double_quant=True, compute_dtype="auto")
    assert spec.attn_implementation == "auto"
    assert spec.trust_remote_code is False
    with pytest.raises(TypeError):
        ModelSpec("m")  # type: ignore[misc]
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


# --- loading in 4-bit NF4 on the CPU -----------------------------------------------------------


@pytest.mark.skipif("torch.cuda.is_available()", reason="checks the CPU path")
def test_tiny_phi3_loads_in_4bit_nf4_on_cpu(loaded: LoadedModel):
    layers = linear4bit_layers(loaded.model)
    # 2 decoder layers x (qkv_proj, o_proj, gate_up_proj, down_proj); lm_head stays full precision.
    assert len(layers) == 8
    assert all(layer.weight.quant_state.quant_type == "nf4" for layer in layers)
    assert not isinstance(loaded.model.lm_head, bnb.nn.Linear4bit)
    assert loaded.model.config.use_cache is False
    assert loaded.device == "cpu"
    assert loaded.compute_dtype == "float32"
    assert loaded.tokenizer.eos_token == "<|endoftext|>"
    notes = " ".join(loaded.notes)
    assert "CPU" in notes
    assert "NF4" in notes


def test_every_4bit_layer_is_kept_off_the_cpu_inference_path(loaded: LoadedModel):
    layers = linear4bit_layers(loaded.model)
    assert layers
    assert [layer.support_avx512bf16_for_cpu for layer in layers] == [False] * len(layers)


def test_fp4_and_no_quantisation(tiny_phi3: Path):
    fp4 = build(tiny_phi3, quant=QuantSpec(method="fp4", double_quant=False))
    assert {m.weight.quant_state.quant_type for m in linear4bit_layers(fp4.model)} == {"fp4"}
    plain = build(tiny_phi3, quant=QuantSpec(method="none"))
    assert linear4bit_layers(plain.model) == []
    assert isinstance(plain.model.model.layers[0].self_attn.qkv_proj, torch.nn.Linear)


def test_explicit_half_precision_on_cpu_falls_back_to_float32_with_a_note(tiny_phi3: Path):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU path")
    loaded = build(tiny_phi3, quant=QuantSpec(compute_dtype="bfloat16"))
    assert loaded.compute_dtype == "float32"
    assert any("float32 instead of bfloat16" in note for note in loaded.notes)


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "{tmp}/missing", "{tmp}"])
def test_unloadable_model_is_a_config_error_pointing_at_tiny_phi3(name: str, tmp_path: Path):
    spec = ModelSpec(name=name.format(tmp=tmp_path), quant=QuantSpec(method="none"))
    with pytest.raises(ConfigError, match=TINY_PHI3) as info:
        QuantizedModelBuilder(spec).build()
    assert info.value.field == "model.name"


@pytest.mark.skipif("torch.cuda.is_available()", reason="flash attention needs no check on a GPU")
def test_flash_attention_on_cpu_is_a_config_error(tiny_phi3: Path):
    with pytest.raises(ConfigError, match="flash_attention_2") as info:
        build(tiny_phi3, attn_implementation="flash_attention_2")
    assert info.value.field == "model.attn_implementation"


class PrivateStoreLoader:
    """A plugin loading the checkpoint itself, as the ``lorakit_load_model`` docs invite."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @hookimpl
    def lorakit_load_model(self, spec: ModelSpec) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
        model = AutoModelForCausalLM.from_pretrained(
            self.path, quantization_config=quant, device_map={"": "cpu"}, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        return LoadedModel(model=model, tokenizer=tokenizer, compute_dtype="float32", device="cpu")


def test_a_plugin_loaded_4bit_model_is_made_training_safe_too(tiny_phi3: Path):
    """build() promises 4-bit layers made training-safe, whichever loader ran."""
    pm = isolated_plugin_manager(PrivateStoreLoader(tiny_phi3))
    loaded = QuantizedModelBuilder(ModelSpec(name="private:phi3"), plugin_manager=pm).build()
    layers = linear4bit_layers(loaded.model)
    assert layers
    assert [layer.support_avx512bf16_for_cpu for layer in layers] == [False] * len(layers)


# --- the trap: LoRA gradients must not change after an evaluation ------------------------------


def lora_model(path: Path, *, guard: bool = True):
    """The tiny Phi-3 in NF4 with LoRA (no dropout, non-zero B so every LoRA weight gets a gradient).

    ``guard=False`` undoes the builder's guard, as bitsandbytes sets it on this CPU.
    """
    loaded = build(path)
    if not guard:
        for layer in linear4bit_layers(loaded.model):
            layer.support_avx512bf16_for_cpu = cpu_has_avx512_bf16()
    torch.manual_seed(0)
    model, _ = apply_adapter(loaded.model, AdapterSpec(dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return model, loaded.tokenizer


def fixed_batch(tokenizer) -> dict:
    texts = ["What is a fever? A raised body temperature.", "Asthma narrows the airways."]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    return {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "labels": labels,
    }


def lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


def evaluate_and_generate(model, batch) -> None:
    model.eval()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    model.generate(
        input_ids=batch["input_ids"][:1],
        attention_mask=batch["attention_mask"][:1],
        max_new_tokens=3,
        do_sample=False,
    )


def packed_layers(model) -> int:
    return sum(
        bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))
        for layer in linear4bit_layers(model)
    )


def test_lora_gradients_are_unchanged_by_an_eval_forward_and_generate(tiny_phi3: Path):
    model, tokenizer = lora_model(tiny_phi3)
    batch = fixed_batch(tokenizer)
    before = lora_grads(model, batch)
    assert before
    assert all(".lora_" in name for name in before)
    assert all(g.abs().sum() > 0 for g in before.values()), "every LoRA weight gets a gradient"

    evaluate_and_generate(model, batch)
    assert packed_layers(model) == 0
    after = lora_grads(model, batch)
    assert after.keys() == before.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed == []


@pytest.mark.filterwarnings(NO_AUTOGRAD_WARNING)
def test_without_the_guard_an_eval_forward_corrupts_lora_gradients(tiny_phi3: Path):
    """Shows the test above guards something: the flag alone makes the difference on this CPU."""
    if not cpu_has_avx512_bf16():
        pytest.skip(
            "this CPU has no AVX512-BF16 (torch reports "
            f"{torch.backends.cpu.get_cpu_capability()}): bitsandbytes never takes its packed "
            "inference path here, so the guard makes no observable difference"
        )
    model, tokenizer = lora_model(tiny_phi3, guard=False)
    batch = fixed_batch(tokenizer)
    before = lora_grads(model, batch)
    again = lora_grads(model, batch)
    assert all(torch.equal(before[name], again[name]) for name in before), (
        "gradients are reproducible as long as no evaluation has run"
    )

    evaluate_and_generate(model, batch)
    assert packed_layers(model) == len(linear4bit_layers(model))
    after = lora_grads(model, batch)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "the packed inference path should have changed the LoRA gradients"


# --- target modules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["attention"], PHI3_ATTENTION),
        (["mlp"], PHI3_MLP),
        (["attention", "mlp"], PHI3_ATTENTION + PHI3_MLP),
        (["o_proj", "attention"], ["o_proj", "qkv_proj"]),
    ],
)
def test_resolve_targets_on_phi3(loaded: LoadedModel, targets, expected):
    assert resolve_targets(loaded.model, targets) == expected


def test_all_linear_on_phi3_excludes_the_output_head(loaded: LoadedModel):
    resolved = resolve_targets(loaded.model, ["all-linear"])
    assert "lm_head" not in resolved
    assert sorted(resolved) == sorted(PHI3_ATTENTION + PHI3_MLP)


def test_resolve_targets_on_llama(tiny_llama):
    assert resolve_targets(tiny_llama, ["attention"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_targets(tiny_llama, ["mlp"]) == ["gate_proj", "up_proj", "down_proj"]
    assert "lm_head" not in resolve_targets(tiny_llama, ["all-linear"])


@pytest.mark.parametrize(
    ("name", "suggestion"), [("qkv_prj", "qkv_proj"), ("atention", "attention")]
)
def test_unknown_target_suggests_the_nearest_name(loaded: LoadedModel, name, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'") as info:
        resolve_targets(loaded.model, [name])
    assert info.value.field == "adapter.targets"


def test_a_group_on_an_unknown_architecture_lists_its_linear_layers():
    model = torch.nn.Module()
    model.config = SimpleNamespace(model_type="mystery")
    model.mixer = torch.nn.Linear(4, 4)
    model.lm_head = torch.nn.Linear(4, 8)
    with pytest.raises(ConfigError, match="mystery") as info:
        resolve_targets(model, ["attention"])
    assert "mixer" in str(info.value)
    assert resolve_targets(model, ["all-linear"]) == ["mixer"]


# --- applying the adapter ----------------------------------------------------------------------


def test_apply_adapter_trains_only_float32_lora_weights(tiny_phi3: Path):
    model, targets = apply_adapter(build(tiny_phi3).model, AdapterSpec(rank=4, alpha=8))
    assert targets == PHI3_ATTENTION + PHI3_MLP
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert set(config.target_modules) == set(targets)


def test_lora_weights_are_float32_on_a_bfloat16_model(tiny_llama):
    import copy

    base = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    model, _ = apply_adapter(base, AdapterSpec(rank=4), gradient_checkpointing=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    assert {p.dtype for p in trainable} == {torch.float32}
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize(("rslora", "dora"), [(True, False), (False, True), (False, False)])
def test_rslora_and_dora_reach_the_peft_config(tiny_llama, rslora, dora):
    import copy

    spec = AdapterSpec(rank=4, alpha=8, targets="attention", rslora=rslora, dora=dora)
    model, targets = apply_adapter(copy.deepcopy(tiny_llama), spec, gradient_checkpointing=False)
    config = model.peft_config["default"]
    assert config.use_rslora is rslora
    assert config.use_dora is dora
    assert set(config.target_modules) == set(targets) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    scaling = model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
    assert scaling == pytest.approx(8 / math.sqrt(4) if rslora else 8 / 4)
    has_magnitude = any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    assert has_magnitude is dora


# --- answer-only loss --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_phi3(tiny_phi3: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_phi3, dtype=torch.float32).eval()


def make_examples(vocab: int) -> list[Example]:
    """Examples of very different lengths and answer lengths, prompts masked with -100."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (20, 30), (5, 1), (8, 12), (2, 40), (15, 4), (6, 6)]
    examples = []
    for prompt, answer in shapes:
        ids = torch.randint(3, vocab, (prompt + answer,), generator=gen).tolist()
        examples.append(Example(input_ids=ids, labels=[-100] * prompt + ids[prompt:]))
    return examples


def per_example_nll(model, example: Example) -> tuple[float, int]:
    """Summed NLL of one example's supervised tokens, computed alone and without padding."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor(example.labels[1:])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    logp = torch.log_softmax(logits, dim=-1)
    mask = labels != -100
    nll = -logp[mask.nonzero().squeeze(1), labels[mask]].sum()
    return float(nll), int(mask.sum())


def test_answer_loss_is_token_weighted_and_independent_of_batch_size(plain_phi3):
    examples = make_examples(plain_phi3.config.vocab_size)
    sums = [per_example_nll(plain_phi3, e) for e in examples]
    tokens = sum(n for _, n in sums)
    expected = sum(s for s, _ in sums) / tokens
    mean_of_means = sum(s / n for s, n in sums) / len(sums)
    assert abs(expected - mean_of_means) > 1e-3, "the data must tell the two means apart"

    collate = QACollator(pad_id=0)
    one = answer_loss(plain_phi3, examples, collate, batch_size=1)
    four = answer_loss(plain_phi3, examples, collate, batch_size=4)
    padded = answer_loss(plain_phi3, examples, QACollator(0, pad_to_multiple_of=64), batch_size=4)
    for result in (one, four, padded):
        assert result.tokens == tokens
        assert result.examples == len(examples)
        assert result.loss == pytest.approx(expected, abs=1e-5)
    assert one.perplexity == pytest.approx(math.exp(one.loss))
    assert plain_phi3.training is False


def test_answer_loss_restores_training_mode(plain_phi3):
    examples = make_examples(plain_phi3.config.vocab_size)[:2]
    plain_phi3.train()
    try:
        answer_loss(plain_phi3, examples, QACollator(0), batch_size=2)
        assert plain_phi3.training is True
    finally:
        plain_phi3.eval()


def test_answer_loss_without_supervised_tokens_is_a_config_error(plain_phi3):
    collate = QACollator(pad_id=0)
    with pytest.raises(ConfigError, match="no supervised tokens"):
        answer_loss(plain_phi3, [], collate)
    masked = [Example(input_ids=[1, 5, 6], labels=[-100, -100, -100])]
    with pytest.raises(ConfigError, match="no supervised tokens"):
        answer_loss(plain_phi3, masked, collate)
