"""`prepare` submitted with `ray job submit` to a Ray head started on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO, SHARED_DATA, listening_addresses

pytestmark = pytest.mark.launcher


def head_processes() -> list[int]:
    """The Ray head's processes (GCS server, raylet, dashboard and its agents) running now."""
    import psutil

    names = ("gcs_server", "raylet", "dashboard")
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(name in " ".join(p.info["cmdline"] or []) for name in names)]


def readme_recipe() -> str:
    """cluster/README.md's one-machine commands, as a reader would paste them."""
    text = (REPO / "cluster" / "README.md").read_text()
    block = text.split("## One machine", 1)[1].split("```\n", 2)[1]
    return block


@pytest.mark.alone  # `ray stop` ends every Ray on the machine
def test_the_cluster_readmes_one_machine_recipe_runs_as_written(tmp_path):
    """The recipe's lines, unchanged, in a shell whose working directory looks like a checkout beside
    ../shared/data (links to the real ones) and whose home holds the generated token. `ray stop` ends every
    Ray on the machine, this session's in-process one too where one runs: it is stopped first and started
    again after."""
    import ray
    from conftest import start_local_ray

    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "cluster", "configs", "dist_s2s"):
        (work / name).symlink_to(REPO / name)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(tmp_path / "home"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    *lines, stop = readme_recipe().strip().splitlines()
    assert stop.startswith("ray stop"), "the recipe ends by stopping Ray"
    in_process = ray.is_initialized()
    ray.shutdown()
    try:  # every line but the last; the head's ports are looked at before the last line stops it
        result = subprocess.run(["bash", "-e", "-c", "\n".join(lines)], cwd=work, env=env, capture_output=True,
                                text=True, timeout=600)
        addresses = set().union(*map(listening_addresses, head_processes()))
        stopped = subprocess.run(["bash", "-e", "-c", "\n".join([lines[0], stop])], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run([str(REPO / ".venv" / "bin" / "ray"), "stop", "--force"], capture_output=True, env=env)
        if in_process:
            start_local_ray()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout
    assert "joining Ray cluster" in result.stdout, "the job's prepare ran on the head's cluster, not a private Ray"
    assert addresses == {"127.0.0.1"}, "every port of the head binds 127.0.0.1"
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    manifest = json.loads((work / "runs" / "data" / "multi30k" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows_in"] == 29_000
