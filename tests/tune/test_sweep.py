"""A small sweep end to end on the shared Ray session: Optuna + ASHA over tiny trials, an interruption and
Tuner.restore, MLflow parent/child runs, and the registered model."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import ray.tune

from sstparse import tracking
from sstparse.tune.config import SweepConfig
from sstparse.tune.sweep import run_sweep
from tests.train.conftest import tiny_job

pytestmark = pytest.mark.ray


class InterruptOnce(ray.tune.Callback):
    """Records trial starts and sends Ctrl-C to the sweep driver when the first trial finishes.

    State lives in files: Tuner.restore brings back the RunConfig's callbacks (a copy of this object), so the
    restored sweep must see that the interruption already happened."""

    def __init__(self, folder: Path):
        self.started, self.done = folder / "started.txt", folder / "interrupted"

    def on_trial_start(self, iteration, trials, trial, **info):
        with self.started.open("a") as f:
            f.write(trial.trial_id + "\n")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.done.exists():
            self.done.touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_sweep_restores_after_interruption_and_registers_the_challenger(ray_session, tiny_shards, tmp_path):
    job = tiny_job(tiny_shards, tmp_path, tracking={"register_as": "sst-test-sweep"}, train={"epochs": 2})
    sweep = SweepConfig.model_validate({
        "job": "unused.yaml", "name": "tiny-sweep", "storage_path": str(tmp_path / "sweeps"),
        "space": {"lambda_mst": {"low": 0.01, "high": 1.0, "log": True}, "lr": {"fixed": 0.003},
                  "domain_mix": {"low": 0.5, "high": 2.0}},
        "search": {"num_samples": 3, "max_concurrent": 1, "n_startup_trials": 2},
        "scheduler": {"kind": "asha", "grace_period": 1}})

    recorder = InterruptOnce(tmp_path)
    interrupted = run_sweep(sweep, job, callbacks=[recorder])
    assert interrupted.interrupted and interrupted.registered_version is None
    assert tracking.run_status(job.tracking, interrupted.parent_run_id) == "RUNNING"  # the resumed sweep closes it
    result = run_sweep(sweep, job, out_dir=str(tmp_path / "out"))

    assert len(result.rows) == 3 and not result.interrupted and result.parent_run_id == interrupted.parent_run_id
    started = recorder.started.read_text().split()
    assert sorted(set(started)) == sorted(r["trial_id"] for r in result.rows)
    assert started.count(started[0]) == 1, "the trial finished before the interruption must not run again"
    assert 3 <= result.trial_epochs <= 6  # ASHA may stop a trial after its first epoch
    for r in result.rows:
        assert {k for k in r if k.startswith("mix.")} == {f"mix.{d}" for d in job.domain_names}
        assert 0.01 <= r["lambda_mst"] <= 1.0

    # MLflow: one parent, one child per trial named after the trial id, all closed.
    children = tracking.find_runs(job.tracking, f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(r["trial_id"] for r in result.rows)
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert all(c.data.params["optim.lr"] == "0.003" for c in children)
    parent = tracking.client(job.tracking).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials"] == 3
    artifacts = {a.path for a in tracking.client(job.tracking).list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/optimisation_history.png", "sweep/objective_vs_params.png"} <= artifacts

    # The best finished trial's model is registered; as the name's first version it became champion at once
    # (a later sweep's model is the challenger, which `sstparse promote` compares with it).
    best = max((r for r in result.rows if r["status"] == "completed"), key=lambda r: r["val/mean_miou"])
    version = tracking.get_alias(job.tracking, "sst-test-sweep", "champion")
    assert result.best is best and str(version.version) == result.registered_version
    assert version.run_id == best["run_id"] and version.tags["source_run"] == best["run_id"]
