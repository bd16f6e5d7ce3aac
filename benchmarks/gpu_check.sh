#!/usr/bin/env bash
# The first thing to run on a GPU machine, after `bash scripts/setup.sh` (under 8 minutes on one
# H200-class GPU; `--dry-run` prints the parts and their commands and runs nothing):
#     bash benchmarks/gpu_check.sh
# 1. the GPU tests (tests/test_gpu.py): the LSTM's real dtype under bf16 (bf16 or fp32, never fp16),
#    a training step and a beam search under torch.cuda.set_sync_debug_mode, the flat cuDNN weights,
#    and with two GPUs both pipelines on NCCL against one GPU, their messages replayed under NCCL's rules;
# 2. the Multi30k data: prepared already, or prepared from ../shared/data, or downloaded first;
# 3. `dist-s2s bench` on the paper's model (Multi30k's batch lengths) in fp32, tf32 and bf16 on one GPU
#    (and the 2-stage wavefront beside two processes side by side when there are two GPUs), into
#    benchmarks/results/bench-gpu-<device name>-paper.json.
# Each part prints its time. PYTHON names another interpreter than .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true
PY="${PYTHON:-.venv/bin/python}"
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        *) echo "gpu_check: unknown argument $arg (the only one is --dry-run)" >&2; exit 2 ;;
    esac
done

run() {  # a command, or with --dry-run its line
    if [ "$DRY_RUN" = 1 ]; then
        echo "  + $*"
    else
        "$@"
    fi
}

STARTED=$SECONDS
FAILED=()
part() {  # part NAME COMMAND...: run it, say how long it took; a failure is reported at the end
    local name=$1 began=$SECONDS status=0
    shift
    echo "gpu_check: $name"
    run "$@" || status=$?
    [ "$DRY_RUN" = 1 ] || echo "gpu_check: $name took $((SECONDS - began)) s$([ "$status" = 0 ] || echo ", FAILED ($status)")"
    [ "$status" = 0 ] || FAILED+=("$name")
}

if [ "$DRY_RUN" = 0 ] && ! { [ -x "$PY" ] && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }; then
    echo "gpu_check: no CUDA GPU visible to $PY; on a GPU machine run \`bash scripts/setup.sh\` first (it installs the CUDA build of torch; DIST_S2S_DEVICE=cuda forces it)" >&2
    exit 1
fi

GPUS=1
NAME="<device-name>"
if [ "$DRY_RUN" = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '|', torch.cuda.device_count(), 'x', torch.cuda.get_device_name())"
    GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    # The whole device name, made a file name: "NVIDIA H200" -> nvidia-h200, "NVIDIA A100-SXM4-80GB" -> nvidia-a100-sxm4-80gb
    NAME=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
fi

part "GPU tests" timeout 240 "$PY" -m pytest -q -m gpu tests/test_gpu.py

DATA=runs/data/multi30k
if [ -f "$DATA/manifest.json" ]; then
    echo "gpu_check: Multi30k prepared already in $DATA"
elif [ -d ../shared/data/multi30k ]; then
    part "prepare Multi30k from ../shared/data" "$PY" -m dist_s2s prepare --config configs/multi30k-paper.yaml
else
    part "download Multi30k" "$PY" -m dist_s2s download --config configs/multi30k-paper.yaml --data.root=runs/corpora
    part "prepare Multi30k" "$PY" -m dist_s2s prepare --config configs/multi30k-paper.yaml --data.root=runs/corpora
fi

MODES=(single/fp32 single/tf32 single/bf16)
if [ "$GPUS" -ge 2 ]; then
    MODES+=(side-by-side:2/bf16 pipeline:2/wavefront+bf16)
fi
part "bench, the paper's model on Multi30k's lengths" timeout 300 "$PY" -m dist_s2s bench --config configs/paper.yaml \
    --batches "$DATA" --mode "${MODES[@]}" --steps 5 --warmup 2 --output "benchmarks/results/bench-gpu-$NAME-paper.json"
[ "$DRY_RUN" = 1 ] && exit 0
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: done in $((SECONDS - STARTED)) s; FAILED: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: done in $((SECONDS - STARTED)) s, every part passed"
