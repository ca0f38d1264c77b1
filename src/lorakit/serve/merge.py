"""``lorakit merge``: fold a run's LoRA adapter into its base model, with a parity check.

The run's adapter is merged (PEFT ``merge_and_unload``) into the base model's original
checkpoint weights loaded in the chosen dtype, and saved as a plain transformers checkpoint
(weights, config, tokenizer, generation config and a model card written from the run's
report). The merged checkpoint is then loaded back from disk and compared with the model as
it trained (the base quantised as the run had it, the adapter on top) on the first examples
of the run's eval split:

* the largest absolute difference of the logits at answer tokens,
* how often the two models agree on the most likely next answer token (argmax agreement),
* the answer-only loss of each, and their difference.

A merge outside its :class:`ParityTolerance` is refused (:class:`MergeRefused`): the
checkpoint is written in a temporary folder beside ``out`` and moved into place only when
the check passes, so ``out`` never looks complete when it is not.

A 4-bit run trained its adapter against the *dequantised NF4* weights; the merge folds it into
the *original* weights, so the merged model differs from the trained one by the quantisation
error of the base. ``parity.json`` measures that error alone as well (``base_difference``: the
4-bit base against the base in the merge dtype, adapter off) and the merge's own error
(``merge_only``: the merged checkpoint against the unquantised base with the adapter
unmerged); a 4-bit run's tolerance follows the bases' difference (:func:`relative_tolerance`)
while the merge alone keeps the strict one (:func:`default_tolerance`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.errors import ConfigError, LorakitError
from lorakit.serve.parity import ParityReport, ParityTolerance, compare_models

if TYPE_CHECKING:
    from lorakit.recipe import Recipe
    from lorakit.reporting import ProgressReporter
    from lorakit.run_report import RunReport

__all__ = [
    "DTYPES",
    "MergeRefused",
    "MergeResult",
    "MergeSpec",
    "ParityReport",
    "ParityTolerance",
    "compare_models",
    "default_tolerance",
    "merge_run",
    "model_card",
    "parity_json",
    "relative_tolerance",
    "write_parity_summary",
]

MergeDtype = Literal["bf16", "fp16", "fp32"]
DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""The dtypes a merged checkpoint can be saved in, by their short names."""

TEMP_MARK = ".merging-"


class MergeRefused(LorakitError):
    """The merged model is outside its parity tolerance: nothing was written to ``out``."""


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"must be a whole number of at least 1, got {value!r}", field=attribute.name
        )


def default_tolerance(dtype: str) -> ParityTolerance:
    """The tolerance of a merge into an unquantised base (and of the merge alone, for any run).

    Measured on the tiny Phi-3 (docs/use-your-model.md#merge gives the figures): a float32
    merge reproduces the adapter to float32 rounding (agreement 1.0, logits within 3e-5), so
    it must agree on at least 99 % of answer tokens, with the answer loss within 0.001 and
    the logits within 0.001. A 16-bit merge adds 16-bit rounding of the merged weights
    (agreement 0.95-0.99 on the tiny model's near-uniform logits): at least 90 %, loss within
    0.02. A 4-bit run gets :func:`relative_tolerance` instead.

    Args:
        dtype: ``bf16``, ``fp16`` or ``fp32``.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", field="--dtype", hint="bf16, fp16 or fp32")
    if dtype == "fp32":
        return ParityTolerance(min_agreement=0.99, max_loss_delta=1e-3, max_logit_diff=1e-3)
    return ParityTolerance(min_agreement=0.90, max_loss_delta=0.02)


QUANTISED_MARGIN = 0.05
"""How much worse than the bases alone a merge of a 4-bit run may be, in argmax agreement
and in answer-loss difference (nats)."""


def relative_tolerance(bases: ParityReport, margin: float = QUANTISED_MARGIN) -> ParityTolerance:
    """The default tolerance of a 4-bit run: no more than ``margin`` worse than the bases alone.

    The merged model carries the base's quantisation error, which the adapter was trained
    against: the 4-bit base and the unquantised base already disagree by that much
    (``bases``, adapter off). A fixed threshold would be too loose for a large model and
    fail a tiny random one (whose near-uniform logits flip their argmax under a 9 % weight
    error; see docs/use-your-model.md#merge), so the threshold follows the measurement.
    """
    return ParityTolerance(
        min_agreement=max(0.0, bases.argmax_agreement - margin),
        max_loss_delta=abs(bases.loss_delta) + margin,
    )


@attrs.frozen(kw_only=True)
class MergeSpec:
    """What to merge into, and how to check it.

    Attributes:
        dtype: the merged checkpoint's dtype: ``bf16`` (Phi-3's own), ``fp16`` or ``fp32``.
        probe: how many of the run's eval examples the parity check scores (the first ones).
        batch_size: examples per forward pass of the check.
        tolerance: the parity tolerance; ``None``: :func:`default_tolerance` of the run.
    """

    dtype: MergeDtype = attrs.field(default="bf16", validator=attrs.validators.in_(tuple(DTYPES)))
    probe: int = attrs.field(default=16, validator=_positive_int)
    batch_size: int = attrs.field(default=4, validator=_positive_int)
    tolerance: ParityTolerance | None = None


@attrs.frozen(kw_only=True)
class MergeResult:
    """A finished merge: where it is and what its parity check measured.

    ``parity`` compares the merged checkpoint (loaded back from disk) with the model as
    trained, within ``tolerance``; ``base_difference`` compares the two bases alone (adapter
    off): the part of the difference that is the base's quantisation and dtype, not the
    merge; ``merge_only`` compares the merged checkpoint with the same full-precision base
    carrying the adapter unmerged: the merge's own error, within ``merge_tolerance``.
    """

    out: Path
    dtype: str
    trained_quant: str
    parity: ParityReport
    base_difference: ParityReport
    merge_only: ParityReport
    tolerance: ParityTolerance
    merge_tolerance: ParityTolerance
    probe_split: str
    notes: tuple[str, ...] = ()

    def failures(self) -> list[str]:
        """What is outside the tolerances (empty when the merge passed)."""
        return self.parity.failures(self.tolerance) + [
            f"merge alone: {failure}" for failure in self.merge_only.failures(self.merge_tolerance)
        ]

    @property
    def passed(self) -> bool:
        """Both checks are within their tolerance."""
        return not self.failures()

    def to_dict(self) -> dict[str, Any]:
        """The content of ``parity.json``."""
        return {
            "passed": self.passed,
            "failures": self.failures(),
            **self.parity.to_dict(),
            "probe_split": self.probe_split,
            "dtype": self.dtype,
            "trained_quant": self.trained_quant,
            "tolerance": self.tolerance.to_dict(),
            "base_difference": self.base_difference.to_dict(),
            "merge_only": self.merge_only.to_dict(),
            "merge_tolerance": self.merge_tolerance.to_dict(),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- checks


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ConfigError(
            "is not a run directory (no such folder)",
            file=str(run_dir),
            hint="pass a folder `lorakit train` wrote",
        )
    if not (run_dir / "recipe.json").is_file():
        raise ConfigError(
            "is not a run directory (no recipe.json)",
            file=str(run_dir),
            hint="pass a folder `lorakit train` wrote",
        )
    if (
        not (run_dir / "report.json").is_file()
        or not (run_dir / "adapter" / "adapter_config.json").is_file()
    ):
        raise ConfigError(
            "the run did not finish (no report.json or adapter/)",
            file=str(run_dir),
            hint="finish it with `lorakit train ... --run-dir` first",
        )


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(
            "--out is a file, not a folder", file=str(out), hint="choose a folder for the model"
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            "--out exists and is not empty",
            file=str(out),
            hint="choose a new folder, or pass --force to replace it",
        )


def _remove_stale_temporaries(out: Path) -> None:
    """Remove temporary folders that killed merges into ``out`` left (their process is gone)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}{re.escape(TEMP_MARK)}(\d+)-")
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        found = pattern.match(path.name)
        if found is None or not path.is_dir():
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


# --------------------------------------------------------------------------- merge


@contextlib.contextmanager
def _temp_dir_beside(out: Path) -> Iterator[Path]:
    from lorakit._fs import make_temp_dir

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from lorakit._fs import fs_error

        raise fs_error(error, "create the output's parent folder", out.parent) from None
    tmp = make_temp_dir(out.parent, f".{out.name}{TEMP_MARK}{os.getpid()}-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _probe_examples(data: Any, probe: int) -> tuple[str, list[Any]]:
    for split in ("eval", "test"):
        examples = list(data.examples[split])
        if examples:
            return split, examples[:probe]
    raise ConfigError(
        "the run has no eval or test examples to check the merge on",
        field="data.split",
        hint="merge a run trained with an eval split",
    )


def _load_full_base(recipe: Recipe, dtype_name: str, device: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from lorakit.model import resolve_model_path

    spec = recipe.model
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(spec.name),
            revision=spec.revision,
            dtype=getattr(torch, dtype_name),
            trust_remote_code=spec.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"could not load the base model {spec.name!r} unquantised: {str(exc).splitlines()[0]}",
            field="model.name",
        ) from exc
    return model.to(device).eval()


def _stop_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    from lorakit.data.tokenize import stop_token_ids

    eos = getattr(generation_config, "eos_token_id", None)
    extra = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if isinstance(e, int)]
    ordered = [*extra, *sorted(stop_token_ids(tokenizer, extra=extra) - set(extra))]
    return list(dict.fromkeys(ordered))


@attrs.frozen(kw_only=True)
class _Trained:
    """The model as it trained (the base quantised as the run had it, the adapter on top),
    its tokenizer, and the examples the parity check scores."""

    model: Any
    tokenizer: Any
    split: str
    probes: list[Any]
    pad_id: int
    device: Any
    notes: tuple[str, ...]


def merge_run(
    run_dir: str | Path,
    out: str | Path,
    spec: MergeSpec | None = None,
    *,
    force: bool = False,
    progress: ProgressReporter | None = None,
    plugin_manager: Any = None,
) -> MergeResult:
    """Merge the run's adapter into its base, save it in ``out``, and check its parity.

    Args:
        run_dir: a finished run directory.
        out: the folder of the merged checkpoint (created; an existing non-empty folder
            is replaced only with ``force``).
        spec: dtype, probe size and tolerance.
        force: replace an existing non-empty ``out``.
        progress: progress reporter of the long steps.
        plugin_manager: the plugins (the trained model loads through ``lorakit_load_model``).

    Returns:
        The merge's :class:`MergeResult` (also in ``out/parity.json``).

    Raises:
        ConfigError: not a finished run directory, ``out`` a file or not empty.
        MergeRefused: the parity check failed; ``out`` is untouched.
    """
    from lorakit._fs import replace_dir_atomic
    from lorakit.evaluate.run_split import run_recipe_of
    from lorakit.plugins import make_plugin_manager
    from lorakit.reporting import NullProgress
    from lorakit.run_report import RunReport

    spec = spec or MergeSpec()
    progress = progress or NullProgress()
    run_dir, out = Path(run_dir), Path(out)
    _check_run_dir(run_dir)
    _check_out(out, force)
    report = RunReport.from_run_dir(run_dir)
    recipe = run_recipe_of(run_dir)
    tolerance = spec.tolerance or default_tolerance(spec.dtype)
    pm = plugin_manager if plugin_manager is not None else make_plugin_manager()
    trained = _load_trained(run_dir, recipe, report, spec, pm, progress)

    _remove_stale_temporaries(out)
    with _temp_dir_beside(out) as tmp:
        result = _merge_and_check(run_dir, tmp, out, recipe, spec, tolerance, trained, progress)
        if not result.passed:
            raise _refusal(result, spec, out)
        _write_records(tmp, run_dir, recipe, report, result)
        replace_dir_atomic(tmp, out)
    return result


def _load_trained(
    run_dir: Path,
    recipe: Recipe,
    report: RunReport,
    spec: MergeSpec,
    plugin_manager: Any,
    progress: ProgressReporter,
) -> _Trained:
    """The model as it trained, and the first ``spec.probe`` examples of its eval split."""
    from peft import PeftModel

    from lorakit.data.pipeline import prepare_data
    from lorakit.model import QuantizedModelBuilder
    from lorakit.plugins import Registries
    from lorakit.runner import data_hash

    registries = Registries.from_plugin_manager(plugin_manager)
    notes: list[str] = []
    loaded = QuantizedModelBuilder(recipe.model, plugin_manager=plugin_manager).build()
    tokenizer = loaded.tokenizer
    data = prepare_data(recipe.data, tokenizer, registries=registries, progress=progress)
    if report.run_card.get("data_hash") not in (None, data_hash(data.examples)):
        notes.append(
            "the data differs from what the run trained on (data hash changed): the probe "
            "examples are not the run's own"
        )
    split, probes = _probe_examples(data, spec.probe)
    pad_id = int(tokenizer.pad_token_id)
    model = PeftModel.from_pretrained(loaded.model, str(run_dir / "adapter"))
    model.eval()
    return _Trained(
        model=model,
        tokenizer=tokenizer,
        split=split,
        probes=probes,
        pad_id=pad_id,
        device=next(model.parameters()).device,
        notes=tuple(notes),
    )


def _merge_and_check(
    run_dir: Path,
    tmp: Path,
    out: Path,
    recipe: Recipe,
    spec: MergeSpec,
    tolerance: ParityTolerance,
    trained: _Trained,
    progress: ProgressReporter,
) -> MergeResult:
    """Save the merged checkpoint in ``tmp``, load it back and measure its parity."""
    from peft import PeftModel

    dtype_name = DTYPES[spec.dtype]
    quant = recipe.model.quant.method

    # The full-precision base with the adapter unmerged: the reference of the merge alone.
    unmerged = PeftModel.from_pretrained(
        _load_full_base(recipe, dtype_name, trained.device), str(run_dir / "adapter")
    ).eval()
    with trained.model.disable_adapter(), unmerged.disable_adapter():
        base_difference = _compare(trained.model, unmerged, trained, spec, progress, "bases alone")
    _save_merged(tmp, run_dir, recipe, trained, dtype_name)
    reloaded = _reload(tmp, dtype_name, trained.device)
    merge_only = _compare(unmerged, reloaded, trained, spec, progress, "merged vs unmerged")
    del unmerged
    parity = _compare(trained.model, reloaded, trained, spec, progress, "merged vs trained")
    del reloaded
    if spec.tolerance is None and quant != "none":
        tolerance = relative_tolerance(base_difference)
    return MergeResult(
        out=out,
        dtype=dtype_name,
        trained_quant=quant,
        parity=parity,
        base_difference=base_difference,
        merge_only=merge_only,
        tolerance=tolerance,
        merge_tolerance=default_tolerance(spec.dtype),
        probe_split=trained.split,
        notes=trained.notes,
    )


def _compare(
    reference: Any,
    candidate: Any,
    trained: _Trained,
    spec: MergeSpec,
    progress: ProgressReporter,
    what: str,
) -> ParityReport:
    """:func:`compare_models` on the probe examples, with a progress task ``Parity: what``."""
    return compare_models(
        reference,
        candidate,
        trained.probes,
        trained.pad_id,
        batch_size=spec.batch_size,
        progress=progress.task(f"Parity: {what}", len(trained.probes)),
    )


def _save_merged(
    tmp: Path, run_dir: Path, recipe: Recipe, trained: _Trained, dtype_name: str
) -> None:
    """Merge the adapter into the full-precision base and save it (with the tokenizer) in ``tmp``."""
    from peft import PeftModel

    base = _load_full_base(recipe, dtype_name, trained.device)
    merged = PeftModel.from_pretrained(base, str(run_dir / "adapter")).merge_and_unload()
    for config in (merged.config, merged.generation_config):
        config.pad_token_id = trained.pad_id
    merged.config.use_cache = True
    merged.generation_config.eos_token_id = _stop_ids(trained.tokenizer, merged.generation_config)
    try:
        merged.save_pretrained(tmp)
        trained.tokenizer.save_pretrained(tmp)
    except OSError as error:
        from lorakit._fs import fs_error

        raise fs_error(error, "save the merged model", tmp) from None


def _refusal(result: MergeResult, spec: MergeSpec, out: Path) -> MergeRefused:
    parity = result.parity
    return MergeRefused(
        "merge refused, parity outside tolerance: "
        + "; ".join(result.failures())
        + f" ({parity.answer_tokens} answer tokens of {parity.examples} {result.probe_split} "
        f"examples, {result.trained_quant} base merged in {spec.dtype})",
        file=str(out),
        hint="nothing was written there; see docs/use-your-model.md#merge for the "
        "tolerances, or set them with --min-agreement/--max-loss-delta/--max-logit-diff",
    )


def _write_records(
    tmp: Path, run_dir: Path, recipe: Recipe, report: RunReport, result: MergeResult
) -> None:
    """``parity.json`` and the model card, in ``tmp``."""
    from lorakit._fs import write_json_atomic, write_text_atomic

    record = {
        **result.to_dict(),
        "run_dir": str(run_dir.resolve()),
        "base_model": recipe.model.name,
        "merged": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    write_json_atomic(tmp / "parity.json", record)
    write_text_atomic(tmp / "README.md", model_card(recipe, report, result))


def _reload(folder: Path, dtype_name: str, device: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype_name))
    return model.to(device).eval()


def _versions() -> dict[str, str]:
    from lorakit.recipe import versions

    return versions()


# --------------------------------------------------------------------------- model card


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def model_card(recipe: Recipe, report: RunReport, result: MergeResult) -> str:
    """The merged checkpoint's ``README.md``: base, data, eval loss, adapter, parity."""
    from lorakit import __version__

    adapter = recipe.adapter
    base = recipe.model.name
    hub_base = "/" in base and not Path(base).exists()
    data: Mapping[str, Any] = report.data
    split: Mapping[str, Any] = data.get("split", {})
    ev = report.eval
    parity, floor = result.parity, result.base_difference
    front = ["---", "library_name: transformers", "tags: [lorakit, lora, merged]"]
    if hub_base:
        front.append(f"base_model: {base}")
    front.append("---")
    counts = ", ".join(
        f"{name} {split[name]['rows']}"
        for name in ("train", "eval", "test")
        if isinstance(split.get(name), Mapping)
    )
    lines = [
        *front,
        "",
        f"# {recipe.name} (merged)",
        "",
        f"`{base}` with the LoRA adapter of the lorakit run `{recipe.name}` merged into it, "
        f"saved in {result.dtype}. Load it with `AutoModelForCausalLM.from_pretrained`; no "
        "PEFT or bitsandbytes is needed. Ask it with the tokenizer's chat template, as it "
        "was trained.",
        "",
        "## Training",
        "",
        f"- base: `{base}`, trained {recipe.model.quant.method.upper()}"
        + (" (4-bit)" if recipe.model.quant.method != "none" else " (unquantised)")
        + f", template `{recipe.data.template}`",
        f"- data: `{recipe.data.source}`, {data.get('rows_read', '-')} rows read, "
        f"{data.get('rows_kept', '-')} kept; split {counts or '-'}",
        f"- adapter: rank {adapter.rank}, alpha {adapter.alpha}, dropout {adapter.dropout}, "
        f"targets {', '.join(report.adapter.get('targets', [])) or ', '.join(adapter.targets)}"
        + (", rsLoRA" if adapter.rslora else "")
        + (", DoRA" if adapter.dora else ""),
        f"- {report.steps} optimizer steps; eval loss (answer tokens) {_num(ev.loss_before)} "
        f"before, {_num(ev.loss)} after training (perplexity {_num(ev.perplexity, 2)})"
        + (
            f"; test loss {_num(report.test.get('loss'))}"
            if isinstance(report.test, Mapping)
            else ""
        ),
        "",
        "## Parity with the model as trained",
        "",
        f"On {parity.examples} {result.probe_split} examples ({parity.answer_tokens} answer "
        "tokens), the merged checkpoint against the base as trained with the adapter:",
        "",
        "| measure | merged vs trained | bases alone |",
        "|---|---|---|",
        f"| argmax agreement | {parity.argmax_agreement:.4f} | {floor.argmax_agreement:.4f} |",
        f"| max abs logit difference | {parity.max_abs_logit_diff:.3g} "
        f"| {floor.max_abs_logit_diff:.3g} |",
        f"| answer loss delta | {parity.loss_delta:+.3g} | {floor.loss_delta:+.3g} |",
        "",
        f"Tolerance: agreement >= {result.tolerance.min_agreement:g}, |loss delta| <= "
        f"{result.tolerance.max_loss_delta:g}"
        + (
            f", max logit difference <= {result.tolerance.max_logit_diff:g}"
            if result.tolerance.max_logit_diff is not None
            else ""
        )
        + ". Details: `parity.json`.",
    ]
    if recipe.model.quant.method != "none":
        lines += [
            "",
            "The adapter was trained on the 4-bit base; it is merged into the original "
            "weights, so the merged model differs from the trained one by the base's "
            "quantisation error (the 'bases alone' column).",
        ]
    lines += ["", f"Merged with lorakit {__version__}."]
    return "\n".join(lines) + "\n"


def write_parity_summary(result: MergeResult) -> list[str]:
    """The lines ``lorakit merge`` prints (also what ``parity.json`` holds)."""
    p, f = result.parity, result.base_difference
    return [
        f"parity on {p.examples} {result.probe_split} examples ({p.answer_tokens} answer tokens), "
        f"{result.trained_quant} base merged in {result.dtype}:",
        f"  argmax agreement  {p.argmax_agreement:.4f}  (bases alone {f.argmax_agreement:.4f})",
        f"  max |logit diff|  {p.max_abs_logit_diff:.3g}  (bases alone {f.max_abs_logit_diff:.3g})",
        f"  answer loss       {p.loss_reference:.4f} trained, {p.loss_candidate:.4f} merged "
        f"(delta {p.loss_delta:+.3g}; bases alone {f.loss_delta:+.3g})",
    ]


def parity_json(path: str | Path) -> dict[str, Any]:
    """The ``parity.json`` of a merged checkpoint."""
    return dict(json.loads(Path(path).read_text(encoding="utf-8")))
