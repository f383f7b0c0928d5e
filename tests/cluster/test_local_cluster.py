"""cluster/local/ end to end, as the README tells a user: ray-head.sh starts a head with token authentication (the
token generated on first start, mode 600), ray-worker.sh joins a second node with the token; the job API refuses a
submission without the token or with a wrong one and accepts it with the token; both stop by their pids.

One head start for all of it (about a minute on a 2-core machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.raycli import BIN, REPO, agent_args, free_ports, submit, wait_job

SCRIPTS = REPO / "cluster" / "local"
PROBE = "import ray; ray.init(); print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))"


def script(name: str, action: str, env: dict, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), action], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cluster_env(tmp_path):
    """The scripts' settings for this test: every port free, state and token under tmp_path, a short Ray temp dir
    (unix socket paths are capped at 107 bytes), and a HOME of its own so that no token of the developer's
    (~/.ray/auth_token) is found by any client here."""
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    home = tmp_path / "home"
    home.mkdir()
    gcs, dash, client, head_agent, worker_agent = free_ports(5)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS",
                                                              "RAY_AUTH_TOKEN_PATH")}
    env.update({"PATH": f"{BIN}:{env.get('PATH', '')}", "HOME": str(home),
                "SSTPARSE_CLUSTER_DIR": str(tmp_path / "state"), "RAY_TEMP_DIR": temp_dir,
                "RAY_AUTH_TOKEN_PATH": str(tmp_path / "state" / "auth_token"),
                "RAY_HEAD_PORT": str(gcs), "RAY_DASHBOARD_PORT": str(dash), "RAY_CLIENT_PORT": str(client),
                "RAY_HEAD_AGENT_PORT": str(head_agent), "RAY_WORKER_AGENT_PORT": str(worker_agent),
                "RAY_HEAD_CPUS": "1", "RAY_WORKER_CPUS": "1",
                "RAY_HEAD_EXTRA_ARGS": agent_args(), "RAY_WORKER_EXTRA_ARGS": agent_args()})
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:  # stop whatever is still running, by the pid files (a no-op when the test stopped it)
        for name in ("ray-worker.sh", "ray-head.sh"):
            script(name, "stop", env, timeout=120)
        for folder in (temp_dir, f"{temp_dir}-node2"):  # the second node's own (RAY_WORKER_TEMP_DIR's default)
            shutil.rmtree(folder, ignore_errors=True)


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_token_auth_cluster_refuses_without_token_and_accepts_with_it(cluster_env, tmp_path):
    env, address = cluster_env
    head = script("ray-head.sh", "start", env)
    assert head.returncode == 0, head.stdout + head.stderr
    token_file = tmp_path / "state" / "auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    assert len(token) == 64
    worker = script("ray-worker.sh", "start", env)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    # The job API itself: no token -> 401, a wrong one -> 403, the right one -> 200.
    assert http_status(f"{address}/api/jobs/") == 401
    assert http_status(f"{address}/api/jobs/", "not-the-token") == 403
    assert http_status(f"{address}/api/jobs/", token) == 200

    # `ray job submit` as users run it. Without a token (auth mode unset, no token file) and with a wrong one:
    # refused, and no job is created.
    entry = [sys.executable, "-c", PROBE]
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    refused = submit(address, no_token, "no-token", entry)
    assert refused.returncode != 0 and "Missing authentication token" in refused.stderr, refused.stdout + refused.stderr
    wrong = submit(address, {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"}, "wrong", entry)
    assert wrong.returncode != 0 and "Invalid authentication token" in wrong.stderr, wrong.stdout + wrong.stderr
    # With the token (the file the head script wrote, as the README exports it): accepted, and its driver sees
    # both nodes, so the worker node joined with the token too.
    accepted = submit(address, {**env, "RAY_AUTH_MODE": "token"}, "with-token", entry)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    auth = {"Authorization": f"Bearer {token}"}
    status, logs = wait_job(address, "with-token", timeout=180, headers=auth)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "alive nodes: 2" in logs

    from ray.job_submission import JobSubmissionClient

    ids = {j.submission_id for j in JobSubmissionClient(address, headers=auth).list_jobs()}
    assert ids == {"with-token"}

    for name in ("ray-worker.sh", "ray-head.sh"):
        stopped = script(name, "stop", env, timeout=120)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        assert script(name, "status", env).returncode == 1


def test_readme_training_submit_with_working_dir_on_two_nodes(cluster_env, tiny_shards, tmp_path):
    """The README's cluster flow as written: `ray job submit --working-dir . -- python jobs/train.py ...
    --smoke-test`, its Ray Train worker on the second node (the head has no CPU for it). When that worker ends, the
    second node's runtime-env agent drops the working_dir it no longer uses; with both nodes in one temp dir that
    deleted the head driver's copy, and the job failed while logging the model (os.getcwd() in torch.export)."""
    env, address = cluster_env
    store = tmp_path / "mlruns.db"
    # As the README: the tracking URI exported before the head starts, so jobs inherit it.
    env = {**env, "RAY_HEAD_CPUS": "0", "RAY_WORKER_CPUS": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    for name in ("ray-head.sh", "ray-worker.sh"):
        started = script(name, "start", env)
        assert started.returncode == 0, started.stdout + started.stderr
    entry = ["python", "jobs/train.py", "--config", "jobs/configs/universal.yaml", "--smoke-test",
             f"data.root={tiny_shards}", f"train.storage_path={tmp_path / 'ray_results'}"]
    submitted = submit(address, {**env, "RAY_AUTH_MODE": "token"}, "readme-train", entry, working_dir=str(REPO))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    token = (tmp_path / "state" / "auth_token").read_text()
    status, logs = wait_job(address, "readme-train", timeout=600, headers={"Authorization": f"Bearer {token}"})
    assert status == "SUCCEEDED", logs[-4000:]
    assert "registered sst-universal-smoke version 1" in logs
    from sstparse.config import TrackingConfig
    from sstparse.tracking import get_alias

    champion = get_alias(TrackingConfig(tracking_uri=f"sqlite:///{store}"), "sst-universal-smoke", "champion")
    assert str(champion.version) == "1"


@pytest.mark.parametrize("taken", ["RAY_DASHBOARD_PORT", "RAY_HEAD_AGENT_PORT"])
def test_a_taken_port_is_named_before_anything_starts(cluster_env, tmp_path, taken):
    """Ray would report only that the node "timed out during startup", 30 s later; the script names the setting."""
    env, _ = cluster_env
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env[taken])))
        squatter.listen()
        head = script("ray-head.sh", "start", env, timeout=60)
    assert head.returncode == 1
    assert f"port in use: {taken}={env[taken]}" in head.stderr, head.stderr
    assert not (tmp_path / "state" / "ray-head.pid").exists()
    assert script("ray-head.sh", "status", env).returncode == 1


def kill_node(state: Path) -> float:
    """SIGKILL every process the second node's `ray start` started (its raylet, agents and workers share the
    session ray-worker.sh gave it), as a preempted machine vanishes: nothing is drained, nothing says goodbye."""
    pid = int((state / "ray-worker.pid").read_text())
    os.killpg(pid, signal.SIGKILL)
    return time.monotonic()


def wait_for(predicate, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.5)
    return time.monotonic()


def test_training_survives_losing_its_node(cluster_env, tiny_shards, tmp_path):
    """Node loss as a preemption looks: a training job whose only Ray Train worker runs on the second node (the
    head has no CPU), that node killed by pid mid-run after its second checkpoint, a node started again a little
    later. The job finishes its planned epochs from the last checkpoint, in the same MLflow run."""
    env, address = cluster_env
    store, results = tmp_path / "mlruns.db", tmp_path / "ray_results"
    env = {**env, "RAY_HEAD_CPUS": "0", "RAY_WORKER_CPUS": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    for name in ("ray-head.sh", "ray-worker.sh"):
        started = script(name, "start", env)
        assert started.returncode == 0, started.stdout + started.stderr
    entry = ["python", "jobs/train.py", "--config", "jobs/configs/universal.yaml", "--smoke-test",
             f"data.root={tiny_shards}", f"train.storage_path={results}", "train.name=preempted",
             "train.epochs=4", "train.max_failures=3"]
    submitted = submit(address, {**env, "RAY_AUTH_MODE": "token"}, "preempted", entry, working_dir=str(REPO))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    # A checkpoint counts once the Train controller has registered it, a moment after the worker uploaded it (a
    # node lost in between costs that epoch again): kill once the second is there, so the first surely counts.
    folder = results / "preempted"
    wait_for(lambda: len(list(folder.glob("checkpoint_*/meta.json"))) >= 2, 400, "two checkpoints")
    killed = kill_node(tmp_path / "state")
    time.sleep(10)  # the node stays away a while, as a replacement machine takes time to join
    back = script("ray-worker.sh", "start", env)
    assert back.returncode == 0, back.stdout + back.stderr
    rejoined = time.monotonic()

    token = (tmp_path / "state" / "auth_token").read_text()
    status, logs = wait_job(address, "preempted", timeout=600, headers={"Authorization": f"Bearer {token}"})
    finished = time.monotonic()
    assert status == "SUCCEEDED", logs[-5000:]
    assert "[restore] resuming after epoch" in logs, logs[-5000:]
    assert "registered sst-universal-smoke version 1" in logs

    from sstparse.config import TrackingConfig
    from sstparse.tracking import client, find_runs

    cfg = TrackingConfig(tracking_uri=f"sqlite:///{store}")
    runs = find_runs(cfg, "attributes.run_name = 'preempted'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client(cfg).get_metric_history(runs[0].info.run_id, "train/loss")})
    assert steps == [1, 2, 3, 4]
    print(f"\nnode killed -> a node rejoined {rejoined - killed:.0f} s -> job done {finished - rejoined:.0f} s")
