"""``BenchSpec``: how benchmarks are scored, the one carrier of evaluation options.

``lorakit eval`` builds one from its options, a training run from its recipe
(:meth:`BenchSpec.from_recipe`), and the library functions take it as it is::

    from lorakit.evaluate.benchmarks import run_benchmark
    from lorakit.evaluate.spec import BenchSpec

    spec = BenchSpec(limit=50, shots=2, batch_size=16)
    result = run_benchmark(model, tokenizer, "medqa:data/medqa.jsonl", spec=spec)

Fields left ``None`` take the benchmark's own default (:meth:`BenchSpec.for_benchmark`). This
module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from lorakit.evaluate.benchmarks import Benchmark
    from lorakit.recipe import Recipe

__all__ = ["BenchSpec", "ChoiceStyle", "Mode"]

ChoiceStyle = Literal["letters", "texts"]
Mode = Literal["loglikelihood", "generate"]


def _whole(minimum: int) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(
                f"{attribute.name} must be a whole number of at least {minimum}, got {value!r}",
                field=attribute.name,
            )

    return check


def _optional(
    check: Callable[[object, attrs.Attribute[Any], object], None],
) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def optional(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(instance, attribute, value)

    return optional


def _style(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("letters", "texts"):
        raise ConfigError(
            f"{attribute.name} must be 'letters' or 'texts', got {value!r}",
            field=attribute.name,
            hint="letters scores ' A', ' B' ...; texts scores each option's text",
        )


def _mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in ("loglikelihood", "generate"):
        raise ConfigError(
            f"mode must be 'loglikelihood' or 'generate', got {value!r}", field="mode"
        )


def _flag(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(
            f"{attribute.name} must be true or false, got {value!r}", field=attribute.name
        )


def _text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{attribute.name} must be text, got {value!r}", field=attribute.name)


def _names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"text_metrics must be metric names, got {value!r}", field="text_metrics")
    return tuple(value)


def _options(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"template_options must be a mapping, got {value!r}", field="template_options"
        )
    return dict(value)


@attrs.frozen(kw_only=True)
class BenchSpec:
    """How benchmarks are scored: one frozen value, for every benchmark of a call.

    Attributes:
        limit: score the first ``limit`` items of each benchmark (``None``: all).
        shots: exemplars per item (``None``: the benchmark's default, 0 for the built-ins).
        choices: ``"letters"`` scores ``" A"``, ``" B"`` ...; ``"texts"`` scores each option's
            text (``None``: the benchmark's default).
        mode: ``"loglikelihood"`` ranks the options; ``"generate"`` decodes a reply and reads
            the option it names.
        chat_template: render multiple-choice prompts as a user turn of the tokenizer's chat
            template, with the generation prompt.
        batch_size: sequences per forward pass (and prompts per generation batch).
        max_length: the model's context length for multiple-choice scoring (``None``: from
            the model's config).
        reply_tokens: tokens generated per multiple-choice item in ``generate`` mode.
        description: text before a multiple-choice prompt's exemplars, ``{category}`` filled
            in (``None``: the benchmark's, MMLU's subject line for ``mmlu_medical``).
        fewshot_by_category: exemplars of the item's own category only (``None``: the
            benchmark's default).
        max_len: tokens per example for answer-only perplexity (``heldout``).
        text_metrics: for free-text benchmarks (``heldout``): also generate an answer to each
            row and score it with these registered text metrics (``token_f1``, ``rouge_l`` ...).
        max_new_tokens: the longest generated free-text answer.
        template: the registered prompt template that renders free-text rows, for perplexity
            and for generated answers (a training run passes its own ``data.template``).
        template_options: keyword options of ``template`` (``{"system": "..."}``).
    """

    limit: int | None = attrs.field(default=None, validator=_optional(_whole(1)))
    shots: int | None = attrs.field(default=None, validator=_optional(_whole(0)))
    choices: ChoiceStyle | None = attrs.field(default=None, validator=_optional(_style))
    mode: Mode = attrs.field(default="loglikelihood", validator=_mode)
    chat_template: bool = attrs.field(default=False, validator=_flag)
    batch_size: int = attrs.field(default=8, validator=_whole(1))
    max_length: int | None = attrs.field(default=None, validator=_optional(_whole(1)))
    reply_tokens: int = attrs.field(default=8, validator=_whole(1))
    description: str | None = attrs.field(default=None, validator=_optional(_text))
    fewshot_by_category: bool | None = attrs.field(default=None, validator=_optional(_flag))
    max_len: int = attrs.field(default=1024, validator=_whole(1))
    text_metrics: tuple[str, ...] = attrs.field(default=(), converter=_names)
    max_new_tokens: int = attrs.field(default=256, validator=_whole(1))
    template: str = attrs.field(default="qa", validator=_text)
    template_options: Mapping[str, Any] = attrs.field(factory=dict, converter=_options)

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> BenchSpec:
        """The spec a training run scores with: ``recipe.evaluation`` (limit, shots, chat
        template, text metrics, answer length), ``training.eval_batch_size``,
        ``data.tokenize.max_len`` and the run's own template and its options."""
        evaluation = recipe.evaluation
        return cls(
            limit=evaluation.limit,
            shots=evaluation.shots,
            chat_template=evaluation.chat_template,
            batch_size=recipe.training.eval_batch_size,
            max_len=recipe.data.tokenize.max_len,
            text_metrics=evaluation.metrics,
            max_new_tokens=evaluation.max_new_tokens,
            template=recipe.data.template,
            template_options=recipe.data.template_options,
        )

    def with_defaults(
        self,
        *,
        choices: ChoiceStyle = "letters",
        shots: int = 0,
        description: str = "",
        fewshot_by_category: bool = False,
    ) -> BenchSpec:
        """A copy whose ``None`` fields (choices, shots, description, fewshot_by_category)
        take these values; the defaults are those of plain multiple-choice rows."""
        return attrs.evolve(
            self,
            choices=self.choices if self.choices is not None else choices,
            shots=self.shots if self.shots is not None else shots,
            description=self.description if self.description is not None else description,
            fewshot_by_category=(
                self.fewshot_by_category
                if self.fewshot_by_category is not None
                else fewshot_by_category
            ),
        )

    def for_benchmark(self, bench: Benchmark) -> BenchSpec:
        """A copy with the benchmark's defaults where this spec says ``None``."""
        return self.with_defaults(
            choices=bench.choices,
            shots=bench.shots,
            description=bench.description,
            fewshot_by_category=bench.fewshot_by_category,
        )
