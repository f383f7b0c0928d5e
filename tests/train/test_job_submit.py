"""End to end as users run it: a real `ray start --head` on 127.0.0.1, `ray job submit` of jobs/train.py with a tiny
config, wait for SUCCEEDED, then find the MLflow run and the registered version; the head is stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from sstparse import tracking
from tests.train.conftest import tiny_job

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    # Ray's unix sockets live under temp-dir and AF_UNIX paths are capped at 107 bytes: pytest's tmp_path is too
    # deep, so use a short folder of our own.
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    gcs, dash, client, agent, agent_grpc, runtime_env, metrics = (_free_port() for _ in range(7))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # token auth is covered by the cluster tests
    # --block keeps `ray start` in the foreground: stopping its pid stops this head only, never another Ray
    # instance on the machine (the test session's own, a developer's).
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         # Every agent port too: their defaults are fixed numbers, already taken when another Ray instance runs
         # on the machine (the test session's own), and then the head's job agent never comes up.
         f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
         "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited: {head.stdout.read().decode()[-2000:]}")
        if subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True).returncode == 0:
            break
        time.sleep(2)
    else:
        pytest.fail("the Ray head's job server did not come up in 120 s")
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_registers(ray_head, tiny_shards, tmp_path):
    address, env = ray_head
    job = tiny_job(tiny_shards, tmp_path, train={"epochs": 1, "num_workers": 2, "name": "submitted"},
                   tracking={"register_as": "sst-submitted"})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    cmd = [RAY, "job", "submit", "--address", address, "--submission-id", "sst-e2e", "--no-wait", "--",
           sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config)]
    for _ in range(20):  # the dashboard answers before the node's job agent is ready: retry only that case
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:  # seen on a loaded 2-core machine while the agent starts
            continue
        said = proc.stdout + proc.stderr
        if proc.returncode == 0 or "already exists" in said:  # a timed-out attempt may have got through
            break
        assert "No available agent" in said, said[-3000:]
        time.sleep(2)
    client = JobSubmissionClient(address)
    deadline = time.time() + 420
    while client.get_job_status("sst-e2e") not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job still running after 420 s"
        time.sleep(2)
    logs = client.get_job_logs("sst-e2e")
    assert client.get_job_status("sst-e2e") == JobStatus.SUCCEEDED, logs[-3000:]
    assert "registered sst-submitted version 1" in logs
    runs = tracking.find_runs(job.tracking, "attributes.run_name = 'submitted'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val/mean_miou" in runs[0].data.metrics
    assert tracking.client(job.tracking).get_model_version("sst-submitted", "1").run_id == runs[0].info.run_id
