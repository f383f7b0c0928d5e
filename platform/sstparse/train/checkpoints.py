"""Checkpoints: the model a job describes, and the folder a training epoch leaves behind.

A checkpoint folder (written by rank 0 of :mod:`sstparse.train.loop`, kept by Ray Train under
``<storage_path>/<name>/checkpoint_*``) holds three files:

- ``state.pt``: model, optimiser and scheduler state and the epoch (``torch.save``; read with ``weights_only``);
- ``meta.json``: the job (credentials redacted), the head order, the MLflow run id and the epoch's metrics, so a
  checkpoint rebuilds its model without the YAML that trained it;
- ``eval.npz``: the validation confusion matrices and, with SST, the learned associations (for the plots and the
  benchmark's association scores).

Everything that reads or writes these files goes through this module.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch

from sstparse.data.shards import filesystem
from sstparse.domains import LabelDomain, load_domains
from sstparse.model.sst import SSTModel, build_sst_model
from sstparse.redact import redact
from sstparse.train.config import JobConfig

STATE_FILE, META_FILE, EVAL_FILE = "state.pt", "meta.json", "eval.npz"
UNSENT_FILE = "unsent_metrics.jsonl"  # in the run's folder, beside its checkpoints


class CheckpointError(ValueError):
    """A checkpoint cannot be used: a folder that is not one (meta.json or state.pt missing), a run none of whose
    checkpoints can be read, or a resume by a job with another network. The message names the folder."""


def build_model(job: JobConfig, domains: list[LabelDomain] | None = None) -> SSTModel:
    """The training model of ``job`` (heads in ``job.domain_names`` order unless ``domains`` says otherwise)."""
    domains = domains if domains is not None else [load_domains()[n] for n in job.domain_names]
    return build_sst_model(job.model, domains, job.sst, target_domain=job.target_domain)


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file() and (p / STATE_FILE).is_file()


def save(path: Path, model: SSTModel, optimizer, scheduler, job: JobConfig, epoch: int,
         matrices: dict[str, np.ndarray], run_id: str | None, metrics: dict[str, Any]) -> None:
    """Write the three files into ``path`` (``epoch`` counts from 0; meta.json says epochs done)."""
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch}, path / STATE_FILE)
    assoc = {}
    if model.sst is not None and len(model.domain_names) > 1:
        assoc = {f"assoc/{a}/{b}": model.association(a, b).numpy()
                 for a in model.domain_names for b in model.domain_names if a != b}
    np.savez(path / EVAL_FILE, **{f"confusion/{k}": v for k, v in matrices.items()}, **assoc)
    # The job is redacted: meta.json is persisted (storage, MLflow artifact) and a credential a user put in
    # data.storage_options must not travel with it; nothing reads credentials back from a checkpoint.
    meta = {"epoch": epoch + 1, "mlflow_run_id": run_id, "domains": model.domain_names,
            "job": redact(job.model_dump(mode="json")), "metrics": {k: v for k, v in metrics.items()
                                                           if isinstance(v, (int, float, str))}}
    (path / META_FILE).write_text(json.dumps(meta, indent=1))


def read_state(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def read_meta(path: Path | str, fs=None) -> dict[str, Any]:
    """A checkpoint's meta.json; ``fs``: an fsspec filesystem holding ``path`` (the driver's view of a run's
    storage, local or S3), default the local disk."""
    with (fs or fsspec.filesystem("file")).open(posixpath.join(str(path), META_FILE), "r") as f:
        return json.load(f)


def read_job(path: Path | str, fs=None) -> JobConfig:
    """The job that wrote the checkpoint (as recorded in its meta.json)."""
    return JobConfig.model_validate(read_meta(path, fs)["job"])


def read_eval(path: Path):
    return np.load(path / EVAL_FILE)


def latest(fs, folder: str) -> str | None:
    """The newest checkpoint under a run's folder (fsspec ``fs``; Ray Train names them checkpoint_<timestamp>, so
    name order is age order), or None."""
    metas = sorted(fs.glob(posixpath.join(folder, "checkpoint_*", META_FILE)))
    return posixpath.dirname(metas[-1]) if metas else None


def storage_filesystem(path: str):
    """(fsspec filesystem, bare path) for a run's storage (local or a bucket). No listings cache: Ray Train workers
    add checkpoint folders behind the driver's back, and a listing cached earlier (while a resumed run was restored)
    made the driver's filesystem report the new best checkpoint as missing."""
    return filesystem(path, {"use_listings_cache": False} if "://" in path else None)


def unsent_path(storage_path: str, name: str) -> str:
    """Where run ``name`` keeps the metrics MLflow has not taken yet: beside its checkpoints."""
    return posixpath.join(storage_path.rstrip("/"), name, UNSENT_FILE)


def read_unsent(url: str) -> list[dict[str, Any]]:
    fs, path = storage_filesystem(url)
    if not fs.exists(path):
        return []
    with fs.open(path, "r") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_unsent(url: str, records: list[dict[str, Any]]) -> None:
    """Replace the file with ``records`` (none: remove it). Written aside, then moved: a crash mid-write leaves the
    previous file, never half a line."""
    fs, path = storage_filesystem(url)
    if not records:
        if fs.exists(path):
            fs.rm(path)
        return
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path + ".tmp", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    fs.mv(path + ".tmp", path)


def job_differences(saved: JobConfig, job: JobConfig) -> list[str]:
    """What a resumed job changed that the checkpoint's tensors depend on (heads, network, SST modules, mode):
    "field: saved -> now" for each. Epochs, learning rate, loss weights and data may change on resume."""
    def shape(j: JobConfig) -> dict[str, Any]:
        return {"heads": j.domain_names, "train.mode": j.train.mode, "train.target": j.target_domain,
                **{f"model.{k}": v for k, v in j.model.model_dump(mode="json").items()},
                **{f"sst.{k}": getattr(j.sst, k) for k in ("enabled", "embed_dim", "scales")},
                "sst.deep_supervision > 0": j.sst.deep_supervision > 0}
    before, now = shape(saved), shape(job)
    return [f"{k}: {before[k]!r} -> {now[k]!r}" for k in before if before[k] != now[k]]


def load_model(path: Path) -> tuple[JobConfig, SSTModel, dict[str, Any]]:
    """(job, training model in eval mode, meta) rebuilt from a checkpoint folder: config and weights both come
    from it."""
    if not is_checkpoint(path):
        raise CheckpointError(f"{path}: not a training checkpoint ({META_FILE} and {STATE_FILE} expected)")
    meta = read_meta(path)
    job = JobConfig.model_validate(meta["job"])
    model = build_model(job, [load_domains()[n] for n in meta["domains"]])
    model.load_state_dict(read_state(path)["model"])
    return job, model.eval(), meta
