"""Training-test helpers: a job config small enough for 2 CPU cores (the shard root is tests/conftest.py's
``tiny_shards``)."""

from __future__ import annotations

from sstparse.train.config import JobConfig
from tests.conftest import SYNTH
from tests.stores import sqlite_uri


def tiny_job(root: str, tmp, **sections) -> JobConfig:
    """A job that trains in seconds: 64 px crops, 16 samples an epoch, the tiny backbone, 2 half-CPU workers."""
    cfg = {
        "data": {"root": root, "domain_mix": {n: 1.0 for n in SYNTH}, "crop_size": 64, "batch_size": 4,
                 "epoch_size": 16, "scale_range": [0.5, 0.8]},
        "model": {"backbone": "tiny", "decoder_channels": 16, "low_level_channels": 8, "feature_dim": 16},
        "sst": {"embed_dim": 16},
        "optim": {"lr": 0.003, "warmup_steps": 2},
        "train": {"epochs": 2, "num_workers": 2, "cpus_per_worker": 0.5, "storage_path": str(tmp / "ray_results"),
                  "name": "tiny"},
        "tracking": {"tracking_uri": sqlite_uri(tmp), "artifact_location": str(tmp / "artifacts")},
    }
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return JobConfig.model_validate(cfg)
