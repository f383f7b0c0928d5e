# Shared settings and helpers of the cluster/local/ scripts (sourced, not run).
#
# Every setting is an environment variable with a default; export it before calling a script to change it.
#   SSTPARSE_CLUSTER_DIR   pid files and logs                         (~/.sstparse/cluster)
#   RAY_TEMP_DIR           Ray's temp dir: keep it short, Ray's unix socket paths must stay under 107 bytes
#                                                                     (/tmp/sstparse-ray)
#   RAY_WORKER_TEMP_DIR    the second node's own temp dir ($RAY_TEMP_DIR-node2). Two nodes must not share one:
#                          each node's runtime-env agent deletes the `--working-dir` copy it stops using, and in a
#                          shared dir that is the copy the job's driver on the head is running in
#   RAY_AUTH_TOKEN_PATH    the cluster token, created (mode 600) on first start unless RAY_AUTH_TOKEN is set
#                                                                     (~/.ray/auth_token, Ray's own default)
#   RAY_HEAD_PORT          GCS port that workers and drivers join     (6380; 6379 is left to a default `ray start`)
#   RAY_DASHBOARD_PORT     dashboard + job submission API, 127.0.0.1  (8265)
#   RAY_CLIENT_PORT        Ray Client server                          (10001)
#   RAY_HEAD_AGENT_PORT / RAY_WORKER_AGENT_PORT   per-node dashboard agents; two nodes on one machine need two
#                                                                     (52365 / 52366)
#   RAY_HEAD_CPUS / RAY_WORKER_CPUS   the machine's cores split between the two nodes, so they are not counted
#                          twice                                      (half each)
#   RAY_HEAD_GPUS / RAY_WORKER_GPUS   GPUs: none on the head, all (auto-detected) on the worker (0 / auto)
#   RAY_HEAD_EXTRA_ARGS / RAY_WORKER_EXTRA_ARGS   more `ray start` flags (e.g. --metrics-export-port=...)
#   SSTPARSE_START_TIMEOUT seconds a start may take before the script gives up (300; seconds on a quiet machine,
#                          minutes on a 2-core one that is busy)
#   MLFLOW_PORT, MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_WORKERS: see mlflow-server.sh

STATE_DIR="${SSTPARSE_CLUSTER_DIR:-$HOME/.sstparse/cluster}"
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/sstparse-ray}"
RAY_WORKER_TEMP_DIR="${RAY_WORKER_TEMP_DIR:-${RAY_TEMP_DIR}-node2}"
RAY_HEAD_PORT="${RAY_HEAD_PORT:-6380}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}"
RAY_HEAD_AGENT_PORT="${RAY_HEAD_AGENT_PORT:-52365}"
RAY_WORKER_AGENT_PORT="${RAY_WORKER_AGENT_PORT:-52366}"
_CORES="$(nproc 2>/dev/null || echo 2)"
RAY_HEAD_CPUS="${RAY_HEAD_CPUS:-$(( (_CORES + 1) / 2 ))}"
RAY_WORKER_CPUS="${RAY_WORKER_CPUS:-$(( _CORES / 2 > 0 ? _CORES / 2 : 1 ))}"
RAY_HEAD_GPUS="${RAY_HEAD_GPUS:-0}"
DASHBOARD_URL="http://127.0.0.1:${RAY_DASHBOARD_PORT}"
START_TIMEOUT="${SSTPARSE_START_TIMEOUT:-300}"
# On SIGTERM a Ray node first drains (up to 30 s) so that Ray Serve can move replicas away; nothing here serves, and
# a stop should stop. Export another value to keep the drain.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
# Ray's state API, in the nodes' processes too (Ray Train's placement-group cleaner asks it whether a training
# controller still lives), finds this cluster's dashboard by it; without it, it looks for a Ray instance on the
# machine and fails when it finds more than one.
export RAY_API_SERVER_ADDRESS="$DASHBOARD_URL"
# Ray Data's per-dataset INFO lines ("execution finished in ...", every epoch) stay out of job logs; warnings stay.
export RAY_DATA_LOG_LEVEL="${RAY_DATA_LOG_LEVEL:-WARNING}"

mkdir -p "$STATE_DIR"

die() { echo "error: $*" >&2; exit 1; }

# Token authentication is always on for these nodes (Ray reads RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH):
# anyone who can reach an unauthenticated dashboard can run code on the cluster.
enable_token_auth() {
    export RAY_AUTH_MODE=token
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        return
    fi
    export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
        # 256 random bits, as `ray get-auth-token --generate` makes them (that command only writes the default path).
        (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH")
        echo "generated a cluster token in $RAY_AUTH_TOKEN_PATH (mode 600)"
    fi
}

# require_free_ports VAR...: fail, naming the setting, if the port in any of these variables is taken. Ray itself
# would only report, 30 s later, that the node "timed out during startup" (an agent that cannot bind its port keeps
# the raylet from registering).
require_free_ports() {
    local var pairs=()
    for var in "$@"; do pairs+=("$var=${!var}"); done
    python - "${pairs[@]}" <<'PY' || exit 1
import socket, sys
taken = []
for pair in sys.argv[1:]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's servers bind: TIME_WAIT is no conflict
        try:
            s.bind(("", int(pair.split("=")[1])))
        except OSError:
            taken.append(pair)
if taken:
    sys.exit(f"error: port in use: {', '.join(taken)}; export another port (settings: cluster/local/common.sh)")
PY
}

pid_file() { echo "$STATE_DIR/$1.pid"; }
log_file() { echo "$STATE_DIR/$1.log"; }

running_pid() {  # the recorded pid of $1 if that process is alive
    local f pid
    f="$(pid_file "$1")"
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# start_daemon NAME "PORT_VARS" COMMAND...: run COMMAND in the background in a session of its own, so that stopping
# it (its process group) stops exactly the processes it started: never `ray stop`, which would stop every Ray instance
# of this user on the machine. Refused if NAME already runs, then if a port in PORT_VARS is taken (checked second: a
# running daemon holds its own ports).
start_daemon() {
    local name="$1" ports="$2" pid
    shift 2
    if pid="$(running_pid "$name")"; then
        die "$name already runs (pid $pid); stop it first"
    fi
    # shellcheck disable=SC2086  # the variable names are meant to split
    require_free_ports $ports
    setsid "$@" >"$(log_file "$name")" 2>&1 </dev/null &
    echo "$!" >"$(pid_file "$name")"
}

stop_daemon() {
    local name="$1" pid
    if ! pid="$(running_pid "$name")"; then
        echo "$name: not running"
        rm -f "$(pid_file "$name")"
        return 0
    fi
    # SIGTERM to the leader first: `ray start --block` then drains its node and stops its own processes (a
    # SIGTERM to the whole group at once kills the raylet under it, and it waits out its 30 s drain timeout).
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 60
    # Then whatever the leader left behind in its process group: politely, then not.
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait_group_gone "$pid" 10 || { echo "$name: killing what is left"; kill -KILL -- "-$pid" 2>/dev/null || true; }
    rm -f "$(pid_file "$name")"
    echo "$name: stopped (pid $pid)"
}

wait_gone() {  # wait_gone PID SECONDS
    local deadline=$(( SECONDS + $2 ))
    while kill -0 "$1" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
}

wait_group_gone() {  # wait_group_gone PGID SECONDS: succeeds once no process of the group is left
    local deadline=$(( SECONDS + $2 ))
    while kill -0 -- "-$1" 2>/dev/null; do
        (( SECONDS < deadline )) || return 1
        sleep 0.2
    done
}

# wait_until NAME SECONDS COMMAND...: retry COMMAND until it succeeds; fail (with the log's tail) if NAME exits or
# the time runs out.
wait_until() {
    local name="$1" seconds="$2" pid
    shift 2
    local deadline=$(( SECONDS + seconds ))
    until "$@" >/dev/null 2>&1; do
        if ! pid="$(running_pid "$name")"; then
            tail -n 30 "$(log_file "$name")" >&2 || true
            die "$name exited during start-up (log: $(log_file "$name"))"
        fi
        (( SECONDS < deadline )) || { tail -n 30 "$(log_file "$name")" >&2; die "$name not ready after ${seconds} s"; }
        sleep 1
    done
}
