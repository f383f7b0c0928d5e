"""S3 end to end on the moto server, as a cluster runs it: shards on S3, read through a fault-injecting proxy ->
training with train.storage_path on S3 -> checkpoints on S3 -> the same job again with more epochs resumes from S3
into the same MLflow run -> the run's artifacts (pictures, checkpoint meta, the pyfunc model) land on S3 and the
model loads back from there.

The S3 endpoint and credentials come from the environment, which every Ray process inherited (tests/conftest.py
``s3_server`` runs before ``ray_session``), as on a cluster where a Kubernetes Secret puts them on every node.

It doubles as the credentials test: a fake secret key is in the driver's environment and in data.storage_options
(a user's second set of credentials for the shards); afterwards it must be nowhere in the MLflow run (params, tags,
metric names, artifacts), in anything written to S3 (checkpoints, meta.json), in the driver's captured output or in
the Ray session's logs."""

from __future__ import annotations

import posixpath
from pathlib import Path

import numpy as np
import pytest

from sstparse import tracking
from sstparse.data.generate import generate
from sstparse.data.shards import filesystem
from sstparse.domains import load_domains
from sstparse.train.trainer import fit
from tests.raycli import until_captured
from tests.train.conftest import tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.s3]

FAKE_KEY_ID = "AKIAFAKEE2E000000042"
FAKE_SECRET = "fake-secret-4d2e9c1b7a5f"
DOMAINS = ["syn_atr", "syn_ppp"]


def job_for(base: str, tmp_path: Path, epochs: int, options: dict):
    return tiny_job(f"{base}/shards", tmp_path,
                    data={"domain_mix": {d: 1.0 for d in DOMAINS}, "storage_options": options},
                    train={"epochs": epochs, "storage_path": f"{base}/ray_results", "name": "s3e2e", "num_workers": 1},
                    tracking={"artifact_location": f"{base}/mlflow", "register_as": "sst-s3-e2e"})


def read_all(fs, prefix: str) -> dict[str, bytes]:
    return {p: fs.cat_file(p) for p in fs.find(prefix)}


def ray_session_logs() -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())


def test_s3_train_resume_and_artifacts_without_leaking_credentials(ray_session, s3_server, s3_proxy, tmp_path,
                                                                    monkeypatch, capfd):
    base = f"s3://{s3_server.bucket}/e2e"
    domains = load_domains()
    generate(f"{base}/shards", [domains[d] for d in DOMAINS], seed=0, scale=0.02, rows_per_part=16,
             progress=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)  # moto takes any key: these stand for real ones
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    # The shards are read through the fault-injecting proxy (503 SlowDown, dropped connections): by the driver, the
    # Ray Data read tasks and the pictures of the best checkpoint.
    options = {**s3_proxy.storage_options, "key": FAKE_KEY_ID, "secret": FAKE_SECRET}

    # First submission: one epoch, then "interrupted" (no model logged, the MLflow run left open).
    first = fit(job_for(base, tmp_path, 1, options), log_model=False)
    fs, _ = filesystem(base)
    root = f"{s3_server.bucket}/e2e/ray_results/s3e2e"
    assert fs.cat_file(f"{root}/mlflow_run_id").decode() == first.run_id
    checkpoints = [e["name"] for e in fs.ls(root, detail=True) if e["type"] == "directory"
                   and posixpath.basename(e["name"]).startswith("checkpoint_")]
    assert len(checkpoints) == 1 and {"state.pt", "meta.json"} <= {posixpath.basename(p) for p in fs.ls(checkpoints[0])}

    # Same job, more epochs: resumes from the S3 checkpoint, appends to the same run, logs the model to S3.
    second = fit(job_for(base, tmp_path, 2, options), out_dir=str(tmp_path / "pictures"))
    driver_output = until_captured(capfd, "[restore] resuming after epoch 1")
    assert "[restore] resuming after epoch 1" in driver_output
    assert second.run_id == first.run_id and second.last["epoch"] == 2
    cfg = second.job.tracking
    client = tracking.client(cfg)
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mean_miou")] == [1, 2]
    assert s3_proxy.total_faults > 0  # the reads above went through injected faults and lost nothing

    # Artifacts on S3, and the model loads back from there.
    assert run.info.artifact_uri.startswith(f"{base}/mlflow/")
    artifacts = {p.removeprefix(run.info.artifact_uri.removeprefix("s3://")) for p in fs.find(run.info.artifact_uri)}
    assert {"/checkpoint/meta.json", "/plots/confusion_syn_ppp.png", "/plots/predictions_syn_atr.png"} <= artifacts
    assert any(p.endswith("/MLmodel") for p in fs.find(f"{base}/mlflow"))
    model = tracking.load_pyfunc_model(f"runs:/{run.info.run_id}/model", cfg.tracking_uri)
    (labels,) = model.predict([np.zeros((40, 48, 3), np.uint8)], params={"domain": "syn_ppp"})
    assert labels.shape == (40, 48)

    # The credentials: masked where the config is recorded, absent everywhere else.
    assert run.data.params["data.storage_options.secret"] == "***"
    assert run.data.params["data.storage_options.key"] == "***"
    recorded = [*run.data.params, *run.data.params.values(), *run.data.tags, *run.data.tags.values(),
                *run.data.metrics]
    written = read_all(fs, f"{base}/ray_results") | read_all(fs, f"{base}/mlflow")
    driver_output += "".join(capfd.readouterr())
    for fake in (FAKE_SECRET, FAKE_KEY_ID):
        assert not [r for r in recorded if fake in r], "in the MLflow run"
        assert not [p for p, data in written.items() if fake.encode() in data], "in an S3 object"
        assert fake not in driver_output, "in the driver's output"
        assert fake not in ray_session_logs(), "in the Ray session's logs"
