"""`prepare` submitted with `ray job submit` to a Ray head started on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA, free_port, listening_addresses, wait_for_http

pytestmark = pytest.mark.launcher


def forget_cluster(port: str) -> None:
    """Remove Ray's pointer to this head (`ray stop` would, but it stops every Ray on the machine)."""
    pointer = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if pointer.is_file() and pointer.read_text().strip().endswith(f":{port}"):
        pointer.unlink()


def client_env(token) -> dict[str, str]:
    """This process' environment, with the head's auth token and no inherited cluster address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    return {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@pytest.fixture
def local_head(tmp_path):
    """A Ray head in its own process group (`--block`), so stopping it spares the test's own Ray."""
    dashboard = free_port()
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**client_env(token), "RAY_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(dashboard),
           "RAY_NUM_CPUS": "2"}
    # Every raylet's dashboard agent listens on 52365 unless told otherwise, and this session's
    # in-process Ray (and ray.init cannot move it) may hold that port: without its agent the
    # head answers every submission with "No available agent to submit job".
    agent_port = str(free_port())
    head = subprocess.Popen(["bash", str(REPO / "cluster" / "start-local-head.sh"), "--block",
                             f"--dashboard-agent-listen-port={agent_port}"], env=env,
                            stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_http(f"{address}/api/version", 90)  # 401 under token auth: up
        yield address, client_env(token), head.pid
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # anything left in the group
            except ProcessLookupError:
                pass
            forget_cluster(env["RAY_PORT"])


def submit(address: str, env: dict[str, str], *entrypoint: str, seconds: float = 120) -> subprocess.CompletedProcess:
    """`ray job submit`, retried while the head's job agent is still starting (Ray says: try again later)."""
    deadline = time.monotonic() + seconds
    while True:
        result = subprocess.run(
            [str(REPO / ".venv" / "bin" / "ray"), "job", "submit", "--address", address,
             "--working-dir", str(REPO / "configs"), "--", *entrypoint],
            capture_output=True, text=True, timeout=400, env=env,
        )
        if "No available agent to submit job" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_prepare_runs_as_a_ray_job_and_writes_the_manifest(local_head, tmp_path):
    address, env, head = local_head
    assert listening_addresses(head) == {"127.0.0.1"}, "every port of the head binds 127.0.0.1"
    out_dir = tmp_path / "shards"
    result = submit(address, env, "dist-s2s", "prepare", "--config", "tiny.yaml",
                    f"--data.root={SHARED_DATA}", f"--data.out_dir={out_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert "joining Ray cluster" in result.stdout, "the job's prepare ran on the head's cluster, not a private Ray"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows_in"] == 29_000
    assert {"shards", "vocab", "filtered"} <= set(manifest)



def readme_recipe() -> str:
    """cluster/README.md's one-machine commands, as a reader would paste them."""
    text = (REPO / "cluster" / "README.md").read_text()
    block = text.split("## One machine", 1)[1].split("```\n", 2)[1]
    return block


def test_the_cluster_readmes_one_machine_recipe_runs_as_written(ray_local, tmp_path):
    """The recipe's lines, unchanged, in a shell whose working directory looks like a checkout beside
    ../shared/data (links to the real ones) and whose home holds the generated token. `ray stop` ends every
    Ray on the machine, this session's in-process one too: it is stopped first and started again after."""
    from conftest import start_local_ray

    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "cluster", "configs", "dist_s2s"):
        (work / name).symlink_to(REPO / name)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray_local.shutdown()
    try:
        result = subprocess.run(["bash", "-e", "-c", readme_recipe()], cwd=work, env=env, capture_output=True,
                                text=True, timeout=600)
    finally:
        subprocess.run([str(REPO / ".venv" / "bin" / "ray"), "stop", "--force"], capture_output=True, env=env)
        start_local_ray()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    manifest = json.loads((work / "runs" / "data" / "multi30k" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows_in"] == 29_000
