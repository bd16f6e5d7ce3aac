#!/usr/bin/env bash
# One command from a fresh clone to a working .venv: `bash scripts/setup.sh` (`--dry-run`: print the
# commands instead of running them; `--check`: only the checks that end a setup, on the .venv there is).
#
# Order matters (docs/platform.md): torch first, pinned (constraints.txt), so nothing later resolves
# another build; then DeepSpeed built against that torch; then the package itself.
# Which torch: on a GPU host (nvidia-smi lists a GPU) the CUDA build its driver runs, read off nvidia-smi's
# "CUDA Version" (the newest CUDA the driver runs): PyPI's default build is CUDA 13, which needs the R580
# driver branch or newer; a CUDA 12 driver (R525 to R575) gets PyTorch's CUDA 12 wheel index
# (DIST_S2S_TORCH_CUDA12_INDEX); DIST_S2S_TORCH_INDEX names any index and wins. The CPU build elsewhere:
# a CPU wheel the local pip configuration offers (find-links) as it is, else the one on PyTorch's CPU
# index (DIST_S2S_TORCH_CPU_INDEX). DIST_S2S_DEVICE=cpu|cuda overrides the detection. A GPU host ends
# with torch's GPU count checked against nvidia-smi's: a torch that cannot see the GPUs fails the setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        --check) CHECK_ONLY=1 ;;
        *) echo "setup: unknown argument $arg (--dry-run or --check)" >&2; exit 2 ;;
    esac
done

TORCH_VERSION=$(sed -n 's/^torch==//p' constraints.txt)
CPU_INDEX="${DIST_S2S_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
# PyTorch's CUDA 12 builds, for drivers older than R580: CUDA 12.6 runs on every CUDA 12 driver (R525 on,
# CUDA's minor-version compatibility); the one place this index is named.
CUDA12_INDEX="${DIST_S2S_TORCH_CUDA12_INDEX:-https://download.pytorch.org/whl/cu126}"
# DeepSpeed's build, on every host: no op compiled (they are built when first used, and this project uses
# none of its CUDA ops), no look for a CUDA toolkit: its setup.py asks every op builder whether it could be
# built, and on a host whose torch sees a GPU but which has no nvcc or CUDA_HOME several of them raise
# "CUDA_HOME does not exist" (DeepSpeed issues #6636, #2772).
DEEPSPEED_ENV=(DS_BUILD_OPS=0 DS_IGNORE_CUDA_DETECTION=1)

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

driver_cuda() {  # the newest CUDA the driver runs, from nvidia-smi's header: "13.0", "12.4"; empty without it
    nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1
}

driver_version() {
    nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1
}

torch_index() {  # the index a GPU host's torch comes from ("" for PyPI's default, its CUDA 13 build)
    if [ -n "${DIST_S2S_TORCH_INDEX:-}" ]; then
        echo "$DIST_S2S_TORCH_INDEX"
        return
    fi
    local cuda major
    cuda=$(driver_cuda)
    major=${cuda%%.*}
    if [ -z "$cuda" ] || [ "$major" -ge 13 ]; then
        echo ""
    elif [ "$major" -eq 12 ]; then
        echo "$CUDA12_INDEX"
    else
        echo "setup: the NVIDIA driver $(driver_version) runs CUDA $cuda at most; torch $TORCH_VERSION needs a CUDA 12" \
            "driver (R525 or newer) or CUDA 13 (R580): update the driver, or set DIST_S2S_DEVICE=cpu" >&2
        exit 1
    fi
}

check_setup() {  # what every setup ends with: the CPU host kept its CPU torch; a GPU host's torch sees its GPUs
    if [ "$DEVICE" = cpu ] && .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
        echo "setup: CUDA packages were pulled in on a CPU host; torch must stay the pinned CPU build (constraints.txt)" >&2
        exit 1
    fi
    if [ "$DEVICE" = cuda ]; then
        local listed seen build
        listed=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
        seen=$(.venv/bin/python -c "import torch; print(torch.cuda.device_count())")
        build=$(.venv/bin/python -c "import torch; print(torch.__version__, '(CUDA', (torch.version.cuda or 'none: a CPU build') + ')')")
        if [ "$seen" != "$listed" ]; then
            echo "setup: nvidia-smi lists $listed GPU(s) (driver $(driver_version), CUDA $(driver_cuda)) but torch $build" \
                "sees $seen: rerun \`bash scripts/setup.sh\` after \`rm -rf .venv\` (it picks the build by the driver's CUDA;" \
                "DIST_S2S_TORCH_INDEX names an index), or update the driver to R580+ for PyPI's CUDA 13 build" >&2
            exit 1
        fi
    fi
    .venv/bin/python -c "import torch, deepspeed, ray, pyarrow, mlflow, sacremoses, sacrebleu; print('setup ok: torch', torch.__version__, '| cuda', torch.version.cuda, '| gpus', torch.cuda.device_count(), '| deepspeed', deepspeed.__version__, '| ray', ray.__version__)"
}

install_browser() {  # Debian's Chromium and its driver: the serve page's test drives them (tests/test_serve.py)
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: chromium and chromium-driver are missing and this user cannot apt-get them; the page's" \
            "browser test is skipped until they are there (sudo apt-get install chromium chromium-driver)" >&2
        return
    fi
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
        || { run apt-get update -q && run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } \
        || echo "setup: apt-get could not install chromium and chromium-driver; the page's browser test is skipped" >&2
}

DETECTED=$(detect_device)
DEVICE=${DETECTED%% *}
if [ "$CHECK_ONLY" = 1 ]; then
    check_setup
    exit 0
fi
if [ "$DEVICE" = cuda ]; then
    INDEX=$(torch_index)
    echo "setup: device $DETECTED, driver $(driver_version) runs CUDA $(driver_cuda); torch $TORCH_VERSION from ${INDEX:-PyPI (its CUDA 13 build)}"
else
    echo "setup: device $DETECTED, torch $TORCH_VERSION"
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

run "$PYTHON" -m venv .venv
run "${PIP[@]}" install --quiet --upgrade pip setuptools wheel
if [ "$DEVICE" = cuda ]; then
    if [ -n "$INDEX" ]; then  # e.g. 2.13.0+cu126: the local version is the index's
        run "${PIP[@]}" install -c constraints.txt --index-url "$INDEX" "torch==$TORCH_VERSION"
    else  # `===`: exactly this version, not a local CPU build of it (2.13.0+cpu sorts above 2.13.0 and would win)
        run "${PIP[@]}" install -c constraints.txt "torch===$TORCH_VERSION"
    fi
    run env "${DEEPSPEED_ENV[@]}" "${PIP[@]}" install -c constraints.txt --no-build-isolation deepspeed
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
    run env "${DEEPSPEED_ENV[@]}" DS_BUILD_SHM_COMM=1 "${PIP[@]}" install -c constraints.txt --no-build-isolation deepspeed
fi
run "${PIP[@]}" install -c constraints.txt -e ".[dev]"
install_browser

if [ "$DRY_RUN" = 1 ]; then
    exit 0
fi
check_setup
