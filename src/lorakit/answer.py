"""The answer path every front end shares: retrieve -> input guards -> generate -> output guards.

``lorakit ask``, ``lorakit chat``, ``lorakit generate``, ``lorakit serve`` and Python all answer
through an :class:`Answerer`, so retrieval and the safety guards cannot be skipped by one door
and not another::

    from lorakit.answer import Answerer

    answerer = Answerer.from_run_dir("runs/medqa_phi3-20260101-120000")
    answer = answerer.answer("What causes anaemia?")
    print(answer.text, answer.abstained)

A question is answered in three steps, each public so that a batching front end can run the
middle one for many questions at once:

1. :meth:`Answerer.prepare` retrieves passages (with an index), runs the input guards (with a
   policy) and renders the prompt with the run's own template and the tokenizer's chat
   template, dropping the oldest turns of the history that do not fit the context window. It
   returns a :class:`Prepared`: prompt ids to generate from, or an answer already decided (a
   blocked question, no passage good enough to answer from).
2. :func:`decode` generates from many prompts at once (left-padded, one KV cache, greedy or
   sampled per row, stopped at the model's own stop tokens), calling back with every new token.
3. :meth:`Answerer.finish` resolves citations against the passages and runs the output guards.

Retrieval (:mod:`lorakit.retrieval`) and safety (:mod:`lorakit.safety`) are imported only when
an index or a policy is used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from lorakit.answer_inputs import load_guards, load_index, read_questions
from lorakit.decoding import Decoded, SamplingSpec, decode, last_decode_info
from lorakit.errors import ConfigError
from lorakit.run_source import RunSource, load_model_and_adapters, quant_spec

if TYPE_CHECKING:
    from lorakit.protocols import Hit, Template, Verdict

__all__ = [
    "ABSTAIN_NO_PASSAGES",
    "Answer",
    "Answerer",
    "Decoded",
    "Prepared",
    "RunSource",
    "SamplingSpec",
    "decode",
    "last_decode_info",
    "load_guards",
    "load_index",
    "load_model_and_adapters",
    "read_questions",
]

ABSTAIN_NO_PASSAGES = (
    "I cannot answer this from the documents I have. Please ask a clinician or consult a "
    "trusted medical source."
)
"""What the answer path says when retrieval finds no passage good enough to answer from."""


@attrs.frozen(kw_only=True)
class Answer:
    """What the answer path returns for one question.

    Attributes:
        text: what the user is shown: the model's answer with its citations resolved, a
            guard's replacement or refusal, or the abstention message; a guard's ``flag``
            notice is appended after a blank line.
        question: the question as asked.
        model_text: the model's own words (``""`` when nothing was generated).
        passages: the retrieved passages, best first (empty without an index).
        citations: the citations the retrieval module resolved in the answer.
        unresolved_citations: citation markers that name no retrieved passage.
        verdicts: every guard's verdict, input guards first.
        abstained: the answer path refused or declined to answer (``reason`` says why).
        reason: ``""``, ``"no_passages"``, ``"input_blocked"`` or ``"output_blocked"``.
        new_tokens: tokens generated (the stop token not counted).
        truncated: generation stopped at ``max_new_tokens``, not at a stop token.
        dropped_turns: earlier turns of the history left out to fit the context window.
    """

    text: str
    question: str
    model_text: str = ""
    passages: tuple[Hit, ...] = ()
    citations: tuple[Any, ...] = ()
    unresolved_citations: int = 0
    verdicts: tuple[Verdict, ...] = ()
    abstained: bool = False
    reason: str = ""
    new_tokens: int = 0
    truncated: bool = False
    dropped_turns: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The answer as JSON-able data (``lorakit ask --json``)."""
        return {
            "question": self.question,
            "answer": self.text,
            "model_text": self.model_text,
            "abstained": self.abstained,
            "reason": self.reason,
            "citations": [_jsonable(c) for c in self.citations],
            "unresolved_citations": self.unresolved_citations,
            "retrieval": [
                {
                    "passage_id": h.passage.passage_id,
                    "doc_id": h.passage.doc_id,
                    "title": h.passage.title,
                    "url": h.passage.url,
                    "score": h.score,
                    "scores": dict(h.scores),
                }
                for h in self.passages
            ],
            "verdicts": [attrs.asdict(v) for v in self.verdicts],
            "new_tokens": self.new_tokens,
            "truncated": self.truncated,
            "dropped_turns": self.dropped_turns,
        }


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@attrs.frozen(kw_only=True)
class Prepared:
    """A question made ready for generation (``prompt_ids``), or already answered (``answer``).

    ``user_text`` is the final user message (the question with its passages); ``hits`` the
    retrieved passages; ``verdicts`` the input guards' verdicts.
    """

    question: str
    prompt_ids: list[int] = attrs.field(factory=list)
    answer: Answer | None = None
    hits: tuple[Hit, ...] = ()
    verdicts: tuple[Verdict, ...] = ()
    dropped_turns: int = 0
    raw: bool = False


def resolve_template(name: str, options: Mapping[str, Any], registries: Any) -> Template:
    factory = registries.templates.resolve(name)
    try:
        template: Template = factory(**options)
    except TypeError as exc:
        raise ConfigError(
            f"bad options for template {name!r}: {exc}", field="data.template_options"
        ) from None
    return template


# --------------------------------------------------------------------------- the answerer


class Answerer:
    """Answers questions with one model (and adapter), the run's template, and optionally an
    index and a safety policy. Thread-safe: generation holds :attr:`lock`.

    Build one with :meth:`from_run_dir` or :meth:`from_model`; use :meth:`answer` (one
    question), :meth:`stream` (pieces of text as they are generated) or :meth:`answer_many`
    (batched, for ``lorakit generate``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: Template,
        *,
        name: str = "model",
        adapter: str | None = None,
        index: Any = None,
        guards: Any = None,
        sampling: SamplingSpec | None = None,
        top_k: int = 4,
        lock: threading.Lock | None = None,
        description: Mapping[str, Any] | None = None,
        adapter_name: str | None = None,
    ) -> None:
        self.model = model
        self.adapter_name = adapter_name
        self.tokenizer = tokenizer
        self.template = template
        self.name = name
        self.adapter = adapter
        self.index = index
        self.guards = guards
        self.sampling = sampling or SamplingSpec()
        self.top_k = top_k
        self.lock = lock or threading.Lock()
        self.description: dict[str, Any] = dict(description or {})
        self.notes: list[str] = []
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.context_window: int = int(context) if isinstance(context, int) else 4096

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_run_dir(
        cls,
        run_dir: str | Path,
        *,
        index: str | Path | None = None,
        policy: str | None = None,
        quant: str | None = None,
        sampling: SamplingSpec | None = None,
        plugin_manager: Any = None,
    ) -> Answerer:
        """The run's base model with its adapter, asked with the run's own template.

        The base loads quantised as the run trained it (``quant`` overrides: ``nf4``,
        ``fp4`` or ``none``).

        Raises:
            ConfigError: not a finished run directory; an unknown template; a bad index or
                policy.
        """
        source = RunSource.from_run_dir(run_dir)
        return cls._build(
            source.model,
            {source.name: source.adapter},
            template=source.template,
            template_options=source.template_options,
            quant=quant or source.quant,
            index=index,
            policy=policy,
            sampling=sampling,
            plugin_manager=plugin_manager,
            name=source.name,
            description={"run_dir": str(run_dir)},
        )

    @classmethod
    def from_model(
        cls,
        model: str,
        adapter: str | Path | None = None,
        *,
        template: str = "qa",
        template_options: Mapping[str, Any] | None = None,
        quant: str = "nf4",
        index: str | Path | None = None,
        policy: str | None = None,
        sampling: SamplingSpec | None = None,
        plugin_manager: Any = None,
    ) -> Answerer:
        """A base model (a hub id, a folder, ``tiny-phi3``), optionally with an adapter folder.

        Raises:
            ConfigError: an adapter trained on another base; an unknown template; a bad index
                or policy.
        """
        adapters = {} if adapter is None else {Path(adapter).name or "adapter": Path(adapter)}
        return cls._build(
            model,
            adapters,
            template=template,
            template_options=template_options or {},
            quant=quant,
            index=index,
            policy=policy,
            sampling=sampling,
            plugin_manager=plugin_manager,
            name=Path(adapter).name if adapter is not None else model,
            description={},
        )

    @classmethod
    def _build(
        cls,
        model_name: str,
        adapters: Mapping[str, Path],
        *,
        template: str,
        template_options: Mapping[str, Any],
        quant: str,
        index: str | Path | None,
        policy: str | None,
        sampling: SamplingSpec | None,
        plugin_manager: Any,
        name: str,
        description: Mapping[str, Any],
    ) -> Answerer:
        from lorakit.plugins import Registries, make_plugin_manager

        pm = plugin_manager if plugin_manager is not None else make_plugin_manager()
        registries = Registries.from_plugin_manager(pm)
        tmpl = resolve_template(template, template_options, registries)
        # Index and policy are checked before the model loads: a bad path fails in a second.
        loaded_index = load_index(index) if index is not None else None
        guards = load_guards(policy, registries) if policy is not None else None
        model, tokenizer, notes = load_model_and_adapters(
            model_name, adapters, quant=quant_spec(quant), plugin_manager=pm
        )
        adapter = str(next(iter(adapters.values()))) if adapters else None
        answerer = cls(
            model,
            tokenizer,
            tmpl,
            name=name,
            adapter=adapter,
            index=loaded_index,
            guards=guards,
            sampling=sampling,
            description={
                **description,
                "model": model_name,
                "adapter": adapter,
                "quant": quant,
                "template": template,
                "template_options": dict(template_options),
                "index": None if index is None else str(index),
                "policy": policy,
            },
        )
        answerer.notes.extend(notes)
        answerer.adapter_name = next(iter(adapters), None)
        return answerer

    # ---------------------------------------------------------------- the three steps

    def _messages(
        self, user_text: str, history: Sequence[Mapping[str, str]], system: str | None
    ) -> list[dict[str, str]]:
        from lorakit.data.rows import QARow

        rendered = [dict(m) for m in self.template.prompt(QARow(question=user_text, answer=""))]
        head = [m for m in rendered if m.get("role") == "system"]
        if system is not None:
            head = [{"role": "system", "content": system}] if system else []
        user = [m for m in rendered if m.get("role") != "system"]
        return [*head, *[{"role": m["role"], "content": m["content"]} for m in history], *user]

    def prompt_ids(
        self,
        user_text: str,
        history: Sequence[Mapping[str, str]] = (),
        *,
        max_new_tokens: int | None = None,
        system: str | None = None,
    ) -> tuple[list[int], int]:
        """The prompt's token ids and how many earlier turns were dropped to fit the context.

        Turns are dropped oldest first, a user message with the answer that followed it, until
        the prompt plus ``max_new_tokens`` fits the model's context window.

        Raises:
            ConfigError: the question alone does not fit.
        """
        from lorakit.data.tokenize import generation_prompt_ids

        budget = self.context_window - (max_new_tokens or self.sampling.max_new_tokens)
        turns = [dict(m) for m in history]
        for m in turns:
            if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
                raise ConfigError(
                    "a history message must have role 'user' or 'assistant' and a text content",
                    field="history",
                )
        dropped = 0
        while True:
            ids = generation_prompt_ids(self.tokenizer, [self._messages(user_text, turns, system)])[
                0
            ]
            if len(ids) <= budget:
                return ids, dropped
            if not turns:
                raise ConfigError(
                    f"the question has {len(ids)} tokens; with max_new_tokens="
                    f"{max_new_tokens or self.sampling.max_new_tokens} it exceeds the model's "
                    f"context of {self.context_window} tokens",
                    field="question",
                    hint="shorten the question or lower max_new_tokens",
                )
            # Drop the oldest turn: a user message and the assistant's reply after it.
            cut = 1
            while cut < len(turns) and turns[cut].get("role") != "user":
                cut += 1
            dropped += cut
            turns = turns[cut:]

    def prepare(
        self,
        question: str,
        history: Sequence[Mapping[str, str]] = (),
        *,
        max_new_tokens: int | None = None,
        system: str | None = None,
        raw: bool = False,
    ) -> Prepared:
        """Retrieve, run the input guards and render the prompt (step 1 of the answer path).

        ``raw``: ``question`` is a finished prompt (``/v1/completions``): it is tokenised as
        it is, without the chat template, history or retrieval; the guards still run.
        """
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty", field="question")
        verdicts: list[Verdict] = []
        text = question
        if self.guards is not None:
            verdicts = list(self.guards.check_input(question))
            decision = self.guards.decide(verdicts)
            if decision.decision == "block":
                return Prepared(
                    question=question,
                    verdicts=tuple(verdicts),
                    answer=Answer(
                        text=decision.message or "I cannot help with this request.",
                        question=question,
                        verdicts=tuple(verdicts),
                        abstained=True,
                        reason="input_blocked",
                    ),
                )
            if decision.decision == "rewrite" and decision.text is not None:
                text = decision.text
        if raw:
            ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            limit = max_new_tokens or self.sampling.max_new_tokens
            if len(ids) + limit > self.context_window:
                raise ConfigError(
                    f"the prompt has {len(ids)} tokens; with max_tokens={limit} it exceeds the "
                    f"model's context of {self.context_window} tokens",
                    field="prompt",
                )
            return Prepared(question=question, prompt_ids=ids, verdicts=tuple(verdicts), raw=True)
        hits: tuple[Hit, ...] = ()
        user_text = text
        if self.index is not None:
            from lorakit.retrieval.grounding import build_prompt, covers

            hits = tuple(self.index.search(text, self.top_k))
            if not covers(hits, self.index.threshold):
                return Prepared(
                    question=question,
                    hits=hits,
                    verdicts=tuple(verdicts),
                    answer=Answer(
                        text=ABSTAIN_NO_PASSAGES,
                        question=question,
                        passages=hits,
                        verdicts=tuple(verdicts),
                        abstained=True,
                        reason="no_passages",
                    ),
                )
            user_text = build_prompt(text, hits)
        ids, dropped = self.prompt_ids(
            user_text, history, max_new_tokens=max_new_tokens, system=system
        )
        return Prepared(
            question=question,
            prompt_ids=ids,
            hits=hits,
            verdicts=tuple(verdicts),
            dropped_turns=dropped,
        )

    def finish(self, prepared: Prepared, decoded: Decoded) -> Answer:
        """Resolve citations and run the output guards (step 3 of the answer path)."""
        if prepared.answer is not None:
            return prepared.answer
        text = decoded.text
        citations: tuple[Any, ...] = ()
        unresolved = 0
        if prepared.hits:
            from lorakit.retrieval.grounding import resolve_citations

            text, found, unresolved = resolve_citations(text, list(prepared.hits))
            citations = tuple(found)
        verdicts = list(prepared.verdicts)
        abstained, reason = False, ""
        if self.guards is not None:
            out = list(self.guards.check_output(prepared.question, text))
            verdicts += out
            decision = self.guards.decide(out)
            if decision.decision == "block":
                text = decision.message or "I cannot give this answer."
                abstained, reason = True, "output_blocked"
            elif decision.decision == "rewrite" and decision.text is not None:
                text = decision.text
            flagged = [v for v in (*prepared.verdicts, *out) if v.decision == "flag" and v.message]
            if flagged and not abstained:
                # Urgent-care notices come first, emergencies before the rest.
                text = "\n\n".join([self.guards.decide(flagged).message, text])
        return Answer(
            text=text,
            question=prepared.question,
            model_text=decoded.text,
            passages=prepared.hits,
            citations=citations,
            unresolved_citations=unresolved,
            verdicts=tuple(verdicts),
            abstained=abstained,
            reason=reason,
            new_tokens=len(decoded.token_ids),
            truncated=decoded.truncated,
            dropped_turns=prepared.dropped_turns,
        )

    @property
    def streams_tokens(self) -> bool:
        """Whether :meth:`stream` can show tokens as they come: not when output guards or
        citations must see the whole answer before the user does."""
        return self.guards is None and self.index is None

    # ---------------------------------------------------------------- front-end calls

    def generate(
        self,
        prepared: Sequence[Prepared],
        sampling: SamplingSpec | Sequence[SamplingSpec] | None = None,
        *,
        on_token: Callable[[int, int], None] | None = None,
        should_stop: Callable[[int], bool] | None = None,
        adapter: str | None = None,
    ) -> list[Answer]:
        """Generate for prepared questions together (step 2), then finish each (step 3).

        ``adapter`` picks one of the model's adapters by name (``""``: the base model alone).
        """
        settings = sampling or self.sampling
        per_row = (
            [settings] * len(prepared) if isinstance(settings, SamplingSpec) else list(settings)
        )
        todo = [i for i, p in enumerate(prepared) if p.answer is None]
        decoded: dict[int, Decoded] = {}
        if todo:
            with self.lock, self._adapter(adapter if adapter is not None else self.adapter_name):
                results = decode(
                    self.model,
                    self.tokenizer,
                    [prepared[i].prompt_ids for i in todo],
                    [per_row[i] for i in todo],
                    on_token=None if on_token is None else lambda r, t: on_token(todo[r], t),
                    should_stop=None if should_stop is None else lambda r: should_stop(todo[r]),
                )
            decoded = dict(zip(todo, results, strict=True))
        empty = Decoded(token_ids=[], text="", truncated=False)
        return [self.finish(p, decoded.get(i, empty)) for i, p in enumerate(prepared)]

    def _adapter(self, name: str | None) -> Any:
        import contextlib

        if name is None or not hasattr(self.model, "peft_config"):
            return contextlib.nullcontext()
        if name == "":
            return self.model.disable_adapter()
        if name not in self.model.peft_config:
            raise ConfigError(
                f"no adapter {name!r}",
                field="model",
                hint=f"adapters: {', '.join(self.model.peft_config)}",
            )
        self.model.set_adapter(name)
        return contextlib.nullcontext()

    def answer(
        self,
        question: str,
        history: Sequence[Mapping[str, str]] = (),
        *,
        sampling: SamplingSpec | None = None,
    ) -> Answer:
        """Answer one question (with earlier turns of a conversation)."""
        settings = sampling or self.sampling
        prepared = self.prepare(question, history, max_new_tokens=settings.max_new_tokens)
        return self.generate([prepared], settings)[0]

    def stream(
        self,
        question: str,
        history: Sequence[Mapping[str, str]] = (),
        *,
        sampling: SamplingSpec | None = None,
    ) -> Iterator[str | Answer]:
        """Yield the answer's text in pieces as it is generated, then the :class:`Answer`.

        With output guards or an index (:attr:`streams_tokens` false), the whole answer is
        checked first and yielded as one piece: nothing unchecked reaches the user.
        """
        settings = sampling or self.sampling
        prepared = self.prepare(question, history, max_new_tokens=settings.max_new_tokens)
        if prepared.answer is not None or not self.streams_tokens:
            final = self.generate([prepared], settings)[0]
            yield final.text
            yield final
            return
        import queue

        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                ids: list[int] = []
                shown = ""

                def on_token(_row: int, token: int) -> None:
                    nonlocal shown
                    ids.append(token)
                    text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
                    # Hold back an incomplete UTF-8 character (a byte-fallback token).
                    if text.endswith("\ufffd"):
                        return
                    if text.startswith(shown) and len(text) > len(shown):
                        pieces.put(("text", text[len(shown) :]))
                        shown = text

                final = self.generate([prepared], settings, on_token=on_token)[0]
                pieces.put(("done", final))
            except BaseException as exc:  # re-raised in the caller's thread
                pieces.put(("error", exc))

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        sent = ""
        while True:
            kind, value = pieces.get()
            if kind == "text":
                sent += value
                yield value
            elif kind == "error":
                raise value
            else:
                if value.text.startswith(sent) and len(value.text) > len(sent):
                    yield value.text[len(sent) :]
                yield value
                break
        thread.join()

    def describe(self) -> dict[str, Any]:
        """What answers: model, adapter, template, index, policy (recorded with outputs)."""
        return dict(self.description)
