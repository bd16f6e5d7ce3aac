#!/usr/bin/env bash
# The GPU checks for a machine that reaches no package registry and brings its own Python and torch (a cluster
# node, a rented box, the lent GPU machine: Python 3.12, torch 2.11+cu130, no DeepSpeed, MLflow or sacremoses).
#
#   bash benchmarks/gpu_kit.sh build [--python 3.12] [--kit .gpu-kit] [--data DIR]   # here, with the registry
#   bash benchmarks/gpu_kit.sh install [--kit .gpu-kit]                               # there: the wheels only
#   bash benchmarks/gpu_kit.sh run [--kit .gpu-kit]                                   # there: install, then check
#
# `build` gathers into one folder (ignored by git, under 64 MiB: what such a machine takes beside the
# repository) the wheels that machine lacks, for its Python: DeepSpeed built here as a wheel with no ops,
# mlflow-skinny (MLflow's tracking without its web UI, 4 MB against 30) with SQLAlchemy and Alembic for the
# sqlite store, sacremoses, and every dependency of theirs the machine's image does not carry
# (benchmarks/gpu_image_packages.txt); and the main job's prepared Multi30k shards (Ray is not needed there).
# `run` installs them with `pip --no-index --find-links` into the machine's own Python (PYTHON, default
# python3), on its own torch, runs the repository from where it lies (PYTHONPATH), and writes at most 8
# files to $OUT (default runs/gpu-kit): each part's time and status, the GPU tests, the main job's model
# trained in fp32 / TF32 / bf16 (words/s, MFU), the paper's model in fp32 / bf16 and as an 8-stage wavefront
# measured stage by stage on the one GPU, and the waits for the device that torch's sync debug mode counts.
# The parts' timeouts add up to 9 minutes: the whole run stays inside 10.
# docs/platform.md says how to carry the kit there.
set -euo pipefail
SCRIPT=$(realpath "$0")
cd "$(dirname "$0")/.."

COMMAND=${1:-}
[ $# -gt 0 ] && shift
KIT=.gpu-kit
TARGET_PYTHON=3.12
DATA=""
while [ $# -gt 0 ]; do
    case "$1" in
        --kit) KIT=$2; shift 2 ;;
        --python) TARGET_PYTHON=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        *) echo "gpu_kit: unknown argument $1 (--kit DIR, --python X.Y, --data DIR)" >&2; exit 2 ;;
    esac
done
LIMIT_MIB=64
eval "$(grep '^DEEPSPEED_ENV=' scripts/setup.sh)"  # DeepSpeed's build environment, named once, in the setup

build() {
    local py=.venv/bin/python
    [ -x "$py" ] || { echo "gpu_kit: build needs the .venv of \`bash scripts/setup.sh\`" >&2; exit 1; }
    work=$(mktemp -d)  # global: the exit trap removes it
    trap 'rm -rf "$work"' EXIT
    rm -rf "$KIT"
    mkdir -p "$KIT/wheels" "$KIT/data"
    local pip=("$py" -m pip --disable-pip-version-check)
    local platforms=(--python-version "$TARGET_PYTHON" --implementation cp --only-binary=:all:
                     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
    local deepspeed mlflow
    deepspeed=$(sed -n 's/^deepspeed==//p' constraints.txt)
    mlflow=$(sed -n 's/^mlflow==//p' constraints.txt)

    echo "gpu_kit: DeepSpeed $deepspeed as a wheel with no ops (built against this torch, pure Python)"
    "${pip[@]}" download --quiet --no-deps --no-binary :all: "deepspeed==$deepspeed" -d "$work/sdist"
    env "${DEEPSPEED_ENV[@]}" "${pip[@]}" wheel --quiet --no-deps --no-build-isolation \
        "$work"/sdist/deepspeed-*.tar.gz -w "$KIT/wheels"

    local wanted=("deepspeed==$deepspeed" "mlflow-skinny==$mlflow" sqlalchemy alembic sacremoses)
    echo "gpu_kit: resolving ${wanted[*]} for Python $TARGET_PYTHON, without what the machine's image carries"
    # DeepSpeed's own requirements but torch: the machine's torch stays (resolved here, it would bring a CUDA
    # stack of its own choosing).
    "$py" - "$KIT"/wheels/deepspeed-*.whl > "$work/deepspeed-requirements.txt" <<'PY'
import re, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
metadata = wheel.read(next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))).decode()
for line in metadata.splitlines():
    if line.startswith("Requires-Dist: ") and "extra ==" not in line and not re.match(r"torch\b", line[15:]):
        print(line[15:])
PY
    "${pip[@]}" install --quiet --dry-run --ignore-installed --report "$work/report.json" --target "$work/none" \
        "${platforms[@]}" "${wanted[@]:1}" -r "$work/deepspeed-requirements.txt"
    "$py" - "$work/report.json" benchmarks/gpu_image_packages.txt "$work/missing.txt" <<'PY'
import json, re, sys
normal = lambda name: re.sub(r"[-_.]+", "-", name).lower()
image = {normal(line.split("#")[0].strip()) for line in open(sys.argv[2]) if line.split("#")[0].strip()}
report = json.load(open(sys.argv[1]))["install"]
missing = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in report
           if normal(item["metadata"]["name"]) not in image and normal(item["metadata"]["name"]) != "deepspeed"]
open(sys.argv[3], "w").write("\n".join(missing) + "\n")
PY
    xargs "${pip[@]}" download --quiet --no-deps "${platforms[@]}" -d "$KIT/wheels" < "$work/missing.txt"
    printf '%s\n' "${wanted[@]}" > "$KIT/requirements.txt"

    local data=${DATA:-runs/data/multi30k}
    if [ -z "$DATA" ] && [ ! -f "$data/manifest.json" ]; then
        echo "gpu_kit: preparing the main job's Multi30k into $data"
        "$py" -m dist_s2s prepare --config configs/multi30k.yaml
    fi
    cp -r "$data" "$KIT/data/multi30k"

    local mib
    mib=$(du -sm "$KIT" | cut -f1)
    {
        echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), Python $TARGET_PYTHON"
        (cd "$KIT" && find . -type f -printf '%s %p\n' | sort -k2)
    } > "$KIT/CONTENTS.txt"
    echo "gpu_kit: $KIT holds $(find "$KIT/wheels" -name '*.whl' | wc -l) wheels and the Multi30k shards: $mib MiB" \
        "(limit $LIMIT_MIB)"
    if [ "$mib" -ge "$LIMIT_MIB" ]; then
        echo "gpu_kit: the kit is $mib MiB, over the $LIMIT_MIB MiB a GPU machine takes beside the repository" >&2
        exit 1
    fi
}

install_kit() {  # into the Python that runs there, which keeps its own torch; nothing from an index
    local py=${PYTHON:-python3}
    [ -d "$KIT/wheels" ] || { echo "gpu_kit: no kit at $KIT: run \`bash benchmarks/gpu_kit.sh build\` here first" >&2; exit 1; }
    "$py" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$KIT/wheels" \
        -r "$KIT/requirements.txt"
    "$py" -c "import torch, deepspeed, mlflow, sacremoses; print('gpu_kit: installed deepspeed', deepspeed.__version__, '| mlflow', mlflow.__version__, '| on torch', torch.__version__)"
}

OUT_DIR=${OUT:-runs/gpu-kit}
STARTED=$SECONDS
FAILED=()
part() {  # part NAME SECONDS COMMAND...: run it under a timeout, its time and status into the run's log
    local name=$1 limit=$2 began=$SECONDS status=0
    shift 2
    echo "gpu_kit: $name"
    timeout "$limit" "$@" || status=$?
    echo "gpu_kit: $name took $((SECONDS - began)) s$([ "$status" = 0 ] || echo ", FAILED ($status)")" | tee -a "$OUT_DIR/kit-run.log"
    [ "$status" = 0 ] || FAILED+=("$name")
}

run() {
    local py=${PYTHON:-python3} data="$KIT/data/multi30k"
    mkdir -p "$OUT_DIR"
    : > "$OUT_DIR/kit-run.log"
    part "install the kit's wheels" 60 bash "$SCRIPT" install --kit "$KIT"
    [ "${#FAILED[@]}" = 0 ] || exit 1
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MLFLOW_DISABLE_TELEMETRY=true PYTHONUNBUFFERED=1
    if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_kit: the kit is installed, but $py's torch sees no CUDA GPU: nothing more to check here" \
            | tee -a "$OUT_DIR/kit-run.log" >&2
        exit 1
    fi
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
      "$py" -c "import torch, deepspeed, mlflow; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '| capability', torch.cuda.get_device_capability(), '|', torch.cuda.get_device_name(), '| deepspeed', deepspeed.__version__, '| mlflow', mlflow.__version__)"
    } > "$OUT_DIR/environment.txt" 2>&1
    part "GPU tests" 120 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py -o junit_family=legacy \
        --junitxml="$OUT_DIR/gpu-tests.xml"
    part "the main job's model, 200 steps in fp32, tf32, bf16" 120 "$py" -m dist_s2s bench \
        --config configs/multi30k.yaml --batches "$data" --mode single/fp32 single/tf32 single/bf16 --steps 200 \
        --warmup 10 --output "$OUT_DIR/bench-main.json"
    part "the paper's model, fp32 and bf16" 90 "$py" -m dist_s2s bench --config configs/paper.yaml --batches "$data" \
        --mode single/fp32 single/bf16 --steps 5 --warmup 2 --output "$OUT_DIR/bench-paper.json"
    part "the paper's 8-stage wavefront, stage by stage on one GPU" 90 "$py" benchmarks/pipeline_simulator.py \
        --config configs/paper.yaml --batches "$data" --stages 8 --parallel.schedule=wavefront --steps 4 \
        --no-measure --link-gbps 450 --link-latency-us 5 --output "$OUT_DIR/wavefront-paper.json"
    part "waits for the device (torch.cuda.set_sync_debug_mode)" 60 "$py" benchmarks/gpu_syncs.py --batches "$data" \
        --output "$OUT_DIR/syncs.json"
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo "gpu_kit: done in $((SECONDS - STARTED)) s; FAILED: ${FAILED[*]}" | tee -a "$OUT_DIR/kit-run.log"
        exit 1
    fi
    echo "gpu_kit: done in $((SECONDS - STARTED)) s, every part passed" | tee -a "$OUT_DIR/kit-run.log"
}

case "$COMMAND" in
    build) build ;;
    install) install_kit ;;
    run) run ;;
    *) echo "gpu_kit: say build (here), install or run (on the GPU machine)" >&2; exit 2 ;;
esac
