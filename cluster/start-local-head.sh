#!/usr/bin/env bash
# A one-machine Ray "cluster" for trying `ray job submit` (and for the tests). Binds the dashboard and job
# API to 127.0.0.1, and returns once the head accepts jobs (with --block it stays in the foreground instead).
# Stop it with `ray stop` (stops every Ray process on this machine) or, when started with --block, by
# signalling its process group.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"   # jobs run `dist-s2s` from the head's environment
# Token authentication on (Ray's default for local clusters since 2.59): clients such as
# `ray job submit` need the same token, from ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH, and
# RAY_AUTH_MODE=token in their environment.
export RAY_AUTH_MODE=token
# Ray 2.60 turns --node-ip-address=127.0.0.1 into the machine's external IP and binds its GCS, raylet
# and workers on all interfaces; with this (Ray's "no multi-node cluster" switch, named for
# Windows/macOS) every process binds 127.0.0.1. Unset it to let other machines join.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
if [ -z "${RAY_AUTH_TOKEN_PATH:-}${RAY_AUTH_TOKEN:-}" ]; then
    ray get-auth-token --generate >/dev/null
fi
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
START=(ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}"
       --num-cpus="${RAY_NUM_CPUS:-2}" --object-store-memory=500000000
       --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT"
       --disable-usage-stats "$@")
for arg in "$@"; do
    if [ "$arg" = --block ]; then
        exec "${START[@]}"
    fi
done
"${START[@]}" >/dev/null
# Right after `ray start` the job agent may still be starting ("No available agent to submit job"):
# wait until the job API answers, so that the next command can submit.
for _ in $(seq 120); do
    if ray job list --address "http://127.0.0.1:$DASHBOARD_PORT" >/dev/null 2>&1; then
        echo "Ray head on 127.0.0.1 accepts jobs at http://127.0.0.1:$DASHBOARD_PORT (RAY_AUTH_MODE=token to submit)"
        exit 0
    fi
    sleep 1
done
echo "start-local-head: the head started but its job API did not answer within 120 s (see ray status)" >&2
exit 1
