"""Training against a real `mlflow server` on 127.0.0.1 through MLFLOW_TRACKING_URI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import REPO, SHARED_DATA, free_port, listening_addresses, start_mlflow_server, stop_server, tiny_config

from dist_s2s.train.trainer import train

pytestmark = pytest.mark.launcher


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = start_mlflow_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(server)


def test_the_project_s_mlflow_server_listens_on_127_0_0_1_only(tmp_path):
    server = start_mlflow_server(tmp_path, free_port())
    try:
        assert listening_addresses(server.pid) == {"127.0.0.1"}
    finally:
        stop_server(server)


def test_a_run_is_recorded_by_a_tracking_server_named_in_the_environment(prepared_tiny, mlflow_server, tmp_path,
                                                                         monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    config = tiny_config(tmp_path, f"--data.out_dir={prepared_tiny.data.out_dir}", "--train.max_steps=4",
                         "--train.log_every=2")
    summary = train(config)
    assert summary["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 2
    assert "plots/loss_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert (tmp_path / "artifacts").exists(), "artifacts went to the server's store"


def test_a_server_that_goes_away_mid_run_loses_no_metric_and_sync_sends_them_when_it_is_back(prepared_tiny,
                                                                                            tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port)
    run_dir = tmp_path / "run"
    arguments = ["--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
                 f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={run_dir}", "--train.log_every=1",
                 "--train.valid_every=1000", f"--tracking.uri={url}"]
    training = subprocess.Popen([sys.executable, "-m", "dist_s2s", "train", *arguments, "--train.max_steps=60"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.jsonl").is_file() and len(local_records(run_dir, "metrics.jsonl")) >= 3):
            assert time.monotonic() < deadline and training.poll() is None, "training never logged"
            time.sleep(0.05)
        stop_server(server)  # mid-run
        output = training.communicate(timeout=300)[0]
    finally:
        stop_server(server)
        if training.poll() is None:
            training.kill()
    assert training.returncode == 0, output[-3000:]
    assert f"tracking: MLflow at {url} failed" in output and "`dist-s2s sync`" in output
    logged = local_records(run_dir, "metrics.jsonl")
    unsent = local_records(run_dir, "unsent-metrics.jsonl")
    assert 0 < len(unsent) < len(logged) and unsent == logged[-len(unsent):], "the tail MLflow missed is kept"
    assert f"{len(unsent)} metric records did not reach MLflow" in output

    server = start_mlflow_server(tmp_path, port)  # back, same store
    try:
        synced = subprocess.run([sys.executable, "-m", "dist_s2s", "sync", *arguments], capture_output=True,
                                text=True, timeout=120)
        assert synced.returncode == 0, synced.stderr[-3000:]
        assert f"sent {len(unsent)} metric records" in synced.stdout
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        history = MlflowClient(url).get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == [r["step"] for r in logged if "train/loss" in r]
        assert not (run_dir / "unsent-metrics.jsonl").exists()
    finally:
        stop_server(server)


def local_records(run_dir, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]
