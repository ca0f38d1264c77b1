"""Batched decoding shared by every answer front end: left-padded prompts, one KV cache,
greedy or sampled per row, stopped at each row's own stop tokens.

On a GPU, :func:`decode` takes a fast path (a static KV cache in shape buckets, the step
captured as a CUDA graph, read back in chunks) that gives the same tokens as the dynamic path;
``LORAKIT_FAST_DECODE=0|1`` or ``decode(..., fast=...)`` chooses, and :func:`last_decode_info`
says how the latest call ran. ``LORAKIT_COMPILE_DECODE=1`` also compiles the decoder layers
(``torch.compile``, once per shape bucket) before the step is captured: fused kernels, faster
steps, a longer first call per bucket.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs

from lorakit.errors import ConfigError

__all__ = ["Decoded", "SamplingSpec", "decode", "last_decode_info"]


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(
            f"must be a whole number of at least 1, got {value!r}", field=attribute.name
        )


def _unit(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
        raise ConfigError(f"must be above 0 and at most 1, got {value!r}", field=attribute.name)


def _temperature(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 5:
        raise ConfigError(f"must be between 0 and 5, got {value!r}", field=attribute.name)


@attrs.frozen(kw_only=True)
class SamplingSpec:
    """How new tokens are chosen.

    Attributes:
        max_new_tokens: the most tokens an answer may have.
        temperature: ``0`` decodes greedily (the same answer every time); above ``0`` samples.
        top_p: sample from the smallest set of tokens whose probability reaches ``top_p``.
        seed: the seed of sampling (``None``: not seeded).
    """

    max_new_tokens: int = attrs.field(default=256, validator=_positive_int)
    temperature: float = attrs.field(default=0.0, validator=_temperature)
    top_p: float = attrs.field(default=1.0, validator=_unit)
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (recorded beside generated answers)."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class Decoded:
    """One prompt's generated tokens, cut at the first stop token."""

    token_ids: list[int]
    text: str
    truncated: bool


# --------------------------------------------------------------------------- decoding


def _sample(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    import torch

    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, index = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=generator).squeeze(-1)
        return index.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cache_argument(model: Any) -> str:
    """``cache`` (transformers 5.2x) or ``past_key_values`` (earlier): the forward's name."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _forward_parameters(model: Any) -> frozenset[str]:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return frozenset(inspect.signature(type(base).forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class _Rows:
    """The host side of decoding, shared by both paths: stop tokens, limits, callbacks."""

    def __init__(
        self,
        limits: list[int],
        stops: set[int] | frozenset[int],
        on_token: Callable[[int, int], None] | None,
        should_stop: Callable[[int], bool] | None,
    ) -> None:
        self.limits = limits
        self.stops = stops
        self.on_token = on_token
        self.should_stop = should_stop
        self.new: list[list[int]] = [[] for _ in limits]
        self.done = [False] * len(limits)
        self.stopped = [False] * len(limits)

    def accept(self, row: int, token: int) -> None:
        """Take the token chosen for ``row`` at the next step (ignored once the row is done)."""
        if self.done[row]:
            return
        if token in self.stops:
            self.done[row] = self.stopped[row] = True
            return
        self.new[row].append(token)
        if self.on_token is not None:
            self.on_token(row, token)
        if len(self.new[row]) >= self.limits[row] or (
            self.should_stop is not None and self.should_stop(row)
        ):
            self.done[row] = True

    def finished(self) -> bool:
        return all(self.done)


def _choose(logits: Any, per_row: Sequence[SamplingSpec], generators: Sequence[Any]) -> Any:
    """Each row's next token as a tensor on the logits' device (no host synchronisation)."""
    chosen = logits.argmax(dim=-1)
    for i, spec in enumerate(per_row):
        if spec.temperature > 0:
            chosen[i : i + 1] = _sample(
                logits[i : i + 1], spec.temperature, spec.top_p, generators[i]
            )
    return chosen


# The fast path: a pre-allocated KV cache, shapes bucketed, the one-token step replayed as a
# CUDA graph, tokens read back to the host every _FAST_CHUNK steps.
_FAST_CHUNK = 8
"""Steps between two reads of the chosen tokens by the host (stops, callbacks, cancel)."""
_LENGTH_BUCKET = 128
"""The cache length is rounded up to a multiple of this (one graph serves many lengths)."""
_MAX_RUNNERS = 4
"""Captured (batch, length) buckets kept per model, least recently used dropped first."""
_FAST_ATTENTION = ("sdpa", "eager")
_runners: Any = None  # weakref.WeakKeyDictionary[model, OrderedDict[key, _StaticRunner]]
_runners_lock = threading.Lock()
_last_decode: dict[str, Any] = {}


def last_decode_info() -> dict[str, Any]:
    """How the latest :func:`decode` call ran: ``path`` is ``"graph"`` (static cache, CUDA
    graph), ``"static"`` (static cache, eager steps) or ``"dynamic"``; with ``reason`` when
    the fast path was not taken, and the buckets used when it was."""
    return dict(_last_decode)


class _StaticKV:
    """A KV cache of fixed length, written at the slots in ``index`` (duck-types the
    ``update`` of transformers' caches, old and new signatures alike)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.keys: dict[int, Any] = {}
        self.values: dict[int, Any] = {}
        self.index: Any = None
        self.seen = 0
        self.is_compileable = False

    def update(
        self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        if layer_idx not in self.keys:
            self.keys[layer_idx] = key_states.new_zeros(
                (*key_states.shape[:2], self.length, key_states.shape[-1])
            )
            self.values[layer_idx] = value_states.new_zeros(
                (*value_states.shape[:2], self.length, value_states.shape[-1])
            )
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys.index_copy_(2, self.index, key_states)
        values.index_copy_(2, self.index, value_states)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.length

    def __len__(self) -> int:
        return len(self.keys)


class _StaticRunner:
    """One (batch, length) bucket: its cache, its fixed input buffers and, on CUDA, the
    captured one-token step. Holds no reference to the model (the cache of runners is keyed
    weakly by it)."""

    def __init__(
        self,
        batch: int,
        length: int,
        device: Any,
        dtype: Any,
        names: frozenset[str],
        graph: bool,
        compile: bool = False,
    ) -> None:
        import torch

        self.batch, self.length, self.device = batch, length, device
        self.names = names
        self.cache = _StaticKV(length)
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.index = torch.zeros((1,), dtype=torch.long, device=device)
        self.mask = torch.zeros((batch, 1, 1, length), dtype=dtype, device=device)
        self.min = torch.finfo(dtype).min
        self.use_graph = graph
        self.graph: Any = None
        self.logits: Any = None
        self.note = ""
        self.compile = compile

    def _call(self, model: Any, ids: Any, mask: Any, pos: Any, index: Any) -> Any:
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "use_cache": True,
            ("cache" if "cache" in self.names else "past_key_values"): self.cache,
        }
        if "cache_position" in self.names:
            kwargs["cache_position"] = index
        if "logits_to_keep" in self.names:
            kwargs["logits_to_keep"] = 1
        self.cache.index = index
        return model(**kwargs).logits[:, -1, :]

    def prefill(self, model: Any, input_ids: Any, valid: Any, positions: Any) -> Any:
        """Run the prompts (``valid``: the real tokens' slots) and set up the step's mask."""
        import torch

        width = input_ids.shape[1]
        slots = torch.arange(self.length, device=self.device)
        seen = torch.zeros((self.batch, self.length), dtype=torch.bool, device=self.device)
        seen[:, :width] = valid
        causal = slots[None, :] <= torch.arange(width, device=self.device)[:, None]
        allowed = causal[None, None, :, :] & seen[:, None, None, :]
        zero = torch.zeros((), dtype=self.mask.dtype, device=self.device)
        full = torch.full((), self.min, dtype=self.mask.dtype, device=self.device)
        self.mask.copy_(torch.where(seen, zero, full)[:, None, None, :])
        self.pos.copy_(positions[:, -1:])
        self.cache.seen = width
        return self._call(
            model,
            input_ids,
            torch.where(allowed, zero, full),
            positions,
            torch.arange(width, device=self.device),
        )

    def step(self, model: Any, chosen: Any, slot: int) -> Any:
        """Feed the chosen tokens at cache slot ``slot``; the next logits (``[batch, vocab]``)."""
        self.ids.copy_(chosen.unsqueeze(-1))
        self.pos.add_(1)
        self.index.fill_(slot)
        self.mask[:, :, :, slot] = 0
        self.cache.seen = slot + 1
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        if self.use_graph:
            return self._capture(model)
        return self._call(model, self.ids, self.mask, self.pos, self.index)

    def _capture(self, model: Any) -> Any:
        """Capture the step, replay it once and check it against the eager step."""
        import warnings

        import torch

        self.use_graph = False
        try:
            with _compiled(model, self.compile):
                stream = torch.cuda.Stream(device=self.device)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    for _ in range(2):  # the same slot: idempotent
                        self._call(model, self.ids, self.mask, self.pos, self.index)
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    logits = self._call(model, self.ids, self.mask, self.pos, self.index)
                graph.replay()
                # Checked against the same (compiled or not) step run without the graph.
                eager = self._call(model, self.ids, self.mask, self.pos, self.index)
            # Argmax agreement, or logits within 1 % of their scale: kernels that are not
            # bit-deterministic (4-bit matmuls at some shapes) can flip near-ties of flat logits.
            gap = float((logits.float() - eager.float()).abs().max())
            scale = float(eager.float().abs().max())
            agree = bool(torch.equal(logits.argmax(-1), eager.argmax(-1))) or gap <= 0.01 * scale
        except Exception as error:  # a layer that cannot be captured: stay eager
            torch.cuda.synchronize(self.device)
            self.note = f"CUDA graph capture failed ({type(error).__name__}: {error})"
            warnings.warn(f"{self.note}; decoding without it", RuntimeWarning, stacklevel=3)
            return self._call(model, self.ids, self.mask, self.pos, self.index)
        if not agree:
            self.note = f"the captured step disagreed with the eager step (max gap {gap:.3g})"
            warnings.warn(f"{self.note}; decoding without it", RuntimeWarning, stacklevel=3)
            return eager
        self.graph, self.logits = graph, logits
        return eager


def _compile_setting() -> bool:
    import os

    value = os.environ.get("LORAKIT_COMPILE_DECODE", "").strip().lower()
    return value not in ("", "0", "off", "no", "false")


@contextlib.contextmanager
def _compiled(model: Any, enabled: bool) -> Iterator[None]:
    """While the step is captured, its decoder layers run compiled for the bucket's shapes
    (fused kernels, one compilation per layer); the captured graph keeps the compiled
    kernels and the model is left as it was."""
    if not enabled:
        yield
        return
    import torch

    from lorakit.fast import checkpoint_layers

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    layers = checkpoint_layers(model)
    setattr(config, name, max(before, 4 * len(layers) + 8))
    try:
        for layer in layers:
            layer.compile(dynamic=False)
        yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None
        setattr(config, name, before)


def _adapter_state(model: Any) -> tuple[Any, ...]:
    """What a captured step depends on besides its buffers: the weights' addresses and each
    adapter layer's active/disabled/merged state and forward."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    state: list[Any] = [p.data_ptr() for p in model.parameters()]
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            forward = module.__dict__.get("forward")
            state.append(
                (
                    tuple(module.active_adapters),
                    bool(module.disable_adapters),
                    bool(getattr(module, "merged", False)),
                    id(getattr(forward, "func", forward)) if forward is not None else 0,
                )
            )
    return tuple(state)


def _runner_for(
    model: Any, batch: int, length: int, device: Any, dtype: Any, graph: bool
) -> _StaticRunner:
    import weakref
    from collections import OrderedDict

    global _runners
    if _runners is None:
        _runners = weakref.WeakKeyDictionary()
    compile = graph and _compile_setting()
    key = (batch, length, str(device), str(dtype), graph, compile, _adapter_state(model))
    kept = _runners.setdefault(model, OrderedDict())
    runner: _StaticRunner | None = kept.get(key)
    if runner is None:
        while len(kept) >= _MAX_RUNNERS:
            kept.popitem(last=False)
        runner = _StaticRunner(
            batch, length, device, dtype, _forward_parameters(model), graph, compile
        )
        kept[key] = runner
    kept.move_to_end(key)
    return runner


def _fast_refusal(model: Any, total: int) -> str:
    """Why the fast path cannot decode with this model ("" when it can)."""
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in _FAST_ATTENTION:
        return f"attention {attention!r} takes no prepared mask (sdpa or eager needed)"
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and total > window:
        return f"{total} tokens exceed the sliding window of {window}"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported"
    return ""


def _want_fast(fast: bool | None, device: Any) -> bool:
    import os

    if fast is not None:
        return fast
    setting = os.environ.get("LORAKIT_FAST_DECODE", "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        return True
    return bool(device.type == "cuda")


def _decode_fast(
    model: Any,
    prompts: Sequence[Sequence[int]],
    per_row: Sequence[SamplingSpec],
    generators: Sequence[Any],
    rows: _Rows,
    pad_id: int,
    device: Any,
) -> None:
    import torch

    count = len(prompts)
    batch = 1 << (count - 1).bit_length()
    width = max(len(p) for p in prompts)
    total = max(rows.limits)
    length = -(-(width + total) // _LENGTH_BUCKET) * _LENGTH_BUCKET
    cuda = device.type == "cuda"
    dtype = model.get_input_embeddings().weight.dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    # Filler rows (a lone pad token) bring the batch to its bucket; they are never read.
    padded = [list(p) for p in prompts] + [[pad_id]] * (batch - count)
    input_ids = torch.tensor(
        [[pad_id] * (width - len(p)) + p for p in padded], dtype=torch.long, device=device
    )
    valid = torch.tensor(
        [[False] * (width - len(p)) + [True] * len(p) for p in padded], device=device
    )
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    specs = list(per_row) + [SamplingSpec()] * (batch - count)
    gens = list(generators) + [None] * (batch - count)
    with _runners_lock:
        runner = _runner_for(model, batch, length, device, dtype, graph=cuda)
        logits = runner.prefill(model, input_ids, valid, positions)
        tokens = torch.empty((batch, _FAST_CHUNK), dtype=torch.long, device=device)
        host = torch.empty((batch, _FAST_CHUNK), dtype=torch.long, pin_memory=cuda)
        ready = torch.cuda.Event() if cuda else None
        slot, step = width, 0
        while step < total and not rows.finished():
            n = min(_FAST_CHUNK, total - step)
            for j in range(n):
                chosen = _choose(logits, specs, gens)
                tokens[:, j] = chosen
                if j == n - 1:  # read this chunk back while the GPU runs the next step
                    host[:, :n].copy_(tokens[:, :n], non_blocking=cuda)
                    if ready is not None:
                        ready.record()
                if step + j + 1 < total:
                    logits = runner.step(model, chosen, slot)
                    slot += 1
            if ready is not None:
                ready.synchronize()
            values = host[:count, :n].tolist()
            for j in range(n):
                for i in range(count):
                    rows.accept(i, int(values[i][j]))
                if rows.finished():
                    break
            step += n
        _last_decode.update(
            path="graph" if runner.graph is not None else "static",
            batch_bucket=batch,
            length_bucket=length,
            note=runner.note,
        )


def decode(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    settings: SamplingSpec | Sequence[SamplingSpec],
    *,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[int], bool] | None = None,
    fast: bool | None = None,
) -> list[Decoded]:
    """Generate from several prompts at once: left-padded, one KV cache, stopped per row.

    Each row stops at its first stop token (:func:`~lorakit.data.tokenize.stop_token_ids` of
    the tokenizer plus the model's ``generation_config.eos_token_id``), after its own
    ``max_new_tokens``, or when ``should_stop(row)`` says so (a client went away). Greedy rows
    (``temperature == 0``) give the same tokens as ``model.generate`` with greedy decoding.

    Two paths give the same tokens. The *dynamic* path grows a KV cache a token at a time
    and reads every token back at once. The *fast* path (taken on CUDA unless
    ``LORAKIT_FAST_DECODE=0``) pre-allocates the cache for the batch rounded up to a power of
    two and the length rounded up to a multiple of 128, replays the one-token step as a CUDA
    graph (captured once per bucket and adapter state, checked against the eager step), and
    reads the chosen tokens back every 8 steps: callbacks come in bursts of up to 8 tokens
    and a row stopped by ``should_stop`` or a stop token is cut at the same token as on the
    dynamic path. :func:`last_decode_info` says which path ran. With
    ``LORAKIT_COMPILE_DECODE=1`` the captured step runs ``torch.compile``'d decoder layers
    (compiled on a bucket's first call, about half a minute for Phi-3-mini): fused kernels
    round differently from the eager ones, so a near-tie between two tokens can break the
    other way.

    Args:
        model: a causal LM (``transformers``, optionally PEFT-wrapped), in eval mode.
        tokenizer: its tokenizer.
        prompts: token ids of each prompt.
        settings: one :class:`SamplingSpec` for all rows, or one per row.
        on_token: called as ``on_token(row, token_id)`` for every new token that is not a stop.
        should_stop: called with a row index after every token; ``True`` ends that row.
        fast: ``True`` takes the fast path (on the CPU too, without CUDA graphs) where the model
            allows it, ``False`` the dynamic path; ``None`` (default): fast on CUDA.

    Returns:
        One :class:`Decoded` per prompt, in prompt order.
    """
    import torch

    from lorakit.data.tokenize import stop_token_ids
    from lorakit.model import disable_cpu_inference_path

    if not prompts:
        return []
    per_row = [settings] * len(prompts) if isinstance(settings, SamplingSpec) else list(settings)
    if len(per_row) != len(prompts):
        raise ConfigError(f"{len(per_row)} sampling settings for {len(prompts)} prompts")
    if any(len(p) == 0 for p in prompts):
        raise ConfigError("a prompt has no tokens", field="prompt")
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    extra = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if isinstance(e, int)]
    stops = stop_token_ids(tokenizer, extra=extra)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad) if pad is not None else min(stops)
    device = next(model.parameters()).device
    disable_cpu_inference_path(model)

    generators: list[Any] = []
    for spec in per_row:
        gen = None
        if spec.temperature > 0 and spec.seed is not None:
            gen = torch.Generator(device=device)
            gen.manual_seed(spec.seed)
        generators.append(gen)

    limits = [s.max_new_tokens for s in per_row]
    rows = _Rows(limits, stops, on_token, should_stop)
    width = max(len(p) for p in prompts)
    refusal = _fast_refusal(model, width + max(limits))
    use_fast = _want_fast(fast, device) and not refusal
    _last_decode.clear()
    _last_decode.update(path="dynamic", reason=refusal if _want_fast(fast, device) else "off")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if use_fast:
                _decode_fast(model, prompts, per_row, generators, rows, pad_id, device)
            else:
                _decode_dynamic(model, prompts, per_row, generators, rows, pad_id, device)
    finally:
        if was_training:
            model.train()
    return [
        Decoded(
            token_ids=ids,
            text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
            truncated=not rows.stopped[i] and len(ids) >= limits[i],
        )
        for i, ids in enumerate(rows.new)
    ]


def _decode_dynamic(
    model: Any,
    prompts: Sequence[Sequence[int]],
    per_row: Sequence[SamplingSpec],
    generators: Sequence[Any],
    rows: _Rows,
    pad_id: int,
    device: Any,
) -> None:
    import torch

    width = max(len(p) for p in prompts)
    count = len(prompts)
    input_ids = torch.tensor(
        [[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device
    )
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device, dtype=torch.long
    )
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    greedy = all(s.temperature <= 0 for s in per_row)
    cache_name = _cache_argument(model)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past = _cache_of(out)
    last_pos = positions[:, -1]
    for _step in range(max(rows.limits)):
        logits = out.logits[:, -1, :]
        if greedy:
            chosen = logits.argmax(dim=-1).tolist()
        else:
            chosen = [
                int(
                    _sample(
                        logits[i : i + 1], per_row[i].temperature, per_row[i].top_p, generators[i]
                    )[0]
                )
                for i in range(count)
            ]
        for i, token in enumerate(chosen):
            rows.accept(i, int(token))
        if rows.finished():
            break
        feed = torch.tensor(
            [[pad_id if rows.done[i] else chosen[i]] for i in range(count)], device=device
        )
        mask = torch.cat([mask, torch.ones((count, 1), dtype=mask.dtype, device=device)], 1)
        last_pos = last_pos + 1
        out = model(
            input_ids=feed,
            attention_mask=mask,
            position_ids=last_pos.unsqueeze(-1),
            use_cache=True,
            **{cache_name: past},
        )
        past = _cache_of(out)
