"""Typed configuration: YAML files -> frozen pydantic models.

Every config model derives from :class:`StrictModel`: unknown keys are rejected, values are validated, and a
failure names the file and the dotted field path, e.g. ``datasets/lip.yaml: flip_pairs.2: index 21 out of range``.
Derived values (number of classes, ...) are properties computed from the data, never separate fields that can drift.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


class StrictModel(BaseModel):
    """Base for all config models: no unknown keys, immutable after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def local_absolute(path: str | None) -> str | None:
    """A local path made absolute (from this process's working folder); None and remote URLs (``s3://...``) kept.
    Ray workers and tasks run in other folders, so a relative path must be resolved where the user gave it."""
    return path if path is None or "://" in path else str(Path(path).resolve())


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


# ----------------------------------------------------------------------------------------------- tracking
# Here rather than in sstparse.tracking: job, sweep and registry schemas name it, and validating them must not
# import MLflow.
LOCAL_STORE = "sqlite:///mlruns.db"


def is_server(uri: str) -> bool:
    """A tracking server (it stores artifacts itself) rather than a local store."""
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def _default_tracking_uri() -> str:
    # MLflow's own convention: on a cluster MLFLOW_TRACKING_URI comes from the nodes' environment (a Kubernetes
    # Secret, the local cluster scripts), so the same job YAML runs locally and there.
    return os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE


def _default_artifact_location(data: dict) -> str | None:
    # A server decides (its --artifacts-destination / --default-artifact-root); a local store gets a local folder.
    return None if is_server(data.get("tracking_uri") or LOCAL_STORE) else "mlruns-artifacts"


class TrackingConfig(StrictModel):
    """Where runs, artifacts and registered models go."""

    tracking_uri: str = Field(default_factory=_default_tracking_uri,
                              description="MLflow tracking URI: sqlite:///file.db locally, http://host:5000 on "
                                          "clusters. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db.")
    experiment: str = Field("sstparse", description="Experiment name; created on first use.")
    artifact_location: str | None = Field(
        default_factory=_default_artifact_location,
        description="Artifact root for a new experiment (local path or s3://); None lets the server decide. "
                    "Relative paths are resolved against the working directory. Default: None with a tracking "
                    "server, else mlruns-artifacts.")
    register_as: str | None = Field(None, description="Registered model name; None derives sst-<mode or target> "
                                                      "(with -smoke appended for a --smoke-test run).")
    allow_layout_change: bool = Field(
        False, description="Register a version whose heads or classes differ from the versions already under the "
                           "name (refused by default: a name is one layout, so aliases and promotion compare like "
                           "with like).")
    enabled: bool = Field(True, description="Turn tracking off entirely (quick experiments, some tests).")
    request_timeout_s: float = Field(
        10.0, gt=0, description="How long a training worker waits for the tracking server to answer one request "
                                "before it keeps the metrics for the next try (MLflow's own default, 120 s with 7 "
                                "retries, would stall training for minutes during an outage).")
    outage_wait_s: float = Field(
        120.0, ge=0, description="How long the end of a job waits for a tracking server that stopped answering; "
                                 "then the unsent metrics stay beside the checkpoints (unsent_metrics.jsonl) and the "
                                 "job finishes without logging or registering its model (run it again to do so).")
