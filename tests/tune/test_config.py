"""Sweep configs: search space -> Tune parameters -> the job each trial trains (no Ray needed)."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from sstparse.config import ConfigError
from sstparse.train.config import JobConfig
from sstparse.tune.config import TARGETS, Fixed, Range, SearchSpace, SweepConfig, load_sweep
from sstparse.tune.sweep import apply_params, fixed_params, param_space, searched
from tests.train.conftest import tiny_job


def _sweep(**space) -> SweepConfig:
    return SweepConfig.model_validate({"job": "x.yaml", "space": space})


def test_searched_and_fixed_knobs(tmp_path):
    job = tiny_job("/shards", tmp_path, data={"domain_mix": {"syn_lip": 1.0, "syn_cihp": 0.0, "syn_atr": 2.0,
                                                               "syn_ppp": 1.0}})
    sweep = _sweep(lambda_mst={"low": 0.01, "high": 1.0, "log": True}, lr={"fixed": 0.004},
                   domain_mix={"low": 0.5, "high": 2.0})
    # syn_cihp has weight 0: it stays out of training, so it gets no searched weight.
    assert sorted(searched(sweep, job)) == ["lambda_mst", "mix.syn_atr", "mix.syn_lip", "mix.syn_ppp"]
    assert set(param_space(sweep, job)) == set(searched(sweep, job))
    assert fixed_params(sweep, job) == {"lr": 0.004}


def test_apply_params_normalises_the_mix_and_keeps_head_order(tmp_path):
    job = tiny_job("/shards", tmp_path, data={"domain_mix": {"syn_lip": 1.0, "syn_cihp": 0.0, "syn_atr": 1.0,
                                                               "syn_ppp": 1.0}})
    trial = apply_params(job, {"lambda_mst": 0.3, "lr": 0.004, "mix.syn_lip": 1.0, "mix.syn_atr": 2.0,
                               "mix.syn_ppp": 1.0})
    assert trial.sst.lambda_mst == 0.3 and trial.optim.lr == 0.004
    assert list(trial.data.domain_mix) == ["syn_lip", "syn_cihp", "syn_atr", "syn_ppp"]
    assert trial.data.domain_mix == pytest.approx({"syn_lip": 0.25, "syn_cihp": 0.0, "syn_atr": 0.5,
                                                   "syn_ppp": 0.25})
    assert trial.domain_names == job.domain_names  # same heads in the same order


def test_every_knob_is_declared_once_and_reaches_its_job_field(tmp_path):
    """A knob is one SearchSpace line; its job field exists and takes the searched value."""
    assert set(TARGETS) == set(SearchSpace.model_fields) - {"domain_mix"}
    job = tiny_job("/shards", tmp_path)
    for knob, (section, field) in TARGETS.items():
        assert field in type(getattr(job, section)).model_fields, (knob, section, field)
        assert getattr(getattr(apply_params(job, {knob: 0.123}), section), field) == 0.123
    assert JobConfig.model_fields.keys() >= {section for section, _ in TARGETS.values()}


def test_apply_params_rejects_a_bad_value(tmp_path):
    job = tiny_job("/shards", tmp_path)
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_params(job, {"lr": -1.0})


@pytest.mark.parametrize("space, message", [
    ({"lr": {"low": 0.01, "high": 0.001}}, "space.lr"),
    ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "low must be > 0"),
    ({"lr": {"low": 0.01, "high": 0.1, "step": 2}}, "unknown key"),
    ({"learning_rate": {"fixed": 0.1}}, "space.learning_rate: unknown key"),
])
def test_bad_space_names_the_field(tmp_path, space, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"job": "universal.yaml", "space": space}))
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_sweep_needs_an_existing_job_and_something_to_search(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"job": "missing.yaml"}))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_sweep(path)
    job = tiny_job("/shards", tmp_path)
    with pytest.raises(ConfigError, match="nothing to search"):
        param_space(_sweep(lr={"fixed": 0.01}), job)


def test_overrides_reach_the_sweep_and_the_job():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "sweep.yaml"
    sweep, job = load_sweep(path, ["search.num_samples=3", "job.train.epochs=1", "job.sst.lambda_mse=0.5"])
    assert sweep.search.num_samples == 3 and job.train.epochs == 1 and job.sst.lambda_mse == 0.5
    assert isinstance(sweep.space.lr, Range) and isinstance(Fixed(fixed=1.0), Fixed)
    with pytest.raises(ConfigError, match="lambda_kd"):  # no SST, no distillation
        load_sweep(path, ["space.lambda_kd.fixed=0.5", "job.sst.enabled=false"])
    assert load_sweep(path, ["space.lambda_kd.fixed=0.5"])[0].space.lambda_kd.fixed == 0.5  # universal KD
    with pytest.raises(ConfigError, match="val_every"):
        load_sweep(path, ["job.train.val_every=2"])


@pytest.mark.parametrize("mode,objective", [("universal", "val/mean_miou"), ("dedicated", "val/syn_ppp/miou")])
def test_tuner_wiring_ranks_by_the_jobs_objective(tmp_path, mode, objective):
    """ASHA stops on epochs up to the job's epochs, Optuna sits behind the concurrency limit, and both rank trials
    by the job's objective: the mean mIoU, or the target's in dedicated mode."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from sstparse.tune.sweep import tune_config

    job = tiny_job("/shards", tmp_path, train={"mode": mode, "target": "syn_ppp" if mode == "dedicated" else None,
                                               "epochs": 5})
    sweep = SweepConfig.model_validate({"job": "x.yaml", "space": {"lr": {"low": 1e-3, "high": 1e-2}},
                                        "search": {"num_samples": 6, "max_concurrent": 3},
                                        "scheduler": {"grace_period": 2, "reduction_factor": 3}})
    cfg = tune_config(sweep, job)
    assert (cfg.metric, cfg.mode, cfg.num_samples) == (objective, "max", 6)
    assert isinstance(cfg.search_alg, ConcurrencyLimiter) and cfg.search_alg.max_concurrent == 3
    assert isinstance(cfg.search_alg.searcher, OptunaSearch)
    asha = cfg.scheduler
    assert isinstance(asha, ASHAScheduler) and (asha._time_attr, asha._max_t, asha._reduction_factor) == ("epoch", 5, 3)
    none = sweep.model_copy(update={"scheduler": sweep.scheduler.model_copy(update={"kind": "none"})})
    assert type(tune_config(none, job).scheduler) is FIFOScheduler


def test_a_failed_trial_is_started_again_as_configured(tmp_path):
    """A lost node fails the trials on it: Tune starts each again (up to trial_max_failures times) in the sweep's
    folder, where its training finds its checkpoints (tests/cluster/test_local_cluster.py kills the node)."""
    from sstparse.tune.sweep import run_config

    sweep = SweepConfig.model_validate({"job": "x.yaml", "name": "s"})
    cfg = run_config(sweep, str(tmp_path), None, None)
    assert (cfg.name, cfg.storage_path, cfg.failure_config.max_failures) == ("s", str(tmp_path), 1)
    never = sweep.model_copy(update={"trial_max_failures": 0})
    assert run_config(never, str(tmp_path), None, None).failure_config.max_failures == 0
    with pytest.raises(ValidationError, match="trial_max_failures"):
        SweepConfig.model_validate({"job": "x.yaml", "trial_max_failures": -1})
