"""Training: ``TrainingSpec`` and ``TrainerFactory`` -> a ``transformers.Trainer`` with lorakit's
collator, a NaN/Inf watchdog, a metrics log, rich progress and a check that the best
checkpoint is the one loaded at the end."""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import attrs

from lorakit._validators import number, one_of
from lorakit.errors import ConfigError, LorakitError
from lorakit.train_callbacks import bookkeeping_callback, metrics_callback, progress_callback
from lorakit.train_data import REAL_TOKENS, ExampleDataset, PackedDataset, QACollator, TokenCounter

__all__ = [
    "REAL_TOKENS",
    "ExampleDataset",
    "PackedDataset",
    "QACollator",
    "RunInterrupted",
    "StopRequest",
    "TokenCounter",
    "TrainerFactory",
    "TrainingDiverged",
    "TrainingSpec",
    "effective_warmup",
    "metrics_callback",
    "progress_callback",
    "total_steps",
]


Optimizer = Literal[
    "paged_adamw_8bit", "adamw_8bit", "paged_adamw_32bit", "adamw_torch", "adamw_torch_fused"
]
Scheduler = Literal["cosine", "linear", "constant_with_warmup", "constant"]
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)


class TrainingDiverged(LorakitError):
    """The training loss became NaN or infinite."""


class RunInterrupted(LorakitError):
    """The user stopped the run (Ctrl-C); it saved a checkpoint and resumes from it.

    Attributes:
        step: the optimizer step training stopped after.
        checkpoint: the checkpoint the same command resumes from (``None``: none yet).
    """

    def __init__(self, step: int, checkpoint: str | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"from {checkpoint}" if checkpoint else "from the start (no checkpoint yet)"
        super().__init__(
            f"interrupted at step {step}; run the same command again to resume {where}"
        )


class StopRequest:
    """A request to stop training at the next step boundary, with a checkpoint there.

    :meth:`callback` is the ``TrainerCallback`` that honours it; :meth:`request` is safe to
    call from a signal handler.
    """

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    def callback(self) -> Any:
        from transformers import TrainerCallback

        stop = self

        class StopAtStep(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if stop.requested:
                    control.should_save = True
                    control.should_training_stop = True

        return StopAtStep()


_budget = number("training", gt=0)


def _memory_budget(instance: Any, attribute: Any, value: Any) -> None:
    """``None``, ``"auto"`` or a number of GiB above 0."""
    if value is None or value == "auto":
        return
    if isinstance(value, str):
        raise ConfigError(
            f"must be a number of GiB or 'auto', not {value!r}", field="training.max_memory_gb"
        )
    _budget(instance, attribute, value)


def _trackers(value: Any) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` or a list of names; ``"none"`` (or nothing) reports to none."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    names = tuple(name for name in names if name.lower() != "none")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(
            f"tracker {duplicates[0]!r} is named twice",
            field="training.report_to",
            hint="name each tracker once",
        )
    return names


@attrs.frozen(kw_only=True)
class TrainingSpec:
    """How to train.

    Attributes:
        epochs: passes over the training split (ignored when ``max_steps`` is set).
        max_steps: optimizer steps to run; ``None`` runs ``epochs``.
        batch_size: examples per micro-batch on each device.
        grad_accum: micro-batches per optimizer step.
        eval_batch_size: examples per evaluation batch.
        learning_rate: peak learning rate.
        weight_decay: decoupled weight decay.
        max_grad_norm: gradient clipping norm.
        optimizer: ``paged_adamw_8bit`` (bitsandbytes), ``adamw_8bit``, ``paged_adamw_32bit``,
            ``adamw_torch`` or ``adamw_torch_fused``. Falls back to ``adamw_torch``, with a
            warning, where bitsandbytes is missing.
        scheduler: learning-rate schedule after warmup.
        warmup_steps: linear warmup steps, capped to ``max_warmup_fraction`` of the run.
        max_warmup_fraction: largest share of the run spent warming up.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant).
        eval_steps: evaluate every this many steps.
        save_steps: save a checkpoint every this many steps (a multiple of ``eval_steps``
            when ``load_best`` is on).
        save_total_limit: checkpoints kept on disk (the best one is always kept).
        load_best: load the checkpoint with the lowest eval loss at the end.
        early_stopping_patience: stop after this many evaluations without improvement.
        logging_steps: log the training loss every this many steps.
        group_by_length: without packing, batch examples of similar length together to waste
            less on padding.
        pad_to_multiple_of: pad each batch's length up to a multiple of this (fewer distinct
            shapes for GPU kernels); ``None`` pads to the longest example only.
        packing: padding-free packing: each micro-batch is one row of several whole examples
            (up to ``tokens_per_batch`` tokens), attention kept within each example.
        tokens_per_batch: tokens per packed micro-batch; default ``batch_size`` x ``max_len``,
            the most a padded batch of the same size could hold.
        checkpoint_every: with gradient checkpointing, recompute every n-th layer only
            (1 = every layer, the least memory; 2 = selective, half the recomputation).
        liger: fused Liger kernels (RoPE, RMSNorm, SwiGLU, fused linear cross-entropy):
            ``auto`` applies them when ``lorakit[fast]`` is installed, a CUDA GPU is present
            and the architecture is supported; ``on`` fails when they cannot be applied.
        fused_lora: compute each LoRA layer as one fused product added to the base output
            (``addmm``) in the compute dtype, instead of PEFT's separate kernels, casts and
            copies; the same function (see :func:`lorakit.fast.fuse_lora`).
        max_memory_gb: a GPU memory budget in GiB, or ``"auto"`` (the memory free on the GPU
            when training starts); lorakit then picks how many layers to recompute (all, some,
            none) and the packed micro-batch size, measuring one step of each setting and
            keeping the fastest that fits (see :func:`lorakit.fast.plan_memory`).
        seed: seed of the run (data order, adapter initialisation, dropout).
        report_to: experiment trackers the run reports to (``tensorboard``, ``mlflow``, or a
            plugin's, see :mod:`lorakit.tracking`); ``--set training.report_to=tensorboard,mlflow``.
        tracking_uri: the MLflow tracking server (``http://HOST:5000``); ``None`` keeps a local
            store in the run directory.
        distributed: how several processes (``lorakit train --nproc N``) share the work:
            ``ddp``, each holds the whole model and gradients are averaged (see
            :mod:`lorakit.distributed`); ``fsdp`` is refused for now (not yet run on GPUs).
    """

    epochs: float = attrs.field(
        default=1.0, converter=float, validator=number("training", gt=0, lt=1e6)
    )
    max_steps: int | None = attrs.field(
        default=None, validator=number("training", gt=0, optional=True)
    )
    batch_size: int = attrs.field(default=4, validator=number("training", gt=0))
    grad_accum: int = attrs.field(default=4, validator=number("training", gt=0))
    eval_batch_size: int = attrs.field(default=8, validator=number("training", gt=0))
    learning_rate: float = attrs.field(
        default=2e-4, converter=float, validator=number("training", gt=0)
    )
    weight_decay: float = attrs.field(
        default=0.0, converter=float, validator=number("training", ge=0)
    )
    max_grad_norm: float = attrs.field(
        default=1.0, converter=float, validator=number("training", gt=0)
    )
    optimizer: Optimizer = attrs.field(
        default="paged_adamw_8bit", validator=one_of("training", OPTIMIZERS)
    )
    scheduler: Scheduler = attrs.field(default="cosine", validator=one_of("training", SCHEDULERS))
    warmup_steps: int = attrs.field(default=100, validator=number("training", ge=0))
    max_warmup_fraction: float = attrs.field(
        default=0.1, converter=float, validator=number("training", ge=0, le=1)
    )
    gradient_checkpointing: bool = True
    eval_steps: int = attrs.field(default=100, validator=number("training", gt=0))
    save_steps: int = attrs.field(default=100, validator=number("training", gt=0))
    save_total_limit: int | None = 3
    load_best: bool = True
    early_stopping_patience: int | None = None
    logging_steps: int = attrs.field(default=10, validator=number("training", gt=0))
    group_by_length: bool = True
    pad_to_multiple_of: int | None = 64
    packing: bool = True
    tokens_per_batch: int | None = attrs.field(
        default=None, validator=number("training", gt=0, optional=True)
    )
    checkpoint_every: int = attrs.field(default=1, validator=number("training", ge=1))
    liger: Literal["auto", "on", "off"] = "auto"
    fused_lora: bool = True
    max_memory_gb: float | Literal["auto"] | None = attrs.field(
        default=None, validator=_memory_budget
    )
    seed: int = 42
    report_to: tuple[str, ...] = attrs.field(default=(), converter=_trackers)
    tracking_uri: str | None = None
    distributed: Literal["ddp", "fsdp"] = attrs.field(
        default="ddp", validator=one_of("training", ("ddp", "fsdp"))
    )

    def __attrs_post_init__(self) -> None:
        if self.load_best and self.save_steps % self.eval_steps:
            raise ConfigError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                "to keep the best checkpoint",
                field="training.save_steps",
                hint=f"set training.save_steps={self.eval_steps}",
            )


def __getattr__(name: str) -> Any:
    if name == "TrainingArgs":
        warnings.warn(
            "lorakit.train.TrainingArgs is now TrainingSpec; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return TrainingSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def total_steps(args: TrainingSpec, train_examples: int, world_size: int = 1) -> int:
    """Optimizer steps the run will take."""
    if args.max_steps is not None:
        return args.max_steps
    # As the transformers Trainer counts: optimizer steps per epoch rounded up, times epochs.
    batches = math.ceil(train_examples / (args.batch_size * world_size))
    per_epoch = max(1, math.ceil(batches / args.grad_accum))
    return max(1, math.ceil(args.epochs * per_epoch))


def effective_warmup(args: TrainingSpec, steps: int) -> int:
    """``warmup_steps`` capped to ``max_warmup_fraction`` of the run's steps."""
    return min(args.warmup_steps, int(args.max_warmup_fraction * steps))


def resolve_optimizer(name: str) -> tuple[str, str | None]:
    """The optimizer to use and a warning when it is not the one asked for."""
    if "8bit" in name or name.startswith("paged"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return (
                "adamw_torch",
                f"bitsandbytes is not installed: using adamw_torch instead of {name}",
            )
    return name, None


@attrs.define
class TrainerFactory:
    """Creates the ``transformers.Trainer`` for a run.

    Attributes:
        args: lorakit's training arguments.
        output_dir: where checkpoints go (``run_dir/checkpoints``).
        compute_dtype: ``bfloat16``, ``float16`` or ``float32`` (mixed precision flags follow it).
        callbacks: extra ``TrainerCallback`` objects (plugins, reporters).
        order: ``shuffle`` (the trainer's sampler), ``length_curriculum`` or
            ``length_grouped`` (see :mod:`lorakit.data.order`).
        curriculum_share: the share of the steps the curriculum ramps over.
        world_size: processes training together; each takes its share of the global batch
            (see :func:`lorakit.distributed.rank_batch`).
    """

    args: TrainingSpec
    output_dir: Path
    compute_dtype: str = "float32"
    callbacks: list[Any] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    counter: TokenCounter = attrs.field(factory=TokenCounter)
    order: str = "shuffle"
    curriculum_share: float = 0.5
    world_size: int = 1

    def training_arguments(self, train_items: int, *, packed: bool = False) -> Any:
        """The ``transformers.TrainingArguments`` of the run.

        ``train_items`` counts examples, or packed rows when ``packed`` (one row per micro-batch).
        """
        import torch
        from transformers import TrainingArguments

        from lorakit.distributed import rank_batch

        a = attrs.evolve(self.args, batch_size=1) if packed else self.args
        steps = total_steps(a, train_items)
        micro_batch, accumulation = rank_batch(a, self.world_size)
        optimizer, warning = resolve_optimizer(a.optimizer)
        if warning:
            self.notes.append(warning)
        cuda = torch.cuda.is_available()
        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        # transformers 5.2x replaced group_by_length with train_sampling_strategy.
        sampling = (
            {
                "train_sampling_strategy": "group_by_length"
                if a.group_by_length and not packed
                else "random"
            }
            if "train_sampling_strategy" in known
            else {"group_by_length": a.group_by_length and not packed}
        )
        return TrainingArguments(
            output_dir=str(self.output_dir),
            num_train_epochs=a.epochs,
            max_steps=a.max_steps if a.max_steps is not None else -1,
            per_device_train_batch_size=micro_batch,
            per_device_eval_batch_size=a.eval_batch_size,
            gradient_accumulation_steps=accumulation,
            learning_rate=a.learning_rate,
            weight_decay=a.weight_decay,
            max_grad_norm=a.max_grad_norm,
            optim=optimizer,
            lr_scheduler_type=a.scheduler,
            warmup_steps=effective_warmup(a, steps),
            eval_strategy="steps",
            eval_steps=a.eval_steps,
            save_strategy="steps",
            save_steps=a.save_steps,
            save_total_limit=a.save_total_limit,
            load_best_model_at_end=a.load_best,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            logging_strategy="steps",
            logging_steps=a.logging_steps,
            logging_first_step=True,
            **sampling,
            bf16=cuda and self.compute_dtype == "bfloat16",
            fp16=cuda and self.compute_dtype == "float16",
            use_cpu=not cuda,
            seed=a.seed,
            data_seed=a.seed,
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_num_workers=0,
            save_only_model=False,
            # LoRA trains every adapter parameter: DDP need not search for unused ones.
            ddp_find_unused_parameters=False if self.world_size > 1 else None,
        )

    # Checkpointing is switched on (non-reentrant) by apply_adapter, before PEFT wraps the model.

    def create(
        self,
        model: Any,
        tokenizer: Any,
        train_examples: Sequence[Any],
        eval_examples: Sequence[Any],
        *,
        pad_id: int,
        max_len: int | None = None,
    ) -> Any:
        """A ready ``Trainer`` over the examples, with the watchdog and callbacks attached."""
        from transformers import EarlyStoppingCallback

        if not train_examples:
            raise ConfigError(
                "the training split is empty",
                field="data",
                hint="use more data or a smaller eval/test fraction",
            )
        if len(train_examples) < self.args.batch_size:
            raise ConfigError(
                f"the training split has {len(train_examples)} examples, fewer than one batch of "
                f"{self.args.batch_size}: every step would train on the same few examples",
                field="training.batch_size",
                hint=f"set training.batch_size={len(train_examples)} or use more data",
            )
        if not eval_examples:
            raise ConfigError(
                "the evaluation split is empty; eval loss and the best checkpoint need one",
                field="data.split.eval_fraction",
                hint="raise data.split.eval_fraction",
            )
        callbacks = list(self.callbacks)
        if self.args.early_stopping_patience:
            callbacks.append(
                EarlyStoppingCallback(early_stopping_patience=self.args.early_stopping_patience)
            )
        if self.args.packing:
            # Packed rows are only kept apart when the model runs without a cache: transformers
            # then builds a block-diagonal mask from the restarting position ids.
            model.config.use_cache = False
            if max_len is None and self.args.tokens_per_batch is None:
                raise ConfigError("packing needs max_len or training.tokens_per_batch")
            capacity = self.args.tokens_per_batch or self.args.batch_size * int(max_len or 0)
            train_dataset: Any = PackedDataset(train_examples, capacity, seed=self.args.seed)
            packed_length: int | None = capacity
        else:
            train_dataset = ExampleDataset(train_examples)
            packed_length = None
        collator = QACollator(
            pad_id,
            pad_to_multiple_of=self.args.pad_to_multiple_of,
            max_len=max_len,
            packed_length=packed_length,
            count_tokens=True,
        )
        callbacks.append(bookkeeping_callback(self.counter))
        trainer_cls = _trainer_class()
        from transformers import PrinterCallback

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*gradient checkpointing.*")
            trainer = trainer_cls(
                model=model,
                args=self.training_arguments(len(train_dataset), packed=self.args.packing),
                train_dataset=train_dataset,
                eval_dataset=ExampleDataset(eval_examples),
                data_collator=collator,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        # lorakit reports progress and metrics itself (rich bar, metrics.jsonl).
        trainer.remove_callback(PrinterCallback)
        trainer.lorakit_counter = self.counter
        order = self.order
        unpacked_grouping = self.args.group_by_length and not self.args.packing
        if self.world_size > 1 and order == "shuffle" and unpacked_grouping:
            # transformers' length-grouped sampler draws on each process's own random
            # state; lorakit's is a pure function of the seed, the same on every rank.
            order = "length_grouped"
            self.notes.append(
                "several processes: training.group_by_length uses data.order="
                "length_grouped (the same order on every rank)"
            )
        if order != "shuffle":
            trainer.lorakit_sampler = self._sampler(train_dataset, trainer, order)
        return trainer

    def _sampler(self, dataset: ExampleDataset | PackedDataset, trainer: Any, order: str) -> Any:
        """The length-aware sampler of ``data.order``, a pure function of seed and step."""
        from lorakit.data.order import OrderedSampler

        counted = attrs.evolve(self.args, batch_size=1) if self.args.packing else self.args
        return OrderedSampler(
            dataset.lengths(),
            order=order,
            seed=self.args.seed,
            micro_batch=counted.batch_size,
            grad_accum=counted.grad_accum,
            total_steps=total_steps(counted, len(dataset)),
            curriculum_share=self.curriculum_share,
            step=lambda: int(trainer.state.global_step),
        )


def _trainer_class() -> type:
    import torch
    from transformers import Trainer

    class LorakitTrainer(Trainer):
        """A Trainer that stops with :class:`TrainingDiverged` on a NaN or infinite loss, and
        evaluates with lorakit's token-weighted answer-only loss, so that the best checkpoint
        is chosen by the same number the run report gives. With a length-aware
        ``data.order`` it samples training items with lorakit's :class:`OrderedSampler`."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            sampler = getattr(self, "lorakit_sampler", None)
            if sampler is not None and (
                train_dataset is None or train_dataset is self.train_dataset
            ):
                return sampler
            return super()._get_train_sampler(train_dataset)

        def evaluate(
            self,
            eval_dataset: Any = None,
            ignore_keys: Any = None,
            metric_key_prefix: str = "eval",
        ) -> dict[str, float]:
            from lorakit.evaluate.perplexity import answer_loss

            started = time.perf_counter()
            dataset: Any = self.eval_dataset if eval_dataset is None else eval_dataset
            collate = self.data_collator

            def uncounted(features: Any) -> Any:
                batch = collate(features)
                batch.pop(REAL_TOKENS, None)
                return batch

            from lorakit.distributed import World

            # Rank 0 evaluates; every rank gets its numbers (the best checkpoint and early
            # stopping then agree everywhere).
            result = World.from_env().on_main(
                lambda: answer_loss(
                    self.model,
                    dataset.examples,
                    uncounted,
                    batch_size=self.args.per_device_eval_batch_size,
                )
            )
            metrics = {
                f"{metric_key_prefix}_loss": result.loss,
                f"{metric_key_prefix}_perplexity": result.perplexity,
                f"{metric_key_prefix}_tokens": float(result.tokens),
                f"{metric_key_prefix}_runtime": round(time.perf_counter() - started, 4),
            }
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(
                self.args, self.state, self.control, metrics
            )
            return metrics

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # torch.save reports a full disk as a RuntimeError from its zip writer.
            folder = Path(str(self.args.output_dir)) / f"checkpoint-{self.state.global_step}"
            try:
                super()._save_checkpoint(model, trial)
            except OSError as error:
                from lorakit._fs import fs_error

                raise fs_error(error, "save a checkpoint", folder) from None
            except RuntimeError as error:
                raise LorakitError(
                    f"cannot save a checkpoint: {error}",
                    file=str(folder),
                    hint="is the disk full? free disk space (or raise the file-size limit), then "
                    "run the same command again: the run resumes from its last complete checkpoint",
                ) from None

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            real = inputs.pop(REAL_TOKENS, None)
            counter = getattr(self, "lorakit_counter", None)
            if real is not None and counter is not None:
                counter.add(int(real))
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss.detach()).all():
                step = self.state.global_step + 1
                raise TrainingDiverged(
                    f"the training loss became {float(loss)} at step {step}",
                    hint="lower training.learning_rate, raise training.warmup_steps, or check the data "
                    "for empty answers; the last good checkpoint is kept",
                )
            return loss

    return LorakitTrainer
