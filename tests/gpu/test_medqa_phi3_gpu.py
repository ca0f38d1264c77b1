"""The medqa_phi3 preset on a full-size Phi-3-mini architecture (random weights) in 4-bit on a GPU.

Run on a CUDA machine: ``pytest -m gpu tests/gpu``. Needs a MedQuAD folder:
``LORAKIT_MEDQUAD`` (default ``../shared/data/medquad``). Set ``LORAKIT_GPU_RESULTS`` to a
folder to get the measured figures as JSON. Token lengths come from the tiny
tokenizer, whose vocabulary is smaller than Phi-3's, so rows are longer than
with the real tokenizer: the memory figures are an upper bound.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from lorakit.testing import PHI3_MINI_CONFIG  # noqa: E402

GIB = 2**30
# Phi-3-mini-4k-instruct's architecture.


@pytest.fixture(scope="module")
def full_phi3(tmp_path_factory) -> Path:
    """A full-size Phi-3-mini with random weights (bf16), saved like a real checkpoint."""
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from lorakit.testing import tiny_phi3_path

    folder = tmp_path_factory.mktemp("phi3-mini-random")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(Phi3Config(**PHI3_MINI_CONFIG)).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_phi3_path()).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def _medquad() -> Path:
    default = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "medquad"
    path = Path(os.environ.get("LORAKIT_MEDQUAD", default))
    if not path.is_dir():
        pytest.skip(f"no MedQuAD folder at {path} (set LORAKIT_MEDQUAD)")
    return path


def _record(name: str, figures: dict) -> None:
    folder = os.environ.get("LORAKIT_GPU_RESULTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


@pytest.mark.parametrize(("batch_size", "grad_accum"), [(4, 4), (8, 2), (16, 1)])
def test_medqa_phi3_preset_in_4bit(full_phi3, tmp_path, batch_size, grad_accum):
    from lorakit.presets import medqa_phi3

    steps = 8
    recipe = medqa_phi3.with_overrides(
        {
            "model.name": str(full_phi3),
            "data.source": f"medquad:{_medquad()}",
            "data.fields": "",
            "data.limit": 1000,
            "data.split.group_by": "group+focus",
            "training.batch_size": batch_size,
            "training.grad_accum": grad_accum,
            "training.max_steps": steps,
            "training.eval_steps": 4,
            "training.save_steps": 4,
        }
    )
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = recipe.run(tmp_path / "run", show_progress=False)
    peak = torch.cuda.max_memory_allocated() / GIB
    reserved = torch.cuda.max_memory_reserved() / GIB
    records = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    summary = next(r for r in records if "train_runtime" in r)
    data = json.loads((result.run_dir / "data_report.json").read_text())
    lengths = data["tokenization"]["train"]["length"]
    figures = {
        "gpu": torch.cuda.get_device_name(),
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "steps": steps,
        "peak_allocated_gib": round(peak, 2),
        "peak_reserved_gib": round(reserved, 2),
        "train_runtime_s": summary["train_runtime"],
        "step_time_s": round(summary["train_runtime"] / steps, 3),
        "train_length_tokens": lengths,
        "eval_loss_before": result.report["eval"]["loss_before"],
        "eval_loss": result.report["eval"]["loss"],
        "compute_dtype": result.report["run_card"]["compute_dtype"],
        "versions": result.report["run_card"]["versions"],
    }
    _record(f"medqa_phi3_bs{batch_size}", figures)
    assert result.report["status"] == "complete"
    assert result.report["best"]["verified"]
    if batch_size == 4:
        # The preset's batch size must fit a 12 GB card (its CUDA context takes ~0.5 GiB more).
        assert reserved < 11.5, figures
