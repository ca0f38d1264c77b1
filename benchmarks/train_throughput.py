"""Training throughput on one GPU: the seed recipe against lorakit's default and speed mode.

    python benchmarks/train_throughput.py --medquad ../shared/data/medquad \
        --tokenizer ../shared/data/phi3-tokenizer --write-lengths .device/medquad_phi3_lengths.json
    python benchmarks/train_throughput.py --lengths .device/medquad_phi3_lengths.json \
        [--steps 20] [--variants seed,default,speed]
    python benchmarks/train_throughput.py --medquad ../shared/data/medquad --tokenizer PATH ...

Builds a full-size Phi-3-mini architecture with random weights (no download), draws
example lengths from the real MedQuAD length distribution, and runs each variant in its
own process. The lengths are those of the examples lorakit trains on: ``--tokenizer``
(Phi-3's real tokenizer, ``../shared/data/phi3-tokenizer``) runs lorakit's own data
pipeline on the ``--medquad`` folder (:func:`lorakit.data.pipeline.inspect_data`: the
default cleaners, the ``qa`` template, the tokenizer's chat template, answer-only labels,
cut to 1024 tokens) and takes each example's token count. ``--write-lengths FILE`` only
writes them (a JSON object: the lengths and how they were produced; no GPU needed) and
prints their statistics, so a GPU machine without the data and the tokenizer runs with
``--lengths FILE`` (a plain JSON list of lengths is read too). ``--estimate-lengths``
keeps the old length model instead (characters of question + answer / 4 + 12 tokens,
capped at 1024; no tokenizer). The table's header says which of these the lengths came
from. The variants:

- ``seed``: the seed recipe as HF + PEFT users write it: NF4 + double quant, fp16 compute,
  ``prepare_model_for_kbit_training`` (reentrant checkpointing), LoRA r16 on attention and
  MLP, Trainer with paged AdamW 8-bit, batch 4 x grad-accum 4, padding to the longest row;
- ``default``: lorakit's ``medqa_phi3`` preset as it trains (NF4, bf16, packed 8,192-token
  micro-batches x 2, variable-length attention, the lean LoRA forward, Liger when
  installed, non-reentrant checkpointing, paged AdamW 8-bit), with its memory plan
  (``training.max_memory_gb=auto``: the checkpointing and micro-batch that fit the GPU's
  free memory); ``default+max_memory_gb=none`` is the preset as written (every layer
  recomputed), which ``default`` measured before the plan became the preset's default;
- ``speed``: lorakit's speed mode, the ``medqa_phi3_speed`` preset (no quantisation, bf16
  LoRA, no checkpointing, packed 16k-token micro-batches, fused AdamW, Liger);
- ``unsloth``: Unsloth (``--unsloth-path`` names a folder where it is installed) on the
  seed's padded batches, with the seed's LoRA (dropout 0.1; ``unsloth+lora_dropout=0`` for
  its fastest setting), NF4 + double quant, bf16, its own checkpointing, paged AdamW 8-bit.

A variant may carry overrides: ``default:sdpa`` (attention implementation),
``default+tokens_per_batch=4096+grad_accum=4`` (``training.*`` settings; a dotted name such
as ``+data.order=length_curriculum`` sets any recipe setting), ``+warmup=N``
(its own warm-up steps), ``+cap_gib=G`` (PyTorch's allocator capped at G GiB with
``torch.cuda.set_per_process_memory_fraction``, what a smaller card leaves; the memory plan
works within it) and, for ``seed`` and ``unsloth``,
``+pad_to_multiple_of=64``
(fewer distinct shapes; Unsloth compiles each decoder layer, and every new shape costs a
recompilation, so give it that and a longer warm-up to see its steady state).

Each variant runs ``--warmup`` optimizer steps first (new shapes build their kernels),
then times ``--steps`` optimizer steps with the GPU synchronised at both ends. Real tokens
are the non-padding tokens the model saw. MFU = 6 x parameters x real tokens/s over the
measured bf16 matrix rate (790 TFLOP/s on the H200). "vs seed" is each variant's real
tokens/s over that of the first variant whose name starts with ``seed`` (``seed``,
``seed+pad_to_multiple_of=64``, ...). Prints one table and writes it to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lorakit.testing import PHI3_MINI_CONFIG

PEAK_FLOPS = 790e12
MAX_LEN = 1024


ESTIMATE = "chars/4+12"
UNCUT_LEN = 65_536


def estimated_lengths(folder: Path) -> list[int]:
    """The old length model: (characters of question + answer) / 4 + 12, capped at MAX_LEN.

    Every answered row, before cleaning; no tokenizer.
    """
    from lorakit.data.sources import read_source

    lengths = []
    for row in read_source(f"medquad:{folder}"):
        if row.answer.strip():
            lengths.append(min(MAX_LEN, (len(row.question) + len(row.answer)) // 4 + 12))
    return lengths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenized_lengths(folder: Path, tokenizer_path: Path, *, max_len: int = MAX_LEN) -> dict:
    """MedQuAD's example lengths as lorakit trains on them, with how they were produced.

    Runs lorakit's data pipeline (:func:`~lorakit.data.pipeline.inspect_data`: read, the
    default cleaners, the ``qa`` template rendered with the tokenizer's chat template,
    tokenise with answer-only labels, cut to ``max_len``) with the tokenizer at
    ``tokenizer_path``, loaded as lorakit loads one (``AutoTokenizer.from_pretrained``).

    Returns:
        A JSON-able object: ``lengths`` (each example's token count as trained, in row
        order), ``untruncated`` (the same examples before the cut) and the provenance
        (source, tokenizer and its ``tokenizer.json`` hash, cleaners, template, counts).
    """
    from transformers import AutoTokenizer

    from lorakit import __version__
    from lorakit.data.pipeline import DataSpec, inspect_data
    from lorakit.data.tokenize import TokenizeSpec

    spec = DataSpec(source=f"medquad:{folder}", tokenize=TokenizeSpec(max_len=max_len))
    report, examples = inspect_data(spec, AutoTokenizer.from_pretrained(tokenizer_path))
    # The same rows uncut: a max_len no MedQuAD row reaches (the longest is under 7,000).
    uncut = DataSpec(source=spec.source, tokenize=TokenizeSpec(max_len=UNCUT_LEN))
    uncut_report, whole = inspect_data(uncut, AutoTokenizer.from_pretrained(tokenizer_path))
    if uncut_report.tokenization["all"].truncated or [e.origin for e in whole] != [
        e.origin for e in examples
    ]:
        raise SystemExit(f"an example is longer than {UNCUT_LEN:,} tokens or was dropped")
    tok = report.tokenization["all"]
    json_file = Path(tokenizer_path) / "tokenizer.json"
    return {
        "lengths": [len(e) for e in examples],
        "untruncated": [len(e) for e in whole],
        "source": spec.source,
        "tokenizer": str(tokenizer_path),
        "tokenizer_json_sha256": _sha256(json_file) if json_file.is_file() else None,
        "pipeline": "lorakit.data.pipeline.inspect_data",
        "cleaners": [c.name for c in spec.cleaners],
        "template": spec.template,
        "max_len": max_len,
        "rows_read": report.rows_read,
        "examples": tok.examples,
        "truncated": tok.truncated,
        "zero_supervised": tok.zero_supervised,
        "lorakit": __version__,
        "date": str(dt.date.today()),
    }


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def length_summary(values: list[int], max_len: int = MAX_LEN) -> str:
    """``n``, mean, p50/p95/p99/max and how many exceed ``max_len``, on one line."""
    over = sum(v > max_len for v in values)
    return (
        f"n={len(values):,}, mean {sum(values) / len(values):.1f}, p50 {percentile(values, 50)}, "
        f"p95 {percentile(values, 95)}, p99 {percentile(values, 99)}, max {max(values):,}, "
        f"over {max_len}: {over:,} ({over / len(values):.1%})"
    )


def describe_lengths(data: dict) -> str:
    """Where the lengths of a lengths object came from, for the table's header."""
    tokenizer = data.get("tokenizer")
    if tokenizer is None:
        return "origin not recorded"
    digest = data.get("tokenizer_json_sha256")
    return (
        f"{data['source']} through {data['pipeline']} (cleaners {'+'.join(data['cleaners'])}, "
        f"template {data['template']}, the tokenizer's chat template, cut to {data['max_len']}) "
        f"with the tokenizer at {tokenizer}"
        + (f" (tokenizer.json sha256 {digest[:12]})" if digest else "")
        + f", lorakit {data['lorakit']}, {data['date']}"
    )


def read_lengths_file(path: Path) -> dict:
    """A lengths file: the object ``--write-lengths`` writes, or a plain JSON list of lengths."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        data = {"lengths": data}
    lengths = data.get("lengths") if isinstance(data, dict) else None
    if not lengths or not all(isinstance(n, int) and n > 0 for n in lengths):
        raise SystemExit(f"{path}: expected a non-empty JSON list of positive token counts")
    return data


def load_lengths(args: argparse.Namespace) -> tuple[list[int], str]:
    """The example lengths to draw from, and where they came from (the header's words)."""
    if args.lengths:
        data = read_lengths_file(args.lengths)
        lengths = data["lengths"]
        how = "written by --write-lengths: " if "tokenizer" in data else ""
        return lengths, f"lengths from {args.lengths} ({how}{describe_lengths(data)})"
    if not args.medquad:
        raise SystemExit("pass --lengths FILE, or --medquad DIR with --tokenizer PATH")
    if args.tokenizer:
        data = tokenized_lengths(args.medquad, args.tokenizer)
        return data["lengths"], f"MedQuAD lengths: {describe_lengths(data)}"
    if args.estimate_lengths:
        lengths = estimated_lengths(args.medquad)
        return (
            lengths,
            f"MedQuAD lengths estimated as {ESTIMATE} tokens (no tokenizer), capped at {MAX_LEN}",
        )
    raise SystemExit(
        "--medquad needs --tokenizer PATH (Phi-3's tokenizer, e.g. ../shared/data/phi3-tokenizer) "
        f"or --estimate-lengths ({ESTIMATE}, no tokenizer)"
    )


def write_lengths(args: argparse.Namespace) -> None:
    """``--write-lengths FILE``: tokenise MedQuAD with ``--tokenizer`` and write the lengths."""
    if not (args.medquad and args.tokenizer):
        raise SystemExit("--write-lengths needs --medquad DIR and --tokenizer PATH")
    data = tokenized_lengths(args.medquad, args.tokenizer)
    args.write_lengths.parent.mkdir(parents=True, exist_ok=True)
    args.write_lengths.write_text(json.dumps(data))
    estimate = estimated_lengths(args.medquad)
    print(f"wrote {args.write_lengths}: {describe_lengths(data)}")
    print(
        f"rows read {data['rows_read']:,}, examples {data['examples']:,}, "
        f"truncated {data['truncated']:,}, no supervised token {data['zero_supervised']:,}"
    )
    print(f"as trained (cut to {data['max_len']}): {length_summary(data['lengths'])}")
    print(f"untruncated:              {length_summary(data['untruncated'])}")
    print(f"old estimate ({ESTIMATE}, capped, every answered row): {length_summary(estimate)}")


def build_model(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    from lorakit.testing import tiny_phi3_path

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(Phi3Config(**PHI3_MINI_CONFIG)).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_phi3_path()).save_pretrained(folder)


def synthetic_examples(lengths: list[int], n: int, seed: int) -> list[object]:
    """Random token ids at the given lengths; the first fifth of each is a masked prompt."""
    from lorakit.data.tokenize import Example

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.choice(lengths)
        ids = [1] + [rng.randrange(100, 32000) for _ in range(length - 1)]
        prompt = max(1, length // 5)
        out.append(
            Example(input_ids=ids, labels=[-100] * prompt + ids[prompt:], origin="synthetic")
        )
    return out


def phi3_parameters() -> int:
    """Parameters of the Phi-3-mini architecture (3,821,079,552)."""
    c = PHI3_MINI_CONFIG
    h, i, v, n = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_hidden_layers"]
    layer = h * 3 * h + h * h + h * 2 * i + i * h + 2 * h
    return 2 * v * h + n * layer + h


def make_timer(warmup: int, steps: int, counter: dict, profile: Path | None = None):  # type: ignore[no-untyped-def]
    """A TrainerCallback that times ``steps`` optimizer steps after ``warmup``, GPU synchronised.

    With ``profile``, one more step runs under ``torch.profiler`` after the timed ones and
    its kernel table (by GPU time) is written there.
    """
    import torch
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        profiler = None

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            if state.global_step == warmup:
                torch.cuda.synchronize()
                counter["t0"] = time.perf_counter()
                counter["tokens_at_t0"] = counter["tokens"]
                counter["padded_at_t0"] = counter["padded"]
                torch.cuda.reset_peak_memory_stats()
            if state.global_step == warmup + steps:
                torch.cuda.synchronize()
                counter["t1"] = time.perf_counter()
                counter["tokens_at_t1"] = counter["tokens"]
                counter["padded_at_t1"] = counter["padded"]
                counter["peak"] = torch.cuda.max_memory_allocated()
                counter["peak_reserved"] = torch.cuda.max_memory_reserved()
                if profile is not None:
                    self.profiler = torch.profiler.profile(
                        activities=[
                            torch.profiler.ProfilerActivity.CPU,
                            torch.profiler.ProfilerActivity.CUDA,
                        ]
                    )
                    self.profiler.__enter__()

        def on_train_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            torch.cuda.synchronize()
            if self.profiler is not None:
                self.profiler.__exit__(None, None, None)
                table = self.profiler.key_averages().table(
                    sort_by="cuda_time_total", row_limit=45, max_name_column_width=70
                )
                assert profile is not None
                profile.write_text(table)

    return Timer()


def counting(collate, counter: dict):  # type: ignore[no-untyped-def]
    def wrapped(features):  # type: ignore[no-untyped-def]
        batch = collate(features)
        counter["tokens"] += sum(len(f["input_ids"]) for f in features)
        counter["padded"] += batch["input_ids"].numel()
        return batch

    return wrapped


def train_padded(
    model,  # type: ignore[no-untyped-def]
    tokenizer,
    examples: list,
    steps: int,
    warmup: int,
    out: dict,
    profile: Path | None,
    pad_to: int | None,
    **precision: object,
) -> None:
    """Train ``model`` as HF users do: Trainer, padded batches 4 x grad-accum 4, paged AdamW 8-bit."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    counter = {"tokens": 0, "padded": 0}
    collate = counting(
        DataCollatorForSeq2Seq(
            tokenizer, padding="longest", label_pad_token_id=-100, pad_to_multiple_of=pad_to
        ),
        counter,
    )
    data = [
        {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}
        for e in examples
    ]
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        max_steps=warmup + steps + (profile is not None),
        learning_rate=2e-4,
        optim="paged_adamw_8bit",
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **precision,  # type: ignore[arg-type]
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=collate,
        callbacks=[make_timer(warmup, steps, counter, profile)],
    )
    model.train()
    trainer.train()
    out.update(counter)


def run_seed(
    model_dir: str,
    examples: list,
    steps: int,
    warmup: int,
    out: dict,
    profile: Path | None,
    pad_to: int | None,
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16,
        ),
        dtype=torch.float16,
        device_map={"": 0},
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.1,
            target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    train_padded(
        model,
        tokenizer,
        examples,
        steps,
        warmup,
        out,
        profile,
        pad_to,
        fp16=True,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )


def run_unsloth(
    model_dir: str,
    examples: list,
    steps: int,
    warmup: int,
    out: dict,
    profile: Path | None,
    pad_to: int | None,
    dropout: float,
) -> None:
    """Unsloth on the seed's batches: its loader, LoRA and checkpointing, the same Trainer setup.

    Phi-3 takes Unsloth's generic path (``FastModel``, transformers' own Phi-3 modules,
    compiled), so the adapter targets are the fused ``qkv_proj``/``gate_up_proj`` as in
    the seed. bf16 compute (Unsloth's choice on this GPU), NF4 + double quant.
    """
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    os.environ.setdefault("UNSLOTH_COMPILE_LOCATION", tempfile.mkdtemp(prefix="unsloth-"))
    from unsloth import FastLanguageModel  # first: it patches transformers and peft

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_dir, max_seq_length=MAX_LEN, dtype=None, load_in_4bit=True
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=32,
        lora_dropout=dropout,
        bias="none",
        target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth",
        random_state=0,
    )
    if hasattr(model, "for_training"):
        model.for_training()
    train_padded(model, tokenizer, examples, steps, warmup, out, profile, pad_to, bf16=True)
    out["notes"] = [f"unsloth: bf16, NF4 + double quant, lora_dropout {dropout}, its checkpointing"]


def lorakit_trainer(recipe, run_dir: Path, examples: list, callbacks: list):  # type: ignore[no-untyped-def]
    """The model and Trainer exactly as ``lorakit train`` builds them: the runner's own
    phases (load, setup: seed, Liger, LoRA, checkpointing, lean LoRA forward, memory
    budget; build_trainer), on the benchmark's examples. Returns the trainer and the notes."""
    from lorakit import runner
    from lorakit.data.tokenize import ensure_pad_token

    ctx = runner.open_run(recipe, run_dir, show_progress=False)
    loaded = runner.load_model(ctx)
    ensure_pad_token(loaded.tokenizer)  # what the data phase does before the model is set up
    setup = runner.setup_model(ctx, loaded)
    trainer = runner.build_trainer(ctx, setup, examples, examples[:8], callbacks=callbacks)
    return trainer, ctx.notes


def run_lorakit(
    model_dir: str,
    examples: list,
    steps: int,
    warmup: int,
    out: dict,
    profile: Path | None,
    *,
    speed: bool,
    attn: str | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    from lorakit.presets import medqa_phi3, medqa_phi3_speed

    recipe = medqa_phi3_speed if speed else medqa_phi3
    overrides = {
        "model.name": model_dir,
        "training.max_steps": warmup + steps + (profile is not None),
        "training.eval_steps": 10_000,
        "training.save_steps": 10_000,
        "training.logging_steps": 1000,
        "training.load_best": False,
    }
    if attn:
        overrides["model.attn_implementation"] = attn
    # ``+key=value``: a training setting, or any recipe setting by its dotted name.
    overrides |= {
        (key if "." in key else f"training.{key}"): value for key, value in (extra or {}).items()
    }
    recipe = recipe.with_overrides(overrides)
    counter = {"tokens": 0, "padded": 0}
    run_dir = Path(tempfile.mkdtemp()) / "run"
    trainer, notes = lorakit_trainer(
        recipe,
        run_dir,
        examples,
        [make_timer(warmup, steps, counter, profile)],
    )
    trainer.data_collator = counting(trainer.data_collator, counter)
    trainer.model.train()
    trainer.train()
    out.update(counter)
    out["notes"] = [n for n in notes if n]
    plan = run_dir / "memory_plan.json"
    if plan.exists():  # with a memory budget: every setting the planner measured
        out["memory_plan"] = json.loads(plan.read_text())


def worker(args: argparse.Namespace) -> None:
    lengths = json.loads(Path(args.lengths).read_text())
    # Enough examples that no row repeats within the timed steps.
    examples = synthetic_examples(lengths, n=args.examples, seed=0)
    spec, *extra = args.worker.split("+")
    name, _, attn = spec.partition(":")
    out: dict = {"variant": args.worker}
    profile = Path(args.profile) if args.profile else None
    settings = dict(item.split("=", 1) for item in extra)
    warmup = int(settings.pop("warmup", args.warmup))
    pad_to = int(settings.pop("pad_to_multiple_of", 0)) or None
    cap = settings.pop("cap_gib", None)
    if cap is not None:  # what a smaller card leaves: PyTorch's allocator capped
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(float(cap) * 2**30 / total, 0)
        out["cap_gib"] = float(cap)
    if name == "seed":
        run_seed(args.model, examples, args.steps, warmup, out, profile, pad_to)
    elif name == "unsloth":
        dropout = float(settings.get("lora_dropout", 0.1))
        run_unsloth(args.model, examples, args.steps, warmup, out, profile, pad_to, dropout)
    else:
        run_lorakit(
            args.model,
            examples,
            args.steps,
            warmup,
            out,
            profile,
            speed=name == "speed",
            attn=attn or None,
            extra=settings,
        )
    seconds = out["t1"] - out["t0"]
    real = out["tokens_at_t1"] - out["tokens_at_t0"]
    padded = out["padded_at_t1"] - out["padded_at_t0"]
    params = phi3_parameters()
    result = {
        "variant": args.worker,
        "timed_steps": args.steps,
        "seconds": round(seconds, 2),
        "real_tokens": real,
        "real_tokens_per_s": round(real / seconds),
        "padding_share": round(1 - real / padded, 3) if padded else 0.0,
        "peak_gib": round(out["peak"] / 2**30, 2),
        "peak_reserved_gib": round(out.get("peak_reserved", 0) / 2**30, 2),
        "cap_gib": out.get("cap_gib"),
        "mfu": round(6 * params * real / seconds / PEAK_FLOPS, 3),
        "notes": out.get("notes", []),
        "memory_plan": out.get("memory_plan"),
    }
    Path(args.result).write_text(json.dumps(result))


def seed_baseline(results: list[dict]) -> dict | None:
    """The "vs seed" baseline: the first variant whose name starts with ``seed``, if any.

    It may have failed (an ``error`` key); then no variant gets a "vs seed" figure.
    """
    return next((r for r in results if str(r["variant"]).startswith("seed")), None)


def baseline_line(baseline: dict | None) -> str:
    """The header's words on what "vs seed" divides by."""
    if baseline is None:
        return "vs seed: no variant whose name starts with 'seed' ran"
    if "error" in baseline:
        return f"vs seed: the baseline variant {baseline['variant']} failed"
    return f"vs seed: real tokens/s over variant {baseline['variant']}"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--medquad", type=Path, help="MedQuAD folder to take lengths from")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="Phi-3's tokenizer folder: --medquad lengths from lorakit's pipeline with it",
    )
    parser.add_argument(
        "--estimate-lengths",
        action="store_true",
        help=f"--medquad lengths from the old {ESTIMATE} model instead of a tokenizer",
    )
    parser.add_argument(
        "--lengths",
        type=Path,
        help="a lengths file from --write-lengths, or a JSON list (instead of --medquad)",
    )
    parser.add_argument(
        "--write-lengths",
        type=Path,
        metavar="FILE",
        help="write the --medquad/--tokenizer lengths to FILE, print their statistics, and stop",
    )
    parser.add_argument("--variants", default="seed,default,speed")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps first")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--unsloth-path",
        type=Path,
        help="a folder with Unsloth and its dependencies installed, put on the unsloth variants' path",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=Path,
        help="a folder: profile one more optimizer step per variant, write its kernel table there",
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.write_lengths:
        write_lengths(args)
        return

    import torch

    work = Path(tempfile.mkdtemp(prefix="lorakit-bench-"))
    lengths_file = work / "lengths.json"
    lengths, lengths_origin = load_lengths(args)
    lengths_file.write_text(json.dumps(lengths))
    model_dir = work / "phi3-mini-random"
    build_model(model_dir)
    torch.cuda.empty_cache()
    results: list[dict[str, Any]] = []
    variants = args.variants.split(",")
    for variant in variants:
        result_file = work / f"{variant}.json"
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            variant,
            "--model",
            str(model_dir),
            "--lengths",
            str(lengths_file),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--examples",
            str(args.examples),
            "--result",
            str(result_file),
        ]
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in variant)
            cmd += ["--profile", str(args.profile / f"{safe}.txt")]
        env = os.environ.copy()
        if variant.startswith("unsloth") and args.unsloth_path:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(args.unsloth_path), env.get("PYTHONPATH")) if p
            )
        done = subprocess.run(cmd, env=env)
        if done.returncode != 0 or not result_file.exists():
            results.append({"variant": variant, "error": f"exit code {done.returncode}"})
        else:
            results.append(json.loads(result_file.read_text()))
        # After every variant, so that a run stopped by a time limit keeps what it measured.
        write_results(args, results, lengths, lengths_origin, final=variant == variants[-1])


def write_results(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    lengths: list[int],
    lengths_origin: str,
    final: bool,
) -> None:
    import torch

    baseline = seed_baseline(results)
    base = baseline.get("real_tokens_per_s") if baseline else None
    lines = [
        f"Training throughput, {dt.date.today()}, {torch.cuda.get_device_name()}, full-size Phi-3-mini (random weights), "
        f"{args.warmup} warm-up + {args.steps} timed optimizer steps per variant",
        f"example lengths (n={len(lengths):,}, mean {sum(lengths) / len(lengths):.0f}): {lengths_origin}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        baseline_line(baseline),
        "",
        "| variant | real tokens/s | padding share | peak GiB | peak reserved GiB | MFU | vs seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed ({r['error']}) | | | | | |")
            continue
        ratio = f"{r['real_tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['variant']} | {r['real_tokens_per_s']:,} | {r['padding_share']:.1%} | "
            f"{r['peak_gib']} | {r.get('peak_reserved_gib', '')} | {r['mfu']:.1%} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table if final else lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today()}-train-throughput-{torch.cuda.get_device_name().replace(' ', '-')}"
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "results": results,
                "versions": versions(),
                "lengths": lengths_origin,
                "baseline": baseline["variant"] if base else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
