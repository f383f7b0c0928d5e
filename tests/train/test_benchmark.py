"""The SST benchmark's measuring parts (no training here; jobs/benchmark.py runs the arms)."""

from __future__ import annotations

import numpy as np
import pytest

from sstparse.data.shards import read_manifest
from sstparse.data.synth import true_association
from sstparse.domains import load_domains
from sstparse.train import benchmark as bench
from tests.train.conftest import tiny_job


def test_arms_differ_only_in_mode_and_sst(tmp_path):
    base = tiny_job("/shards", tmp_path)
    base = base.model_copy(update={"sst": base.sst.model_copy(update={"lambda_kd": 0.5})})
    jobs = {arm: bench.arm_jobs(base, arm, seed=1) for arm in bench.ARMS}
    assert [j.train.target for j in jobs["A"]] == list(bench.DOMAINS)
    assert {j.train.mode for j in jobs["A"]} == {"single"} and not jobs["A"][0].sst.enabled
    assert (jobs["B"][0].train.mode, jobs["B"][0].sst.enabled) == ("universal", False)
    assert (jobs["C"][0].train.mode, jobs["C"][0].sst.enabled) == ("universal", True)
    assert (jobs["CK"][0].train.mode, jobs["CK"][0].sst.enabled) == ("universal", True)
    assert (jobs["D"][0].train.mode, jobs["D"][0].train.target) == ("dedicated", "syn_ppp")
    assert [jobs[a][0].sst.lambda_kd for a in ("C", "CK", "D")] == [0.0, 0.5, 0.5]  # C: no distillation
    assert [j.train.target for j in jobs["A4"]] == list(bench.DOMAINS)
    assert {j.data.epoch_size for j in jobs["A4"]} == {4}  # a quarter: the four models take one B's steps
    every = [j for js in jobs.values() for j in js]
    assert {j.train.seed for j in every} == {1} and {j.data.seed for j in every} == {1}
    assert {(j.train.epochs, j.data.epoch_size, j.model.backbone) for j in every if j not in jobs["A4"]} == {
        (2, 16, "tiny")}
    assert len({j.train.name for j in every}) == len(every)  # separate checkpoints per model
    with pytest.raises(ValueError, match="arm"):
        bench.arm_jobs(base, "E", seed=1)
    with pytest.raises(ValueError, match="lambda_kd"):
        bench.arm_jobs(tiny_job("/shards", tmp_path), "CK", seed=1)


def test_association_recovery_is_exact_for_the_true_matrices(tiny_shards, tmp_path):
    job = tiny_job(tiny_shards, tmp_path)
    domains = load_domains()
    arrays = {}
    for a in bench.DOMAINS:
        hist = np.asarray(read_manifest(tiny_shards, a)["atom_histogram"]["train"])
        for b in bench.DOMAINS:
            if a != b:
                arrays[f"assoc/{a}/{b}"] = np.nan_to_num(true_association(domains[a], domains[b], hist))
    np.savez(tmp_path / "eval.npz", **arrays)
    exact, _ = bench.association_recovery(job, tmp_path)
    assert exact == {"tv": 0.0, "argmax_agreement": 1.0}
    uniform = {k: np.full_like(v, 1.0 / v.shape[1]) for k, v in arrays.items()}
    np.savez(tmp_path / "eval.npz", **uniform)
    worse, _ = bench.association_recovery(job, tmp_path)
    assert worse["tv"] > 0.3 and worse["argmax_agreement"] < 0.5


def test_report_table_and_param_check():
    def run(arm, seed, value, params, by=None):
        r = bench.ArmRun(arm, seed, params=params, params_by_model=by or {})
        r.miou = {d: value + 0.01 * seed for d in bench.DOMAINS}
        r.miou_flip = {d: value + 0.02 for d in bench.DOMAINS}
        return r
    runs = [run("A", 0, 0.1, 400, {"syn_ppp": 90}), run("A", 1, 0.1, 400, {"syn_ppp": 90}),
            run("B", 0, 0.2, 130), run("C", 0, 0.3, 130), run("D", 0, 0.25, 90)]
    table = bench.report_table(runs)
    assert "| A | 10.5 ± 0.5 |" in table and "| C +flip | 32.0 ± 0.0 |" in table
    assert bench.param_check(runs) == "exported params B 130 vs C 130 (equal); D 90 vs A's syn_ppp model 90 (equal)"


def test_step_time_ratio_measures_both(tmp_path):
    job = tiny_job("/shards", tmp_path, data={"batch_size": 2})
    b, c = bench.step_time_ratio(job, steps=2)
    assert b > 0 and c > 0


def test_write_report(tmp_path):
    """The report holds the command, the table, C's association summary, the step times and C's heatmaps."""
    job = tiny_job("/shards", tmp_path)
    domains = load_domains()
    runs = []
    for seed in (0, 1):
        for arm in "BC":
            r = bench.ArmRun(arm, seed, params=130)
            r.miou = r.miou_flip = {d: 0.2 + 0.01 * seed for d in bench.DOMAINS}
            if arm == "C":
                eye = np.eye(domains["syn_lip"].num_classes, domains["syn_ppp"].num_classes)
                r.assoc, r.assoc_pairs = {"tv": 0.1, "argmax_agreement": 0.9}, {("syn_lip", "syn_ppp"): (eye, eye)}
            runs.append(r)
    text = bench.write_report(tmp_path, job, runs, {"tiny, crop 64, batch 4": (0.1, 0.11)}, 90.0, "python x --y")
    assert (tmp_path / "report.md").read_text() == text
    assert "`python x --y`, 2 min" in text and "seeds [0, 1]" in text
    assert "| C | 20.5 ± 0.5 |" in text and "argmax agreement 90.0%" in text
    assert "- tiny, crop 64, batch 4: B 100 ms, C 110 ms, C/B 1.10" in text
    assert (tmp_path / "association_syn_lip_to_syn_ppp.png").stat().st_size > 0
    assert "![association_syn_lip_to_syn_ppp](association_syn_lip_to_syn_ppp.png)" in text
