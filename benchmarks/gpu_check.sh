#!/usr/bin/env bash
# The first thing to run on a GPU machine (under 8 minutes on one GPU):
#     bash benchmarks/gpu_check.sh
# 1. the GPU tests (tests/test_gpu.py): the LSTM's dtype under bf16, a training step that never waits for
#    the device (torch.cuda.set_sync_debug_mode("error")), 1 vs 2 GPUs in fp32 when there are two;
# 2. `dist-s2s bench` on the paper's model (Multi30k's batch lengths) in fp32, tf32 and bf16, one device,
#    JSON with the device's name in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true
[ -d .venv ] || bash scripts/setup.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
.venv/bin/python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
timeout 240 .venv/bin/python -m pytest -q -m gpu tests/test_gpu.py || echo "gpu_check: GPU tests FAILED (above)"
[ -f runs/data/multi30k/manifest.json ] || .venv/bin/dist-s2s prepare --config configs/multi30k-paper.yaml
name=$(.venv/bin/python -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
timeout 300 .venv/bin/dist-s2s bench --config configs/paper.yaml --batches runs/data/multi30k \
    --mode single/fp32 single/tf32 single/bf16 --steps 5 --warmup 2 \
    --output "benchmarks/results/bench-gpu-${name}-paper.json"
