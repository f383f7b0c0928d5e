"""Helpers for tests that run Ray (and other servers) the way users do: as separate processes on 127.0.0.1, every
port chosen free, each stopped by the pid the test started (never `ray stop`, which stops every Ray instance of the
user, the test session's own included)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


# Ports are chosen outside the kernel's ephemeral range and above Ray's worker port range (10002-19999): a port chosen
# by bind(0) is itself ephemeral, and any process that binds port 0 between our choice and its use (the head's
# raylet, the worker node's own raylet) can be handed it. A worker node whose agent finds its port taken never
# registers, and its `ray start` gives up after 30 s: CI's failure once, reproduced here by holding that port.
_LOW_PORT = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _fixed_port_pool() -> list[int]:
    """Ports above Ray's worker range and outside the ephemeral range, in a random order."""
    low, high = _ephemeral_range()
    pool = [p for p in range(_LOW_PORT, 65536) if not low <= p <= high]
    random.SystemRandom().shuffle(pool)  # unseeded: concurrent test sessions must not pick the same ports
    return pool


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now that no bind(0) can be handed (all held open together while choosing)."""
    candidates = _fixed_port_pool()
    with ExitStack() as stack:
        ports = []
        for port in candidates:
            s = stack.enter_context(socket.socket())
            try:
                s.bind(("", port))  # every address: a server on 0.0.0.0 takes the port on 127.0.0.1 too
            except OSError:  # in use
                continue
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError(f"no {n} free ports above {_LOW_PORT} outside the ephemeral range {_ephemeral_range()}")


def free_port() -> int:
    return free_ports(1)[0]


def head_args(temp_dir: str, num_cpus: int = 2) -> tuple[list[str], str]:
    """`ray start --head --block` arguments on 127.0.0.1 and the dashboard address.

    Every agent port is set too: their defaults are fixed numbers, already taken when another Ray instance runs on
    the machine (the test session's own), and then the head's job agent never comes up."""
    gcs, dash, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
    args = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            f"--num-cpus={num_cpus}", "--include-dashboard=true", f"--temp-dir={temp_dir}"]
    return args, f"http://127.0.0.1:{dash}"


def agent_args() -> str:
    """The per-node agent ports of an extra node, as one string of flags (cluster/local's *_EXTRA_ARGS)."""
    agent_grpc, runtime_env, metrics = free_ports(3)
    return (f"--dashboard-agent-grpc-port={agent_grpc} --runtime-env-agent-port={runtime_env} "
            f"--metrics-export-port={metrics}")


def start_group(args: list[str], env: dict) -> subprocess.Popen:
    """Start a process in a session of its own, so that stopping its group stops all it started, nothing else."""
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the leader first: `ray start --block` drains its node and stops its own processes (SIGTERM to the
    whole group at once kills the raylet under it, and it then waits out its 30 s drain timeout); then whatever is
    left in the group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + 10
        while time.time() < deadline and _group_alive(proc.pid):
            time.sleep(0.2)
    if proc.poll() is None:
        proc.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def wait_job_server(address: str, env: dict, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Until `ray job list` answers (the dashboard is up); fail early if ``proc`` (the head) exits."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"ray start exited: {proc.stdout.read().decode()[-2000:]}")
        if subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
            return
        time.sleep(2)
    pytest.fail(f"the Ray head's job server did not come up in {timeout:.0f} s")


def submit(address: str, env: dict, submission_id: str, entrypoint: list[str], attempts: int = 20,
           working_dir: str | None = None) -> subprocess.CompletedProcess:
    """`ray job submit --no-wait` (with ``--working-dir .`` run from ``working_dir`` when given, as the README
    does). The dashboard answers before the node's job agent is ready: only that case (and a timeout on a loaded
    machine) is retried; any other answer, a refusal included, is returned as it is."""
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", submission_id, "--no-wait",
           *(["--working-dir", "."] if working_dir else []), "--", *entrypoint]
    proc = None
    for _ in range(attempts):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=working_dir)
        except subprocess.TimeoutExpired:  # seen on a loaded 2-core machine while the agent starts
            continue
        said = proc.stdout + proc.stderr
        if proc.returncode == 0 or "already exists" in said:  # a timed-out attempt may have got through
            return proc
        if "No available agent" not in said:
            return proc
        time.sleep(2)
    assert proc is not None, f"`ray job submit` timed out {attempts} times"
    return proc


def wait_job(address: str, submission_id: str, timeout: float, headers: dict | None = None) -> tuple[str, str]:
    """(final status, logs) of a submitted job. ``headers``: e.g. the token's Authorization header, needed when
    this process itself runs with RAY_AUTH_MODE=disabled (the test session's Ray does)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers=headers)
    deadline = time.time() + timeout
    while (status := str(client.get_job_status(submission_id).value)) not in TERMINAL:
        assert time.time() < deadline, f"job {submission_id} still {status} after {timeout:.0f} s"
        time.sleep(2)
    return status, client.get_job_logs(submission_id)


def until_captured(capfd, needle: str, timeout: float = 30) -> str:
    """The driver's captured output so far; Ray forwards worker output asynchronously (its log monitor, a moment
    after the line was printed), so wait for ``needle``."""
    out, deadline = "", time.time() + timeout
    while needle not in out and time.time() < deadline:
        captured = capfd.readouterr()
        out += captured.out + captured.err
        time.sleep(0.5)
    return out


class MlflowServer:
    """cluster/local/mlflow-server.sh on a free port with its state under ``folder`` (sqlite backend, artifacts
    served): ``start()`` and ``stop()`` as many times as a test needs (a restart keeps every run)."""

    SCRIPT = REPO / "cluster" / "local" / "mlflow-server.sh"

    def __init__(self, folder: Path):
        self.folder, port = folder, free_port()
        self.url, self.log, self.artifacts = f"http://127.0.0.1:{port}", folder / "state" / "mlflow-server.log", \
            folder / "artifacts"
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "SSTPARSE_CLUSTER_DIR": str(folder / "state"), "MLFLOW_PORT": str(port),
                    "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{folder}/mlflow.db",
                    "MLFLOW_ARTIFACTS_DESTINATION": str(self.artifacts)}

    def _script(self, verb: str, timeout: float) -> None:
        done = subprocess.run(["bash", str(self.SCRIPT), verb], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"mlflow-server.sh {verb}: {done.stdout}{done.stderr}"

    def start(self) -> None:
        self._script("start", 420)  # the first start creates the database (migrations: minutes on a busy box)

    def stop(self) -> None:
        self._script("stop", 120)
