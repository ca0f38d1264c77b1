"""Greedy answer generation for free-text evaluation: batched, left-padded, stopped at end tokens.

::

    from lorakit.evaluate.generate import generate_answers
    from lorakit.evaluate.text import score_free_text, token_f1

    generations = generate_answers(model, tokenizer, rows, template, max_new_tokens=256)
    report = score_free_text(
        [g.text for g in generations],
        [row.answer for row in rows],
        {"token_f1": token_f1},
        truncated=[g.truncated for g in generations],
    )

Each prompt is exactly the prompt training conditions on: the template's messages rendered by the
tokenizer's chat template with the generation prompt (``<|assistant|>\\n`` for Phi-3), tokenised
as :func:`~lorakit.data.tokenize.tokenize_rows` tokenises it. Prompts are sorted by length and
generated in batches, padded on the left with an attention mask, so the last position of every
prompt is the last column of the batch. In float32 on a CPU the answers equal those of one-by-one
generation (tested); in bfloat16 or float16 on a GPU, batched kernels round differently, so at a
near-tie between two tokens a batched answer can take the other branch. Compare runs with the
same ``batch_size``.

:func:`score_generated` is the whole free-text evaluation in one call: it renders each row with
the template a :class:`~lorakit.evaluate.spec.BenchSpec` names (a training run passes its own
``data.template`` and options, so answers are prompted as the adapter was trained), generates,
and scores the answers with the spec's text metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.data.rows import QARow
    from lorakit.evaluate.spec import BenchSpec
    from lorakit.plugins import Registries
    from lorakit.protocols import Template

__all__ = [
    "Generation",
    "generate_answers",
    "prompt_token_ids",
    "resolve_template",
    "resolve_text_metrics",
    "score_generated",
]


@attrs.frozen
class Generation:
    """One generated answer.

    Attributes:
        text: the new tokens decoded without special tokens, up to (not including) the first
            stop token; surrounding whitespace is removed.
        truncated: generation hit ``max_new_tokens`` before any stop token, so the answer may
            be cut off (the ``"answer_truncated"`` error of
            :func:`~lorakit.evaluate.text.classify_free_text`).
        origin: the row's ``origin`` (``file:line``).
        new_tokens: how many tokens the answer has (the stop token not counted).
    """

    text: str
    truncated: bool
    origin: str = ""
    new_tokens: int = 0


def _model_stop_ids(model: Any) -> list[int]:
    config = getattr(model, "generation_config", None)
    value = getattr(config, "eos_token_id", None)
    values = value if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def prompt_token_ids(rows: Sequence[QARow], tokenizer: Any, template: Template) -> list[list[int]]:
    """The prompt ids of each row, with the generation prompt, as training tokenises them.

    Raises:
        ConfigError: the tokenizer has no chat template.
    """
    from lorakit.data.tokenize import generation_prompt_ids

    return generation_prompt_ids(
        tokenizer, [[dict(m) for m in template.prompt(row)] for row in rows]
    )


def generate_answers(
    model: Any,
    tokenizer: Any,
    rows: Sequence[QARow],
    template: Template,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Generate an answer to each row greedily, in batches, and say which hit the token limit.

    Decoding is greedy (no sampling, one beam), so the same model, rows and ``batch_size`` give
    the same answers (and, in float32, the same for any batch size). Generation of a row stops
    at its first stop token (:func:`~lorakit.data.tokenize.stop_token_ids` of the tokenizer
    plus the model's ``generation_config.eos_token_id``) or after ``max_new_tokens`` tokens.

    The model is put in eval mode for the call and its mode restored afterwards. On a CPU, a
    bitsandbytes 4-bit model is kept off its inference-only path
    (:func:`~lorakit.model.disable_cpu_inference_path`), as the model builder leaves it, so
    evaluating in the middle of training does not break later LoRA gradients.

    Args:
        model: a causal LM (``transformers``, optionally PEFT-wrapped).
        tokenizer: its tokenizer, with a chat template; it is not changed.
        rows: the rows to answer, free text or multiple choice.
        template: renders a row into prompt messages (``registries.templates.resolve("qa")()``).
        max_new_tokens: the most tokens an answer may have.
        batch_size: prompts generated together.
        progress: called with the number of rows done after each batch.

    Returns:
        One :class:`Generation` per row, in row order.

    Raises:
        ConfigError: a bad ``max_new_tokens`` or ``batch_size``; a prompt plus
            ``max_new_tokens`` longer than the model's context (names the row).
    """
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(
                f"{name} must be a whole number of at least 1, got {value!r}", field=name
            )
    if not rows:
        return []
    prompts = prompt_token_ids(rows, tokenizer, template)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int):
        for row, ids in zip(rows, prompts, strict=True):
            if len(ids) + max_new_tokens > context:
                raise ConfigError(
                    f"the prompt has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it "
                    f"exceeds the model's context of {context} tokens",
                    file=row.origin or None,
                    hint="lower max_new_tokens or shorten the prompt (context, options)",
                )
    return generate_from_ids(
        model,
        tokenizer,
        prompts,
        [row.origin for row in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )


def generate_from_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    origins: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Greedy, left-padded, batched generation from token ids: the loop behind every caller.

    Stops at the tokenizer's and the model's stop ids; keeps a 4-bit model off its CPU
    inference-only path; restores the model's train/eval mode. One :class:`Generation` per
    prompt, in prompt order.
    """
    import torch

    from lorakit.data.tokenize import stop_token_ids
    from lorakit.model import disable_cpu_inference_path

    stops = sorted(stop_token_ids(tokenizer, extra=_model_stop_ids(model)))
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad) if pad is not None else stops[0]
    device = next(model.parameters()).device

    disable_cpu_inference_path(model)  # never let an eval forward switch 4-bit layers for good
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    stop_set = set(stops)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(prompts[i]) for i in chunk)
                input_ids = torch.tensor(
                    [[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk],
                    device=device,
                )
                attention_mask = torch.tensor(
                    [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk],
                    device=device,
                )
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stops,
                    pad_token_id=pad_id,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
                for row_index, new in zip(chunk, output[:, width:].tolist(), strict=True):
                    results[row_index] = _finish(
                        new, stop_set, tokenizer, origins[row_index], max_new_tokens
                    )
                if progress is not None:
                    progress(len(chunk))
    finally:
        if was_training:
            model.train()
    return [g for g in results if g is not None]


def _finish(
    new: list[int], stops: set[int], tokenizer: Any, origin: str, max_new_tokens: int
) -> Generation:
    """Cut the new tokens at the first stop token and decode them."""
    end = next((i for i, token in enumerate(new) if token in stops), None)
    answer = new if end is None else new[:end]
    text = tokenizer.decode(answer, skip_special_tokens=True)
    return Generation(
        text=text.strip(),
        truncated=end is None and len(new) >= max_new_tokens,
        origin=origin,
        new_tokens=len(answer),
    )


# --------------------------------------------------------------------------- scored answers


def resolve_template(spec: BenchSpec, registries: Registries | None = None) -> Template:
    """The prompt template ``spec`` names, built with its options (free-text rows are rendered
    with it, for perplexity and for generated answers).

    Raises:
        ConfigError: an unknown template, or options it does not take.
    """
    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    factory = registries.templates.resolve(spec.template)
    try:
        template: Template = factory(**spec.template_options)
    except TypeError as exc:
        raise ConfigError(
            f"bad options for template {spec.template!r}: {exc}", field="template_options"
        ) from exc
    return template


def resolve_text_metrics(names: Sequence[str], registries: Registries) -> dict[str, Any]:
    """The registered text metrics of these names, by name.

    Raises:
        ConfigError: no name, an unknown name, or a model metric (``perplexity`` and
            ``mcq_accuracy`` score a model, not a generated text).
    """
    text_names = [
        n
        for n in registries.metrics.names()
        if not hasattr(registries.metrics.resolve(n), "evaluate")
    ]
    if not names:
        raise ConfigError(
            "no text metric to score generated answers with",
            field="text_metrics",
            hint=f"text metrics: {', '.join(text_names)}",
        )
    metrics = {}
    for name in names:
        metric = registries.metrics.resolve(name)
        if hasattr(metric, "evaluate"):
            raise ConfigError(
                f"{name!r} scores a model, not a generated text",
                field="metric",
                hint=f"text metrics: {', '.join(text_names)}",
            )
        metrics[name] = metric
    return metrics


def score_generated(
    model: Any,
    tokenizer: Any,
    rows: Sequence[QARow],
    spec: BenchSpec,
    *,
    registries: Registries | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generate an answer to every row and score it against the row's reference answer.

    Prompts are rendered with ``spec.template`` and its options (a training run's own
    template), decoded greedily up to ``spec.max_new_tokens``, ``spec.batch_size`` at a time,
    and scored with each of ``spec.text_metrics``: mean, 95 % interval, error counts (see
    :func:`~lorakit.evaluate.text.score_free_text`). ``spec.limit`` is not applied here.

    Raises:
        ConfigError: no text metric, a name that is not a registered text metric
            (``perplexity`` and ``mcq_accuracy`` score a model, not a text), or a bad template.
    """
    from lorakit.evaluate.text import score_free_text

    if registries is None:
        from lorakit.plugins import Registries as _Registries

        registries = _Registries.from_plugin_manager()
    metrics = resolve_text_metrics(spec.text_metrics, registries)
    generations = generate_answers(
        model,
        tokenizer,
        rows,
        resolve_template(spec, registries),
        max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size,
        progress=progress,
    )
    return score_free_text(
        [g.text for g in generations],
        [row.answer for row in rows],
        metrics,
        truncated=[g.truncated for g in generations],
    )
