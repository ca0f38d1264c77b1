"""lorakit.testing: the tiny Phi-3 loads like a real checkpoint, offline; the cache is atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lorakit
import lorakit.testing
from lorakit import hookimpl
from lorakit.plugins import Registries
from lorakit.testing import PHI3_SPECIAL_TOKENS, isolated_plugin_manager, tiny_phi3_path

PHI3_FORMAT = (
    "<|system|>\nYou are a careful medical assistant.<|end|>\n"
    "<|user|>\nWhat is a fever?<|end|>\n"
    "<|assistant|>\nA raised body temperature.<|end|>\n"
    "<|endoftext|>"
)
MESSAGES = [
    {"role": "system", "content": "You are a careful medical assistant."},
    {"role": "user", "content": "What is a fever?"},
    {"role": "assistant", "content": "A raised body temperature."},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_phi3: Path):
    """A fresh tokenizer (the shared ``tiny_tokenizer`` may have had its pad fixed)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3)


def test_files_are_a_complete_checkpoint(tiny_phi3: Path):
    names = {p.name for p in tiny_phi3.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert any(name.endswith(".safetensors") for name in names)
    config = json.loads((tiny_phi3 / "config.json").read_text())
    assert config["model_type"] == "phi3"
    assert config["architectures"] == ["Phi3ForCausalLM"]


def test_model_loads_offline_and_runs(tiny_phi3: Path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, Phi3ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    assert isinstance(model, Phi3ForCausalLM)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.num_hidden_layers == 2
    ids = tokenizer(PHI3_FORMAT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(out.loss)
    generated = model.generate(ids[:, :5], max_new_tokens=3, do_sample=False)
    assert generated.shape[1] <= 8


def test_chat_template_is_phi3s(tokenizer):
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False) == PHI3_FORMAT
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|system|>\nYou are a careful medical assistant.<|end|>\n"
        "<|user|>\nWhat is a fever?<|end|>\n<|assistant|>\n"
    )


def test_special_tokens_like_phi3(tiny_phi3: Path, tokenizer):
    from transformers import GenerationConfig

    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    ids = tokenizer.convert_tokens_to_ids(list(PHI3_SPECIAL_TOKENS))
    first = tokenizer.vocab_size  # right after the base vocabulary, as 32000... in Phi-3
    assert ids == list(range(first, first + len(PHI3_SPECIAL_TOKENS)))
    assert len(tokenizer) == first + len(PHI3_SPECIAL_TOKENS)
    assert tokenizer.bos_token == "<s>"
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.unk_token == "<unk>"
    # The pad ships equal to the eos (a stop id), exactly like the real checkpoint.
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    generation = GenerationConfig.from_pretrained(tiny_phi3)
    by_name = dict(zip(PHI3_SPECIAL_TOKENS, ids, strict=True))
    assert generation.eos_token_id == [
        by_name["<|endoftext|>"],
        by_name["<|assistant|>"],
        by_name["<|end|>"],
    ]
    assert generation.pad_token_id == by_name["<|endoftext|>"]


def test_bos_is_added_once_and_chat_tokens_are_single_tokens(tokenizer):
    ids = tokenizer(PHI3_FORMAT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer("x", add_special_tokens=False)["input_ids"][0] != tokenizer.bos_token_id
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens.count("<|end|>") == 3
    assert tokens[-1] == "<|endoftext|>"
    # As in Phi-3, the chat tokens swallow the newline that follows them.
    assert tokenizer("<|end|>\n<|assistant|>\n", add_special_tokens=False)["input_ids"] == [
        tokenizer.convert_tokens_to_ids("<|end|>"),
        tokenizer.convert_tokens_to_ids("<|assistant|>"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Hypertension raises the risk of stroke.",
        "Naïve café: 糖尿病 (diabetes) — 5 mg/kg, 37.5 °C 🙂",
        "tabs\tand\nnew lines\r\n  indented",
        "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/",
    ],
)
def test_any_text_encodes_without_unknown_tokens(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_vocabulary_is_trained(tokenizer):
    assert 2000 <= tokenizer.vocab_size <= 4000
    tokens = tokenizer.tokenize("blood pressure and diabetes")
    assert len(tokens) <= 5  # whole words, not characters


def test_tiny_phi3_path_builds_once_atomically(tmp_path, monkeypatch, tiny_phi3: Path):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))
    path = tiny_phi3_path()
    assert path.parent == tmp_path
    assert lorakit.__version__ in path.name
    assert [p for p in tmp_path.iterdir()] == [path]  # no temporary folder left behind
    # Deterministic: the same files as the session's build with the same seed.
    for name in ("tokenizer.json", "config.json", "generation_config.json", "model.safetensors"):
        assert (path / name).read_bytes() == (tiny_phi3 / name).read_bytes(), name

    def fail(*args: object, **kwargs: object) -> Path:
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(lorakit.testing, "build_tiny_phi3", fail)
    assert tiny_phi3_path() == path


def test_a_half_built_folder_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_CACHE", str(tmp_path))

    def crash(directory: str | Path, *, seed: int = 0) -> Path:
        (Path(directory) / "tokenizer.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(lorakit.testing, "build_tiny_phi3", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_phi3_path()
    assert list(tmp_path.iterdir()) == []


def test_isolated_plugin_manager_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("LORAKIT_DISABLE_PLUGINS", "lorakit.data.templates")

    class Plugin:
        @hookimpl
        def lorakit_register_templates(self, register):
            register("mine", object)

    registries = Registries.from_plugin_manager(isolated_plugin_manager(Plugin()))
    assert {"qa", "mine"} <= set(registries.templates.names())
