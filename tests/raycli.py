"""Helpers for tests that run Ray (and other servers) the way users do: as separate processes on 127.0.0.1, every
port chosen free, each stopped by the pid the test started (never `ray stop`, which stops every Ray instance of the
user, the test session's own included)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

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


def agent_args() -> str:
    """The per-node agent ports of an extra node, as one string of flags (cluster/local's *_EXTRA_ARGS)."""
    agent_grpc, runtime_env, metrics = free_ports(3)
    return (f"--dashboard-agent-grpc-port={agent_grpc} --runtime-env-agent-port={runtime_env} "
            f"--metrics-export-port={metrics}")


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
        if time.time() > deadline:  # the job's own last lines (Tune's trial table, its resource use) say where
            raise AssertionError(f"job {submission_id} still {status} after {timeout:.0f} s; its log ends:\n"
                                 + client.get_job_logs(submission_id)[-6000:])
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

    def __init__(self, folder: Path, backend: str | None = None):
        """``backend``: the server's store URI (default: a new sqlite file under ``folder``, as a first start makes)."""
        self.folder, port = folder, free_port()
        self.url, self.log, self.artifacts = f"http://127.0.0.1:{port}", folder / "state" / "mlflow-server.log", \
            folder / "artifacts"
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                    "SSTPARSE_CLUSTER_DIR": str(folder / "state"), "MLFLOW_PORT": str(port),
                    "MLFLOW_BACKEND_STORE_URI": backend or f"sqlite:///{folder}/mlflow.db",
                    "MLFLOW_ARTIFACTS_DESTINATION": str(self.artifacts)}

    def _script(self, verb: str, timeout: float) -> None:
        done = subprocess.run(["bash", str(self.SCRIPT), verb], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"mlflow-server.sh {verb}: {done.stdout}{done.stderr}"

    def start(self) -> None:
        self._script("start", 420)  # the first start creates the database (migrations: minutes on a busy box)

    def stop(self) -> None:
        self._script("stop", 120)
