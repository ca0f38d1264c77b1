"""``lorakit eval``: every benchmark on the real files, base vs adapter, bad adapters refused."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lorakit.cli import main


@pytest.fixture(scope="module")
def adapter_dir(tiny_phi3, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_phi3)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # make the adapter change the model
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def test_eval_every_benchmark_with_compare(tiny_phi3, adapter_dir, shared_data):
    args = [
        "eval", "--model", str(tiny_phi3), "--adapter", str(adapter_dir), "--quant", "none",
        "--bench", f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl",
        "--bench", f"medmcqa:{shared_data}/medmcqa/dev.json",
        "--bench", f"pubmedqa:{shared_data}/pubmedqa/ori_pqal_train.json",
        "--bench", f"mmlu_medical:{shared_data}/mmlu/dev",
        "--bench", f"heldout:medquad:{shared_data}/medquad/5_NIDDK_QA",
        "--metric", "token_f1", "--metric", "rouge_l", "--max-new-tokens", "8",
        "--limit", "6", "--compare", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["bench"] for r in lines] == [
        "medqa",
        "medmcqa",
        "pubmedqa",
        "mmlu_medical",
        "heldout",
    ]
    for record in lines:
        assert {"bench", "n", "accuracy", "ci_low", "ci_high", "compare", "base"} <= set(record)
        assert record["n"] == 6
        if record["accuracy"] is not None:
            assert 0 <= record["ci_low"] <= record["accuracy"] <= record["ci_high"] <= 1
    # The adapter changes the model, so the heldout perplexity of base and adapter differ.
    assert lines[-1]["compare"]["delta"] != 0
    free_text = lines[-1]["free_text"]
    assert free_text["n"] == 6 and set(free_text["metrics"]) == {"token_f1", "rouge_l"}
    for score in free_text["metrics"].values():
        assert 0 <= score["ci_low"] <= score["mean"] <= score["ci_high"] <= 1
    assert free_text["errors"]["answer_truncated"] <= 6
    assert "free_text" not in lines[0]  # only the heldout benchmark generates
    table = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*args[:-1], "--no-progress"])
    assert table.exit_code == 0, table.output
    assert "mmlu_medical" in table.output and "(base)" in table.output
    assert "generated answers (n 6)" in table.output and "rouge_l" in table.output


def test_eval_refuses_a_model_metric_as_text_metric(tiny_phi3, shared_data):
    result = CliRunner().invoke(
        main,
        ["eval", "--model", str(tiny_phi3), "--quant", "none", "--limit", "2",
         "--bench", f"heldout:medquad:{shared_data}/medquad/5_NIDDK_QA", "--metric", "perplexity"],
    )  # fmt: skip
    assert result.exit_code == 2 and "scores a model, not a generated text" in result.output


def test_eval_rejects_an_adapter_of_another_base(adapter_dir, shared_data, tmp_path):
    other = tmp_path / "other-model"
    other.mkdir()
    result = CliRunner().invoke(
        main,
        ["eval", "--model", str(other), "--adapter", str(adapter_dir),
         "--bench", f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl"],
    )  # fmt: skip
    assert result.exit_code == 2 and "the adapter was trained on" in result.output


def test_eval_unknown_benchmark_suggests_the_nearest(tiny_phi3):
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_phi3), "--bench", "medqaa:x"])
    assert result.exit_code == 2 and "did you mean 'medqa'" in result.output


def _save_adapter(model_dir, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    peft_model.save_pretrained(out)
    return out


def _rebuild(model_dir, **sizes):
    """Overwrite the model in ``model_dir`` with one of other sizes, keeping its name."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    for key, value in sizes.items():
        setattr(config, key, value)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)


@pytest.mark.parametrize(
    ("sizes", "difference"),
    [
        (
            {"hidden_size": 32, "intermediate_size": 64},
            "model.layers.0.self_attn.o_proj has 64 input features in the adapter, 32 in the model",
        ),
        ({"num_hidden_layers": 1}, "the model has no module model.layers.1.self_attn.o_proj"),
    ],
)
def test_eval_rejects_an_adapter_of_a_same_named_model_with_other_shapes(
    tmp_path, shared_data, sizes, difference
):
    from lorakit.testing import build_tiny_phi3

    model_dir = build_tiny_phi3(tmp_path / "phi3")
    adapter = _save_adapter(model_dir, tmp_path / "adapter")
    _rebuild(model_dir, **sizes)  # the same path, so the recorded base name still matches
    result = CliRunner().invoke(
        main,
        ["eval", "--model", str(model_dir), "--adapter", str(adapter), "--quant", "none",
         "--bench", f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl", "--limit", "2"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: {adapter}: field 'adapter': the adapter does not fit")
    assert difference in line and "(and " in line


@pytest.mark.parametrize(
    ("bench", "message"),
    [
        ("medqa:{tmp}/missing.jsonl", "missing.jsonl"),
        ("medmcqa:{data}/medqa/us_4_options_sample.jsonl", "us_4_options_sample.jsonl:1"),
        ("heldout:jsonl:{tmp}/nothing.jsonl", "nothing.jsonl"),
    ],
)
def test_eval_checks_every_benchmark_before_the_model_loads(
    tiny_phi3, shared_data, tmp_path, bench, message
):
    from lorakit import hookimpl

    class NoModel:
        @hookimpl
        def lorakit_load_model(self, spec):
            raise AssertionError("the model was loaded before the benchmarks were checked")

    import lorakit.plugins

    real = lorakit.plugins.make_plugin_manager
    good = f"medqa:{shared_data}/medqa/us_4_options_sample.jsonl"
    bad = bench.format(tmp=tmp_path, data=shared_data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            lorakit.plugins, "make_plugin_manager", lambda **kw: real(plugins=[NoModel()], **kw)
        )
        result = CliRunner().invoke(
            main,
            ["eval", "--model", str(tiny_phi3), "--quant", "none", "--bench", good, "--bench", bad],
        )  # fmt: skip
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert message in line and "Traceback" not in result.output
