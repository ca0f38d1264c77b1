"""The body of ``Recipe.run()``: data -> model -> adapter -> trainer -> evaluation -> report."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorakit.errors import ConfigError, LorakitError

if TYPE_CHECKING:
    from lorakit.recipe import Recipe, RunResult

__all__ = ["run_recipe"]


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    plugin_manager: Any = None,
    show_progress: bool = True,
) -> RunResult:
    """Train ``recipe`` and write its run directory (see :mod:`lorakit.recipe`).

    An unfinished run of the same recipe in ``run_dir`` resumes from its latest
    checkpoint, and the report says so.
    """
    from rich.console import Console

    from lorakit.plugins import Registries, make_plugin_manager
    from lorakit.recipe import default_run_dir, prepare_run_dir

    started = dt.datetime.now(dt.timezone.utc)
    pm = plugin_manager if plugin_manager is not None else make_plugin_manager()
    registries = Registries.from_plugin_manager(pm)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe.name)
    resuming = prepare_run_dir(run_dir, recipe)
    console = Console(stderr=True)
    pm.hook.lorakit_run_start(recipe=recipe, run_dir=run_dir)
    try:
        return _train(recipe, run_dir, pm, registries, resuming, console, show_progress, started)
    except BaseException as error:
        pm.hook.lorakit_run_failed(recipe=recipe, run_dir=run_dir, error=error)
        raise


def _train(
    recipe: Recipe,
    run_dir: Path,
    pm: Any,
    registries: Any,
    resuming: bool,
    console: Any,
    show_progress: bool,
    started: dt.datetime,
) -> RunResult:
    """Everything between ``lorakit_run_start`` and the report (see :func:`run_recipe`)."""
    from lorakit.adapter import apply_adapter
    from lorakit.data.cleaners import check_cleaners
    from lorakit.data.pipeline import prepare_data
    from lorakit.data.sources import read_source
    from lorakit.evaluate.benchmarks import load_benchmark, parse_bench
    from lorakit.evaluate.perplexity import answer_loss
    from lorakit.fast import apply_liger, fuse_lora, set_checkpointing
    from lorakit.model import QuantizedModelBuilder
    from lorakit.recipe import (
        RunResult,
        checkpoint_step,
        make_temp_dir,
        replace_dir_atomic,
        versions,
        write_json_atomic,
        write_text_atomic,
    )
    from lorakit.reporting import progress_for
    from lorakit.train import QACollator, TrainerFactory, metrics_callback, progress_callback

    # Bad data settings fail here, in a second, not after the model has loaded.
    check_cleaners(recipe.data.cleaners, registries.cleaners)
    next(
        iter(read_source(recipe.data.source, fields=recipe.data.fields, registries=registries)),
        None,
    )
    registries.templates.resolve(recipe.data.template)(**recipe.data.template_options)
    for text in recipe.evaluation.benchmarks:
        load_benchmark(*parse_bench(text), limit=1, registries=registries)
    for name in recipe.evaluation.metrics:
        registries.metrics.resolve(name)

    loaded = QuantizedModelBuilder(recipe.model, plugin_manager=pm).build()
    for note in loaded.notes:
        console.print(f"[yellow]note:[/] {note}")
    tokenizer = loaded.tokenizer
    with progress_for(console, show_progress) as progress:
        data = prepare_data(recipe.data, tokenizer, registries=registries, progress=progress)
    digest = data_hash(data.examples)
    report_file = run_dir / "data_report.json"
    if resuming and report_file.exists():
        earlier = json.loads(report_file.read_text(encoding="utf-8")).get("data_hash")
        if earlier not in (None, digest):
            raise ConfigError(
                "the data changed since this run started: the checkpoints were trained on "
                "other examples",
                file=str(run_dir),
                field="data.source",
                hint="restore the data the run started with, or start a new --run-dir",
            )
    write_json_atomic(report_file, {**data.report.to_dict(), "data_hash": digest})
    data_notes = []
    if data.report.zero_supervised:
        data_notes.append(
            f"{data.report.zero_supervised} examples dropped: the prompt alone fills "
            f"data.tokenize.max_len={recipe.data.tokenize.max_len} (see data_report.json)"
        )
    truncated = sum(r.truncated for r in data.report.tokenization.values())
    if truncated:
        data_notes.append(
            f"{truncated} answers truncated at data.tokenize.max_len={recipe.data.tokenize.max_len}; "
            "their end token is not trained"
        )
    for note in data_notes:
        console.print(f"[yellow]note:[/] {note}")
    train_examples, eval_examples = data.examples["train"], data.examples["eval"]
    pad_id = tokenizer.pad_token_id
    for config in (loaded.model.config, getattr(loaded.model, "generation_config", None)):
        if config is not None:
            config.pad_token_id = pad_id

    training = recipe.training
    fast_notes = []
    liger_note = apply_liger(loaded.model, training.liger)
    if liger_note:
        fast_notes.append(liger_note)
    # The memory budget may choose checkpointing even when the recipe has it off.
    checkpointing = training.gradient_checkpointing or training.max_memory_gb is not None
    model, targets = apply_adapter(
        loaded.model, recipe.adapter, gradient_checkpointing=checkpointing
    )
    if checkpointing:
        set_checkpointing(
            model, training.checkpoint_every if training.gradient_checkpointing else None
        )
    if training.fused_lora:
        fast_notes.append(f"lean LoRA forward on {fuse_lora(model)} layers")
    if training.max_memory_gb is not None:
        training, note = fit_memory_budget(
            model, training, recipe.data.tokenize.max_len, run_dir / "memory_plan.json"
        )
        fast_notes.append(note)
    for note in fast_notes:
        console.print(f"[yellow]note:[/] {note}")

    def on_log(record: dict[str, Any], step: int) -> None:
        pm.hook.lorakit_log_metrics(metrics=record, step=step)

    callbacks = [metrics_callback(run_dir / "metrics.jsonl", on_log)]
    if show_progress:
        callbacks.append(progress_callback(console))
    for extra in pm.hook.lorakit_trainer_callbacks(recipe=recipe):
        callbacks.extend(extra or [])
    factory = TrainerFactory(
        training, run_dir / "checkpoints", loaded.compute_dtype, callbacks=callbacks
    )
    trainer = factory.create(
        model,
        tokenizer,
        train_examples,
        eval_examples,
        pad_id=pad_id,
        max_len=recipe.data.tokenize.max_len,
    )
    collate = QACollator(pad_id)
    eval_before_file = run_dir / "eval_before.json"
    if eval_before_file.exists():
        eval_before = json.loads(eval_before_file.read_text(encoding="utf-8"))
    else:
        with progress_for(console, show_progress) as progress:
            before = answer_loss(
                model,
                eval_examples,
                collate,
                batch_size=training.eval_batch_size,
                progress=progress.task("Eval loss before training", len(eval_examples)),
            )
        eval_before = before.to_dict()
        write_json_atomic(eval_before_file, eval_before)

    resume_from = latest_checkpoint(run_dir / "checkpoints") if resuming else None
    if resuming:
        # Records logged after the checkpoint (all, without one) are logged again now.
        step = checkpoint_step(resume_from) if resume_from is not None else 0
        keep_metrics_until(run_dir / "metrics.jsonl", step)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    best = verify_best_checkpoint(trainer, model) if training.load_best else None
    with progress_for(console, show_progress) as progress:
        after = answer_loss(
            model,
            eval_examples,
            collate,
            batch_size=recipe.training.eval_batch_size,
            progress=progress.task("Eval loss after training", len(eval_examples)),
        )
        test_examples = data.examples["test"]
        test = (
            answer_loss(
                model,
                test_examples,
                collate,
                batch_size=training.eval_batch_size,
                progress=progress.task("Test loss", len(test_examples)),
            ).to_dict()
            if test_examples
            else None
        )

    adapter_dir = run_dir / "adapter"
    tmp = make_temp_dir(run_dir, ".adapter-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir_atomic(tmp, adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    benchmarks = None
    if recipe.evaluation.benchmarks or recipe.evaluation.metrics:
        with progress_for(console, show_progress) as progress:
            benchmarks = benchmark_report(
                model,
                tokenizer,
                recipe,
                test_examples=data.examples["test"],
                test_rows=list(data.splits.test),
                collate=collate,
                progress=progress,
                registries=registries,
            )

    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if "loss" in r]
    report = {
        "status": "complete",
        "recipe": recipe.name,
        "run_dir": str(run_dir),
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": None if resume_from is None else resume_from.name,
        "steps": trainer.state.global_step,
        "train": {
            "final_loss": train_losses[-1] if train_losses else None,
            # The mean of the logged losses over the whole run, resumed or not.
            "mean_loss": sum(train_losses) / len(train_losses) if train_losses else None,
            "examples": len(train_examples),
        },
        "eval": {
            "loss_before": eval_before["loss"],
            "perplexity_before": eval_before["perplexity"],
            **after.to_dict(),
        },
        "test": test,
        "benchmarks": benchmarks,
        "best": best,
        "adapter": {"path": str(adapter_dir), "targets": targets},
        "data": {
            k: data.report.to_dict()[k]
            for k in ("rows_read", "rows_kept", "kind", "dropped", "split")
        },
        "notes": [*loaded.notes, *data_notes, *fast_notes, *factory.notes],
        "run_card": {
            "versions": versions(),
            "device": loaded.device,
            "compute_dtype": loaded.compute_dtype,
            "data_hash": digest,
            "template_hash": template_hash(tokenizer, recipe),
        },
    }
    write_text_atomic(run_dir / "report.md", report_markdown(report))
    write_json_atomic(run_dir / "report.json", report)
    result = RunResult(
        run_dir=run_dir, adapter_dir=adapter_dir, report=report, model=model, tokenizer=tokenizer
    )
    pm.hook.lorakit_run_end(result=result)
    return result


def fit_memory_budget(model: Any, training: Any, max_len: int, plan_file: Path) -> tuple[Any, str]:
    """Choose checkpointing and the packed micro-batch size that fit ``training.max_memory_gb``.

    The plan is stored in ``plan_file`` so that a resumed run trains exactly as it started.
    """
    import attrs
    import torch

    from lorakit.fast import MemoryPlan, plan_memory, set_checkpointing
    from lorakit.recipe import write_json_atomic

    if not torch.cuda.is_available():
        return training, f"no CUDA GPU: training.max_memory_gb={training.max_memory_gb} is ignored"
    if not training.packing:
        raise ConfigError(
            "the memory budget sizes packed micro-batches",
            field="training.max_memory_gb",
            hint="set training.packing=true, or drop the budget and set training.batch_size",
        )
    device = next(p.device for p in model.parameters())
    vocab = model.config.vocab_size

    def step(tokens: int) -> None:
        model.train()
        ids = torch.randint(10, vocab - 1, (1, tokens), device=device)
        positions = (torch.arange(tokens, device=device) % max_len).unsqueeze(0)
        labels = ids.clone()
        labels[:, 0] = -100
        loss = model(input_ids=ids, labels=labels, position_ids=positions).loss
        loss.backward()

    capacity = training.tokens_per_batch or training.batch_size * max_len
    if plan_file.exists():
        stored = json.loads(plan_file.read_text(encoding="utf-8"))
        plan = MemoryPlan(**{**stored, "tried": tuple(tuple(t) for t in stored["tried"])})
    else:
        plan = plan_memory(
            model,
            training.max_memory_gb,
            tokens_per_batch=capacity,
            grad_accum=training.grad_accum,
            min_tokens=max_len,
            step=step,
        )
        write_json_atomic(plan_file, attrs.asdict(plan))
    set_checkpointing(model, plan.checkpoint_every)
    chosen = attrs.evolve(
        training,
        tokens_per_batch=plan.tokens_per_batch,
        grad_accum=plan.grad_accum,
        checkpoint_every=plan.checkpoint_every or 1,
        gradient_checkpointing=plan.checkpoint_every is not None,
    )
    return chosen, plan.describe()


def benchmark_report(
    model: Any,
    tokenizer: Any,
    recipe: Recipe,
    *,
    test_examples: list[Any],
    test_rows: list[Any],
    collate: Any,
    progress: Any,
    registries: Any,
) -> dict[str, Any]:
    """Base and adapter on every named benchmark, with the paired difference, and the
    answer-only perplexity of the recipe's test split (as trained: same template, same tokens)."""
    from lorakit.evaluate.benchmarks import compare, parse_bench, run_benchmark, score_generated
    from lorakit.evaluate.perplexity import answer_loss

    spec = recipe.evaluation
    out: dict[str, Any] = {}
    for bench, location in (parse_bench(text) for text in spec.benchmarks):
        kwargs: dict[str, Any] = {
            "limit": spec.limit,
            "shots": spec.shots,
            "chat_template": spec.chat_template,
            "batch_size": recipe.training.eval_batch_size,
            "progress": progress,
            "registries": registries,
            "max_len": recipe.data.tokenize.max_len,
        }
        with model.disable_adapter():  # the very same weights, adapter off
            base = run_benchmark(model, tokenizer, bench, location, **kwargs)
        adapted = run_benchmark(model, tokenizer, bench, location, **kwargs)
        out[bench.name] = {
            "base": base.to_dict(),
            "adapter": adapted.to_dict(),
            "compare": compare(base, adapted).to_dict(),
        }
    if test_examples:
        batch = recipe.training.eval_batch_size
        with model.disable_adapter():
            base_loss = answer_loss(model, test_examples, collate, batch_size=batch)
        adapter_loss = answer_loss(model, test_examples, collate, batch_size=batch)
        out["heldout"] = {
            "base": base_loss.to_dict(),
            "adapter": adapter_loss.to_dict(),
            "compare": {
                "measure": "perplexity",
                "delta": adapter_loss.perplexity - base_loss.perplexity,
            },
        }
        if spec.metrics:
            rows = test_rows[: spec.limit] if spec.limit else test_rows
            options: dict[str, Any] = {
                "registries": registries,
                "max_new_tokens": spec.max_new_tokens,
                "batch_size": batch,
            }
            with model.disable_adapter():
                base_text = score_generated(model, tokenizer, rows, spec.metrics, **options)
            adapter_text = score_generated(model, tokenizer, rows, spec.metrics, **options)
            for side, scores in (("base", base_text), ("adapter", adapter_text)):
                out["heldout"][side]["free_text"] = {
                    k: v for k, v in scores.items() if k != "items"
                }
    return out


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records of ``metrics.jsonl`` logged after ``step``."""
    from lorakit.recipe import write_text_atomic

    if not path.exists():
        return
    lines = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short when the process was killed mid-write
            continue
        if record.get("step", 0) <= step:
            lines.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def latest_checkpoint(folder: Path) -> Path | None:
    """The ``checkpoint-N`` folder with the highest N that has its trainer state, or None."""
    from lorakit.recipe import checkpoint_step

    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(complete, key=checkpoint_step, default=None)


def verify_best_checkpoint(trainer: Any, model: Any) -> dict[str, Any]:
    """Check that the adapter in memory equals the best checkpoint's adapter, bit for bit."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from lorakit.recipe import checkpoint_step

    state = trainer.state
    best_dir = state.best_model_checkpoint
    if best_dir is None:
        raise LorakitError(
            "training kept no best checkpoint", hint="set training.eval_steps below the run's steps"
        )
    saved = load_file(str(Path(best_dir) / "adapter_model.safetensors"))
    current = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    mismatched = [
        k
        for k, v in saved.items()
        if k not in current or not torch.equal(current[k].to(v.dtype), v)
    ]
    if mismatched or len(saved) != len(current):
        raise LorakitError(
            f"the adapter in memory differs from the best checkpoint {best_dir} in {len(mismatched)} tensors",
            hint="this is a bug in checkpoint loading; the checkpoints are intact on disk",
        )
    return {
        "checkpoint": Path(best_dir).name,
        "step": checkpoint_step(best_dir),
        "eval_loss": state.best_metric,
        "verified": True,
        "tensors_compared": len(saved),
    }


def data_hash(examples: Mapping[str, list[Any]]) -> str:
    """SHA-256 over the token ids and labels of every split, in order."""
    digest = hashlib.sha256()
    for name in sorted(examples):
        digest.update(name.encode())
        for example in examples[name]:
            digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()


def template_hash(tokenizer: Any, recipe: Recipe) -> str:
    """SHA-256 over the tokenizer's chat template and the recipe's template settings."""
    text = json.dumps(
        {
            "chat_template": getattr(tokenizer, "chat_template", None),
            "template": recipe.data.template,
            "options": dict(recipe.data.template_options),
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _score(result: dict[str, Any]) -> str:
    if result.get("accuracy") is None:
        return f"perplexity {result.get('perplexity', float('nan')):.3f}"
    return f"{100 * result['accuracy']:.1f} % ({100 * result['ci_low']:.1f}-{100 * result['ci_high']:.1f})"


def _delta(comparison: dict[str, Any]) -> str:
    if comparison.get("measure") == "accuracy":
        return (
            f"{100 * comparison['delta']:+.1f} points ({100 * comparison['ci_low']:+.1f} to "
            f"{100 * comparison['ci_high']:+.1f})"
        )
    return f"perplexity {comparison['delta']:+.3f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The run report as Markdown."""

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if math.isfinite(value) else str(value)
        return str(value)

    ev, tr, best = report["eval"], report["train"], report["best"] or {}
    lines = [
        f"# Run report: {report['recipe']}",
        "",
        f"Status: **{report['status']}**, {report['steps']} optimizer steps"
        + (f", resumed from `{report['resumed_from']}`" if report["resumed_from"] else "")
        + ".",
        "",
        "| measure | value |",
        "|---|---|",
        f"| final train loss (last logged) | {fmt(tr['final_loss'])} |",
        f"| mean train loss | {fmt(tr['mean_loss'])} |",
        f"| eval loss before training (answer tokens) | {fmt(ev['loss_before'])} |",
        f"| eval loss after training (answer tokens) | {fmt(ev['loss'])} |",
        f"| eval perplexity = exp(eval loss) | {fmt(ev['perplexity'])} |",
        f"| eval answer tokens | {ev['tokens']} |",
        f"| best checkpoint | {fmt(best.get('checkpoint'))} (step {fmt(best.get('step'))}, "
        f"eval loss {fmt(best.get('eval_loss'))}, verified: {fmt(best.get('verified'))}) |",
    ]
    if report["test"]:
        lines.append(
            f"| test loss / perplexity | {fmt(report['test']['loss'])} / {fmt(report['test']['perplexity'])} |"
        )
    if report.get("benchmarks"):
        lines += [
            "",
            "| benchmark | n | base | adapter | difference (95 % CI) |",
            "|---|---|---|---|---|",
        ]
        for name, entry in report["benchmarks"].items():
            lines.append(
                f"| {name} | {entry['adapter'].get('n', entry['adapter'].get('examples'))} | {_score(entry['base'])} | "
                f"{_score(entry['adapter'])} | {_delta(entry['compare'])} |"
            )
    heldout = (report.get("benchmarks") or {}).get("heldout", {})
    if "free_text" in heldout.get("adapter", {}):
        base_text, adapter_text = heldout["base"]["free_text"], heldout["adapter"]["free_text"]
        lines += [
            "",
            f"Generated answers to {adapter_text['n']} test questions:",
            "",
            "| metric | base (95 % CI) | adapter (95 % CI) |",
            "|---|---|---|",
        ]
        for name, value in adapter_text["metrics"].items():
            b = base_text["metrics"][name]
            lines.append(
                f"| {name} | {b['mean']:.3f} ({b['ci_low']:.3f}-{b['ci_high']:.3f}) | "
                f"{value['mean']:.3f} ({value['ci_low']:.3f}-{value['ci_high']:.3f}) |"
            )
    data = report["data"]
    lines += [
        "",
        f"Data: {data['rows_read']} rows read, {data['rows_kept']} kept ({data['kind']}); dropped per cleaner: "
        + ", ".join(f"{k} {v}" for k, v in data["dropped"].items()),
        "",
        f"Adapter: `{report['adapter']['path']}` on {', '.join(report['adapter']['targets'])}.",
        "",
        "## Run card",
        "",
        f"- device: {report['run_card']['device']}, compute dtype {report['run_card']['compute_dtype']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["run_card"]["versions"].items()),
        f"- data hash: `{report['run_card']['data_hash'][:16]}`, template hash: "
        f"`{report['run_card']['template_hash'][:16]}`",
    ]
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in report["notes"]]]
    return "\n".join(lines) + "\n"
