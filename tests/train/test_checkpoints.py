"""train.checkpoints: the one place that writes and reads a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import ray.train

from sstparse.train import checkpoints
from sstparse.train.loop import restore
from sstparse.train.trainer import check_resumable
from tests.serving import HEADS, tiny_job, tiny_model


def _optim(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _save(path, seed: int = 0, epoch: int = 2, job=None):
    model = tiny_model(seed=seed)
    path.mkdir(parents=True)
    matrices = {h: np.eye(3, dtype=np.int64) for h in HEADS}
    checkpoints.save(path, model, *_optim(model), job or tiny_job(), epoch=epoch, matrices=matrices, run_id="r1",
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


def _truncate(path):
    state = path / checkpoints.STATE_FILE
    state.write_bytes(state.read_bytes()[:1000])


def test_restore_falls_back_past_an_unreadable_state(tmp_path, capsys):
    """A truncated state.pt in the newest checkpoint: resume names the file and continues from the previous one;
    with none readable it stops, naming the run's checkpoint."""
    run = tmp_path / "run"
    _save(run / "checkpoint_2026-01-01_00-00-00.000000", seed=1, epoch=0)
    _save(run / "checkpoint_2026-01-01_00-00-09.000000", seed=2, epoch=1)
    newest = run / "checkpoint_2026-01-01_00-00-09.000000"
    _truncate(newest)
    model = tiny_model(seed=3)
    assert restore(ray.train.Checkpoint(str(newest)), model, *_optim(model)) == (1, True)  # after epoch 0
    torch.testing.assert_close(model.state_dict(), tiny_model(seed=1).state_dict())
    out = capsys.readouterr().out
    assert f"[restore] {newest}/state.pt is unreadable" in out and "resuming after epoch 1" in out
    _truncate(run / "checkpoint_2026-01-01_00-00-00.000000")
    with pytest.raises(checkpoints.CheckpointError, match=f"{newest}: no checkpoint of this run can be read"):
        restore(ray.train.Checkpoint(str(newest)), model, *_optim(model))


def test_resume_with_a_changed_network_is_refused_naming_the_fields(tmp_path):
    job = tiny_job().model_copy(update={"train": tiny_job().train.model_copy(
        update={"storage_path": str(tmp_path), "name": "run"})})
    assert check_resumable(job, "run") == 0  # nothing to resume: nothing to check
    _save(tmp_path / "run" / "checkpoint_2026-01-01_00-00-00.000000", job=job)
    # What may change on resume: epochs, learning rate, loss weights. The epochs the checkpoint holds come back
    # (when they are all the job's, fit() reads the run's result instead of starting workers).
    assert check_resumable(job.model_copy(update={"train": job.train.model_copy(update={"epochs": 9}),
                                           "sst": job.sst.model_copy(update={"lambda_mst": 0.3})}), "run") == 3
    other = job.model_copy(update={"model": job.model.model_copy(update={"backbone": "resnet18"}),
                                   "sst": job.sst.model_copy(update={"embed_dim": 8})})
    with pytest.raises(checkpoints.CheckpointError) as err:
        check_resumable(other, "run")
    message = str(err.value)
    assert message.startswith(str(tmp_path / "run" / "checkpoint_2026-01-01_00-00-00.000000"))
    assert "model.backbone: 'tiny' -> 'resnet18'" in message and "sst.embed_dim: 16 -> 8" in message
    assert "heads" not in message and "another train.name" in message


def test_unsent_metrics_file_round_trip_and_removal(tmp_path):
    path = checkpoints.unsent_path(str(tmp_path), "run")
    assert path == str(tmp_path / "run" / checkpoints.UNSENT_FILE) and checkpoints.read_unsent(path) == []
    records = [{"params": {"a": "1"}}, {"key": "train/loss", "value": 0.5, "timestamp": 7, "step": 2}]
    checkpoints.write_unsent(path, records)
    assert checkpoints.read_unsent(path) == records and not Path(path + ".tmp").exists()
    checkpoints.write_unsent(path, [])
    assert not Path(path).exists()
