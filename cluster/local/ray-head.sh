#!/usr/bin/env bash
# A Ray head on this machine with token authentication on and the dashboard (job submission API) bound to
# 127.0.0.1.   Usage: cluster/local/ray-head.sh start|stop|status
#
# Start it from the shell (venv active) whose environment the jobs should see: job drivers and workers inherit the
# head's environment, so export MLFLOW_TRACKING_URI and the AWS_* variables first (README, "Running on a cluster").
# Settings: see common.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

start() {
    enable_token_auth
    # --block keeps `ray start` in the foreground of its own session: its pid stops this head and nothing else.
    # shellcheck disable=SC2086  # the extra args are meant to split into flags
    start_daemon ray-head "RAY_HEAD_PORT RAY_DASHBOARD_PORT RAY_CLIENT_PORT RAY_HEAD_AGENT_PORT" \
        ray start --head --block --node-ip-address=127.0.0.1 --port="$RAY_HEAD_PORT" \
        --dashboard-host=127.0.0.1 --dashboard-port="$RAY_DASHBOARD_PORT" --include-dashboard=true \
        --ray-client-server-port="$RAY_CLIENT_PORT" --dashboard-agent-listen-port="$RAY_HEAD_AGENT_PORT" \
        --num-cpus="$RAY_HEAD_CPUS" --num-gpus="$RAY_HEAD_GPUS" --temp-dir="$RAY_TEMP_DIR" \
        ${RAY_HEAD_EXTRA_ARGS:-}
    # `ray job list` answers only once the dashboard is up and accepts our token.
    wait_until ray-head "$START_TIMEOUT" ray job list --address "$DASHBOARD_URL"
    cat <<EOF
Ray head up: GCS 127.0.0.1:$RAY_HEAD_PORT, dashboard $DASHBOARD_URL (log: $(log_file ray-head))
In the shell that submits jobs:
  export RAY_AUTH_MODE=token RAY_API_SERVER_ADDRESS=$DASHBOARD_URL   # for `ray job ...`
  export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-<unset: RAY_AUTH_TOKEN is used>}   # or RAY_AUTH_TOKEN=\$(cat that file)
EOF
}

status() {
    if pid="$(running_pid ray-head)"; then
        echo "ray-head: running (pid $pid), dashboard $DASHBOARD_URL"
    else
        echo "ray-head: not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemon ray-head ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
