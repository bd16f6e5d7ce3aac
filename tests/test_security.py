"""What a checkpoint or a command line can make the project do: no shell, no code from checkpoints.

(Pickled checkpoints refused: tests/test_bad_input.py; the MLflow server and the Ray head of
cluster/ on 127.0.0.1 only: tests/test_tracking_server.py and tests/test_ray_job.py.)
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, SHARED_DATA, listening_addresses


def calls_with_a_shell(path) -> list[str]:
    """`file:line` of every call passing shell= anything but a literal False."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_process_is_started_through_a_shell():
    files = [p for folder in ("dist_s2s", "benchmarks", "tests", "cluster") for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 50
    assert [hit for path in files for hit in calls_with_a_shell(path)] == []


def test_checkpoints_are_only_ever_read_with_weights_only():
    loads = []
    for path in (REPO / "dist_s2s").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            is_torch_load = (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load"
                             and getattr(node.func.value, "id", None) == "torch")
            if is_torch_load:
                safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
                loads.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert loads and all(safe for _, safe in loads), loads


def test_the_in_process_ray_of_prepare_listens_on_127_0_0_1_only(tmp_path):
    """What `dist-s2s prepare` starts without a cluster (GCS, raylet, workers, agents)."""
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # as a user has it
    config = str(REPO / "configs" / "tiny.yaml")
    run = subprocess.Popen([sys.executable, "-m", "dist_s2s", "prepare", "--config", config,
                            f"--data.root={SHARED_DATA}", f"--data.out_dir={tmp_path}", "--data.chunk_lines=1000"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any("ray::tokenize_chunk" in " ".join(p.cmdline()) for p in _children(run.pid)):
            assert time.monotonic() < deadline and run.poll() is None, "no Ray task was seen running"
        assert listening_addresses(run.pid) == {"127.0.0.1"}
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the driver and every Ray process it started
        run.wait()


def _children(pid: int) -> list:
    import psutil

    processes = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            child.cmdline()
            processes.append(child)
        except psutil.NoSuchProcess:
            continue
    return processes
