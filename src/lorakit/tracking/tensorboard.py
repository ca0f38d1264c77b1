"""The ``tensorboard`` tracker: event files in ``RUN_DIR/tensorboard``.

``tensorboard --logdir runs`` then shows every run side by side. Scalars keep the names of
``metrics.jsonl`` (``loss``, ``eval_loss``, ``learning_rate`` ...); the resolved recipe and the
report are text. A resumed run drops what the interrupted one logged after its checkpoint,
as ``metrics.jsonl`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorakit.recipe import Recipe

__all__ = ["TB_FOLDER", "TensorBoardFactory", "TensorBoardTracker"]

TB_FOLDER = "tensorboard"


class TensorBoardTracker:
    """Writes one run's event files with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, log_dir: Path, *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer: Any = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log_params(self, params: Mapping[str, str]) -> None:
        rows = "\n".join(f"| `{key}` | `{value}` |" for key, value in params.items())
        self.writer.add_text("recipe", "| setting | value |\n|---|---|\n" + rows, 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_artifacts(self, run_dir: Path, files: Iterable[Path]) -> None:
        for path in files:
            if path.suffix == ".md" and path.is_file():
                self.writer.add_text(path.stem, path.read_text(encoding="utf-8"), 0)

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()


class TensorBoardFactory:
    """Registered as ``tensorboard``."""

    requires = ("tensorboard",)
    install = "pip install 'lorakit[tensorboard]'"

    def create(self, recipe: Recipe, run_dir: Path) -> TensorBoardTracker:
        from lorakit.checkpoints import checkpoint_step, latest_checkpoint

        latest = latest_checkpoint(run_dir / "checkpoints")
        # Resuming: steps after the checkpoint are logged again, so the old ones are purged.
        purge = checkpoint_step(latest) + 1 if latest is not None else None
        return TensorBoardTracker(run_dir / TB_FOLDER, purge_step=purge)
