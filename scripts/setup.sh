#!/usr/bin/env bash
# One command from a fresh clone to a working .venv: `bash scripts/setup.sh` (`--dry-run`: print the
# commands instead of running them).
#
# Order matters (docs/platform.md): torch first, pinned (constraints.txt), so nothing later resolves
# another build; then DeepSpeed built against that torch; then the package itself.
# Which torch: the CUDA build on a GPU host (nvidia-smi lists a GPU), the CPU build elsewhere;
# DIST_S2S_DEVICE=cpu|cuda overrides the detection. On a CPU host a CPU wheel the local pip
# configuration offers (find-links) is taken as it is, else the one on PyTorch's CPU index
# (DIST_S2S_TORCH_CPU_INDEX); a GPU host takes the default index's CUDA build (DIST_S2S_TORCH_INDEX
# to name another, e.g. https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        *) echo "setup: unknown argument $arg (the only one is --dry-run)" >&2; exit 2 ;;
    esac
done

TORCH_VERSION=$(sed -n 's/^torch==//p' constraints.txt)
CPU_INDEX="${DIST_S2S_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

detect_device() {
    case "${DIST_S2S_DEVICE:-}" in
        cpu|cuda) echo "$DIST_S2S_DEVICE (DIST_S2S_DEVICE)"; return ;;
        "") ;;
        *) echo "setup: DIST_S2S_DEVICE=$DIST_S2S_DEVICE is neither cpu nor cuda" >&2; exit 2 ;;
    esac
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        echo "cuda (nvidia-smi lists $(nvidia-smi -L | grep -c '^GPU ') GPU(s))"
    else
        echo "cpu (no GPU listed by nvidia-smi)"
    fi
}

run() {  # a command, or with --dry-run its line
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ $*"
    else
        "$@"
    fi
}

DETECTED=$(detect_device)
DEVICE=${DETECTED%% *}
echo "setup: device $DETECTED, torch $TORCH_VERSION"
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

run "$PYTHON" -m venv .venv
run "${PIP[@]}" install --quiet --upgrade pip setuptools wheel
if [ "$DEVICE" = cuda ]; then
    if [ -n "${DIST_S2S_TORCH_INDEX:-}" ]; then
        run "${PIP[@]}" install -c constraints.txt --index-url "$DIST_S2S_TORCH_INDEX" "torch==$TORCH_VERSION"
    else  # `===`: exactly this version, not a local CPU build of it (2.13.0+cpu sorts above 2.13.0 and would win)
        run "${PIP[@]}" install -c constraints.txt "torch===$TORCH_VERSION"
    fi
    run "${PIP[@]}" install -c constraints.txt --no-build-isolation deepspeed
else
    export DS_ACCELERATOR=cpu   # build DeepSpeed's CPU ops, use gloo
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ ${PIP[*]} install --no-index --no-deps torch==$TORCH_VERSION+cpu   (a local CPU wheel; else:)"
        echo "+ ${PIP[*]} install -c constraints.txt --extra-index-url $CPU_INDEX torch==$TORCH_VERSION+cpu"
    elif "${PIP[@]}" install --quiet --no-index --no-deps "torch==$TORCH_VERSION+cpu" 2>/dev/null; then
        echo "setup: torch $TORCH_VERSION+cpu from the local pip configuration"
    else
        "${PIP[@]}" install -c constraints.txt --extra-index-url "$CPU_INDEX" "torch==$TORCH_VERSION+cpu"
    fi
    run "${PIP[@]}" install -c constraints.txt torch   # its dependencies; torch itself is there
    run env DS_BUILD_SHM_COMM=1 "${PIP[@]}" install -c constraints.txt --no-build-isolation deepspeed
fi
run "${PIP[@]}" install -c constraints.txt -e ".[dev]"

if [ "$DRY_RUN" = 1 ]; then
    exit 0
fi
if [ "$DEVICE" = cpu ] && .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
    echo "setup: CUDA packages were pulled in on a CPU host; torch must stay the pinned CPU build (constraints.txt)" >&2
    exit 1
fi
if [ "$DEVICE" = cuda ] && ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
    echo "setup: a GPU host got torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') without CUDA;" \
        "set DIST_S2S_TORCH_INDEX to a CUDA wheel index (https://download.pytorch.org/whl/cu128)" >&2
    exit 1
fi
.venv/bin/python -c "import torch, deepspeed, ray, pyarrow, mlflow, sacremoses, sacrebleu; print('setup ok: torch', torch.__version__, '| cuda', torch.version.cuda, '| gpus', torch.cuda.device_count(), '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)"
