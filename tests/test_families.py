"""Beyond one model family: Qwen2 and Llama 3 presets on tiny local checkpoints, through the
whole path (template, labels, pad token, targets, training, evaluation) on the CPU."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lorakit.cli import main
from lorakit.data.rows import QARow

pytestmark = pytest.mark.slow

FAMILIES = {
    "medqa_qwen2_tiny": ("tiny-qwen2", "<|im_end|>", "<|fim_pad|>"),
    "medqa_llama3_tiny": ("tiny-llama3", "<|eot_id|>", "<|finetune_right_pad_id|>"),
}


@pytest.mark.parametrize("model", ["tiny-qwen2", "tiny-llama3"])
def test_family_tokenisation_matches_its_chat_template(model):
    from transformers import AutoTokenizer

    from lorakit.data.templates import qa_template
    from lorakit.data.tokenize import TokenizeSpec, ensure_pad_token, stop_token_ids, tokenize_rows
    from lorakit.testing import tiny_model_path

    preset = next(k for k, v in FAMILIES.items() if v[0] == model)
    _, end, pad = FAMILIES[preset]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path(model))
    pad_id = ensure_pad_token(tokenizer)
    assert tokenizer.convert_ids_to_tokens(pad_id) == pad
    assert pad_id not in stop_token_ids(tokenizer)
    row = QARow(question="What is a fever?", answer="A high body temperature.")
    (example,), _ = tokenize_rows([row], tokenizer, qa_template(), TokenizeSpec())
    messages = [
        {"role": "user", "content": row.question},
        {"role": "assistant", "content": row.answer},
    ]
    expected = tokenizer.apply_chat_template(messages, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert list(example.input_ids) == list(expected)  # one BOS, nothing lost or added
    supervised = [
        i for i, label in zip(example.input_ids, example.labels, strict=True) if label != -100
    ]
    assert tokenizer.decode(supervised) == row.answer + end


@pytest.mark.parametrize("preset", list(FAMILIES))
def test_family_preset_trains_and_evaluates_offline(tmp_path, preset):
    run_dir = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(
        main,
        [
            "train",
            preset,
            "--run-dir",
            str(run_dir),
            "--no-progress",
            "--set",
            "training.max_steps=4",
            "--set",
            "training.eval_steps=2",
            "--set",
            "training.save_steps=2",
        ],
    )
    assert trained.exit_code == 0, trained.output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["adapter"]["targets"] == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert report["best"]["verified"] is True
    scored = runner.invoke(
        main,
        [
            "eval",
            str(run_dir),
            "--split",
            "test",
            "--metric",
            "token_f1",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--json",
            "--no-progress",
        ],
    )
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.output.strip().splitlines()[-1])
    assert result["adapter"]["loss"] == pytest.approx(report["test"]["loss"], rel=1e-4)
