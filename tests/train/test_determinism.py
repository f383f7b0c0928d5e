"""The same job and seed train the same network: with ``data.preserve_order`` and one training worker, two runs end
with identical weights (the read tasks race; preserve_order hands their blocks over in plan order)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sstparse.train import checkpoints
from sstparse.train.trainer import absolute_paths, build_trainer
from tests.train.conftest import tiny_job

pytestmark = pytest.mark.ray


def trained_weights(root: str, folder: Path, preserve_order: bool) -> dict[str, torch.Tensor]:
    # task_rows=4: four read tasks an epoch, one batch each, finishing in whatever order the machine decides
    job = tiny_job(root, folder, data={"preserve_order": preserve_order, "task_rows": 4},
                   train={"epochs": 2, "val_every": 2, "num_workers": 1, "name": "same"},
                   tracking={"enabled": False})
    result = build_trainer(absolute_paths(job), "same", None).fit()  # training only: no pictures, no MLflow
    with result.checkpoint.as_directory() as d:
        return checkpoints.read_state(Path(d))["model"]


def test_the_same_job_and_seed_give_identical_weights(ray_session, tiny_shards, tmp_path):
    # (tests/data/test_pipeline.py checks that preserve_order delivers the plan in order; on a quiet machine the
    # race is often decided the same way twice, so runs without it can agree too, but nothing makes them)
    first, second = (trained_weights(tiny_shards, tmp_path / run, True) for run in ("a", "b"))
    assert first.keys() == second.keys()
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert differ == []
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in first.values())
