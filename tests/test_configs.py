"""Every YAML the project ships validates: domain cards and job configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sstparse.config import load_yaml
from sstparse.domains import load_domain
from sstparse.train.config import JobConfig
from sstparse.tune.config import SweepConfig, load_sweep

ROOT = Path(__file__).resolve().parents[1]
JOB_CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
# Which model each jobs/configs file is (by name); a new kind of config file must be added here.
MODELS = {"universal": JobConfig, "single": JobConfig, "dedicated": JobConfig, "benchmark": JobConfig,
          "sweep": SweepConfig,
          "sweep_dedicated": SweepConfig}


@pytest.mark.parametrize("path", sorted((ROOT / "datasets").glob("*.yaml")), ids=lambda p: p.name)
def test_domain_card(path):
    load_domain(path)


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config(path):
    assert path.stem in MODELS, f"{path.name}: no config model registered in tests/test_configs.py"
    if MODELS[path.stem] is SweepConfig:
        load_sweep(path)  # the sweep and the job it names
    else:
        load_yaml(MODELS[path.stem], path)
