#!/usr/bin/env bash
# An MLflow tracking server on 127.0.0.1 that also serves the artifacts (clients upload through it, so job drivers
# need no artifact-store credentials).   Usage: cluster/local/mlflow-server.sh start|stop|status
#
#   MLFLOW_PORT                   (5000)
#   MLFLOW_BACKEND_STORE_URI      runs, metrics, registry: sqlite:///... for one machine, postgresql://user@host/db
#                                 for a team (password in ~/.pgpass or PGPASSWORD, not in the URI)
#                                                           (sqlite:///$SSTPARSE_CLUSTER_DIR/mlflow.db)
#   MLFLOW_ARTIFACTS_DESTINATION  a local folder or s3://bucket/prefix; for S3 the server's environment needs
#                                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and, for a non-AWS endpoint,
#                                 MLFLOW_S3_ENDPOINT_URL         ($SSTPARSE_CLUSTER_DIR/mlartifacts)
#   MLFLOW_WORKERS                server processes: sqlite takes one writer at a time, so more processes only
#                                 contend for its lock; raise it with PostgreSQL      (1)
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION  MLflow's server-side jobs (GenAI scorers and judges): sstparse uses none,
#                                 and with them on every start forks seven huey consumers (about 20 s of CPU,
#                                 polling after)                                        (false)
# Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT before starting the Ray head.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$STATE_DIR/mlflow.db}"
MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$STATE_DIR/mlartifacts}"
MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
URL="http://127.0.0.1:$MLFLOW_PORT"

start() {
    # Bound to 127.0.0.1: the server has no authentication of its own. To share it, put it behind an
    # authenticating proxy (or `mlflow server --app-name basic-auth`) and set --allowed-hosts. A taken MLFLOW_PORT
    # is refused: another server there could answer /health for ours.
    start_daemon mlflow-server "MLFLOW_PORT" mlflow server \
        --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
        --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS"
    wait_until mlflow-server "$START_TIMEOUT" python -c '
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=5).read().strip() == b"OK" else 1)
' "$URL/health"
    echo "MLflow server up: $URL (log: $(log_file mlflow-server))"
    echo "  export MLFLOW_TRACKING_URI=$URL"
}

status() {
    if pid="$(running_pid mlflow-server)"; then
        echo "mlflow-server: running (pid $pid), $URL"
    else
        echo "mlflow-server: not running"
        return 1
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop_daemon mlflow-server ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
