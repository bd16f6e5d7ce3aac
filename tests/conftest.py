"""Shared fixtures: the real data in ../shared/data, one in-process Ray, one prepared tiny dataset."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dist_s2s.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # in-process Ray on 127.0.0.1, as the CLI has it


def tiny_config(tmp_path: Path, *overrides: str) -> Config:
    """configs/tiny.yaml reading the shared data and writing under tmp_path."""
    return load_config(REPO / "configs" / "tiny.yaml", [
        f"--data.root={SHARED_DATA}", f"--data.out_dir={tmp_path / 'data'}", f"--train.run_dir={tmp_path / 'run'}",
        *overrides,
    ])


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the whole session: starting it costs seconds."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared_tiny(ray_local, tmp_path_factory) -> Config:
    """The tiny config prepared once (Multi30k train/valid/test2016)."""
    from dist_s2s.data.prepare import prepare

    config = tiny_config(tmp_path_factory.mktemp("tiny"))
    prepare(config)
    return config


@pytest.fixture(scope="session")
def trained_tiny(prepared_tiny, tmp_path_factory):
    """30 tiny steps ending with the evaluation of test2016 (eval.after_training); config args and stdout."""
    import contextlib
    import io

    from dist_s2s.cli import main
    from dist_s2s.train.checkpoint import CheckpointDir

    run_dir = tmp_path_factory.mktemp("translate") / "run"
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), f"--data.root={SHARED_DATA}",
            f"--data.out_dir={prepared_tiny.data.out_dir}", f"--train.run_dir={run_dir}"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", *args, "--train.max_steps=30", "--eval.after_training=true", "--eval.beam_size=2"]) == 0
    checkpoint = str(CheckpointDir(run_dir / "checkpoints", 3).latest())
    return args, checkpoint, printed.getvalue()


def write_corpus(root: Path, prefix: str, src: bytes | str, tgt: bytes | str) -> None:
    """Write `<prefix>.en` / `<prefix>.fr` under root from raw bytes or text."""
    for suffix, content in (("en", src), ("fr", tgt)):
        path = root / f"{prefix}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def launcher_env(tmp_path: Path) -> dict[str, str]:
    """For torchrun / deepspeed on CPU: gloo, one thread a rank, launcher litter kept under tmp_path."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}


def assert_runs_under_nccl_rules(log_dir: Path) -> None:
    """The ranks' logged communication (DIST_S2S_COMM_LOG) completes under NCCL's rules, whichever way
    PyTorch sets up the communicators (`dist_s2s.parallel.nccl_rules`)."""
    from dist_s2s.parallel.nccl_rules import COMMUNICATOR_MODELS, load, replay

    ranks = load(log_dir)
    for model in COMMUNICATOR_MODELS:
        verdict = replay(ranks, model)
        assert verdict.ok, f"{model} communicators: {verdict}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again before returning)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, seconds: float, alive=lambda: True) -> None:
    """Poll until `url` answers at all (an HTTP error status counts: the server is up).

    Gives up after `seconds`, or as soon as `alive()` says the server process has died.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline or not alive():
                raise
            time.sleep(0.5)


def start_mlflow_server(directory: Path, port: int):
    """cluster/start-mlflow-server.sh on `port`, its store in `directory`; the process once /health
    answers (a restart on the same directory keeps the runs)."""
    import signal
    import subprocess

    with open(directory / "server.log", "a") as log:
        server = subprocess.Popen(["bash", str(REPO / "cluster" / "start-mlflow-server.sh")], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "MLFLOW_STORE": str(directory), "MLFLOW_PORT": str(port)})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", 90, alive=lambda: server.poll() is None)
    except OSError:
        os.killpg(server.pid, signal.SIGKILL)
        raise RuntimeError((directory / "server.log").read_text()[-2000:]) from None
    return server


def stop_server(server) -> None:
    """SIGKILL the server's whole process group (gunicorn/uvicorn workers included)."""
    import signal

    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def listening_addresses(pid: int) -> set[str]:
    """The IP addresses that process `pid` and its descendants accept connections on
    (IPv4-mapped IPv6 as plain IPv4: ::ffff:127.0.0.1 is 127.0.0.1)."""
    import ipaddress

    import psutil

    root = psutil.Process(pid)
    processes = {root.pid, *(child.pid for child in root.children(recursive=True))}
    addresses = set()
    for connection in psutil.net_connections("inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in processes:
            address = ipaddress.ip_address(connection.laddr.ip)
            addresses.add(str(getattr(address, "ipv4_mapped", None) or address))
    return addresses
