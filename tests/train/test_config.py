"""Job configs: modes and targets are checked against the domain mix, errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sstparse.config import ConfigError, load_yaml, validate
from sstparse.model.config import SSTConfig
from sstparse.train import checkpoints
from sstparse.train.config import JobConfig

BASE = {"data": {"root": "x", "domain_mix": {"syn_lip": 1.0, "syn_ppp": 0.5}}}


def _job(**train):
    return validate(JobConfig, {**BASE, "train": train}, "job.yaml")


def test_universal_defaults_and_derived_names():
    job = _job()
    assert job.domain_names == ["syn_lip", "syn_ppp"] and job.objective == "val/mean_miou"
    assert job.registered_name == "sst-universal"
    assert _job(smoke_test=True).registered_name == "sst-universal-smoke"  # a smoke run never joins the real model


def test_a_smoke_test_registers_under_a_name_that_says_so():
    from sstparse.train.job import load_job

    job = load_job(Path(__file__).parents[2] / "jobs/configs/universal.yaml", smoke_test=True)
    assert job.train.smoke_test and job.registered_name == "sst-universal-smoke"


def test_single_mode_trains_its_target_only():
    job = _job(mode="single", target="syn_ppp")
    assert job.domain_names == ["syn_ppp"] and job.training_data().domain_mix == {"syn_ppp": 1.0}
    assert job.objective == "val/syn_ppp/miou" and job.registered_name == "sst-syn_ppp"


@pytest.mark.parametrize("train,message", [
    ({"mode": "dedicated"}, "train.target: required in dedicated mode"),
    ({"mode": "single", "target": "syn_atr"}, "'syn_atr' is not in data.domain_mix"),
    ({"mode": "universal", "epochs": 0}, "train.epochs"),
    ({"amp": "fp8"}, "train.amp"),
    ({"fault_injection": {"epoch": 0}}, "train.fault_injection.epoch"),
    ({"batchsize": 3}, "train.batchsize: unknown key"),
])
def test_bad_jobs_name_the_field(train, message):
    with pytest.raises(ConfigError, match="job.yaml") as err:
        _job(**train)
    assert message in str(err.value)


def test_dedicated_needs_sst():
    with pytest.raises(ConfigError, match="sst.enabled"):
        validate(JobConfig, {**BASE, "sst": {"enabled": False}, "train": {"mode": "dedicated", "target": "syn_ppp"}},
                 "job.yaml")


def test_unknown_domain_in_mix(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data: {root: x, domain_mix: {syn_lip: 1.0, coco: 1.0}}\n")
    with pytest.raises(ConfigError, match=r"job.yaml: data.domain_mix: .*unknown domain 'coco'"):
        load_yaml(JobConfig, path)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("data: {root: x, domain_mix: {syn_lip: 1.0}}\n")
    job = load_yaml(JobConfig, path, ["train.epochs=3", "sst.lambda_mst=0.25", "train.val_scales=[0.75, 1.0]"])
    assert job.train.epochs == 3 and job.sst.lambda_mst == 0.25 and job.train.val_scales == (0.75, 1.0)
    with pytest.raises(ConfigError, match="train.epochs"):
        load_yaml(JobConfig, path, ["train.epochs=many"])


def test_relative_paths_are_resolved_for_workers(tmp_path, monkeypatch):
    from sstparse.train.trainer import absolute_paths

    monkeypatch.chdir(tmp_path)
    job = validate(JobConfig, {"data": {"root": "data/synth", "domain_mix": {"syn_lip": 1.0}},
                               "tracking": {"tracking_uri": "sqlite:///mlruns.db"}}, "job.yaml")
    fixed = absolute_paths(job)
    assert fixed.data.root == str(tmp_path / "data/synth")
    assert fixed.train.storage_path == str(tmp_path / "ray_results")
    assert fixed.tracking.tracking_uri == f"sqlite:///{tmp_path}/mlruns.db"
    assert fixed.tracking.artifact_location == str(tmp_path / "mlruns-artifacts")
    s3 = validate(JobConfig, {"data": {"root": "s3://b/p", "domain_mix": {"syn_lip": 1.0}},
                              "tracking": {"tracking_uri": "http://mlflow:5000"}}, "job.yaml")
    resolved = absolute_paths(s3)
    assert resolved.data.root == "s3://b/p" and resolved.tracking.tracking_uri == "http://mlflow:5000"


def test_sst_section_is_what_the_model_and_losses_take():
    """One class from the YAML to the loss: the model built from a job holds the job's sst section itself."""
    job = validate(JobConfig, {**BASE, "sst": {"lambda_transfer": 0.5, "transfer_ramp": 0.2,
                                               "transfer_confidence": 0.6, "assoc_lr_mult": 5.0}}, "job.yaml")
    assert isinstance(job.sst, SSTConfig)
    model = checkpoints.build_model(job)
    assert model.cfg is job.sst and model.sst is not None and model.aux is None
    plain = validate(JobConfig, {**BASE, "sst": {"enabled": False, "deep_supervision": 0.1, "embed_dim": 16}},
                     "job.yaml")
    model = checkpoints.build_model(plain)
    assert model.sst is None and model.aux.classifier.in_channels == 16 and model.cfg.deep_supervision == 0.1
    for key, value in (("transfer_ramp", 1.5), ("lambda_transfer", -1), ("transfer_confidence", 2),
                       ("assoc_lr_mult", 0)):
        with pytest.raises(ConfigError, match=f"job.yaml: sst.{key}"):
            validate(JobConfig, {**BASE, "sst": {key: value}}, "job.yaml")
