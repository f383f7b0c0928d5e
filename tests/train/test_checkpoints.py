"""train.checkpoints: the one place that writes and reads a checkpoint folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sstparse.train import checkpoints
from tests.serving import HEADS, tiny_job, tiny_model


def _save(path, seed: int = 0):
    model = tiny_model(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    path.mkdir()
    matrices = {h: np.eye(3, dtype=np.int64) for h in HEADS}
    checkpoints.save(path, model, opt, sched, tiny_job(), epoch=2, matrices=matrices, run_id="r1",
                     metrics={"val/mean_miou": 0.5, "note": "x", "skipped": [1]})
    return model


def test_save_then_load_rebuilds_the_same_model(tmp_path):
    ckpt = tmp_path / "ckpt"
    model = _save(ckpt)
    assert checkpoints.is_checkpoint(ckpt) and not checkpoints.is_checkpoint(tmp_path)
    job, loaded, meta = checkpoints.load_model(ckpt)
    assert job == checkpoints.read_job(ckpt) and meta["epoch"] == 3 and meta["mlflow_run_id"] == "r1"
    assert meta["domains"] == list(HEADS) and meta["metrics"] == {"val/mean_miou": 0.5, "note": "x"}
    assert checkpoints.read_state(ckpt)["epoch"] == 2
    pairs = [f"assoc/{a}/{b}" for a in HEADS for b in HEADS if a != b]  # SST's learned associations
    assert sorted(checkpoints.read_eval(ckpt).files) == sorted([f"confusion/{h}" for h in HEADS] + pairs)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        for h in HEADS:
            torch.testing.assert_close(loaded.parser(x, h), model.eval().parser(x, h))


def test_a_folder_without_the_files_is_named(tmp_path):
    (tmp_path / checkpoints.META_FILE).write_text("{}")
    with pytest.raises(checkpoints.CheckpointError, match=f"{tmp_path}: not a training checkpoint"):
        checkpoints.load_model(tmp_path)
