"""Typed configuration: YAML files -> frozen pydantic models.

Every config model derives from :class:`StrictModel`: unknown keys are rejected, values are validated, and a
failure names the file and the dotted field path, e.g. ``datasets/lip.yaml: flip_pairs.2: index 21 out of range``.
Derived values (number of classes, ...) are properties computed from the data, never separate fields that can drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base for all config models: no unknown keys, immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def validate(model: type[M], data: Any, source: str) -> M:
    """Validate ``data`` as ``model``; errors name ``source`` (a file path or a description) and each field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None


def load_yaml(model: type[M], path: str | Path, overrides: list[str] | None = None) -> M:
    """Load ``path`` as ``model``, applying ``key.sub=value`` overrides (values parsed as YAML scalars)."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    return validate(model, data, str(path))


def apply_override(data: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place; ``value`` is parsed as YAML (so 3, 1e-3, [a, b] work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a mapping")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


# ----------------------------------------------------------------------------------------------- data stream
# Appended section: the Ray Data training stream's configuration. Imports are local to the
# section so it can be appended without touching the module header.
import math  # noqa: E402
from typing import Literal  # noqa: E402

from pydantic import Field, field_validator, model_validator  # noqa: E402


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

    @field_validator("domain_mix")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        from sstparse.domains import load_domains  # local: sstparse.domains imports this module

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
