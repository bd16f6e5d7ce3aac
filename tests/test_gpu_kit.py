"""The offline kit for a GPU machine (`benchmarks/gpu_kit.sh`): built here, installed with no package index.

The machine it is for brings its own Python and torch and reaches no registry. Here the kit is built for this
Python (the GPU machine's is 3.12: the same wheels but three binary ones), on a host whose torch claims a GPU
and which has no CUDA toolkit (tests/fake_gpu): DeepSpeed's build must not look for one. It is installed into a
fresh virtual environment that holds what the GPU machine's image holds (benchmarks/gpu_image_packages.txt,
taken from this .venv: this CPU torch among them) and nothing else, with no index.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.launcher

KIT_SCRIPT = REPO / "benchmarks" / "gpu_kit.sh"
FAKE_GPU = {"FAKE_VISIBLE_GPU": "1", "DS_ACCELERATOR": "cuda", "PYTHONPATH": str(REPO / "tests" / "fake_gpu")}
"""A torch that sees a GPU, DeepSpeed told so, and no CUDA_HOME (removed from the environment below)."""


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "PYTHONPATH")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def kit(prepared_tiny, tmp_path_factory) -> Path:
    kit = tmp_path_factory.mktemp("gpu-kit") / "kit"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    result = subprocess.run(["bash", str(KIT_SCRIPT), "build", "--python", version, "--kit", str(kit), "--data",
                             prepared_tiny.data.out_dir], capture_output=True, text=True, cwd=REPO, timeout=900,
                            env=environment(**FAKE_GPU))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return kit


def test_the_kit_holds_deepspeed_built_with_no_op_and_stays_under_64_mib(kit):
    wheels = sorted(path.name for path in (kit / "wheels").glob("*.whl"))
    assert "deepspeed-0.19.8-py3-none-any.whl" in wheels, "pure Python: no op compiled, for any Python"
    assert any(name.startswith("mlflow_skinny-") for name in wheels) and any(name.startswith("sacremoses-")
                                                                               for name in wheels)
    image = {re.sub(r"[-_.]+", "-", line.strip()).lower()
             for line in (REPO / "benchmarks" / "gpu_image_packages.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    carried = {re.sub(r"[-_.]+", "-", name.split("-")[0]).lower() for name in wheels}
    assert not carried & image, f"the machine has these already: {carried & image}"
    assert not any(name.startswith(("torch-", "nvidia_", "triton-")) for name in wheels), "the machine's torch stays"
    size = sum(path.stat().st_size for path in kit.rglob("*") if path.is_file())
    assert size < 64 * 2**20, f"{size / 2**20:.1f} MiB"
    assert (kit / "data" / "multi30k" / "manifest.json").is_file()


def test_deepspeeds_build_as_setup_did_it_before_fails_where_torch_sees_a_gpu_without_cuda_home(tmp_path):
    """The failure of DeepSpeed issues #6636 and #2772, met on the fake host: the fixture's build, with setup.sh's
    DeepSpeed environment, gets past it."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "download", "--quiet", "--no-deps", "--no-binary", ":all:", "deepspeed==0.19.8", "-d",
                    str(tmp_path)], check=True, capture_output=True, timeout=300)
    result = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", *tmp_path.glob("deepspeed-*.tar.gz"),
                             "-w", str(tmp_path / "wheels")], capture_output=True, text=True, timeout=600,
                            env=environment(**FAKE_GPU))
    assert result.returncode != 0 and "CUDA_HOME does not exist" in result.stdout + result.stderr


def image_like_venv(tmp_path: Path) -> Path:
    """A fresh virtual environment holding the GPU image's packages (pip and setuptools among them), taken from this
    .venv (links on its path)."""
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    image_site = tmp_path / "image-site"
    image_site.mkdir()
    site = Path(importlib.metadata.distribution("torch").locate_file(""))
    names = [line.strip() for line in (REPO / "benchmarks" / "gpu_image_packages.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for name in names:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue  # on the GPU machine, not in this .venv: nothing needs it here
        for top in {file.parts[0] for file in files if file.parts[0] != ".."}:
            if (site / top).exists() and not (image_site / top).exists():
                (image_site / top).symlink_to(site / top)
    # On the image, not in this CPU .venv: DeepSpeed built for CUDA requires NVIDIA's management library.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(image_site),
                    "nvidia-ml-py"], check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "gpu-image.pth").write_text(f"{image_site}\n")
    return venv


def test_run_installs_the_kit_with_no_index_into_a_fresh_environment_and_stops_where_no_gpu_is(kit, tmp_path):
    venv = image_like_venv(tmp_path)
    python = str(venv / "bin" / "python")
    missing = subprocess.run([python, "-c", "import deepspeed"], capture_output=True, text=True)
    assert missing.returncode != 0, "the fresh environment starts without DeepSpeed"
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(KIT_SCRIPT), "run", "--kit", str(kit)], capture_output=True, text=True,
                            cwd=REPO, timeout=600, env=environment(PYTHON=python, OUT=str(out), PIP_NO_INDEX="1",
                                                                   PIP_CONFIG_FILE=os.devnull))
    assert "gpu_kit: installed deepspeed 0.19.8 | mlflow 3.17.2 | on torch 2.13.0+cpu" in result.stdout, \
        result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 1 and "sees no CUDA GPU" in result.stderr
    assert "install the kit's wheels took" in (out / "kit-run.log").read_text()
    imports = subprocess.run([python, "-c", "import deepspeed, mlflow, sacremoses, sqlalchemy, alembic"],
                             capture_output=True, text=True)
    assert imports.returncode == 0, imports.stderr[-2000:]
