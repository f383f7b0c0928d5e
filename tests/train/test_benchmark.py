"""The SST benchmark's measuring parts: arms and protocols, association scoring, paired intervals, the report.
(tests/train/test_benchmark_smoke.py runs jobs/benchmark.py --smoke-test end to end.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sstparse.data.shards import read_manifest
from sstparse.data.synth import true_association, true_joint
from sstparse.domains import load_domains
from sstparse.train import benchmark as bench
from sstparse.train import benchmark_report as report
from tests.train.conftest import tiny_job


def _base(tmp_path, kd=0.5):
    base = tiny_job("/shards", tmp_path)
    return base.model_copy(update={"sst": base.sst.model_copy(update={"lambda_kd": kd, "lambda_transfer": 0.5})})


def test_arms_differ_only_in_mode_sst_and_exposure(tmp_path):
    base = _base(tmp_path)
    jobs = {arm: bench.arm_jobs(base, arm, seed=1) for arm in bench.ARMS}
    for arm, factor in bench.SINGLE_ARMS.items():
        assert [j.train.target for j in jobs[arm]] == list(bench.DOMAINS)
        assert {(j.train.mode, j.sst.enabled) for j in jobs[arm]} == {("single", False)}
        assert {j.data.epoch_size for j in jobs[arm]} == {int(16 * factor)}
    # Equal passes: every multi-domain arm draws data.epoch_size samples from each of the four domains per epoch.
    multi = {a: js[0] for a, js in jobs.items() if a not in bench.SINGLE_ARMS}
    assert {j.data.epoch_size for j in multi.values()} == {64}
    assert (multi["B"].train.mode, multi["B"].sst.enabled, multi["B"].sst.deep_supervision) == ("universal", False, 0)
    assert (multi["BDS"].sst.enabled, multi["BDS"].sst.deep_supervision) == (False, base.sst.lambda_mse)
    assert (multi["D"].train.mode, multi["D"].train.target) == ("dedicated", "syn_ppp")
    sst = {a: (j.sst.enabled, j.sst.lambda_transfer, j.sst.lambda_mst, j.sst.lambda_mse, j.sst.lambda_kd)
           for a, j in multi.items() if a.startswith(("C", "D"))}
    assert sst == {"C": (True, 0.5, 0.1, 0.1, 0.0), "C-LT": (True, 0.0, 0.1, 0.1, 0.0),
                   "C-MST": (True, 0.0, 0.0, 0.1, 0.0), "C-MSE": (True, 0.5, 0.1, 0.0, 0.0),
                   "CK": (True, 0.5, 0.1, 0.1, 0.5), "D": (True, 0.5, 0.1, 0.1, 0.5)}
    every = [j for js in jobs.values() for j in js]
    assert {j.train.seed for j in every} == {1} and {j.data.seed for j in every} == {1}
    assert {(j.train.epochs, j.model.backbone) for j in every} == {(2, "tiny")}
    assert len({j.train.name for j in every}) == len(every)  # separate checkpoints per model
    # Equal steps per model (secondary protocol): every model gets A's samples per epoch, under its own names.
    steps = bench.arm_jobs(base, "C", seed=1, protocol="steps")[0]
    assert steps.data.epoch_size == 16 and steps.train.name != multi["C"].train.name
    with pytest.raises(ValueError, match="arm"):
        bench.arm_jobs(base, "E", seed=1)
    with pytest.raises(ValueError, match="protocol"):
        bench.arm_jobs(base, "B", seed=1, protocol="time")
    with pytest.raises(ValueError, match="lambda_kd"):
        bench.arm_jobs(_base(tmp_path, kd=0.0), "CK", seed=1)
    no_size = base.model_copy(update={"data": base.data.model_copy(update={"epoch_size": None})})
    with pytest.raises(ValueError, match="epoch_size"):
        bench.arm_jobs(no_size, "A", seed=1)


def test_association_truth_comes_from_the_target_domains_images(tiny_shards, tmp_path):
    """M(a->b) is fitted on b's images, so its truth uses b's atom histogram. The two domains' histograms differ
    (framing, garments), and so do the two truths; recovery is exact only against b's."""
    job = tiny_job(tiny_shards, tmp_path)
    domains = load_domains()
    hist = {d: np.asarray(read_manifest(tiny_shards, d)["atom_histogram"]["train"]) for d in bench.DOMAINS}
    lip, ppp = domains["syn_lip"], domains["syn_ppp"]
    on_a, on_b = true_association(ppp, lip, hist["syn_ppp"]), true_association(ppp, lip, hist["syn_lip"])
    assert not np.allclose(np.nan_to_num(on_a), np.nan_to_num(on_b), atol=0.05)  # the framing differs
    arrays = {f"assoc/{a}/{b}": np.nan_to_num(true_association(domains[a], domains[b], hist[b]))
              for a in bench.DOMAINS for b in bench.DOMAINS if a != b}
    np.savez(tmp_path / "eval.npz", **arrays)
    exact, pairs = bench.association_recovery(job, tmp_path)
    assert exact == {"tv": 0.0, "argmax_agreement": 1.0, "argmax_weighted": 1.0, "argmax_lr_merged": 1.0}
    assert set(pairs) == {(a, b) for a in bench.DOMAINS for b in bench.DOMAINS if a != b}
    wrong = {f"assoc/{a}/{b}": np.nan_to_num(true_association(domains[a], domains[b], hist[a]))
             for a in bench.DOMAINS for b in bench.DOMAINS if a != b}
    np.savez(tmp_path / "eval.npz", **wrong)
    assert bench.association_recovery(job, tmp_path)[0]["tv"] > 0.01  # the old truth is not the right one
    uniform = {k: np.full_like(v, 1.0 / v.shape[1]) for k, v in arrays.items()}
    np.savez(tmp_path / "eval.npz", **uniform)
    worse, _ = bench.association_recovery(job, tmp_path)
    assert worse["tv"] > 0.3 and worse["argmax_agreement"] < 0.5


def test_association_scores_weighting_and_left_right_merge():
    """Three classes of a (bg, left-x, right-x) onto b (bg, left-y, right-y): the learned M swaps left and right.
    Plain agreement counts the swap as two misses; merged, left/right agree; weighting follows the pixel share."""
    card = load_domains()["syn_lip"]
    a = b = type("D", (), {"flip_pairs": ((1, 2),)})()
    joint = np.array([[80.0, 0, 0], [0, 15, 0], [0, 0, 5]])
    swapped = np.array([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    s = bench.association_scores(swapped, joint, a, b)
    assert s["agree"].tolist() == [True, False, False]
    assert np.allclose(s["weight"], [0.8, 0.15, 0.05]) and float((s["agree"] * s["weight"]).sum()) == 0.8
    assert s["agree_lr"].tolist() == [True, True]
    assert np.allclose(s["tv"], [0, 1, 1])
    assert card.flip_pairs  # real cards carry the pairs the merge uses


def test_paired_interval_is_student_t():
    m, lo, hi = report.paired_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert m == pytest.approx(2.0) and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    one = report.paired_interval([0.5])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])


def _run(arm, seed, value, params=130, by=None, protocol="passes"):
    r = bench.ArmRun(arm, seed, protocol, params=params, params_by_model=by or {}, minutes=2.0, steps=40)
    doms = ["syn_ppp"] if arm == "D" else bench.DOMAINS
    r.miou = {d: value + 0.01 * seed for d in doms}
    r.miou_flip = {d: value + 0.02 for d in doms}
    return r


def test_tables_pair_seeds_and_mark_intervals_that_exclude_zero():
    runs = [_run("A", s, 0.1, 400, {"syn_ppp": 90}) for s in (0, 1, 2)]
    runs += [_run("B", s, 0.2) for s in (0, 1, 2)] + [_run("D", s, 0.25, 90) for s in (0, 1)]
    runs += [_run("C", 0, 0.30), _run("C", 1, 0.33), _run("C", 2, 0.29), _run("B", 0, 0.5, protocol="steps")]
    scores = report.score_table(runs)
    assert "| A | 11.0 | 11.0 | 11.0 | 11.0 | 11.0 | 3 | 2 |" in scores
    assert "| D | – | – | – | 25.5 | – | 2 | 2 |" in scores
    assert "| B | 21.0 |" in scores  # the steps-protocol run is not mixed in
    diffs = report.difference_table(runs)
    assert "| B − A | +10.0 [+10.0, +10.0] * |" in diffs  # identical paired differences: a zero-width interval
    c_b = next(line for line in diffs.splitlines() if line.startswith("| C − B"))
    assert "+10.7 [" in c_b and "*" in c_b and c_b.endswith("| 3 |")
    d_a = next(line for line in diffs.splitlines() if line.startswith("| D − A"))
    assert d_a.startswith("| D − A |  |  |  | +15.0 ")  # D is scored on syn_ppp only
    assert "C − C-LT" not in diffs  # no such runs
    assert "| B | 50.0 |" in report.score_table(runs, "steps")
    assert report.param_check(runs) == "exported params B 130 vs C 130 (equal); D 90 vs A's syn_ppp model 90 (equal)"


def test_arm_runs_round_trip_through_json(tmp_path):
    r = _run("C", 2, 0.3)
    r.assoc = {"tv": 0.2, "argmax_agreement": 0.8, "argmax_weighted": 0.9, "argmax_lr_merged": 0.85}
    path = r.save(tmp_path / "runs")
    assert path.name == "passes-C-s2.json" and json.loads(path.read_text())["arm"] == "C"
    assert bench.ArmRun.load(path) == r


def test_step_time_ratio_measures_both(tmp_path):
    job = tiny_job("/shards", tmp_path, data={"batch_size": 2})
    b, c = bench.step_time_ratio(job, steps=2)
    assert b > 0 and c > 0


def test_write_report(tmp_path):
    """The report leads with the equal-passes table and paired differences, then TTA, associations, cost, the
    secondary protocol, step times and C's heatmaps."""
    job = tiny_job("/shards", tmp_path)
    lip, ppp = load_domains()["syn_lip"], load_domains()["syn_ppp"]
    runs = []
    for seed in (0, 1):
        for arm in "BC":
            r = _run(arm, seed, 0.2)
            if arm == "C":
                r.assoc = {"tv": 0.1, "argmax_agreement": 0.9, "argmax_weighted": 0.95, "argmax_lr_merged": 0.92}
            runs.append(r)
    runs.append(_run("C", 0, 0.1, protocol="steps"))
    eye = np.eye(lip.num_classes, ppp.num_classes)
    text = report.write_report(tmp_path, job, runs, {"tiny, crop 64, batch 4": (0.1, 0.11)}, "python x --y",
                               pairs={("syn_lip", "syn_ppp"): (eye, eye)})
    assert (tmp_path / "report.md").read_text() == text
    assert "`python x --y`" in text and "seeds [0, 1]" in text and "16 samples per domain" in text
    assert text.index("## Equal passes") < text.index("| C − B |") < text.index("## Equal steps per model")
    assert "| C | 20.5 | 20.5 | 20.5 | 20.5 | 20.5 | 2 | 2 |" in text
    assert "| C | 90.0% | 95.0% | 92.0% | 0.100 | 2 |" in text
    assert "- tiny, crop 64, batch 4: B 100 ms, C 110 ms, C/B 1.10" in text
    assert (tmp_path / "association_syn_lip_to_syn_ppp.png").stat().st_size > 0
    assert "![association_syn_lip_to_syn_ppp](association_syn_lip_to_syn_ppp.png)" in text
    # Without pairs (a later invocation with no C run), the heatmaps already beside the report are kept.
    again = report.write_report(tmp_path, job, runs, {}, "python x")
    assert "![association_syn_lip_to_syn_ppp](association_syn_lip_to_syn_ppp.png)" in again


def test_true_joint_is_the_unnormalised_association():
    d = load_domains()
    from sstparse import atoms
    hist = np.arange(1, atoms.NUM_ATOMS + 1, dtype=float)
    joint = true_joint(d["syn_lip"], d["syn_ppp"], hist)
    assert joint.sum() == pytest.approx(hist.sum())
    with np.errstate(invalid="ignore"):
        assert np.allclose(joint / joint.sum(1, keepdims=True), true_association(d["syn_lip"], d["syn_ppp"], hist),
                           equal_nan=True)


def test_report_only_merges_stored_runs_without_training(tmp_path):
    """`jobs/benchmark.py --report-only` rebuilds the report from <out>/runs alone (no Ray, no timing)."""
    from tests.scripts import JOBS, job_script

    script = job_script("benchmark")
    config = str(JOBS / "configs/benchmark.yaml")
    settings = bench.base_settings(script.load_job(config, script.SIZES["cpu"]))
    for seed in (0, 1):
        run = _run("B", seed, 0.2)
        run.base = settings
        run.save(tmp_path / "runs")
    text = script.main(["--config", config, "--report-only", "--out", str(tmp_path)])
    assert "| B | 20.5 | 20.5 | 20.5 | 20.5 | 20.5 | 2 | 2 |" in text and "step time" not in text
    assert (tmp_path / "report.md").read_text() == text

    # A result stored by another base job is never reported (nor reused) beside this one's.
    with pytest.raises(SystemExit, match=r"passes-B-s0.json: stored by a different base job \(data.epoch_size: "
                                         r"960 -> 480\)"):
        script.main(["--config", config, "--report-only", "--out", str(tmp_path), "data.epoch_size=480"])
    _run("C", 0, 0.2).save(tmp_path / "runs")  # stored before the settings were recorded
    with pytest.raises(SystemExit, match="passes-C-s0.json: .*before they were recorded"):
        script.main(["--config", config, "--report-only", "--out", str(tmp_path)])


def test_difference_table_uses_the_domains_both_sides_scored():
    """A smoke run's A has two of its four models: C - A has those two cells and leaves the others empty."""
    a = _run("A", 0, 0.1)
    a.miou = {"syn_lip": 0.1, "syn_ppp": 0.2}
    line = next(x for x in report.difference_table([a, _run("C", 0, 0.3)]).splitlines() if x.startswith("| C − A"))
    assert line == "| C − A | +20.0 |  |  | +10.0 | 1 |"
