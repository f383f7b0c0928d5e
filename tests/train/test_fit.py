"""A tiny CPU end-to-end run on Ray Train: 2 DDP workers, checkpoints, MLflow, registry, resume, fault tolerance."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest

from sstparse import tracking
from sstparse.config import TrackingConfig
from sstparse.data.preview import samples
from sstparse.domains import load_domains
from sstparse.train import checkpoints
from sstparse.train.job import format_result
from sstparse.train.loop import poly_lambda
from sstparse.train.trainer import (SKIPPED_FILE, absolute_paths, build_trainer, fit, ingest_options,
                                    recorded_run, report_skipped)
from tests.data.fixtures import crafted_root
from tests.raycli import until_captured
from tests.scripts import JOBS, job_script
from tests.stores import sqlite_uri
from tests.train.conftest import tiny_job

pytestmark = pytest.mark.ray


def _runs(job, name):
    return tracking.find_runs(job.tracking, f"attributes.run_name = '{name}'")


def _history(job, run_id, key):
    return [(m.step, m.value) for m in tracking.client(job.tracking).get_metric_history(run_id, key)]


def test_recorded_run_is_reused_and_reopened(tmp_path):
    # A sweep interrupted mid-trial can leave the trial's run FAILED; the restored trial must log into it, open.
    cfg = TrackingConfig(tracking_uri=sqlite_uri(tmp_path), experiment="t")
    first = recorded_run(cfg, str(tmp_path / "train"), "trial_a")
    assert (tmp_path / "train" / "trial_a" / "mlflow_run_id").read_text() == first
    tracking.end_run(cfg, first, "FAILED")
    assert recorded_run(cfg, str(tmp_path / "train"), "trial_a") == first
    assert tracking.run_status(cfg, first) == "RUNNING"
    assert recorded_run(cfg, str(tmp_path / "train"), "trial_b") != first


def test_skipped_records_wait_beside_the_checkpoints_while_mlflow_is_away(tmp_path, capsys):
    """Under an outage the skipped-records list is kept in the run's folder; the same job run again (MLflow back)
    sends it with the earlier and any new records, and removes the file."""
    job = tiny_job(str(tmp_path), tmp_path, data={"on_bad_record": "skip"})
    row = {"stream": "train", "epoch": 1, "domain": "syn_ppp", "sample_id": "s2", "reason": "undecodable image"}
    first = [{**row, "source": "a.parquet#row=2"}, {**row, "epoch": 2, "source": "a.parquet#row=2"}]
    report_skipped(job, "run", None, first, 2)
    kept = tmp_path / "ray_results" / "run" / SKIPPED_FILE
    assert f"listed in {kept} until MLflow answers" in capsys.readouterr().out
    assert [r["source"] for r in csv.DictReader(kept.open())] == ["a.parquet#row=2"] * 2

    run_id = tracking.start_run(job.tracking, "run")
    report_skipped(job, "run", run_id, [{**row, "epoch": 3, "source": "b.parquet#row=0"}], 3)
    assert not kept.exists()
    assert _history(job, run_id, "data/skipped_records") == [(3, 2.0)]
    listed = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"data/{SKIPPED_FILE}",
                                                      dst_path=str(tmp_path), tracking_uri=job.tracking.tracking_uri))
    assert [(r["epoch"], r["source"]) for r in csv.DictReader(listed.open())] == [
        ("1", "a.parquet#row=2"), ("2", "a.parquet#row=2"), ("3", "b.parquet#row=0")]


def test_every_dataset_gets_its_own_ray_data_options(ray_session, tiny_shards, tmp_path):
    """Ray Train falls back to its default ingest options for a dataset given none, and those set Ray Data's
    deprecated exclude_resources: a RayDeprecationWarning on the job's console from the driver and again from the
    dataset manager. The trainer names options for every dataset it passes; training's order follows the job."""
    from ray.util.annotations import RayDeprecationWarning

    job = tiny_job(tiny_shards, tmp_path, data={"preserve_order": True}, tracking={"enabled": False})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = build_trainer(absolute_paths(job), "options", None)
        options = ingest_options(job.data.preserve_order)
    assert [str(w.message) for w in caught if issubclass(w.category, RayDeprecationWarning)] == []
    assert set(options) == set(trainer.datasets) == {"train", "val"}
    assert options["train"].preserve_order and not options["val"].preserve_order


def test_universal_fit_registers_its_best_checkpoint(ray_session, tiny_shards, tmp_path, monkeypatch):
    """One 2-worker universal fit of 3 epochs: validation on schedule, every epoch's metrics back at the driver,
    dataset-wide confusion matrices, the best checkpoint's pictures and model registered as the name's first
    version (champion). Resuming a finished run into the same MLflow run: tests/cluster/test_s3_e2e.py (and the
    crash and node-loss tests); a later version becoming the challenger: tests/test_registry.py and the sweeps."""
    # val_every=2: epoch 1 trains only (no validation, no checkpoint); epoch 2 validates on schedule and epoch 3
    # because it is the last.
    job = tiny_job(tiny_shards, tmp_path, train={"val_every": 2, "epochs": 3},
                   tracking={"register_as": "sst-test-universal"})
    first = fit(job, out_dir=str(tmp_path / "pictures"))
    assert first.last["epoch"] == 3
    validated = [h for h in first.history if "val/mean_miou" in h]
    assert [h["epoch"] for h in validated] == [2, 3]
    best = max(validated, key=lambda h: h["val/mean_miou"])  # FitResult.metrics: the best checkpoint's
    assert first.metrics["epoch"] == best["epoch"] and first.metrics["val/mean_miou"] == best["val/mean_miou"]
    assert 0.0 <= first.metrics["val/mean_miou"] <= 1.0
    for d in job.domain_names:
        assert f"val/{d}/iou/background" in first.metrics
    assert first.registered_version == "1"
    pictures = {p.name for p in (tmp_path / "pictures").iterdir()}
    assert {"confusion_syn_ppp.png", "association_syn_lip_to_syn_ppp.png", "predictions_syn_lip.png",
            "miou_vs_minutes.png"} <= pictures
    # Every epoch's metrics come back to the driver, timed for the time-to-accuracy curve and the benchmarks.
    assert [h["epoch"] for h in first.history] == [1, 2, 3]
    elapsed = [h["time/elapsed_s"] for h in first.history]
    assert 0 < elapsed[0] < elapsed[1] < elapsed[2]
    assert all(h["train/steady_img_per_s"] > 0 and 0 <= h["train/data_wait_frac"] < 1 for h in first.history)
    run = tracking.client(job.tracking).get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.mode"] == "universal"
    assert [s for s, _ in _history(job, first.run_id, "val/mean_miou")] == [2, 3]
    assert [s for s, _ in _history(job, first.run_id, "train/loss")] == [1, 2, 3]
    assert len(_runs(job, "tiny")) == 1
    # One validation dataset for every domain, split across the 2 workers and all-reduced: each domain's confusion
    # matrix counts every labelled pixel of its whole validation set exactly once.
    evals, cards = checkpoints.read_eval(Path(first.checkpoint_path)), load_domains()
    for d in job.domain_names:
        labelled = sum(int((label < cards[d].num_classes).sum()) for _, label in samples(tiny_shards, d, "val"))
        assert evals[f"confusion/{d}"].sum() == labelled > 0, d

    # The first version was promoted at once (README: models:/<name>@champion works after one run). It says what
    # it is.
    c = tracking.client(job.tracking)
    assert str(c.get_model_version_by_alias("sst-test-universal", "champion").version) == "1"
    v1 = c.get_model_version("sst-test-universal", "1")
    assert v1.tags["source_run"] == first.run_id and v1.tags["promotion.decision"] == "promoted"
    assert v1.tags["checkpoint"] == first.checkpoint_path and v1.tags["epoch"] == str(best["epoch"])
    assert "syn_atr (18 classes)" in v1.description and "validation mIoU" in v1.description

    # The registered pyfunc loads in this process, keeps every head, and parses with any of them. (MLflow's own
    # calls read the store from the environment: fit() leaves the process's MLflow URIs as it found them.)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", job.tracking.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/sst-test-universal/1")
    heads = model.unwrap_python_model().heads
    assert {n: h.num_classes for n, h in heads.items()} == {"syn_lip": 20, "syn_cihp": 20, "syn_atr": 18, "syn_ppp": 7}
    (labels,) = model.predict([np.zeros((40, 52, 3), np.uint8)], params={"domain": "syn_atr"})
    assert labels.shape == (40, 52) and labels.dtype == np.uint8 and labels.max() < 18


def test_worker_crash_resumes_from_checkpoint_in_one_run(ray_session, tiny_shards, tmp_path, capfd):
    # The crash comes a step into the third epoch. A checkpoint counts once the Train controller has taken its
    # report (at its next poll of the workers, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), and a worker's report waits until
    # the controller has taken its previous one: so by then epoch 1's checkpoint has surely been taken, epoch 2's
    # perhaps. (A crash in the second epoch could restart from scratch, its fault firing again.)
    job = tiny_job(tiny_shards, tmp_path, train={"name": "crashy", "epochs": 3, "max_failures": 1,
                                                 "fault_injection": {"epoch": 2, "rank": 1, "after_steps": 1}})
    result = fit(job, register=False)  # the model is logged, not registered (registration: the universal test)
    assert result.last["epoch"] == 3
    # The crash fired and the restarted group restored a checkpoint (the workers' lines reach this driver through
    # Ray's log monitor, a moment after the fit returns).
    seen = until_captured(capfd, "[restore] resuming after epoch")
    assert "[fault injection] rank 1 exits in epoch 2 after 1 steps" in seen
    assert re.search(r"\[restore\] resuming after epoch [12]\b", seen), seen[-2000:]
    # ...with its optimiser and schedule: the run ends on the schedule's last step (2 steps an epoch here), as an
    # uninterrupted run does; a schedule restarted from 0 would end 2 or 4 steps in, at 500x this rate or more.
    steps = result.last["train/steps"] * job.train.epochs
    assert result.last["lr"] == pytest.approx(job.optim.lr * poly_lambda(job.optim, steps)(steps))
    runs = _runs(job, "crashy")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted({s for s, _ in _history(job, result.run_id, "val/mean_miou")}) == [1, 2, 3]
    meta = json.loads((Path(result.checkpoint_path) / "meta.json").read_text())
    assert meta["mlflow_run_id"] == result.run_id


def test_dedicated_mode_exports_the_target_head_only(ray_session, tiny_shards, tmp_path, monkeypatch, capsys):
    """The README's `python jobs/train.py --config jobs/configs/dedicated.yaml --smoke-test`, on the tiny shards with
    this test's storage and store: trains the dedicated job (target syn_ppp, distilling from the other domains)
    and registers a model that serves the target's head only."""
    store = sqlite_uri(tmp_path)
    job_script("train").main(["--config", str(JOBS / "configs" / "dedicated.yaml"), "--smoke-test",
                              f"data.root={tiny_shards}", f"train.storage_path={tmp_path / 'ray_results'}",
                              f"tracking.tracking_uri={store}", f"tracking.artifact_location={tmp_path / 'artifacts'}"])
    said = capsys.readouterr().out
    assert "syn_ppp" in said and "registered sst-syn_ppp-smoke version 1" in said, said[-2000:]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    model = mlflow.pyfunc.load_model("models:/sst-syn_ppp-smoke/1")  # model from code + torch.export: no pickle
    labels = model.predict([np.zeros((40, 52, 3), np.uint8)] * 2)  # one head: no domain needed
    assert [x.shape for x in labels] == [(40, 52)] * 2 and max(int(x.max()) for x in labels) < 7
    info = mlflow.models.get_model_info("models:/sst-syn_ppp-smoke/1")
    assert info.metadata["heads"] == {"syn_ppp": [0, 7]}
    run = tracking.client(TrackingConfig(tracking_uri=store)).get_run(info.run_id)
    assert run.data.params["train.mode"] == "dedicated" and run.data.params["sst.lambda_kd"] == "0.5"
    assert "val/syn_ppp/miou" in run.data.metrics


def test_bad_records_are_counted_and_listed_or_fail_the_run(ray_session, tmp_path):
    """on_bad_record: skip -> the run finishes and the skipped records reach MLflow (a count and the list) and the
    job's last message; error -> the run ends FAILED and nothing is registered."""
    root = crafted_root(tmp_path / "shards", [(40, 48)] * 6, {2: "image"})  # row 2 of train and of val
    job = tiny_job(root, tmp_path, data={"domain_mix": {"syn_ppp": 1.0}, "on_bad_record": "skip", "epoch_size": 8},
                   train={"mode": "single", "target": "syn_ppp", "epochs": 1, "num_workers": 1, "name": "skippy"},
                   tracking={"register_as": "sst-test-skip"})
    result = fit(job)
    assert result.skipped_records == 2 and result.registered_version == "1"
    assert "skipped 2 bad record(s)" in format_result(result)
    assert _history(job, result.run_id, "data/skipped_records") == [(1, 2.0)]
    listed = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="data/skipped_records.csv",
                                                      dst_path=str(tmp_path), tracking_uri=job.tracking.tracking_uri))
    rows = list(csv.DictReader(listed.open()))
    assert {r["source"].split("/syn_ppp/")[1] for r in rows} == {"train/part-00000.parquet#row=2",
                                                                "val/part-00000.parquet#row=2"}
    assert all("undecodable image" in r["reason"] for r in rows)

    strict = job.model_copy(update={"data": job.data.model_copy(update={"on_bad_record": "error"}),
                                    "train": job.train.model_copy(update={"name": "strict"}),
                                    "tracking": job.tracking.model_copy(update={"register_as": "sst-test-strict"})})
    # The record and its fault are named (Ray cuts a long error snippet in the middle, so not the words around it).
    with pytest.raises(Exception, match=r"\S*/syn_ppp/train/part-00000\.parquet#row=2: undecodable image"):
        fit(strict)
    assert [r.info.status for r in _runs(strict, "strict")] == ["FAILED"]
    assert tracking.model_versions(strict.tracking, "sst-test-strict") == {}
