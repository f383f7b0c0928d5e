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
    """Each card loads (its own checks: a colour per class, pairs in range, ignore index off the classes) under the
    name of its file, and its derived values agree with what it lists."""
    d = load_domain(path)
    assert d.name == path.stem
    assert d.num_classes == len(d.classes) == len(d.card.colors) >= 2
    assert d.flip_lut[d.ignore_index] == d.ignore_index
    for a, b in d.flip_pairs:
        assert (d.flip_lut[a], d.flip_lut[b]) == (b, a)


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config(path):
    assert path.stem in MODELS, f"{path.name}: no config model registered in tests/test_configs.py"
    if MODELS[path.stem] is SweepConfig:
        sweep, job = load_sweep(path)  # the sweep and the job it names
        assert sweep.search.num_samples >= 1 and (path.parent / sweep.job).is_file()
    else:
        job = load_yaml(MODELS[path.stem], path)
    # Heads come from the domain cards through data.domain_mix; the objective is one of the scores validation logs.
    assert job.domain_names and set(job.domain_names) <= set(job.data.domain_mix)
    assert job.objective in {"val/mean_miou", *(f"val/{n}/miou" for n in job.domain_names)}
