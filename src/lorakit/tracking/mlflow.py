"""The ``mlflow`` tracker: params, metrics and artifacts of a run in MLflow.

Without ``training.tracking_uri`` the store is local, in the run directory: ``mlflow.db``
(SQLite; MLflow 3 refuses its old ``./mlruns`` file store unless told otherwise) and the
artifacts in ``mlartifacts/``; ``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``
shows it. With ``training.tracking_uri=http://HOST:5000`` the run goes to that server.
The experiment is the recipe's name, the run is named after the run directory; a resumed run
continues the same MLflow run (its id is kept in ``RUN_DIR/tracking.json``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lorakit._fs import read_json_object, write_json_atomic
from lorakit.errors import LorakitError

if TYPE_CHECKING:
    from lorakit.recipe import Recipe

__all__ = ["MLFLOW_DB", "MlflowFactory", "MlflowTracker", "local_tracking_uri"]

MLFLOW_DB = "mlflow.db"
TRACKING_FILE = "tracking.json"
# MLflow's own limits per log_batch call.
_PARAMS_PER_BATCH, _METRICS_PER_BATCH, _PARAM_CHARS = 100, 1000, 6000

T = TypeVar("T")


def local_tracking_uri(run_dir: Path) -> str:
    """The default store: a SQLite file in the run directory."""
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowTracker:
    """One MLflow run, written through ``MlflowClient`` (no global active run)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [
            Param(key, value[:_PARAM_CHARS])
            for key, value in params.items()
            if key not in existing  # a resumed run: params are immutable in MLflow
        ]
        for chunk in _chunks(items, _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=list(chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, value, now, step) for key, value in metrics.items()]
        for chunk in _chunks(items, _METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=list(chunk))

    def log_artifacts(self, run_dir: Path, files: Iterable[Path]) -> None:
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "complete" else "FAILED")


class MlflowFactory:
    """Registered as ``mlflow``."""

    requires = ("mlflow",)
    install = "pip install 'lorakit[mlflow]'"

    def create(self, recipe: Recipe, run_dir: Path) -> MlflowTracker:
        uri = recipe.training.tracking_uri or local_tracking_uri(run_dir)
        # A server that does not answer fails the run in seconds, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SQLAlchemy deprecations inside MLflow
                client, run_id = _open_run(uri, recipe, run_dir)
        except LorakitError:
            raise
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise LorakitError(
                f"cannot open an MLflow run at {uri}: {type(error).__name__}: {first}",
                field="training.tracking_uri",
                hint="start the tracking server or correct training.tracking_uri "
                "(none: a local store in the run directory)",
            ) from None
        return MlflowTracker(client, run_id)


def _open_run(uri: str, recipe: Recipe, run_dir: Path) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    record_file = run_dir / TRACKING_FILE
    record = read_json_object(record_file, "the tracking record") if record_file.exists() else {}
    earlier = record.get("mlflow") or {}
    from lorakit.recipe import recipe_hash

    digest = recipe_hash(recipe)
    if earlier.get("uri") == uri and earlier.get("recipe") == digest and earlier.get("run_id"):
        run_id = str(earlier["run_id"])
        client.update_run(run_id, status="RUNNING")
        return client, run_id
    experiment = client.get_experiment_by_name(recipe.name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        local = recipe.training.tracking_uri is None
        artifacts = (run_dir / "mlartifacts").resolve().as_uri() if local else None
        try:
            experiment_id = client.create_experiment(recipe.name, artifact_location=artifacts)
        except Exception:  # another process created it a moment ago
            found = client.get_experiment_by_name(recipe.name)
            if found is None:
                raise
            experiment_id = found.experiment_id
    run = client.create_run(
        experiment_id,
        run_name=run_dir.name,
        tags={"lorakit.run_dir": str(run_dir.resolve()), "lorakit.recipe": recipe.name},
    )
    write_json_atomic(
        record_file, {**record, "mlflow": {"uri": uri, "recipe": digest, "run_id": run.info.run_id}}
    )
    return client, str(run.info.run_id)
