"""Quiet output: what the libraries underneath print goes to a log, not the user's terminal.

transformers, bitsandbytes, peft and torch warn about things a lorakit user cannot act on
(deprecations, a CPU fallback lorakit already notes). By default those warnings and log
records are kept out of the terminal; during a run they are written to ``lorakit.log`` in
the run directory. ``lorakit --verbose`` shows them as well.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LIBRARY_LOGGERS", "LOG_FILE", "quiet_libraries", "run_log"]

LOG_FILE = "lorakit.log"
LIBRARY_LOGGERS = (
    "transformers",
    "bitsandbytes",
    "peft",
    "accelerate",
    "torch",
    "datasets",
    "huggingface_hub",
    "liger_kernel",
    "mlflow",
    "alembic",
    "optuna",
    "py.warnings",
)


def quiet_libraries(verbose: bool) -> None:
    """Keep library warnings and log records off the terminal unless ``verbose``.

    Warnings are routed through logging (``py.warnings``); library loggers stop
    propagating to the terminal's handlers but still reach :func:`run_log`'s file.
    """
    logging.captureWarnings(True)
    if verbose:  # on the terminal as well as in the run's log
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = verbose
        if not verbose:
            logger.setLevel(logging.WARNING)
            if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
                logger.addHandler(logging.NullHandler())  # or logging's last resort prints it
            # Libraries that attach their own stderr handler (transformers) are kept quiet too.
            for handler in list(logger.handlers):
                if isinstance(handler, logging.StreamHandler) and not isinstance(
                    handler, logging.FileHandler
                ):
                    logger.removeHandler(handler)
    if not verbose:
        warnings.simplefilter("default")
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover
            return
        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Write library warnings and log records of the block to ``run_dir/lorakit.log``."""
    path = run_dir / LOG_FILE
    try:
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        yield path  # an unwritable run directory fails with its own clear error elsewhere
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
