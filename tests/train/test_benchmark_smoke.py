"""`python jobs/benchmark.py --smoke-test` end to end on the tiny shards: every distinct code path trains a few steps
on Ray Train, is scored on the test split with and without flip TTA, measured (params, FLOPs, latency), logged to
MLflow under one parent run, stored, and merged into the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sstparse import tracking
from sstparse.config import TrackingConfig
from sstparse.train import benchmark as bench
from tests.scripts import job_script
from tests.stores import sqlite_uri

# Three Ray Train fits (A trains one of its four models): 67-105 s within `make test` on 2 cores (2026-12-03).
pytestmark = [pytest.mark.ray, pytest.mark.timeout(1200)]
ROOT = Path(__file__).resolve().parents[2]


def test_smoke_test_runs_every_arm_and_writes_the_report(ray_session, tiny_shards, tmp_path):
    out = tmp_path / "bench"
    uri = sqlite_uri(tmp_path)
    text = job_script("benchmark").main([
        "--config", str(ROOT / "jobs/configs/benchmark.yaml"), "--smoke-test", "--out", str(out),
        f"data.root={tiny_shards}", f"tracking.tracking_uri={uri}",
        f"tracking.artifact_location={tmp_path / 'artifacts'}"])
    runs = {p.stem: bench.ArmRun.load(p) for p in (out / "runs").glob("*.json")}
    assert set(runs) == {f"passes-{arm}-s0" for arm in bench.SMOKE_ARMS}
    for key, run in runs.items():
        expected = {"A": bench.SMOKE_SINGLE_DOMAINS, "D": ["syn_ppp"]}.get(run.arm, bench.DOMAINS)
        assert sorted(run.miou) == sorted(expected) == sorted(run.miou_flip), key
        assert all(0 <= v <= 1 for v in [*run.miou.values(), *run.miou_flip.values()]), key
        assert run.params > 0 and run.flops > 0 and run.latency_ms > 0 and run.steps > 0, key
        assert bool(run.assoc) == (run.arm in ("C", "CK", "D")), key
        assert all(Path(c).is_dir() and Path(c).is_relative_to(out) for c in run.checkpoints.values()), key
    assert runs["passes-A-s0"].params == sum(runs["passes-A-s0"].params_by_model.values())
    assert not math.isnan(runs["passes-C-s0"].assoc["tv"])
    report = (out / "report.md").read_text()
    assert report == text and "## Equal passes (headline)" in report and "| C − A |" in report
    assert (out / "association_syn_lip_to_syn_ppp.png").stat().st_size > 0
    # MLflow: one parent run with the report attached, one child run per trained model with its test scores.
    cfg = TrackingConfig(tracking_uri=uri, experiment="sst-benchmark-smoke")
    parents = tracking.find_runs(cfg, "tags.benchmark = 'sst'")
    assert len(parents) == 1
    client = tracking.client(cfg)
    assert "benchmark/report.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id, "benchmark")}
    children = tracking.find_runs(cfg, f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert len(children) == len(bench.SMOKE_SINGLE_DOMAINS) + len(bench.SMOKE_ARMS) - 1  # A: a model per domain
    assert all(any(k.startswith("bench/") and k.endswith("/miou") for k in c.data.metrics) for c in children)
