"""Loading the base model: 4-bit NF4 through bitsandbytes, the compute dtype, the tokenizer.

The model builder knows nothing of data. On a machine without CUDA it runs the
same 4-bit path on the CPU (bitsandbytes supports NF4 there) in float32.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Literal, get_args

import attrs

from lorakit._validators import one_of
from lorakit.attention import register_varlen
from lorakit.errors import ConfigError
from lorakit.hookspecs import hookimpl

if TYPE_CHECKING:
    import pluggy

__all__ = [
    "TINY_MODELS",
    "TINY_PHI3",
    "LoadedModel",
    "ModelSpec",
    "QuantSpec",
    "QuantizedModelBuilder",
    "resolve_compute_dtype",
]

TINY_PHI3 = "tiny-phi3"
TINY_MODELS = (TINY_PHI3, "tiny-qwen2", "tiny-llama3")
"""lorakit's built-in tiny checkpoints, built locally (see :mod:`lorakit.testing`)."""
"""Model name of lorakit's built-in tiny Phi-3 (random weights, built locally on first use)."""

QuantMethod = Literal["nf4", "fp4", "none"]
DtypeName = Literal["auto", "bfloat16", "float16", "float32"]
AttnImplementation = Literal[
    "auto", "varlen", "sdpa", "eager", "flash_attention_2", "flex_attention"
]
ATTN_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttnImplementation)


@attrs.frozen(kw_only=True)
class QuantSpec:
    """How the base model's weights are stored while training.

    Attributes:
        method: ``nf4`` (4-bit NormalFloat, QLoRA), ``fp4``, or ``none`` (no quantisation).
        double_quant: quantise the quantisation constants too (saves about 0.4 bit per weight).
        compute_dtype: dtype of the matrix products: ``auto`` picks bfloat16 on a GPU
            that supports it, else float16, and float32 on the CPU.
    """

    method: QuantMethod = attrs.field(
        default="nf4", validator=one_of("model.quant", ("nf4", "fp4", "none"))
    )
    double_quant: bool = True
    compute_dtype: DtypeName = attrs.field(
        default="auto", validator=one_of("model.quant", ("auto", "bfloat16", "float16", "float32"))
    )


@attrs.frozen(kw_only=True)
class ModelSpec:
    """Which base model to load, and how.

    Attributes:
        name: a model id (``microsoft/Phi-3-mini-4k-instruct``), a local folder saved with
            ``save_pretrained``, or ``tiny-phi3`` for lorakit's built-in tiny Phi-3.
        revision: a branch, tag or commit of the model id.
        quant: weight quantisation.
        attn_implementation: ``auto`` (``varlen`` for plain causal architectures such as
            Phi-3 and Llama on a CUDA GPU of compute capability 8.0 or newer, computing in
            16 bits, with torch 2.11 or later; else ``sdpa``), ``varlen`` (flash
            attention over each packed example, see :mod:`lorakit.attention`), ``sdpa``
            (PyTorch scaled-dot-product attention; packed rows through a block-diagonal
            mask), ``eager``, ``flash_attention_2`` or ``flex_attention``.
        trust_remote_code: run the model repository's own code. Off: Phi-3 is native in
            transformers, and its remote code breaks with current cache classes.
    """

    name: str
    revision: str | None = None
    quant: QuantSpec = attrs.field(factory=QuantSpec)
    attn_implementation: AttnImplementation = attrs.field(
        default="auto", validator=one_of("model", ATTN_IMPLEMENTATIONS)
    )
    trust_remote_code: bool = False


@attrs.define
class LoadedModel:
    """A loaded base model, its tokenizer, and what the loader decided on the way."""

    model: Any
    tokenizer: Any
    compute_dtype: str
    device: str
    notes: list[str] = attrs.field(factory=list)


def resolve_compute_dtype(name: DtypeName, *, cuda: bool, bf16_supported: bool) -> str:
    """``auto`` -> bfloat16 where the GPU supports it, float16 on other GPUs, float32 on CPU."""
    if name != "auto":
        if not cuda and name != "float32":
            return "float32"
        return name
    if not cuda:
        return "float32"
    return "bfloat16" if bf16_supported else "float16"


def resolve_attention(name: str, *, cuda: bool, dtype_name: str, model_type: str | None) -> str:
    """``auto`` -> ``varlen`` for a plain causal architecture on a GPU that runs the kernel
    (sm80+, torch 2.11+) computing in 16 bits; ``sdpa`` otherwise."""
    if name != "auto":
        return name
    from lorakit.attention import VARLEN_ARCHITECTURES, varlen_available

    if (
        cuda
        and dtype_name in ("bfloat16", "float16")
        and model_type in VARLEN_ARCHITECTURES
        and varlen_available()
    ):
        return "varlen"
    return "sdpa"


def _model_type(path: str, spec: ModelSpec) -> str | None:
    """The checkpoint's ``model_type`` from its config, or None when it cannot be read here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError):
        return None  # the model load below says what is wrong
    return getattr(config, "model_type", None)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_model_path(name: str) -> str:
    """The folder or id to load: ``tiny-phi3`` (``tiny-qwen2``, ``tiny-llama3``) becomes the
    built-in tiny checkpoint's cache folder."""
    if name in TINY_MODELS:
        from lorakit.testing import tiny_model_path

        return str(tiny_model_path(name))
    return name


class QuantizedModelBuilder:
    """Builds (model, tokenizer) from a :class:`ModelSpec`.

    Plugins come first: the first ``lorakit_load_model`` implementation that
    returns a :class:`LoadedModel` wins; the built-in Hugging Face + bitsandbytes
    loader runs last.
    """

    def __init__(
        self, spec: ModelSpec, *, plugin_manager: pluggy.PluginManager | None = None
    ) -> None:
        self.spec = spec
        self.plugin_manager = plugin_manager

    def build(self) -> LoadedModel:
        """Load the model and tokenizer (eval mode, ``use_cache`` off, 4-bit layers made training-safe)."""
        if self.plugin_manager is not None:
            loaded = self.plugin_manager.hook.lorakit_load_model(spec=self.spec)
            if loaded is not None:
                # Whichever loader ran: a plugin's 4-bit layers must be training-safe too.
                disable_cpu_inference_path(loaded.model)
                return loaded  # type: ignore[no-any-return]
        return load_hf_model(self.spec)


def load_hf_model(spec: ModelSpec) -> LoadedModel:
    """The built-in loader: transformers ``from_pretrained`` with a bitsandbytes config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notes: list[str] = []
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    dtype_name = resolve_compute_dtype(spec.quant.compute_dtype, cuda=cuda, bf16_supported=bf16)
    if not cuda and spec.quant.compute_dtype not in ("auto", "float32"):
        notes.append(f"no CUDA GPU: computing in float32 instead of {spec.quant.compute_dtype}")
    dtype = getattr(torch, dtype_name)
    path = resolve_model_path(spec.name)
    attn = resolve_attention(
        spec.attn_implementation,
        cuda=cuda,
        dtype_name=dtype_name,
        # Read the config only when it can change the answer: auto on a GPU.
        model_type=_model_type(path, spec) if spec.attn_implementation == "auto" and cuda else None,
    )
    if spec.attn_implementation == "auto":
        notes.append(f"attention: {attn}")
    kwargs: dict[str, Any] = {
        "revision": spec.revision,
        "dtype": dtype,
        "trust_remote_code": spec.trust_remote_code,
        "attn_implementation": register_varlen() if attn == "varlen" else attn,
    }
    if spec.attn_implementation == "flash_attention_2" and not cuda:
        raise ConfigError(
            "flash_attention_2 needs a CUDA GPU",
            field="model.attn_implementation",
            hint="use sdpa on this machine",
        )
    if spec.quant.method != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec.quant.method,
            bnb_4bit_use_double_quant=spec.quant.double_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.uint8,
        )
        if not cuda:
            notes.append(
                f"no CUDA GPU: 4-bit {spec.quant.method.upper()} runs on the CPU through "
                "bitsandbytes' CPU kernels in float32 (slow; fine for a tiny model)"
            )
    kwargs["device_map"] = {"": _local_rank()} if cuda else {"": "cpu"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*kernels.*")
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"could not load model {spec.name!r}: {str(exc).splitlines()[0]}",
            field="model.name",
            hint="pass a local folder saved with save_pretrained, a model id reachable from this "
            f"machine, or {TINY_PHI3!r} for the built-in tiny Phi-3",
        ) from exc
    model.config.use_cache = False
    if spec.quant.method != "none":
        fixed = disable_cpu_inference_path(model)
        if fixed and not cuda:
            notes.append(
                f"kept {fixed} 4-bit layers off the CPU inference-only path so LoRA gradients stay exact"
            )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        compute_dtype=dtype_name,
        device=f"cuda:{_local_rank()}" if cuda else "cpu",
        notes=notes,
    )


def disable_cpu_inference_path(model: Any) -> int:
    """Keep every bitsandbytes 4-bit layer off its CPU inference-only packed path.

    On CPUs with AVX512-BF16, a ``Linear4bit`` switches for good to a packed
    weight layout at its first no-grad forward in eval mode; that path has no
    autograd kernel, so LoRA gradients after any evaluation would be wrong.
    Returns the number of layers changed.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


@hookimpl(trylast=True)
def lorakit_load_model(spec: ModelSpec) -> LoadedModel | None:
    """The built-in loader, run after every plugin's."""
    return load_hf_model(spec)
