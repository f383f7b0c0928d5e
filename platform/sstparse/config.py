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
