"""How a sweep closes its trials' MLflow runs: the sweep's view of each trial decides the final status."""

from __future__ import annotations

from sstparse import tracking
from sstparse.tune.sweep import close_child_runs
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
