"""``training.report_to``: TensorBoard and MLflow, read back with their own readers (CPU, offline)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from lorakit.cli import main

TINY = (
    "--set",
    "training.max_steps=2",
    "--set",
    "training.eval_steps=1",
    "--set",
    "training.save_steps=1",
    "--set",
    "training.logging_steps=1",
    "--set",
    "data.limit=40",
)


def _train(run_dir: Path, *extra: str) -> None:
    args = ["train", "medqa_phi3_tiny", *TINY, *extra, "--run-dir", str(run_dir), "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _series(records: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]


def test_tensorboard_and_local_mlflow_hold_the_run(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    _train(run_dir, "--set", "training.report_to=tensorboard,mlflow")
    records = _records(run_dir)
    assert _series(records, "eval_loss") and _series(records, "loss")

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("loss", "eval_loss", "learning_rate", "tokens"):
        scalars = [(e.step, e.value) for e in events.Scalars(key)]
        expected = _series(records, key)
        assert [s for s, _ in scalars] == [s for s, _ in expected], key
        assert [v for _, v in scalars] == pytest.approx([v for _, v in expected], rel=1e-6)
    (recipe_text,) = events.Tensors("recipe/text_summary")
    assert "| `adapter.rank` | `16` |" in recipe_text.tensor_proto.string_val[0].decode()

    tracking = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    assert tracking["uri"] == f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=tracking["uri"])
    run = client.get_run(tracking["run_id"])
    _check_mlflow_run(client, run, run_dir, records)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (run_dir / "mlartifacts").is_dir()
    local = Path(client.download_artifacts(run.info.run_id, "report.json", str(tmp_path)))
    assert json.loads(local.read_text()) == json.loads((run_dir / "report.json").read_text())
    assert {"report.json", "report.md", "adapter"} <= artifacts


def _check_mlflow_run(client, run, run_dir: Path, records: list[dict]) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    assert run.info.status == "FINISHED"
    assert run.info.run_name == run_dir.name
    params = run.data.params
    assert params["adapter.rank"] == "16" and params["training.max_steps"] == "2"
    assert params["data.limit"] == "40" and params["name"] == "medqa_phi3_tiny"
    for key in ("loss", "eval_loss"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        expected = _series(records, key)
        assert [s for s, _ in history] == [s for s, _ in expected], key
        assert [v for _, v in history] == pytest.approx([v for _, v in expected]), key
    assert run.data.metrics["final_eval_loss"] == pytest.approx(report["eval"]["loss"])
    names = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 (a free port), its store in tmp_path; killed at teardown."""
    pytest.importorskip("mlflow")
    executable = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which(
        "mlflow"
    )
    if executable is None:
        pytest.skip("the mlflow command is not installed")
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            executable,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,  # its workers in one group, ended together below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
        log.close()


@pytest.mark.slow
def test_mlflow_server_receives_the_run(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    _train(
        run_dir,
        "--set",
        "training.report_to=mlflow",
        "--set",
        f"training.tracking_uri={mlflow_server}",
    )
    assert not (run_dir / "mlflow.db").exists()  # nothing local: the server has it
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("medqa_phi3_tiny")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert (
        run.info.run_id == json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    )
    _check_mlflow_run(client, client.get_run(run.info.run_id), run_dir, _records(run_dir))
    local = Path(client.download_artifacts(run.info.run_id, "report.md", str(tmp_path)))
    assert local.read_text() == (run_dir / "report.md").read_text()


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    for command in (
        ["check", "medqa_phi3_tiny", "--set", "training.report_to=mlflow"],
        [
            "train",
            "medqa_phi3_tiny",
            "--set",
            "training.report_to=mlflow",
            "--run-dir",
            str(tmp_path / "r"),
        ],
    ):
        result = CliRunner().invoke(main, command)
        assert result.exit_code != 0, result.output
        line = [ln for ln in result.output.splitlines() if "mlflow" in ln]
        assert line and "pip install 'lorakit[mlflow]'" in line[0], result.output
        assert "training.report_to" in line[0]
    assert not (tmp_path / "r" / "adapter").exists()  # stopped before training


def test_report_to_parses_and_unknown_trackers_are_named():
    from lorakit.presets import medqa_phi3_tiny

    recipe = medqa_phi3_tiny.with_overrides({"training.report_to": "tensorboard, mlflow"})
    assert recipe.training.report_to == ("tensorboard", "mlflow")
    assert medqa_phi3_tiny.with_overrides({"training.report_to": "none"}).training.report_to == ()
    with pytest.raises(Exception, match="named twice"):
        medqa_phi3_tiny.with_overrides({"training.report_to": "mlflow,mlflow"})
    problems = medqa_phi3_tiny.with_overrides({"training.report_to": "tensorbord"}).check()
    assert any("did you mean 'tensorboard'" in str(p) for p in problems), problems
