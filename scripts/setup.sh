#!/usr/bin/env bash
# One command from a fresh clone to a working .venv: `bash scripts/setup.sh`.
# Order matters (docs/platform.md): torch first, pinned, so nothing later resolves a CUDA
# build; then DeepSpeed built against that torch with its shared-memory comm op compiled now
# instead of JIT-compiled at every first launch; then the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    export DS_ACCELERATOR=cpu   # no GPU: build DeepSpeed's CPU ops, use gloo
fi

"$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install --quiet --upgrade pip setuptools wheel
"${PIP[@]}" install -c constraints.txt torch
DS_BUILD_SHM_COMM=1 "${PIP[@]}" install -c constraints.txt --no-build-isolation deepspeed
"${PIP[@]}" install -c constraints.txt -e ".[dev]"

if .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "setup: CUDA packages were pulled in; torch must stay pinned (constraints.txt)" >&2
    exit 1
fi
.venv/bin/python -c "import torch, deepspeed, ray, pyarrow, mlflow, sacremoses, sacrebleu; print('setup ok: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)"
