"""A small sweep end to end on the shared Ray session: Optuna + ASHA over tiny trials, an interruption and
Tuner.restore, MLflow parent/child runs, and the registered model."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import ray.tune

from sstparse import tracking
from sstparse.train.job import SMOKE_OVERRIDES
from sstparse.tune.config import SweepConfig, load_sweep
from sstparse.tune.job import SMOKE_SWEEP_OVERRIDES
from sstparse.tune.sweep import run_sweep
from tests.scripts import JOBS
from tests.stores import sqlite_uri
from tests.train.conftest import tiny_job

pytestmark = pytest.mark.ray


class InterruptOnce(ray.tune.Callback):
    """Records trial starts and sends Ctrl-C to the sweep driver when the first trial finishes; when the second trial
    starts, damages the shard parts its training reads (their bytes no longer match the manifest), so that trial
    raises once its MLflow run is open (once: a trial started again after the restore meets the same damage).

    State lives in files: Tuner.restore brings back the RunConfig's callbacks (a copy of this object), so the
    restored sweep must see that the interruption already happened."""

    def __init__(self, folder: Path, parts: list[Path]):
        self.started, self.done, self.parts = folder / "started.txt", folder / "interrupted", parts
        self.damaged = folder / "damaged"

    def on_trial_start(self, iteration, trials, trial, **info):
        with self.started.open("a") as f:
            f.write(trial.trial_id + "\n")
        if len(set(self.started.read_text().split())) == 2 and not self.damaged.exists():
            self.damaged.touch()
            for part in self.parts:
                data = bytearray(part.read_bytes())
                data[len(data) // 2] ^= 0xFF
                part.write_bytes(bytes(data))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.done.exists():
            self.done.touch()
            os.kill(os.getpid(), signal.SIGINT)


def test_sweep_restores_after_interruption_and_registers_the_challenger(ray_session, tiny_shards, tmp_path):
    """The README's `python jobs/tune.py --config jobs/configs/sweep.yaml --smoke-test` with trials of two epochs
    instead of one (a checkpoint to resume from), on the tiny shards with this test's storage and store: the first
    trial finishes, the sweep is interrupted and restored, the second trial fails. (ASHA stopping a trial:
    test_asha_on_the_jobs_objective_stops_poor_trials.)"""
    shards = tmp_path / "shards"  # a copy: the second trial's part is damaged on purpose
    shutil.copytree(tiny_shards, shards)
    sweep, job = load_sweep(JOBS / "configs" / "sweep.yaml", SMOKE_SWEEP_OVERRIDES + [
        # trial_max_failures=0: the failing trial's second try would meet the same damaged part
        "trial_max_failures=0",
        f"storage_path={tmp_path / 'sweeps'}",
        f"job.data.root={shards}", "job.train.epochs=2", f"job.train.storage_path={tmp_path / 'ray_results'}",
        f"job.tracking.tracking_uri={sqlite_uri(tmp_path)}", f"job.tracking.artifact_location={tmp_path / 'art'}",
        "job.tracking.register_as=sst-test-sweep"], SMOKE_OVERRIDES)
    space = sweep.space

    recorder = InterruptOnce(tmp_path, sorted((shards / "syn_lip" / "train").glob("*.parquet")))
    interrupted = run_sweep(sweep, job, callbacks=[recorder])
    assert interrupted.interrupted and interrupted.registered_version is None
    assert tracking.run_status(job.tracking, interrupted.parent_run_id) == "RUNNING"  # the resumed sweep closes it
    result = run_sweep(sweep, job, out_dir=str(tmp_path / "out"))

    assert len(result.rows) == 2 and not result.interrupted and result.parent_run_id == interrupted.parent_run_id
    started = recorder.started.read_text().split()
    assert sorted(set(started)) == sorted(r["trial_id"] for r in result.rows)
    assert started.count(started[0]) == 1, "the trial finished before the interruption must not run again"
    # The second trial raised (a damaged part, named); the sweep went on without it.
    by_id, order = {r["trial_id"]: r for r in result.rows}, list(dict.fromkeys(started))
    failed = by_id[order[1]]
    assert failed["status"] == "error" and failed["epochs"] == 0
    assert by_id[order[0]]["status"] == "completed" and result.trial_epochs == 2
    for r in result.rows:
        assert {k for k in r if k.startswith("mix.")} == {f"mix.{d}" for d in job.domain_names}
        assert space.lambda_mst.low <= r["lambda_mst"] <= space.lambda_mst.high

    # MLflow: one parent, one child per trial named after the trial id, all closed.
    children = tracking.find_runs(job.tracking, f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(r["trial_id"] for r in result.rows)
    status = {c.info.run_name: c.info.status for c in children}
    assert status.pop(failed["trial_id"]) == "FAILED"
    assert all(s in ("FINISHED", "KILLED") for s in status.values())
    assert all(space.lr.low <= float(c.data.params["optim.lr"]) <= space.lr.high for c in children)
    parent = tracking.client(job.tracking).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trials"] == 2
    artifacts = {a.path for a in tracking.client(job.tracking).list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/optimisation_history.png", "sweep/objective_vs_params.png"} <= artifacts

    # The best finished trial's model is registered; as the name's first version it became champion at once
    # (a later sweep's model is the challenger, which `sstparse promote` compares with it).
    best = max((r for r in result.rows if r["status"] == "completed"), key=lambda r: r["val/mean_miou"])
    version = tracking.get_alias(job.tracking, job.registered_name, "champion")
    assert result.best is best and str(version.version) == result.registered_version
    assert version.run_id == best["run_id"] and version.tags["source_run"] == best["run_id"]


def test_asha_on_the_jobs_objective_stops_poor_trials(ray_session, tmp_path):
    """The sweep's TuneConfig (ASHA on epochs, ranking by the job's objective) on trials that report a known score:
    each trial's objective grows with its learning rate, so ASHA must stop some low-rate trials at a rung while
    the best trial runs every epoch."""
    from sstparse.tune.sweep import param_space, tune_config

    job = tiny_job("/shards", tmp_path, train={"epochs": 4})
    sweep = SweepConfig.model_validate({
        "job": "unused.yaml", "space": {"lr": {"low": 0.001, "high": 0.1, "log": True}},
        "search": {"num_samples": 6, "max_concurrent": 1, "n_startup_trials": 6},
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2}})
    objective = job.objective

    def trial(config):
        for epoch in range(1, job.train.epochs + 1):
            ray.tune.report({"epoch": epoch, objective: config["lr"] * epoch})

    grid = ray.tune.Tuner(trial, param_space=param_space(sweep, job), tune_config=tune_config(sweep, job),
                          run_config=ray.tune.RunConfig(storage_path=str(tmp_path / "asha"))).fit()
    epochs = {r.config["lr"]: int(r.metrics["epoch"]) for r in grid}
    assert len(epochs) == 6 and not grid.errors
    assert epochs[max(epochs)] == job.train.epochs
    stopped = [lr for lr, e in epochs.items() if e < job.train.epochs]
    assert stopped and max(stopped) < max(epochs)
