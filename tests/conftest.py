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

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared_tiny(ray_local, tmp_path_factory) -> Config:
    """The tiny config prepared once (Multi30k train/valid/test2016)."""
    from dist_s2s.data.prepare import prepare

    config = tiny_config(tmp_path_factory.mktemp("tiny"))
    prepare(config)
    return config


def write_corpus(root: Path, prefix: str, src: bytes | str, tgt: bytes | str) -> None:
    """Write `<prefix>.en` / `<prefix>.fr` under root from raw bytes or text."""
    for suffix, content in (("en", src), ("fr", tgt)):
        path = root / f"{prefix}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def launcher_env(tmp_path: Path) -> dict[str, str]:
    """For torchrun / deepspeed on CPU: gloo, one thread a rank, launcher litter kept under tmp_path."""
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}


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
