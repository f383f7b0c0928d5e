"""MLflow tracking against a real sqlite store and registry in a temp folder."""

from __future__ import annotations

import os
import time

import mlflow

from sstparse import export, tracking
from sstparse.model.sst import inference_model
from sstparse.config import TrackingConfig
from tests.serving import tiny_model
from tests.stores import sqlite_uri


def _cfg(tmp_path):
    return TrackingConfig(tracking_uri=sqlite_uri(tmp_path), artifact_location=str(tmp_path / "art"),
                          experiment="t")


def test_run_params_metrics_and_no_secrets(tmp_path):
    cfg = _cfg(tmp_path)
    run = tracking.start_run(cfg, "trial_0001", tags={"mode": "universal"})
    params = {"optim": {"lr": 0.01}, "storage": {"aws_secret_access_key": "FAKESECRET123"}}
    tracking.log_params(cfg, run, params)
    tracking.log_params(cfg, run, params)  # a resumed worker re-logging the same params is harmless
    tracking.log_metrics(cfg, run, {"val/syn_lip/miou": 0.5, "nan": float("nan")}, step=1)
    tracking.end_run(cfg, run)
    got = tracking.client(cfg).get_run(run)
    assert got.info.run_name == "trial_0001" and got.data.tags["mode"] == "universal"
    assert got.data.params["optim.lr"] == "0.01"
    assert got.data.params["storage.aws_secret_access_key"] == "***"
    assert "FAKESECRET123" not in str(got.data.params)
    assert got.data.metrics == {"val/syn_lip/miou": 0.5}


def test_child_runs_and_registry_alias(tmp_path, monkeypatch):
    # Logging and loading a model use MLflow's global URIs only for the call: the environment later processes
    # inherit (a later fit's Ray workers, subprocesses) is left as it was, set or not.
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    cfg = _cfg(tmp_path)
    parent = tracking.start_run(cfg, "sweep")
    child = tracking.start_run(cfg, "trial_a", parent_run_id=parent)
    assert [r.info.run_id for r in tracking.find_runs(cfg, f"tags.mlflow.parentRunId = '{parent}'")] == [child]
    version = export.log_pyfunc_model(cfg, child, inference_model(tiny_model()), register_as="sst-test",
                                        alias="challenger")
    assert version == "1"
    assert str(tracking.get_alias(cfg, "sst-test", "challenger").version) == "1"
    assert tracking.get_alias(cfg, "sst-test", "champion") is None
    assert tracking.load_pyfunc_model("models:/sst-test@challenger", cfg.tracking_uri) is not None
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db" and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == "sqlite:///elsewhere.db"


def test_tracking_uri_comes_from_the_environment_unless_set(monkeypatch):
    # On a cluster MLFLOW_TRACKING_URI comes from the nodes' environment; a server then keeps the artifacts.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert TrackingConfig().tracking_uri == "sqlite:///mlruns.db"
    assert TrackingConfig().artifact_location == "mlruns-artifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert TrackingConfig().tracking_uri == "http://mlflow:5000" and TrackingConfig().artifact_location is None
    explicit = TrackingConfig(tracking_uri="sqlite:///x.db", artifact_location="s3://b/a")
    assert (explicit.tracking_uri, explicit.artifact_location) == ("sqlite:///x.db", "s3://b/a")


def test_reopen_run_resumes_a_closed_run(tmp_path):
    cfg = _cfg(tmp_path)
    run = tracking.start_run(cfg, "trial_b")
    tracking.end_run(cfg, run, "FAILED")
    tracking.reopen_run(cfg, run)
    assert tracking.run_status(cfg, run) == "RUNNING"
    tracking.reopen_run(cfg, run)  # already running: left as it is
    tracking.end_run(cfg, run)
    assert tracking.run_status(cfg, run) == "FINISHED"


def test_outbox_keeps_what_an_unanswering_server_did_not_take_in_order(tmp_path):
    cfg = _cfg(tmp_path)
    run = tracking.start_run(cfg, "outage")
    kept: list[list[dict]] = []
    down = cfg.model_copy(update={"tracking_uri": "http://127.0.0.1:9", "request_timeout_s": 1})  # nothing listens
    outbox = tracking.MetricOutbox(down, run, keep=kept.append, where="there")
    outbox.add_params({"optim": {"lr": 0.01}})
    for epoch in (1, 2):
        outbox.add({"train/loss": 1.0 / epoch, "nan": float("nan")}, step=epoch)
        assert outbox.send() is False  # one quick attempt: no MLflow retries, no stall
    assert "Connection refused" in outbox.why
    assert [r.get("step") for r in outbox.unsent] == [None, 1, 2] and kept[-1] == outbox.unsent
    stamps = [r["timestamp"] for r in outbox.unsent[1:]]

    outbox.cfg = cfg  # the server answers again: everything goes, in order, stamped when it was logged
    assert outbox.send() is True and outbox.unsent == [] and kept[-1] == []
    history = tracking.client(cfg).get_metric_history(run, "train/loss")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(1, 1.0, stamps[0]), (2, 0.5, stamps[1])]
    assert tracking.client(cfg).get_run(run).data.params == {"optim.lr": "0.01"}
    outbox.send()
    assert len(kept) == 3  # nothing kept and nothing to clear: the keeper is not called again


def test_outbox_waits_a_bounded_time(tmp_path):
    down = TrackingConfig(tracking_uri="http://127.0.0.1:9", request_timeout_s=1)
    outbox = tracking.MetricOutbox(down, "run", [{"key": "a", "value": 1.0, "timestamp": 0, "step": 1}])
    started = time.monotonic()
    assert outbox.send(wait_s=2.5) is False
    assert 2.5 <= time.monotonic() - started < 4  # tried at 0, 1 and 2.5 s, then gave up
    assert tracking.answers(down, "run") is False
