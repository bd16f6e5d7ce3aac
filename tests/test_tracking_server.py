"""Training against a real `mlflow server` on 127.0.0.1 through MLFLOW_TRACKING_URI."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from dist_s2s.train.trainer import train

from conftest import REPO, free_port, tiny_config, wait_for_http

pytestmark = pytest.mark.integration


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", 90, alive=lambda: server.poll() is None)
    except OSError:
        os.killpg(server.pid, signal.SIGKILL)
        raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


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
