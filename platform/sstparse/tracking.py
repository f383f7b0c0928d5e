"""MLflow tracking: the only module that calls MLflow.

Runs are addressed by id through ``MlflowClient`` rather than the global "active run", because a Ray Train
worker that restarts after a failure must append to the run it started before (the id lives in the checkpoint),
and a sweep's driver logs child runs for many trials at once. Logging happens from one process per run (rank 0 or
the driver): sqlite allows one writer, and duplicated metrics from several ranks would be noise anyway.
"""

from __future__ import annotations

import math
import os
import platform as _platform
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import Field

from sstparse.config import StrictModel
from sstparse.redact import is_secret, redact

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


def client(cfg: TrackingConfig) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def experiment_id(cfg: TrackingConfig) -> str:
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = cfg.artifact_location
    if location and "://" not in location:
        location = Path(location).resolve().as_uri()
    try:
        return c.create_experiment(cfg.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        return c.get_experiment_by_name(cfg.experiment).experiment_id


def environment_tags() -> dict[str, str]:
    import ray
    import torch

    tags = {"python": _platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "mlflow": mlflow.__version__}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
        if commit:
            tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def start_run(cfg: TrackingConfig, run_name: str, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None) -> str:
    """Create a run (a nested child when ``parent_run_id`` is given) and return its id."""
    all_tags = {**environment_tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client(cfg).create_run(experiment_id(cfg), run_name=run_name, tags=all_tags)
    return run.info.run_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_params(cfg: TrackingConfig, run_id: str, params: Mapping[str, Any]) -> None:
    """Log a (nested) config as flat params. Credentials are never logged: credential-looking keys are masked at
    every level (``storage_options.secret``, ``...key``) and so are passwords in URLs."""
    flat = {k: ("***" if is_secret(k) else str(v)[:6000]) for k, v in flatten(redact(dict(params))).items()}
    c = client(cfg)
    existing = c.get_run(run_id).data.params
    new = {k: v for k, v in flat.items() if k not in existing}  # a resumed run must not re-log (MLflow refuses)
    items = list(new.items())
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])


def log_metrics(cfg: TrackingConfig, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    finite = [mlflow.entities.Metric(k, float(v), _now_ms(), step) for k, v in metrics.items()
              if isinstance(v, (int, float)) and math.isfinite(v)]
    if finite:
        client(cfg).log_batch(run_id, metrics=finite)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def log_artifacts(cfg: TrackingConfig, run_id: str, paths: Iterable[str | os.PathLike], artifact_path: str | None = None
                  ) -> None:
    c = client(cfg)
    for p in paths:
        c.log_artifact(run_id, str(p), artifact_path)


def end_run(cfg: TrackingConfig, run_id: str, status: str = "FINISHED") -> None:
    client(cfg).set_terminated(run_id, status)


def find_runs(cfg: TrackingConfig, filter_string: str = "") -> list:
    return client(cfg).search_runs([experiment_id(cfg)], filter_string=filter_string)


def pyfunc_signature():
    """The pyfunc's signature: no input schema (a list of images of different sizes, or paths, fits no MLflow
    schema; the model checks its inputs itself and names the bad one), the params with their defaults, so that
    ``predict(..., params={"domain": ...})`` is accepted and typed."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    return ModelSignature(params=ParamSchema([ParamSpec("domain", "string", None),
                                              ParamSpec("flip_tta", "boolean", False),
                                              ParamSpec("batch_size", "long", 8)]))


def log_pyfunc_model(cfg: TrackingConfig, run_id: str, parser, register_as: str | None = None,
                     alias: str | None = None, domains: Mapping | None = None) -> str | None:
    """Log the inference network (a HumanParser, e.g. ``inference_model(model)``) as the sstparse pyfunc under the
    artifact name ``model``, optionally register it (and set ``alias``); returns the registered version.

    ``domains``: name -> LabelDomain giving each head's class names, colours and flip pairs (default: the domain
    cards); they are copied into the model's layout JSON, so loading the model needs no card.
    """
    import tempfile
    import warnings

    import numpy as np
    import PIL
    import torch

    from sstparse import export
    from sstparse.domains import load_domains

    domains = domains or load_domains()
    info = {name: export.domain_info(domains[name]) for name in parser.domain_names}
    code = Path(__file__).with_name("pyfunc.py")  # model from code: MLflow stores this file, nothing is pickled
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="sstparse-pyfunc-") as tmp, mlflow.start_run(run_id=run_id):
        artifacts = export.save_serving_artifacts(parser, info, tmp)
        # Pinned by hand: MLflow cannot infer a +cpu torch build. The code imports sstparse, which the serving
        # environment must have installed (pip install -e . from this repository).
        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                f"numpy=={np.__version__}", f"pillow=={PIL.__version__}"]
        with warnings.catch_warnings():  # an input example needs an input schema, which this model has not
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            logged = mlflow.pyfunc.log_model(
                name="model", python_model=str(code), artifacts=artifacts, signature=pyfunc_signature(),
                pip_requirements=reqs, registered_model_name=register_as,
                metadata={"heads": export.StackedHeads(parser).head_slices()})
    if register_as is None:
        return None
    version = str(logged.registered_model_version)
    if alias:
        client(cfg).set_registered_model_alias(register_as, alias, version)
    return version


def load_pyfunc_model(uri: str, tracking_uri: str | None = None):
    """Load any MLflow model URI (``models:/name@alias``, ``runs:/id/model``, a local folder) as a pyfunc.
    ``tracking_uri`` (also the registry) defaults to $MLFLOW_TRACKING_URI, else the project's sqlite:///mlruns.db."""
    store = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or TrackingConfig().tracking_uri
    db = Path(store.removeprefix("sqlite:///")) if store.startswith("sqlite:///") else None
    if uri.startswith(("models:/", "runs:/")) and db is not None and not db.is_file():
        # Checked here: MLflow would retry opening a missing sqlite file for about two minutes before failing.
        raise FileNotFoundError(f"{uri}: no MLflow store at {db} (tracking URI {store}); pass the store with "
                                "--tracking-uri or MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (mlflow.exceptions.MlflowException, OSError) as err:
        raise FileNotFoundError(f"{uri}: cannot load the model ({err})") from None


def set_alias(cfg: TrackingConfig, name: str, alias: str, version: str) -> None:
    client(cfg).set_registered_model_alias(name, alias, version)


def get_alias(cfg: TrackingConfig, name: str, alias: str):
    """The model version holding ``alias``, or None."""
    try:
        return client(cfg).get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def model_versions(cfg: TrackingConfig, name: str) -> dict[str, dict[str, str]]:
    """Version number -> tags of every version registered under ``name`` (empty when the name is new)."""
    try:
        found = client(cfg).search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return {}
    return {str(v.version): dict(v.tags) for v in found}


def describe_version(cfg: TrackingConfig, name: str, version: str, description: str | None = None,
                     tags: Mapping[str, str] | None = None) -> None:
    """Set a registered version's description and tags (what the registry UI shows)."""
    c = client(cfg)
    if description is not None:
        c.update_model_version(name, version, description=description)
    for k, v in (tags or {}).items():
        c.set_model_version_tag(name, version, k, str(v))


def describe_model(cfg: TrackingConfig, name: str, description: str) -> None:
    client(cfg).update_registered_model(name, description=description)


def delete_alias(cfg: TrackingConfig, name: str, alias: str) -> None:
    client(cfg).delete_registered_model_alias(name, alias)


def set_tags(cfg: TrackingConfig, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(cfg)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def reopen_run(cfg: TrackingConfig, run_id: str) -> None:
    """Mark a run RUNNING again, as ``mlflow.start_run(run_id=...)`` does when it resumes one: whatever ended it
    (a trial marked FAILED when its sweep was interrupted, a finished job submitted again) is being resumed now."""
    if run_status(cfg, run_id) != "RUNNING":
        client(cfg).update_run(run_id, status="RUNNING")


def run_status(cfg: TrackingConfig, run_id: str) -> str:
    """RUNNING, FINISHED, FAILED or KILLED."""
    return client(cfg).get_run(run_id).info.status
