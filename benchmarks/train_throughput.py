"""Training throughput on one GPU: the seed recipe against lorakit's default and speed mode.

    python benchmarks/train_throughput.py --lengths lengths.json [--steps 20] [--variants seed,default,speed]
    python benchmarks/train_throughput.py --medquad ../shared/data/medquad ...

Builds a full-size Phi-3-mini architecture with random weights (no download), draws
example lengths from the real MedQuAD length distribution (length model: characters of
question + answer / 4 + 12 tokens, capped at 1024, as Phi-3's tokenizer averages about
4 characters per token on this text), and runs each variant in its own process:

- ``seed``: the seed recipe as HF + PEFT users write it: NF4 + double quant, fp16 compute,
  ``prepare_model_for_kbit_training`` (reentrant checkpointing), LoRA r16 on attention and
  MLP, Trainer with paged AdamW 8-bit, batch 4 x grad-accum 4, padding to the longest row;
- ``default``: lorakit's ``medqa_phi3`` preset as it trains (NF4, bf16, packed 8,192-token
  micro-batches x 2, variable-length attention, the lean LoRA forward, Liger when
  installed, non-reentrant checkpointing, paged AdamW 8-bit);
- ``speed``: lorakit's speed mode, the ``medqa_phi3_speed`` preset (no quantisation, bf16
  LoRA, no checkpointing, packed 16k-token micro-batches, fused AdamW, Liger);
- ``unsloth``: Unsloth (``--unsloth-path`` names a folder where it is installed) on the
  seed's padded batches, with the seed's LoRA (dropout 0.1; ``unsloth+lora_dropout=0`` for
  its fastest setting), NF4 + double quant, bf16, its own checkpointing, paged AdamW 8-bit.

A variant may carry overrides: ``default:sdpa`` (attention implementation),
``default+tokens_per_batch=4096+grad_accum=4`` (``training.*`` settings), ``+warmup=N``
(its own warm-up steps) and, for ``seed`` and ``unsloth``, ``+pad_to_multiple_of=64``
(fewer distinct shapes; Unsloth compiles each decoder layer, and every new shape costs a
recompilation, so give it that and a longer warm-up to see its steady state).

Each variant runs ``--warmup`` optimizer steps first (new shapes build their kernels),
then times ``--steps`` optimizer steps with the GPU synchronised at both ends. Real tokens
are the non-padding tokens the model saw. MFU = 6 x parameters x real tokens/s over the
measured bf16 matrix rate (790 TFLOP/s on the H200). Prints one table and writes it to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorakit.testing import PHI3_MINI_CONFIG

PEAK_FLOPS = 790e12
MAX_LEN = 1024


def medquad_lengths(folder: Path) -> list[int]:
    from lorakit.data.sources import read_source

    lengths = []
    for row in read_source(f"medquad:{folder}"):
        if row.answer.strip():
            lengths.append(min(MAX_LEN, (len(row.question) + len(row.answer)) // 4 + 12))
    return lengths


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
    from lorakit.adapter import apply_adapter
    from lorakit.data.tokenize import ensure_pad_token
    from lorakit.fast import apply_liger, fuse_lora, set_checkpointing
    from lorakit.model import ModelSpec, QuantizedModelBuilder
    from lorakit.presets import medqa_phi3, medqa_phi3_speed
    from lorakit.train import TrainerFactory

    recipe = medqa_phi3_speed if speed else medqa_phi3
    overrides = {
        "training.max_steps": warmup + steps + (profile is not None),
        "training.eval_steps": 10_000,
        "training.save_steps": 10_000,
        "training.logging_steps": 1000,
        "training.load_best": False,
    }
    if attn:
        overrides["model.attn_implementation"] = attn
    overrides |= {f"training.{key}": value for key, value in (extra or {}).items()}
    recipe = recipe.with_overrides(overrides)
    training = recipe.training
    loaded = QuantizedModelBuilder(
        ModelSpec(
            name=model_dir,
            quant=recipe.model.quant,
            attn_implementation=recipe.model.attn_implementation,
        )
    ).build()
    pad_id = ensure_pad_token(loaded.tokenizer)
    notes = [apply_liger(loaded.model, training.liger)]
    model, _ = apply_adapter(
        loaded.model, recipe.adapter, gradient_checkpointing=training.gradient_checkpointing
    )
    if training.gradient_checkpointing:
        set_checkpointing(model, training.checkpoint_every)
    if training.fused_lora:
        fuse_lora(model)
    counter = {"tokens": 0, "padded": 0}
    factory = TrainerFactory(
        training,
        Path(tempfile.mkdtemp()),
        loaded.compute_dtype,
        callbacks=[make_timer(warmup, steps, counter, profile)],
    )
    trainer = factory.create(
        model, loaded.tokenizer, examples, examples[:8], pad_id=pad_id, max_len=MAX_LEN
    )
    trainer.data_collator = counting(trainer.data_collator, counter)
    model.train()
    trainer.train()
    out.update(counter)
    out["notes"] = [n for n in notes + factory.notes + loaded.notes if n]


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
        "mfu": round(6 * params * real / seconds / PEAK_FLOPS, 3),
        "notes": out.get("notes", []),
    }
    Path(args.result).write_text(json.dumps(result))


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
        "--lengths", type=Path, help="a JSON list of lengths (instead of --medquad)"
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

    import torch

    work = Path(tempfile.mkdtemp(prefix="lorakit-bench-"))
    lengths_file = work / "lengths.json"
    if args.lengths:
        lengths = json.loads(args.lengths.read_text())
    elif args.medquad:
        lengths = medquad_lengths(args.medquad)
    else:
        raise SystemExit("pass --medquad DIR or --lengths FILE")
    lengths_file.write_text(json.dumps(lengths))
    model_dir = work / "phi3-mini-random"
    build_model(model_dir)
    torch.cuda.empty_cache()
    results = []
    for variant in args.variants.split(","):
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
            continue
        results.append(json.loads(result_file.read_text()))
    base = next(
        (r["real_tokens_per_s"] for r in results if r["variant"] == "seed" and "error" not in r),
        None,
    )
    lines = [
        f"Training throughput, {dt.date.today()}, {torch.cuda.get_device_name()}, full-size Phi-3-mini (random weights), "
        f"MedQuAD lengths (chars/4+12, n={len(lengths)}, mean {sum(lengths) / len(lengths):.0f}), "
        f"{args.warmup} warm-up + {args.steps} timed optimizer steps per variant",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        "| variant | real tokens/s | padding share | peak GiB | MFU | vs seed |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed ({r['error']}) | | | | |")
            continue
        ratio = f"{r['real_tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(
            f"| {r['variant']} | {r['real_tokens_per_s']:,} | {r['padding_share']:.1%} | {r['peak_gib']} | {r['mfu']:.1%} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today()}-train-throughput-{torch.cuda.get_device_name().replace(' ', '-')}"
    (args.out / f"{stem}.md").write_text(table + "\n")
    (args.out / f"{stem}.json").write_text(
        json.dumps({"results": results, "versions": versions()}, indent=2)
    )


if __name__ == "__main__":
    main()
