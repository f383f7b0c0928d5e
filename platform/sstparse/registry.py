"""What the model registry holds: per registered version, a description and tags that tell a person browsing the
MLflow UI what the model parses, from what data, how well and how to call it; and per name, one layout.

A name is one layout (the same heads with the same classes): aliases and promotion compare versions of a name
with each other, and a caller of ``models:/<name>@champion`` relies on its heads. Registering another layout under
a name is refused (both layouts named) unless the job sets ``tracking.allow_layout_change``. MLflow itself is
reached through :mod:`sstparse.tracking`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sstparse import tracking
from sstparse.data.shards import read_manifest
from sstparse.domains import LabelDomain, load_domains
from sstparse.config import TrackingConfig
from sstparse.model.config import served_heads

# SCORE_TAG: the checkpoint's validation score on the job's objective (tag "objective" names it).
LAYOUT_TAG, HEADS_TAG, SCORE_TAG = "layout", "heads", "objective_score"


def layout_of(domains: Sequence[LabelDomain]) -> dict[str, list[str]]:
    """Head name -> class names, in head order."""
    return {d.name: list(d.classes) for d in domains}


def layout_id(layout: Mapping[str, Sequence[str]]) -> str:
    """A short fingerprint of the heads and their classes (order included: it is the channel order)."""
    return hashlib.sha256(json.dumps(dict(layout), sort_keys=False).encode()).hexdigest()[:12]


def heads_text(layout: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"{name} ({len(classes)} classes)" for name, classes in layout.items())


def check_layout(cfg: TrackingConfig, name: str, layout: Mapping[str, Sequence[str]], allow: bool = False) -> None:
    """Refuse a model whose layout differs from the versions already registered under ``name``."""
    if allow:
        return
    mine = layout_id(layout)
    for version, tags in sorted(tracking.model_versions(cfg, name).items(), key=lambda kv: int(kv[0])):
        theirs = tags.get(LAYOUT_TAG)
        if theirs and theirs != mine:
            raise ValueError(
                f"{name}: version {version} serves {tags.get(HEADS_TAG, '?')} (layout {theirs}); this model serves "
                f"{heads_text(layout)} (layout {mine}). A registered name holds one layout: register under another "
                f"name (tracking.register_as=...) or set tracking.allow_layout_change=true")


def check_job(job) -> None:
    """Before training: would this job's model be refused by its registered name? (Checked again at registration.)"""
    layout = layout_of([load_domains()[n] for n in served_heads(job.domain_names, job.target_domain)])
    check_layout(job.tracking, job.registered_name, layout, job.tracking.allow_layout_change)


def same_layout_versions(cfg: TrackingConfig, name: str, version: str) -> dict[str, dict[str, str]]:
    """The other versions of ``name`` with ``version``'s layout (versions registered without a layout tag are
    left out: their heads are unknown)."""
    versions = tracking.model_versions(cfg, name)
    mine = versions.get(str(version), {}).get(LAYOUT_TAG)
    return {v: t for v, t in versions.items() if v != str(version) and mine and t.get(LAYOUT_TAG) == mine}


@dataclass(frozen=True)
class VersionCard:
    description: str
    tags: dict[str, str]


def train_counts(job) -> dict[str, Any]:
    """Training images per domain the job trained on (from the shard manifests; '?' where none is readable)."""
    counts: dict[str, Any] = {}
    for d in job.training_data().domains:
        try:
            counts[d] = read_manifest(job.data.root_of(d), d, job.data.storage_options)["splits"]["train"]["count"]
        except (FileNotFoundError, KeyError, OSError):
            counts[d] = "?"
    return counts


def version_card(job, layout: Mapping[str, Sequence[str]], meta: Mapping[str, Any], run_id: str,
                 checkpoint: str, name: str, command: str | None = None) -> VersionCard:
    """Description and tags of a version registered from a checkpoint (``meta``: the checkpoint's meta.json)."""
    metrics = meta.get("metrics", {})
    command = command or "python " + shlex.join(sys.argv)
    mix = job.training_data().domain_mix
    trained = ", ".join(f"{d} ({n} images, weight {mix[d]:g})" for d, n in train_counts(job).items())
    scores = {d: metrics.get(f"val/{d}/miou") for d in layout}
    rows = [f"| {d} | {len(classes)} | {'-' if scores[d] is None else f'{100 * scores[d]:.1f}%'} |"
            for d, classes in layout.items()]
    first = next(iter(layout))
    description = "\n".join([
        f"{job.train.mode} human parser ({job.model.backbone} backbone), epoch {meta.get('epoch', '?')} of "
        f"{job.train.epochs}; heads: {heads_text(layout)}.", "",
        "| head | classes | validation mIoU |", "|---|---|---|", *rows, "",
        f"Training data ({job.data.root}): {trained}.", "", f"Trained by: `{command}`", "",
        f"Call: `mlflow.pyfunc.load_model(\"models:/{name}@champion\").predict(images, "
        f"params={{\"domain\": \"{first}\", \"flip_tta\": False}})`, where images is a list of HxWx3 uint8 RGB "
        "arrays or image paths; returns one HxW uint8 label map per image (class indices of that head)."])
    objective = metrics.get(job.objective)
    tags = {"mode": job.train.mode, "backbone": job.model.backbone, HEADS_TAG: heads_text(layout),
            LAYOUT_TAG: layout_id(layout), "data_root": str(job.data.root), "source_run": run_id,
            "checkpoint": checkpoint, "epoch": str(meta.get("epoch", "")), "smoke_test": str(job.train.smoke_test),
            "git_commit": tracking.environment_tags().get("mlflow.source.git.commit", "unknown"),
            "objective": job.objective, **({SCORE_TAG: f"{objective:.4f}"} if objective is not None else {})}
    return VersionCard(description, tags)


def model_description(layout: Mapping[str, Sequence[str]]) -> str:
    """The registered model's own description: the task and the heads every version of it serves."""
    lines = ["Human parsing: one label map per image, pixel-wise classes (hair, face, clothes, arms, legs, ...) of "
             "the head named by the `domain` param. An sstparse pyfunc (torch.export program; no pickle).", "",
             "| head | classes |", "|---|---|"]
    lines += [f"| {d} | {', '.join(classes)} |" for d, classes in layout.items()]
    return "\n".join(lines)


def describe(cfg: TrackingConfig, name: str, version: str, card: VersionCard,
             layout: Mapping[str, Sequence[str]]) -> None:
    tracking.describe_version(cfg, name, version, card.description, card.tags)
    tracking.describe_model(cfg, name, model_description(layout))
