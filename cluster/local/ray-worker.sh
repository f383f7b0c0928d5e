#!/usr/bin/env bash
# A second Ray node on this machine joining the head of ray-head.sh with the same token (a node without it is
# refused by the head).   Usage: cluster/local/ray-worker.sh start|stop|status
# The head keeps no GPU; this node gets them all (auto-detected, or RAY_WORKER_GPUS). Settings: see common.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

start() {
    running_pid ray-head >/dev/null || die "no head started by ray-head.sh runs; start it first"
    enable_token_auth
    local gpus=()
    if [[ -n "${RAY_WORKER_GPUS:-}" ]]; then gpus=(--num-gpus="$RAY_WORKER_GPUS"); fi
    # shellcheck disable=SC2086  # the extra args are meant to split into flags
    start_daemon ray-worker "RAY_WORKER_AGENT_PORT" ray start --block --address="127.0.0.1:$RAY_HEAD_PORT" \
        --node-ip-address=127.0.0.1 --dashboard-agent-listen-port="$RAY_WORKER_AGENT_PORT" \
        --num-cpus="$RAY_WORKER_CPUS" "${gpus[@]}" --temp-dir="$RAY_WORKER_TEMP_DIR" \
        ${RAY_WORKER_EXTRA_ARGS:-}
    # Joined when the head lists two live nodes (state API, through the dashboard, with the token). Filtered lists
    # are "missing output" to the state API once the cluster has lost a node (a dead one is left out): allowed.
    wait_until ray-worker "$START_TIMEOUT" python -c '
import sys
from ray.util.state import list_nodes
alive = list_nodes(address=sys.argv[1], filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
sys.exit(0 if len(alive) >= 2 else 1)
' "$DASHBOARD_URL"
    echo "Ray worker node joined 127.0.0.1:$RAY_HEAD_PORT (log: $(log_file ray-worker))"
}

status() {
    if pid="$(running_pid ray-worker)"; then
        echo "ray-worker: running (pid $pid)"
    else
        echo "ray-worker: not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemon ray-worker ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
