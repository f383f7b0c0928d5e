"""End to end as users run it: a real `ray start --head` on 127.0.0.1, `ray job submit` of jobs/train.py with a tiny
config, wait for SUCCEEDED, then find the MLflow run and the registered version; the head is stopped by its pid."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest
import yaml
from PIL import Image

from sstparse import tracking
from tests.raycli import REPO, head_args, start_group, stop_group, submit, wait_job, wait_job_server
from tests.serving import images
from tests.train.conftest import tiny_job


@pytest.fixture
def ray_head():
    # Ray's unix sockets live under temp-dir and AF_UNIX paths are capped at 107 bytes: pytest's tmp_path is too
    # deep, so use a short folder of our own.
    temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")
    # Token auth: tests/cluster/test_local_cluster.py. No SIGTERM drain (a 30 s wait for Ray Serve replicas that
    # nothing here runs).
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    args, address = head_args(temp_dir)
    # --block keeps `ray start` in the foreground: stopping its process group stops this head only, never another
    # Ray instance on the machine (the test session's own, a developer's).
    head = start_group(args, env)
    try:
        wait_job_server(address, env, head)
        yield address, env
    finally:
        stop_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_registers(ray_head, tiny_shards, tmp_path):
    address, env = ray_head
    job = tiny_job(tiny_shards, tmp_path, train={"epochs": 1, "num_workers": 2, "name": "submitted"},
                   tracking={"register_as": "sst-submitted"})
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    proc = submit(address, env, "sst-e2e", [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(config)])
    assert proc.returncode == 0 or "already exists" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    status, logs = wait_job(address, "sst-e2e", timeout=420)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "registered sst-submitted version 1" in logs
    # A quiet console: rank 0's line per epoch, once (Ray Train's print patch would double it), and no worker's
    # whole metric dict (Ray Train's "Reporting training result" INFO line, one per rank and epoch).
    assert logs.count("epoch 1/1: loss") == 1 and "Reporting training result" not in logs
    # Nor Ray Data's operator bars (each redraw a line without a terminal) or MLflow's download bars; the start
    # names where the full logs are.
    assert "row/s" not in logs and "Downloading artifacts" not in logs and "[sstparse] full logs: " in logs
    runs = tracking.find_runs(job.tracking, "attributes.run_name = 'submitted'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val/mean_miou" in runs[0].data.metrics
    assert tracking.client(job.tracking).get_model_version("sst-submitted", "1").run_id == runs[0].info.run_id

    # Batch prediction with the model just registered, submitted the same way (jobs/predict.py = predict --ray).
    (tmp_path / "photos").mkdir()
    for i, im in enumerate(images(2, [(64, 64), (72, 56)])):
        Image.fromarray(im).save(tmp_path / "photos" / f"p{i}.jpg")
    proc = submit(address, env, "sst-predict", [
        sys.executable, str(REPO / "jobs" / "predict.py"), "--model", "models:/sst-submitted@champion",
        "--tracking-uri", job.tracking.tracking_uri, "--domain", job.domain_names[0], str(tmp_path / "photos"),
        "--out", str(tmp_path / "parsed"), "--concurrency", "2", "--num-cpus-per-actor", "0.5"])
    assert proc.returncode == 0 or "already exists" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    status, logs = wait_job(address, "sst-predict", timeout=300)
    assert status == "SUCCEEDED" and "predicted 2 image(s)" in logs, logs[-3000:]
    assert sorted(p.name for p in (tmp_path / "parsed").iterdir()) == [
        "p0.png", "p0_color.png", "p0_overlay.jpg", "p1.png", "p1_color.png", "p1_overlay.jpg", "skipped.csv"]
