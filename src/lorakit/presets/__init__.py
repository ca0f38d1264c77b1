"""Built-in presets: ``medqa_phi3`` (the reference QLoRA run) and ``medqa_phi3_tiny`` (offline demo).

Presets are plain :class:`~lorakit.recipe.Recipe` values built from shared blocks;
importing this module does no I/O and imports no torch::

    from lorakit.presets import medqa_phi3
    result = medqa_phi3.with_overrides({"adapter.rank": 32}).run()
"""

from __future__ import annotations

from pathlib import Path

from lorakit.adapter import AdapterSpec
from lorakit.data.pipeline import DataSpec
from lorakit.data.splits import SplitSpec
from lorakit.data.tokenize import TokenizeSpec
from lorakit.hookspecs import hookimpl
from lorakit.model import TINY_PHI3, ModelSpec, QuantSpec
from lorakit.protocols import Register
from lorakit.recipe import Recipe
from lorakit.train import TrainingSpec

__all__ = [
    "DEMO_DATA",
    "MEDQUAD_HUB",
    "medqa_llama3",
    "medqa_llama3_tiny",
    "medqa_phi3",
    "medqa_phi3_speed",
    "medqa_phi3_tiny",
    "medqa_qwen2",
    "medqa_qwen2_tiny",
]

PHI3_MINI = "microsoft/Phi-3-mini-4k-instruct"
MEDQUAD_HUB = "hf:keivalya/MedQuad-MedicalQnADataset"
"""The MedQuAD copy on the Hugging Face hub that most users train on (columns qtype, Question, Answer)."""
DEMO_DATA = Path(__file__).with_name("demo_medqa.jsonl")
"""98 plain health facts written for lorakit's offline demo: a demo set, not medical advice."""

# The seed recipe's adapter: r 16, alpha 32, dropout 0.1 on attention and MLP.
SEED_ADAPTER = AdapterSpec(rank=16, alpha=32, dropout=0.1, targets=("attention", "mlp"))
NF4 = QuantSpec(method="nf4", double_quant=True, compute_dtype="auto")

medqa_phi3 = Recipe(
    name="medqa_phi3",
    model=ModelSpec(name=PHI3_MINI, quant=NF4),
    adapter=SEED_ADAPTER,
    data=DataSpec(
        source=MEDQUAD_HUB,
        fields={"question": "Question", "answer": "Answer", "category": "qtype"},
        # The hub copy has no document ids: identical questions stay in one split.
        # With a local MedQuAD folder use data.source=medquad:DIR and data.split.group_by=group+focus.
        split=SplitSpec(eval_fraction=0.05, test_fraction=0.05, group_by="question", seed=0),
        tokenize=TokenizeSpec(max_len=1024),
    ),
    training=TrainingSpec(
        epochs=1.0,
        batch_size=4,
        # Packed (the default), a step holds the seed's 4 x 4 x 1024 tokens as two
        # micro-batches of 8,192: bigger kernels, half the per-batch overhead, and still
        # less memory than the seed's padded batches. With packing off, set grad_accum=4
        # for the seed's 16 rows per step.
        grad_accum=2,
        tokens_per_batch=8192,
        learning_rate=2e-4,
        optimizer="paged_adamw_8bit",
        scheduler="cosine",
        warmup_steps=100,
        gradient_checkpointing=True,
        # On a CUDA GPU: measure, and keep the fastest checkpointing and micro-batch size
        # that fit the memory free there (docs/performance.md); the settings above otherwise.
        max_memory_gb="auto",
        eval_steps=100,
        save_steps=100,
        load_best=True,
    ),
)
"""The reference run: Phi-3-mini-4k-instruct, 4-bit NF4 QLoRA on MedQuAD, the seed's values."""

medqa_phi3_speed = medqa_phi3.with_overrides(
    {
        "name": "medqa_phi3_speed",
        "model.quant.method": "none",
        "training.gradient_checkpointing": False,
        "training.max_memory_gb": None,
        "training.tokens_per_batch": 16 * 1024,
        "training.grad_accum": 1,
        "training.optimizer": "adamw_torch_fused",
    }
)
"""Speed mode for a large GPU: bf16 LoRA without quantisation, no checkpointing, variable-length
attention over packed 16k-token micro-batches (about 75 GiB on Phi-3-mini), fused float32 AdamW
(the adapter's optimizer state is 0.2 GB; the 8-bit paged optimizer's many small kernels cost
more than that saves here). Same tokens per step as ``medqa_phi3``."""

medqa_phi3_tiny = medqa_phi3.with_overrides(
    {
        "name": "medqa_phi3_tiny",
        "model.name": TINY_PHI3,
        "data.source": f"jsonl:{DEMO_DATA}",
        "data.fields": {"category": "qtype"},
        "data.split.eval_fraction": 0.15,
        "data.split.test_fraction": 0.1,
        "data.split.group_by": "focus",
        "data.tokenize.max_len": 256,
        "training.max_steps": 60,
        "training.max_memory_gb": None,
        "training.grad_accum": 1,
        # Two demo rows of up to 256 tokens per packed micro-batch: fast on a CPU.
        "training.tokens_per_batch": 512,
        "training.eval_batch_size": 16,
        "training.learning_rate": 1e-2,
        "training.eval_steps": 20,
        "training.save_steps": 20,
        "training.logging_steps": 5,
    }
)
"""The same pipeline, offline in minutes on a CPU: the tiny built-in Phi-3 and the demo set."""


medqa_qwen2 = medqa_phi3.with_overrides(
    {"name": "medqa_qwen2", "model.name": "Qwen/Qwen2.5-1.5B-Instruct"}
)
"""The reference recipe on Qwen2.5-1.5B-Instruct: the same data, adapter (attention and MLP:
q/k/v/o and gate/up/down projections) and training; ChatML prompts from its own template."""

medqa_llama3 = medqa_phi3.with_overrides(
    {"name": "medqa_llama3", "model.name": "meta-llama/Llama-3.2-1B-Instruct"}
)
"""The reference recipe on Llama-3.2-1B-Instruct (a gated model: accept its licence on the hub
first); Llama 3 ships no pad token, so lorakit picks one that is not a stop token."""

medqa_qwen2_tiny = medqa_phi3_tiny.with_overrides(
    {"name": "medqa_qwen2_tiny", "model.name": "tiny-qwen2"}
)
"""``medqa_phi3_tiny`` on a tiny local Qwen2 (byte-level BPE, ChatML): offline on a CPU."""

medqa_llama3_tiny = medqa_phi3_tiny.with_overrides(
    {"name": "medqa_llama3_tiny", "model.name": "tiny-llama3"}
)
"""``medqa_phi3_tiny`` on a tiny local Llama 3 (byte-level BPE, header chat format)."""


@hookimpl
def lorakit_register_presets(register: Register) -> None:
    register("medqa_phi3", medqa_phi3)
    register("medqa_phi3_tiny", medqa_phi3_tiny)
    register("medqa_phi3_speed", medqa_phi3_speed)
    register("medqa_qwen2", medqa_qwen2)
    register("medqa_qwen2_tiny", medqa_qwen2_tiny)
    register("medqa_llama3", medqa_llama3)
    register("medqa_llama3_tiny", medqa_llama3_tiny)
