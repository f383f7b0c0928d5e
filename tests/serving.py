"""Helpers for the serving tests (pyfunc, predict, export): a tiny seeded model, logged as the pyfunc to a
throwaway sqlite store, or saved as a Ray Train checkpoint folder. No Ray involved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from sstparse import export, tracking
from sstparse.train import checkpoints
from sstparse.data.augment import normalize
from sstparse.domains import load_domains
from sstparse.model.sst import SSTModel
from sstparse.config import TrackingConfig
from sstparse.train.config import JobConfig
from tests.stores import sqlite_uri

HEADS = ("syn_lip", "syn_ppp")
# The tiny backbone with narrow decoder layers: a forward pass at 64 px takes milliseconds on one core.
MODEL = {"backbone": "tiny", "decoder_channels": 16, "low_level_channels": 8, "feature_dim": 16}


class Served(NamedTuple):
    cfg: TrackingConfig
    name: str       # registered model name; version 1 holds alias "champion"
    model: SSTModel

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@champion"


def tiny_job(heads: Sequence[str] = HEADS) -> JobConfig:
    return JobConfig.model_validate({"data": {"root": "unused", "domain_mix": {h: 1.0 for h in heads}},
                                     "model": MODEL, "sst": {"embed_dim": 16}})


def tiny_model(heads: Sequence[str] = HEADS, seed: int = 0) -> SSTModel:

    torch.manual_seed(seed)
    model = checkpoints.build_model(tiny_job(heads), [load_domains()[h] for h in heads]).eval()
    # Random BatchNorm statistics, so outputs are not the near-constant logits of a freshly initialised network.
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def log_tiny(tmp: Path, heads: Sequence[str] = HEADS, name: str = "sst-test") -> Served:
    """Log a tiny model as the pyfunc in a fresh sqlite store under ``tmp`` and register it as champion."""
    from sstparse.model.sst import inference_model

    cfg = TrackingConfig(tracking_uri=sqlite_uri(tmp), artifact_location=str(tmp / "artifacts"),
                         experiment="serving")
    model = tiny_model(heads)
    run = tracking.start_run(cfg, "serving")
    version = export.log_pyfunc_model(cfg, run, inference_model(model), register_as=name, alias="champion")
    assert version == "1"
    return Served(cfg, name, model)


def save_checkpoint(path: Path, heads: Sequence[str] = HEADS) -> SSTModel:
    """A Ray Train checkpoint folder as the training loop writes it (meta.json + state.pt)."""
    model = tiny_model(heads)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path / checkpoints.STATE_FILE)
    meta = {"epoch": 1, "domains": list(heads), "job": tiny_job(heads).model_dump(mode="json"), "metrics": {}}
    (path / checkpoints.META_FILE).write_text(json.dumps(meta))
    return model


def images(seed: int = 0, shapes: Sequence[tuple[int, int]] = ((64, 48), (40, 70), (64, 48))) -> list[np.ndarray]:
    """Random-but-structured uint8 RGB images (smooth blobs, so predictions are not pure noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in shapes:
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)),
                         np.sin(4 * (xx + yy) + rng.uniform(0, 6))], -1)
        out.append(((base * 0.5 + 0.5) * 255 + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8))
    return out


@torch.no_grad()
def eager_labels(model: SSTModel, image: np.ndarray, domain: str) -> np.ndarray:
    """What the training code's parser predicts for ``image`` (the reference for the served model)."""
    x = torch.from_numpy(normalize(image))[None]
    return model.parser(x, domain).argmax(1)[0].numpy().astype(np.uint8)
