"""The training stream's configuration (the ``data:`` section of a job YAML): which domains, where their shards
live, how they are mixed and augmented. Read by :mod:`sstparse.data.pipeline`; a schema only (no Ray, no I/O)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sstparse.config import StrictModel, local_absolute
from sstparse.domains import load_domains


class ColorJitterConfig(StrictModel):
    """Photometric augmentation; each factor is drawn from [1 - x, 1 + x] per sample (0 disables it)."""

    brightness: float = Field(0.3, ge=0, lt=1, description="Brightness jitter strength.")
    contrast: float = Field(0.3, ge=0, lt=1, description="Contrast jitter strength.")
    saturation: float = Field(0.3, ge=0, lt=1, description="Saturation jitter strength.")


class DataConfig(StrictModel):
    """The training stream: which domains, where their shards live, how they are mixed and augmented."""

    domain_mix: dict[str, float] = Field(
        min_length=1,
        description="Domain name -> sampling weight. The key order fixes the `domain` index carried by every "
                    "batch (and so the head index), also for weight-0 domains, which are kept for validation "
                    "but excluded from training. Per epoch a domain contributes round(N * w / sum(w)) samples; "
                    "scarce domains are oversampled.")
    root: str | None = Field(
        None, description="Shard root (local path or s3://bucket/prefix) used for every domain not in `roots`.")
    roots: dict[str, str] = Field(
        default_factory=dict, description="Per-domain shard roots overriding `root` (e.g. one bucket per dataset).")
    storage_options: dict[str, object] = Field(
        default_factory=dict,
        description="fsspec options for remote roots (e.g. {client_kwargs: {endpoint_url: ...}}); credentials "
                    "normally come from the environment.")
    crop_size: int = Field(256, ge=16, le=2048, description="Side of the square training crop, pixels.")
    scale_range: tuple[float, float] = Field(
        (0.5, 1.5), description="Random scale factor range (min, max) applied before cropping.")
    flip: float = Field(0.5, ge=0, le=1,
                        description="Probability of a horizontal flip (with the domain's left/right class swap).")
    color_jitter: ColorJitterConfig = Field(default_factory=ColorJitterConfig,
                                            description="Colour jitter strengths.")
    epoch_size: int | None = Field(
        None, ge=1,
        description="Samples per training epoch (N). Default: the total train count of the domains with a "
                    "positive weight, i.e. about one pass over the data.")
    batch_size: int = Field(16, ge=1, description="Samples per batch per Train worker.")
    shuffle_buffer: int = Field(
        0, ge=0,
        description="Rows of the consumer-side local shuffle buffer (0 disables). Off by default: every block "
                    "already mixes the domains in proportion (see sstparse.data.pipeline); a buffer only adds "
                    "cross-task mixing, at a copy of every row in the consumer.")
    task_rows: int = Field(
        256, ge=1,
        description="Planned samples per read task. Each task reads the parts holding its samples (all domains), "
                    "so larger tasks re-read fewer part files; smaller ones balance better across cores.")
    block_rows: int | None = Field(
        None, ge=1, description="Rows per augmented block (default: batch_size, so blocks map 1:1 onto batches).")
    on_bad_record: Literal["error", "skip"] = Field(
        "error",
        description="A record that fails to decode or check at read time: `error` stops with a message naming "
                    "it; `skip` drops it, counts it and reports it (DataStream.bad_records(), pipeline.bad_records()).")
    seed: int = Field(0, ge=0, description="Seed of the epoch plans and of every sample's augmentation.")
    preserve_order: bool = Field(
        False,
        description="Blocks leave the stream in plan order (Ray Data's preserve_order) instead of as their tasks "
                    "finish: the same job and seed then train on the same batches, and with one training worker "
                    "give identical weights (with several, Ray Data's split hands each block to whichever worker "
                    "asks first). Costs a task that finishes early waiting for its elders (README: determinism).")

    @field_validator("domain_mix")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        known = load_domains()
        for name, w in v.items():
            if name not in known:
                raise ValueError(f"unknown domain {name!r}; known: {sorted(known)}")
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"domain {name!r}: weight must be finite and >= 0, got {w}")
        if not any(w > 0 for w in v.values()):
            raise ValueError(f"at least one domain needs a positive weight, got {v}")
        return v

    @field_validator("scale_range")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < min <= max, got {v}")
        return v

    @model_validator(mode="after")
    def _roots(self) -> "DataConfig":
        extra = [d for d in self.roots if d not in self.domain_mix]
        if extra:
            raise ValueError(f"roots: domain(s) {extra} not in domain_mix")
        missing = [d for d in self.domain_mix if d not in self.roots and not self.root]
        if missing:
            raise ValueError(f"no shard root for domain(s) {missing}: set `root` or `roots`")
        return self

    @property
    def domains(self) -> list[str]:
        """Ordered domain names; index i is the value of the `domain` column."""
        return list(self.domain_mix)

    def root_of(self, domain: str) -> str:
        return self.roots.get(domain) or self.root  # type: ignore[return-value]

    def absolute(self) -> "DataConfig":
        """Local relative roots made absolute, from where this process runs: Ray's read tasks and Train workers run
        in other folders, where a relative root names nothing (remote roots are kept as they are)."""
        return self.model_copy(update={"root": local_absolute(self.root),
                                       "roots": {k: local_absolute(v) for k, v in self.roots.items()}})
