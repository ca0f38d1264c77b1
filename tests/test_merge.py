"""``lorakit merge`` on real tiny runs (a 4-bit one and an unquantised one), no mocks: the
merged checkpoint loads with plain transformers and reproduces the adapter's logits, its
parity.json says so, a merge outside its tolerance is refused without leaving a complete
folder, and bad input is one line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

SHORT = {
    "training.max_steps": 2,
    "training.eval_steps": 2,
    "training.save_steps": 2,
    "training.logging_steps": 1,
}


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4-bit tiny run the answer-path tests train (the default tiny preset)."""
    from test_answer import trained_run

    run: Path = trained_run(tmp_path_factory.getbasetemp())
    return run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run on the unquantised base (model.quant.method=none)."""
    from lorakit.presets import medqa_phi3_tiny

    run_dir = tmp_path_factory.getbasetemp() / "merge-plain-run"
    if not (run_dir / "report.json").exists():
        medqa_phi3_tiny.with_overrides({**SHORT, "model.quant.method": "none"}).run(
            run_dir, show_progress=False
        )
    return run_dir


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from lorakit.cli import main; main()", "merge", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
        timeout=300,
    )


def adapter_logits(run_dir: Path, quant: str, ids: list[int]) -> Any:
    """Logits of the run's adapter on its base, quantised as given (as trained: the run's)."""
    import torch
    from peft import PeftModel

    from lorakit.model import ModelSpec, QuantizedModelBuilder, QuantSpec

    spec = ModelSpec(name="tiny-phi3", quant=QuantSpec(method=quant))  # type: ignore[arg-type]
    base = QuantizedModelBuilder(spec).build().model
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def merged_logits(folder: Path, ids: list[int]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.merging-")]


def test_unquantised_fp32_merge_reproduces_the_adapter(plain_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    done = cli(str(plain_run), "--out", str(out), "--dtype", "fp32", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "argmax agreement  1.0000" in done.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"parity.json", "README.md"} <= names
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True and parity["failures"] == []
    assert parity["argmax_agreement"] == 1.0
    assert parity["max_abs_logit_diff"] < 1e-3
    assert abs(parity["loss_delta"]) < 1e-4
    assert parity["trained_quant"] == "none" and parity["dtype"] == "float32"
    assert parity["tolerance"] == {
        "min_agreement": 0.99,
        "max_loss_delta": 1e-3,
        "max_logit_diff": 1e-3,
    }
    assert parity["examples"] == 14 and parity["answer_tokens"] > 0
    assert parity["probe_split"] == "eval"
    assert parity["merge_only"]["argmax_agreement"] == 1.0
    assert parity["base_difference"]["max_abs_logit_diff"] == 0.0

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("What is asthma? Asthma is a disease of the airways.")["input_ids"]
    expected = adapter_logits(plain_run, "none", ids)
    got = merged_logits(out, ids)
    assert (got - expected).abs().max() < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    generation = json.loads((out / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|end|>") in generation["eos_token_id"]
    card = (out / "README.md").read_text()
    assert "rank 16, alpha 32" in card and "eval loss" in card and "unquantised" in card


def test_4bit_merge_is_checked_against_the_4bit_model_it_trained(
    nf4_run: Path, tmp_path: Path
) -> None:
    from lorakit.serve.merge import MergeSpec, merge_run

    out = tmp_path / "merged-nf4"
    result = merge_run(nf4_run, out, MergeSpec(dtype="fp32"))
    assert result.passed
    parity = json.loads((out / "parity.json").read_text())
    assert parity["trained_quant"] == "nf4"
    # The merge itself is exact in float32: the merged checkpoint equals the unquantised
    # base carrying the adapter unmerged.
    assert parity["merge_only"]["argmax_agreement"] == 1.0
    assert parity["merge_only"]["max_abs_logit_diff"] < 1e-3
    # What remains against the 4-bit model is the base's quantisation error: the same size
    # as between the two bases alone, and inside the tolerance derived from it.
    floor = parity["base_difference"]
    assert floor["max_abs_logit_diff"] > 0.01
    assert parity["argmax_agreement"] >= floor["argmax_agreement"] - 0.05
    assert parity["tolerance"]["min_agreement"] == pytest.approx(floor["argmax_agreement"] - 0.05)
    assert not leftovers(out)

    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(out)("What causes anaemia?")["input_ids"]
    merged = merged_logits(out, ids)
    # Within the quantisation error of the adapter as trained (4-bit)...
    as_trained = adapter_logits(nf4_run, "nf4", ids)
    assert (merged - as_trained).abs().max() <= parity["base_difference"]["max_abs_logit_diff"] * 2
    # ...and equal to the adapter on the unquantised base.
    assert (merged - adapter_logits(nf4_run, "none", ids)).abs().max() < 1e-4
    assert "quantisation error" in (out / "README.md").read_text()


def test_a_merge_outside_its_tolerance_is_refused_and_leaves_no_folder(
    nf4_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "refused"
    done = cli(str(nf4_run), "--out", str(out), "--min-agreement", "1.0", "--no-progress")
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("refused:") and "argmax agreement" in last
    assert not out.exists()
    assert not leftovers(out)
    # An existing folder replaced with --force is left as it was when the merge is refused.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = cli(str(nf4_run), "--out", str(out), "--max-logit-diff", "0", "--force", "--no-progress")
    assert done.returncode == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not leftovers(out)


def test_bad_input_is_one_line_and_exit_2(nf4_run: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(nf4_run, unfinished, ignore=shutil.ignore_patterns("checkpoints"))
    (unfinished / "report.json").unlink()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases = {
        "no recipe.json": (str(tmp_path), str(tmp_path / "o1")),
        "no such folder": (str(tmp_path / "missing"), str(tmp_path / "o2")),
        "did not finish": (str(unfinished), str(tmp_path / "o3")),
        "is a file": (str(nf4_run), str(a_file)),
        "not empty": (str(nf4_run), str(full)),
    }
    for expected, (run, out) in cases.items():
        done = cli(run, "--out", out)
        assert done.returncode == 2, (expected, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        assert expected in lines[0]
    assert a_file.read_text() == "x" and [p.name for p in full.iterdir()] == ["x"]
