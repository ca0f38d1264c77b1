"""Greedy batched generation on the tiny Phi-3: left padding, stop tokens, the truncated flag."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs
import pytest

from lorakit.data.rows import QARow
from lorakit.data.templates import QATemplate
from lorakit.data.tokenize import IGNORE_INDEX, TokenizeSpec, stop_token_ids, tokenize_rows
from lorakit.errors import ConfigError
from lorakit.evaluate.generate import Generation, generate_answers, prompt_token_ids

torch = pytest.importorskip("torch")

QUESTIONS = [
    "What is a fever?",
    "What are the symptoms of type 2 diabetes, and how is it treated in older adults?",
    "Asthma?",
    "How is influenza prevented in young children, pregnant women and people over sixty-five?",
    "Which vitamin deficiency causes anemia?",
]
ROWS = [
    QARow(question=q, answer="An answer.", origin=f"questions.jsonl:{i}")
    for i, q in enumerate(QUESTIONS, 1)
]
MCQ = QARow(
    question="Which hormone lowers blood sugar?",
    answer="Insulin",
    options=("Glucagon", "Insulin", "Cortisol"),
    answer_letter="B",
    origin="mcq.jsonl:1",
)
TEMPLATE = QATemplate(system="You are a careful medical assistant.")


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_phi3: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3)
    return model, tokenizer


def one_by_one(model, tokenizer, rows, **kwargs) -> list[Generation]:
    return [generate_answers(model, tokenizer, [row], TEMPLATE, **kwargs)[0] for row in rows]


def test_prompts_are_the_prompts_training_conditions_on(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    rows = [*ROWS, MCQ]
    prompts = prompt_token_ids(rows, tokenizer, TEMPLATE)
    examples, _ = tokenize_rows(rows, tokenizer, TEMPLATE, TokenizeSpec(max_len=4096))
    for prompt, example in zip(prompts, examples, strict=True):
        masked = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
        assert example.input_ids[:masked] == prompt
    # the generation prompt "<|assistant|>\n" is one token: Phi-3's special tokens eat the newline
    assert prompts[0][-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert prompts[0][0] == tokenizer.bos_token_id and prompts[0][1] != tokenizer.bos_token_id


def test_generation_is_deterministic(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    first = generate_answers(model, tokenizer, ROWS, TEMPLATE, max_new_tokens=12)
    again = generate_answers(model, tokenizer, ROWS, TEMPLATE, max_new_tokens=12)
    assert first == again
    assert [g.origin for g in first] == [row.origin for row in ROWS]


@pytest.mark.parametrize("batch_size", [2, 5, 8])
def test_left_padded_batches_equal_one_by_one_generation(model_and_tokenizer, batch_size):
    model, tokenizer = model_and_tokenizer
    rows = [*ROWS, MCQ]
    lengths = {len(ids) for ids in prompt_token_ids(rows, tokenizer, TEMPLATE)}
    assert len(lengths) == len(rows)  # every batch pads
    batched = generate_answers(
        model, tokenizer, rows, TEMPLATE, max_new_tokens=16, batch_size=batch_size
    )
    assert batched == one_by_one(model, tokenizer, rows, max_new_tokens=16)
    assert all(g.text for g in batched)


def test_hitting_max_new_tokens_sets_truncated(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # random weights never pick a stop token within 6 tokens on these prompts
    generations = generate_answers(model, tokenizer, ROWS, TEMPLATE, max_new_tokens=6)
    assert all(g.truncated and g.new_tokens == 6 for g in generations)


def test_generation_stops_at_a_stop_token_and_decodes_only_the_answer(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    row = ROWS[0]
    (prompt,) = prompt_token_ids([row], tokenizer, TEMPLATE)
    output = model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=12)
    long = output[0, len(prompt) :].tolist()
    # make the token greedy decoding writes at position k a stop token of this model
    k = next(i for i in range(3, 12) if long[i] not in long[:i])
    stopping = copy.deepcopy(model)
    stopping.generation_config.eos_token_id = [
        *stopping.generation_config.eos_token_id,
        long[k],
    ]
    (generation,) = generate_answers(stopping, tokenizer, [row], TEMPLATE, max_new_tokens=12)
    assert not generation.truncated
    assert generation.new_tokens == k
    assert generation.text == tokenizer.decode(long[:k], skip_special_tokens=True).strip()
    assert "<|" not in generation.text and row.question not in generation.text


def test_a_stop_token_as_the_first_token_gives_an_empty_answer(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    assert end_id in stop_token_ids(tokenizer)
    eager = copy.deepcopy(model)
    head = torch.nn.Linear(eager.lm_head.in_features, eager.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(eager.lm_head.weight)
        head.bias.zero_()
        head.bias[end_id] = 1e4  # <|end|> always wins
    eager.lm_head = head
    generations = generate_answers(eager, tokenizer, ROWS[:3], TEMPLATE, batch_size=2)
    assert generations == [
        Generation(text="", truncated=False, origin=row.origin, new_tokens=0) for row in ROWS[:3]
    ]


def test_the_models_mode_is_restored_and_progress_reported(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    done: list[int] = []
    model.train()
    try:
        generate_answers(
            model, tokenizer, ROWS, TEMPLATE, max_new_tokens=2, batch_size=2, progress=done.append
        )
        assert model.training
    finally:
        model.eval()
    assert done == [2, 2, 1]


def test_tokenizer_is_not_changed(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    before = (tokenizer.padding_side, tokenizer.pad_token)
    generate_answers(model, tokenizer, ROWS[:2], TEMPLATE, max_new_tokens=2)
    assert (tokenizer.padding_side, tokenizer.pad_token) == before


def test_no_rows_no_generations(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    assert generate_answers(model, tokenizer, [], TEMPLATE) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_options_are_config_errors(model_and_tokenizer, kwargs, field):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ConfigError) as info:
        generate_answers(model, tokenizer, ROWS, TEMPLATE, **kwargs)
    assert info.value.field == field


def test_a_prompt_longer_than_the_context_names_the_row(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ConfigError, match="context of 4096 tokens") as info:
        generate_answers(model, tokenizer, ROWS, TEMPLATE, max_new_tokens=4090)
    assert info.value.file == "questions.jsonl:1"


# --- a 4-bit QLoRA model on the CPU: generation must not break later LoRA gradients ------------


def test_generation_keeps_4bit_layers_off_the_cpu_inference_path(tiny_phi3: Path):
    bnb = pytest.importorskip("bitsandbytes")
    from lorakit.adapter import AdapterSpec, apply_adapter
    from lorakit.model import ModelSpec, QuantizedModelBuilder

    loaded = QuantizedModelBuilder(ModelSpec(name=str(tiny_phi3))).build()
    torch.manual_seed(0)
    model, _ = apply_adapter(loaded.model, AdapterSpec(dropout=0.0))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    tokenizer = loaded.tokenizer
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers

    encoded = tokenizer(["What is a fever? A raised body temperature."], return_tensors="pt")
    batch = {**encoded, "labels": encoded["input_ids"]}

    def lora_grads() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        return {
            n: p.grad.detach().clone()
            for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None
        }

    before = lora_grads()
    batched = generate_answers(model, tokenizer, ROWS, TEMPLATE, max_new_tokens=8, batch_size=3)
    after = lora_grads()
    assert [layer.support_avx512bf16_for_cpu for layer in layers] == [False] * len(layers)
    assert before.keys() == after.keys() and before
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)
    assert model.training  # generate_answers restored train mode
    assert batched == one_by_one(model, tokenizer, ROWS, max_new_tokens=8)


def test_score_generated_prompts_with_the_templates_of_the_spec(model_and_tokenizer, monkeypatch):
    from lorakit import hookimpl
    from lorakit.evaluate import generate
    from lorakit.evaluate.generate import score_generated
    from lorakit.evaluate.spec import BenchSpec
    from lorakit.plugins import Registries, make_plugin_manager

    class Shouting:
        def prompt(self, row):
            return [{"role": "user", "content": row.question.upper()}]

        def answer(self, row):
            return row.answer

    class Plugin:
        @hookimpl
        def lorakit_register_templates(self, register):
            register("shout", Shouting)

    registries = Registries.from_plugin_manager(
        make_plugin_manager(entry_points=False, plugins=[Plugin()], disabled=())
    )
    model, tokenizer = model_and_tokenizer
    prompts: list[list[int]] = []
    real = generate.generate_from_ids

    def spy(model, tokenizer, ids, *args, **kwargs):
        prompts.extend(ids)
        return real(model, tokenizer, ids, *args, **kwargs)

    monkeypatch.setattr(generate, "generate_from_ids", spy)
    system = "You are a careful medical assistant."
    spec = BenchSpec(text_metrics="token_f1", max_new_tokens=4, template_options={"system": system})
    scores = score_generated(model, tokenizer, ROWS, spec, registries=registries)
    assert scores["n"] == len(ROWS) and set(scores["metrics"]) == {"token_f1"}
    assert prompts == prompt_token_ids(ROWS, tokenizer, TEMPLATE)  # qa with its system prompt
    assert all(system in tokenizer.decode(ids) for ids in prompts)
    prompts.clear()
    score_generated(
        model,
        tokenizer,
        ROWS[:2],
        attrs.evolve(spec, template="shout", template_options={}),
        registries=registries,
    )
    assert [tokenizer.decode(ids) for ids in prompts] == [
        tokenizer.decode(ids) for ids in prompt_token_ids(ROWS[:2], tokenizer, Shouting())
    ]
    with pytest.raises(ConfigError, match="bad options for template 'shout'"):
        score_generated(
            model, tokenizer, ROWS, attrs.evolve(spec, template="shout"), registries=registries
        )
    with pytest.raises(ConfigError, match="no text metric"):
        score_generated(model, tokenizer, ROWS, BenchSpec(), registries=registries)
