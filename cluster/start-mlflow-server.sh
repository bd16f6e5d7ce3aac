#!/usr/bin/env bash
# An MLflow tracking server for runs that should share one history (several machines, a team):
#   bash cluster/start-mlflow-server.sh              # then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
# Binds 127.0.0.1 (MLflow has no authentication): set MLFLOW_HOST only on a trusted network,
# or reach it through an SSH tunnel. The store (sqlite + artifacts) is MLFLOW_STORE,
# default ./mlflow-server. Stop it by signalling its process group.
set -euo pipefail
cd "$(dirname "$0")/.."
store="${MLFLOW_STORE:-$PWD/mlflow-server}"
mkdir -p "$store"
export MLFLOW_DISABLE_TELEMETRY=true
# Tracking needs no GenAI job runner; with it, every start leaves a huey store in /dev/shm.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec .venv/bin/mlflow server --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
    --backend-store-uri "sqlite:///$store/server.db" --artifacts-destination "$store/artifacts" \
    --workers "${MLFLOW_WORKERS:-1}" "$@"
