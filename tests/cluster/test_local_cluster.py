"""cluster/local/ end to end, as the README tells a user, on one cluster for the whole module (each start costs
about half a minute on a 2-core machine): ray-head.sh starts a head with token authentication (the token generated on
first start, mode 600) and no CPU, ray-worker.sh joins a second node with the token and 2 CPUs, so every job's Ray
workers run on the second node. The job API refuses a submission without the token or with a wrong one and accepts it
with the token; the README's training submit (`--working-dir .`) survives losing the second node mid-run and
registers its model, which a `ray job submit` of jobs/predict.py then parses with; the README's sweep submit loses
its node too and keeps its finished trial; both scripts stop by their pids."""

from __future__ import annotations

import json
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
from typing import NamedTuple

import pytest
from PIL import Image

from tests.conftest import QUIET_RAY
from tests.raycli import BIN, REPO, agent_args, free_ports, submit, wait_job
from tests.serving import images
from tests.stores import sqlite_uri

pytestmark = pytest.mark.cluster

SCRIPTS = REPO / "cluster" / "local"
PROBE = "import ray; ray.init(); print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))"


def script(name: str, action: str, env: dict, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), action], env=env, capture_output=True, text=True,
                          timeout=timeout)


def scripts_env(folder: Path, temp_dir: str) -> tuple[dict, str]:
    """The scripts' settings: every port free, state and token under ``folder``, a short Ray temp dir (unix socket
    paths are capped at 107 bytes), and a HOME of its own so that no token of the developer's (~/.ray/auth_token)
    is found by any client here. Returns the environment and the dashboard address."""
    home = folder / "home"
    home.mkdir()
    gcs, dash, client, head_agent, worker_agent = free_ports(5)
    # Ray settings of the suite's own instance (tests/conftest.py) stay out: this cluster runs with Ray's defaults.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ADDRESS",
                                                              "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS")
           and not k.startswith("RAY_TRAIN_") and k not in QUIET_RAY}
    env.update({"PATH": f"{BIN}:{env.get('PATH', '')}", "HOME": str(home),
                "SSTPARSE_CLUSTER_DIR": str(folder / "state"), "RAY_TEMP_DIR": temp_dir,
                "RAY_AUTH_TOKEN_PATH": str(folder / "state" / "auth_token"),
                "RAY_HEAD_PORT": str(gcs), "RAY_DASHBOARD_PORT": str(dash), "RAY_CLIENT_PORT": str(client),
                "RAY_HEAD_AGENT_PORT": str(head_agent), "RAY_WORKER_AGENT_PORT": str(worker_agent),
                "RAY_HEAD_CPUS": "1", "RAY_WORKER_CPUS": "1",
                "RAY_HEAD_EXTRA_ARGS": agent_args(), "RAY_WORKER_EXTRA_ARGS": agent_args()})
    return env, f"http://127.0.0.1:{dash}"


def stop_all(env: dict, temp_dir: str) -> None:
    """Stop whatever is still running, by the pid files (a no-op for what a test stopped itself)."""
    for name in ("ray-worker.sh", "ray-head.sh"):
        script(name, "stop", env, timeout=120)
    for folder in node_temp_dirs(temp_dir):
        shutil.rmtree(folder, ignore_errors=True)


def node_temp_dirs(temp_dir: str) -> list[str]:
    """The Ray temp dirs of a cluster's nodes: the head's, the second node's (RAY_WORKER_TEMP_DIR's default) and its
    replacements' (lose_the_node's suffixes)."""
    return [temp_dir, *(f"{temp_dir}-node{i}" for i in (2, 3, 4))]


@pytest.fixture
def cluster_env(tmp_path):
    """Settings for a cluster of this test's own (nothing started)."""
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    env, address = scripts_env(tmp_path, temp_dir)
    try:
        yield env, address
    finally:
        stop_all(env, temp_dir)


class Cluster(NamedTuple):
    env: dict       # the scripts' settings, the MLflow store's URI exported as the README does
    address: str    # the dashboard (job API)
    folder: Path    # state/ (pid files, token), the MLflow store
    token: str

    def submit(self, submission_id: str, entrypoint: list[str], working_dir: str | None = None):
        """`ray job submit` with the token, as the README's shell has it (RAY_AUTH_MODE=token, the token file)."""
        return submit(self.address, {**self.env, "RAY_AUTH_MODE": "token"}, submission_id, entrypoint,
                      working_dir=working_dir)

    def wait(self, submission_id: str, timeout: float) -> tuple[str, str]:
        return wait_job(self.address, submission_id, timeout, headers={"Authorization": f"Bearer {self.token}"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The module's head (no CPU) and second node (2 CPUs), with the tracking URI exported before the head starts
    (README: jobs inherit it)."""
    folder = tmp_path_factory.mktemp("cluster")
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    env, address = scripts_env(folder, temp_dir)
    env.update({"RAY_HEAD_CPUS": "0", "RAY_WORKER_CPUS": "2", "MLFLOW_TRACKING_URI": sqlite_uri(folder)})
    try:
        for name in ("ray-head.sh", "ray-worker.sh"):
            started = script(name, "start", env)
            assert started.returncode == 0, started.stdout + started.stderr
        yield Cluster(env, address, folder, (folder / "state" / "auth_token").read_text())
    finally:
        stop_all(env, temp_dir)


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


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_token_auth_cluster_refuses_without_token_and_accepts_with_it(cluster):
    env, address = cluster.env, cluster.address
    assert stat.S_IMODE((cluster.folder / "state" / "auth_token").stat().st_mode) == 0o600
    assert len(cluster.token) == 64

    # The job API itself: no token -> 401, a wrong one -> 403, the right one -> 200.
    assert http_status(f"{address}/api/jobs/") == 401
    assert http_status(f"{address}/api/jobs/", "not-the-token") == 403
    assert http_status(f"{address}/api/jobs/", cluster.token) == 200

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
    accepted = cluster.submit("with-token", entry)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    status, logs = cluster.wait("with-token", timeout=180)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "alive nodes: 2" in logs

    from ray.job_submission import JobSubmissionClient

    listed = JobSubmissionClient(address, headers={"Authorization": f"Bearer {cluster.token}"}).list_jobs()
    assert {j.submission_id for j in listed} == {"with-token"}


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


class Preempted(NamedTuple):
    status: str
    logs: str
    results: Path   # the job's storage_path


@pytest.fixture(scope="module")
def preempted(cluster, tiny_shards):
    """The README's training submit as written (`ray job submit --working-dir . -- python jobs/train.py ...`, here
    with --smoke-test and 4 epochs), its only Ray Train worker on the second node, that node killed by pid after
    the run's second checkpoint and a node started again 10 s later, as a replacement machine joins."""
    results = cluster.folder / "ray_results"
    entry = ["python", "jobs/train.py", "--config", "jobs/configs/universal.yaml", "--smoke-test",
             f"data.root={tiny_shards}", f"train.storage_path={results}", "train.name=preempted",
             "train.epochs=4", "train.max_failures=3"]
    submitted = cluster.submit("preempted", entry, working_dir=str(REPO))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    # A checkpoint counts once the Train controller has registered it, a moment after the worker uploaded it (a
    # node lost in between costs that epoch again): kill once the second is there, so the first surely counts.
    folder = results / "preempted"
    wait_for(lambda: len(list(folder.glob("checkpoint_*/meta.json"))) >= 2, 400, "two checkpoints")
    status, logs = lose_the_node(cluster, "preempted", "-node3")
    return Preempted(status, logs, results)


def lose_the_node(cluster, submission_id: str, suffix: str) -> tuple[str, str]:
    """Kill the worker node by pid, start a replacement 10 s later (a temp dir of its own: in the dead node's, the
    new raylet's log monitor would forward the dead workers' output to the job's log a second time), and wait for
    the job to end. Prints the recovery times."""
    killed = kill_node(cluster.folder / "state")
    time.sleep(10)
    replacement = {**cluster.env, "RAY_WORKER_TEMP_DIR": cluster.env["RAY_TEMP_DIR"] + suffix}
    back = script("ray-worker.sh", "start", replacement)
    assert back.returncode == 0, back.stdout + back.stderr
    rejoined = time.monotonic()
    # Done 40-75 s after the node is back in every run so far; once (2026-12-03, a fresh clone) the sweep's trial
    # started again on the new node and then made no progress for 8 minutes. A bounded wait fails with the job's log
    # and the Ray Train controllers' last lines (their state changes and errors, at DEBUG: a worker group that
    # cannot start is retried every 60 s without end, which the job's log does not show); both go with the cluster.
    try:
        status, logs = cluster.wait(submission_id, timeout=300)
    except AssertionError as stuck:
        raise AssertionError(f"{stuck}\n{controller_log_tails(cluster.env['RAY_TEMP_DIR'])}") from None
    print(f"\n{submission_id}: node killed -> a node rejoined {rejoined - killed:.0f} s -> job done "
          f"{time.monotonic() - rejoined:.0f} s")
    return status, logs


def controller_log_tails(temp_dir: str, lines: int = 25) -> str:
    """The last lines (time, level, message) of every Ray Train controller log of the cluster's nodes."""
    out = []
    for log in sorted(log for folder in node_temp_dirs(temp_dir)
                      for log in Path(folder).glob("session_*/logs/train/ray-train-sys-controller-*.log")):
        tail = []
        for line in log.read_text(errors="replace").splitlines()[-lines:]:
            try:
                row = json.loads(line)
                tail.append(f"{row['asctime']} {row['levelname']} {str(row['message'])[:400]}")
            except (ValueError, KeyError, TypeError):
                tail.append(line[:400])
        out.append(f"--- {log}\n" + "\n".join(tail))
    return "\n".join(out) or f"(no Ray Train controller log under {temp_dir}*)"


def test_training_survives_losing_its_node(cluster, preempted):
    """The job finishes its planned epochs from the last checkpoint, in the same MLflow run, and registers its model
    (as the name's first version, champion). It also covers the two-node working_dir case: when a Ray Train worker
    on the second node ends, that node's runtime-env agent drops the working_dir it no longer uses; with both nodes
    in one temp dir that deleted the head driver's copy, and the job failed while logging the model."""
    assert preempted.status == "SUCCEEDED", preempted.logs[-5000:]
    assert "[restore] resuming after epoch" in preempted.logs, preempted.logs[-5000:]
    assert "registered sst-universal-smoke version 1" in preempted.logs

    from sstparse.config import TrackingConfig
    from sstparse.tracking import client, find_runs, get_alias

    cfg = TrackingConfig(tracking_uri=cluster.env["MLFLOW_TRACKING_URI"])
    runs = find_runs(cfg, "attributes.run_name = 'preempted'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client(cfg).get_metric_history(runs[0].info.run_id, "train/loss")})
    assert steps == [1, 2, 3, 4]
    assert "val/mean_miou" in runs[0].data.metrics
    assert str(get_alias(cfg, "sst-universal-smoke", "champion").version) == "1"


def test_a_submitted_jobs_console_is_quiet(preempted):
    """Rank 0's line per epoch, once (Ray Train's print patch would double it), and no worker's whole metric dict
    (Ray Train's "Reporting training result" INFO line, one per rank and epoch); no Ray Data operator bars (each
    redraw a line without a terminal) or MLflow download bars; the start names where the full logs are. Epoch 1
    ran before the node was lost and is never run again."""
    logs = preempted.logs
    assert logs.count("epoch 1/4: loss") == 1 and "Reporting training result" not in logs
    assert "row/s" not in logs and "Downloading artifacts" not in logs and "[sstparse] full logs: " in logs


def test_ray_job_submit_of_batch_prediction_with_the_registered_model(cluster, preempted, tmp_path):
    """jobs/predict.py (= `sstparse predict --ray`) submitted like training, parsing with the model the training
    job registered: a pool of 2 model actors on the second node."""
    assert preempted.status == "SUCCEEDED", preempted.logs[-3000:]
    (tmp_path / "photos").mkdir()
    for i, im in enumerate(images(2, [(64, 64), (72, 56)])):
        Image.fromarray(im).save(tmp_path / "photos" / f"p{i}.jpg")
    entry = [sys.executable, str(REPO / "jobs" / "predict.py"), "--model", "models:/sst-universal-smoke@champion",
             "--domain", "syn_lip", str(tmp_path / "photos"), "--out", str(tmp_path / "parsed"),
             "--concurrency", "2", "--num-cpus-per-actor", "0.5"]
    submitted = cluster.submit("predict", entry)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    status, logs = cluster.wait("predict", timeout=300)
    assert status == "SUCCEEDED" and "predicted 2 image(s)" in logs, logs[-3000:]
    assert sorted(p.name for p in (tmp_path / "parsed").iterdir()) == [
        "p0.png", "p0_color.png", "p0_overlay.jpg", "p1.png", "p1_color.png", "p1_overlay.jpg", "skipped.csv"]


def second_trial_checkpoints(trials: Path) -> int:
    """Checkpoints of the second trial to start (trial ids are random: each trial's run marker is written as it
    starts)."""
    started = sorted(trials.glob("*/mlflow_run_id"), key=lambda p: p.stat().st_mtime)
    return len(list(started[1].parent.glob("checkpoint_*/meta.json"))) if len(started) > 1 else 0


@pytest.mark.timeout(900)  # up to 400 s for its checkpoints, 300 s after the node is back
def test_a_sweep_on_a_lost_node_keeps_its_finished_trials(cluster, preempted, tiny_shards):
    """The README's sweep submit (--smoke-test: two trials, one at a time; here 4 epochs each, no ASHA) loses its
    node once the second trial has two checkpoints: the trial (its actor, Train controller and worker were all on
    that node) fails with it, Tune starts it again on the replacement node (trial_max_failures) and its training
    resumes from its checkpoint in the same MLflow run; the finished first trial is not run again."""
    assert preempted.status == "SUCCEEDED", preempted.logs[-3000:]
    storage = cluster.folder / "sweeps"
    entry = ["python", "jobs/tune.py", "--config", "jobs/configs/sweep.yaml", "--smoke-test", "name=lost",
             f"storage_path={storage}", "scheduler.kind=none", f"job.data.root={tiny_shards}", "job.train.epochs=4"]
    submitted = cluster.submit("sweep", entry, working_dir=str(REPO))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    wait_for(lambda: second_trial_checkpoints(storage / "lost" / "train") >= 2, 400,
             "the second trial's two checkpoints")
    status, logs = lose_the_node(cluster, "sweep", "-node4")
    assert status == "SUCCEEDED", logs[-5000:]
    assert logs.count("[restore] resuming after epoch") == 1, logs[-5000:]
    assert "registered version 2 (alias challenger)" in logs, logs[-3000:]  # version 1 is the training job's

    from sstparse.config import TrackingConfig
    from sstparse.tracking import client, find_runs

    cfg = TrackingConfig(tracking_uri=cluster.env["MLFLOW_TRACKING_URI"])
    (parent,) = find_runs(cfg, "attributes.run_name = 'lost'")
    trials = sorted(find_runs(cfg, f"tags.mlflow.parentRunId = '{parent.info.run_id}'"),
                    key=lambda r: r.info.start_time)
    assert [r.info.status for r in trials] == ["FINISHED", "FINISHED"]
    first, second = ([m.step for m in client(cfg).get_metric_history(r.info.run_id, "train/loss")] for r in trials)
    assert first == [1, 2, 3, 4]  # logged once each: never run again
    assert sorted(set(second)) == [1, 2, 3, 4]  # an epoch finished but not yet checkpointed is trained again


def test_the_scripts_stop_the_cluster_by_pid(cluster):
    for name in ("ray-worker.sh", "ray-head.sh"):
        stopped = script(name, "stop", cluster.env, timeout=120)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        assert script(name, "status", cluster.env).returncode == 1
