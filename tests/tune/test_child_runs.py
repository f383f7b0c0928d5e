"""How a sweep closes its trials' MLflow runs: the sweep's view of each trial decides the final status."""

from __future__ import annotations

from pathlib import Path

from sstparse import tracking
from sstparse.train import checkpoints
from sstparse.tune.config import SweepConfig
from sstparse.tune.sweep import close_child_runs, summarize, tracking_answers
from tests.train.conftest import tiny_job


def test_the_sweep_decides_how_each_trial_run_ends(tmp_path):
    job = tiny_job("/shards", tmp_path)
    cfg = job.tracking
    names = ("best", "done", "done_failed", "asha", "asha_failed", "broken")
    runs = {name: tracking.start_run(cfg, name) for name in names}
    # Tune stops a trial as soon as ASHA says so -- at max_t too, right after its last report -- and the trial's
    # fit() then sees its TorchTrainer torn down and marks its own run FAILED (seen in CI: a completed trial).
    for name in ("done_failed", "asha_failed"):
        tracking.end_run(cfg, runs[name], "FAILED")
    tracking.end_run(cfg, runs["best"])  # finalize closed it after logging the model
    status = {"best": "completed", "done": "completed", "done_failed": "completed", "asha": "stopped early",
              "asha_failed": "stopped early", "broken": "error"}
    rows = [{"trial_id": n, "run_id": runs[n], "status": status[n]} for n in runs]
    close_child_runs(rows, rows[0], job)
    got = {n: tracking.client(cfg).get_run(r) for n, r in runs.items()}
    assert {n: r.info.status for n, r in got.items()} == {
        "best": "FINISHED", "done": "FINISHED", "done_failed": "FINISHED", "asha": "KILLED", "asha_failed": "KILLED",
        "broken": "FAILED"}
    assert got["asha_failed"].data.tags["sweep.status"] == "stopped early"
    assert "sweep.status" not in got["best"].data.tags


def _sweep(tmp_path) -> SweepConfig:
    return SweepConfig.model_validate({"job": "unused.yaml", "name": "s", "storage_path": str(tmp_path / "sweeps"),
                                       "space": {"lr": {"low": 0.001, "high": 0.01}}})


def _kept(tmp_path, trial_id: str) -> str:
    path = checkpoints.unsent_path(str(tmp_path / "sweeps" / "s" / "train"), trial_id)
    checkpoints.write_unsent(path, [{"key": "val/mean_miou", "value": 0.25, "timestamp": 1000, "step": 1}])
    return path


def test_a_sweep_sends_what_its_trials_kept_while_mlflow_was_away(tmp_path):
    job = tiny_job("/shards", tmp_path)
    parent, trial = tracking.start_run(job.tracking, "sweep"), tracking.start_run(job.tracking, "t1")
    path = _kept(tmp_path, "t1")
    rows = [{"trial_id": "t1", "run_id": trial, "status": "completed"}]
    assert tracking_answers(rows, _sweep(tmp_path), job, parent, tmp_path / "trials.csv")
    history = tracking.client(job.tracking).get_metric_history(trial, "val/mean_miou")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(1, 0.25, 1000)] and not Path(path).exists()


def test_a_sweep_whose_mlflow_never_answers_ends_without_its_summary(tmp_path, capsys):
    job = tiny_job("/shards", tmp_path, tracking={"tracking_uri": "http://127.0.0.1:9", "outage_wait_s": 0})
    path = _kept(tmp_path, "t1")
    rows = [{"trial_id": "t1", "run_id": "r1", "status": "completed", "val/mean_miou": 0.5, "epochs": 2,
             "checkpoint": "somewhere"}]
    result = summarize(rows, _sweep(tmp_path), job, "parent-run", str(tmp_path / "out"))
    assert result.registered_version is None and result.best is rows[0]
    said = capsys.readouterr().out
    assert "does not answer: the sweep's MLflow run parent-run stays open" in said and path in said
    assert (tmp_path / "out" / "trials.csv").exists() and Path(path).exists()
