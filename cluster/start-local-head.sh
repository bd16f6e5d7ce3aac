#!/usr/bin/env bash
# A one-machine Ray "cluster" for trying `ray job submit` (and for the integration test).
# Binds the dashboard and job API to 127.0.0.1. Stop it with `ray stop` (stops every Ray process
# on this machine) or, when started with --block, by signalling its process group.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"   # jobs run `dist-s2s` from the head's environment
# Token authentication on (Ray's default for local clusters since 2.59): clients such as
# `ray job submit` need the same token, from ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH.
export RAY_AUTH_MODE=token
# Ray 2.60 turns --node-ip-address=127.0.0.1 into the machine's external IP and binds its GCS, raylet
# and workers on all interfaces; with this (Ray's "no multi-node cluster" switch, named for
# Windows/macOS) every process binds 127.0.0.1. Unset it to let other machines join.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
if [ -z "${RAY_AUTH_TOKEN_PATH:-}${RAY_AUTH_TOKEN:-}" ]; then
    ray get-auth-token --generate >/dev/null
fi
exec ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
    --num-cpus="${RAY_NUM_CPUS:-2}" --object-store-memory=500000000 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" \
    --disable-usage-stats "$@"
