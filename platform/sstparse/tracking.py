"""MLflow tracking: the only module that calls MLflow.

Runs are addressed by id through ``MlflowClient`` rather than the global "active run", because a Ray Train
worker that restarts after a failure must append to the run it started before (the id lives in the checkpoint),
and a sweep's driver logs child runs for many trials at once. Logging happens from one process per run (rank 0 or
the driver): sqlite allows one writer, and duplicated metrics from several ranks would be noise anyway.
"""

from __future__ import annotations

import itertools
import math
import os
import platform as _platform
import subprocess
import time
import warnings
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import mlflow
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ParamSchema, ParamSpec

from sstparse.config import TrackingConfig
from sstparse.redact import is_secret, redact


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
    tags = {"python": _platform.python_version(), **{pkg: metadata.version(pkg) for pkg in ("torch", "ray", "mlflow")}}
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


def param_values(params: Mapping[str, Any]) -> dict[str, str]:
    """A (nested) config as flat MLflow params. Credentials are never logged: credential-looking keys are masked at
    every level (``storage_options.secret``, ``...key``) and so are passwords in URLs."""
    return {k: ("***" if is_secret(k) else str(v)[:6000]) for k, v in flatten(redact(dict(params))).items()}


def log_params(cfg: TrackingConfig, run_id: str, params: Mapping[str, Any]) -> None:
    _send_params(client(cfg), run_id, param_values(params))


def _send_params(c: MlflowClient, run_id: str, flat: Mapping[str, str]) -> None:
    existing = c.get_run(run_id).data.params
    new = {k: v for k, v in flat.items() if k not in existing}  # a resumed run must not re-log (MLflow refuses)
    items = list(new.items())
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i:i + 100]])


def metric_records(metrics: Mapping[str, Any], step: int) -> list[dict[str, Any]]:
    """The finite numbers of ``metrics`` as MLflow metric fields (key, value, timestamp, step), stamped now."""
    now = _now_ms()
    return [{"key": k, "value": float(v), "timestamp": now, "step": step} for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)]


def log_metrics(cfg: TrackingConfig, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    records = metric_records(metrics, step)
    if records:
        client(cfg).log_batch(run_id, metrics=[mlflow.entities.Metric(**r) for r in records])


class MetricOutbox:
    """What one run's training logs, on its way to MLflow: a tracking server that stops answering (a restart, a
    network cut) must neither stop nor stall training, nor lose what was logged meanwhile.

    Each ``send`` makes one quick attempt per request (``cfg.request_timeout_s``, no retries of MLflow's own) and
    keeps, in order, whatever the server did not take; the next send starts with it. ``send(wait_s)`` keeps trying
    (backing off up to 30 s) for at most ``wait_s``: the end of a job. Values keep the time they were logged at,
    so a batch sent twice (the server stored it, the answer was lost) is stored once: MLflow drops a metric equal
    in key, value, step and timestamp to one it has.
    ``unsent``: records (``{"params": {...}}`` or a metric's fields) a previous attempt could not send; a caller
    that must survive a crash of its process keeps ``unsent`` somewhere durable after each send."""

    def __init__(self, cfg: TrackingConfig, run_id: str, unsent: Iterable[dict[str, Any]] = (),
                 keep: Callable[[list[dict[str, Any]]], None] | None = None, where: str | None = None):
        self.cfg, self.run_id = cfg, run_id
        self.unsent: list[dict[str, Any]] = list(unsent)
        self.error: Exception | None = None  # the last failure, for the caller's message
        # keep(records) after a send that leaves records unsent, and once with [] when they are all sent
        self.keep, self.where, self._kept = keep, where, bool(self.unsent)

    @property
    def why(self) -> str:
        """The last failure in a few words ("[Errno 111] Connection refused", "Read timed out. ...")."""
        text = str(self.error or "")
        return text.rsplit(": ", 1)[-1].strip("'\")") if "Caused by" in text else text[:200]

    def add(self, metrics: Mapping[str, Any], step: int) -> None:
        self.unsent.extend(metric_records(metrics, step))

    def add_params(self, params: Mapping[str, Any]) -> None:
        self.unsent.append({"params": param_values(params)})

    def send(self, wait_s: float = 0.0) -> bool:
        """True once everything is sent; False when the server still does not answer after ``wait_s``."""
        sent = self._try(wait_s)
        if self.keep and (self.unsent or self._kept):
            self.keep(list(self.unsent))
            self._kept = bool(self.unsent)
        return sent

    def _try(self, wait_s: float) -> bool:
        deadline, pause = time.monotonic() + wait_s, 1.0
        while True:
            try:
                with _impatient(self.cfg.request_timeout_s):
                    self._send_all()
                self.error = None
                return True
            except mlflow.exceptions.MlflowException as err:  # connection refused, timeout, 5xx: all land here
                self.error = err
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(2 * pause, 30.0)

    def _send_all(self) -> None:
        c = client(self.cfg)
        while self.unsent:
            if "params" in self.unsent[0]:
                _send_params(c, self.run_id, self.unsent[0]["params"])
                del self.unsent[0]
                continue
            batch = list(itertools.takewhile(lambda r: "params" not in r, self.unsent[:1000]))  # MLflow's limit
            c.log_batch(self.run_id, metrics=[mlflow.entities.Metric(**r) for r in batch])
            del self.unsent[:len(batch)]


@contextmanager
def _impatient(timeout_s: float) -> Iterator[None]:
    """MLflow's HTTP client reads its retry and timeout settings from the environment at each request: one attempt
    with a short timeout for the calls made here, MLflow's defaults (7 retries, 120 s) for everything else."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout_s)))}
    before = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        _put_back(before)


def _put_back(environment: Mapping[str, str | None]) -> None:
    for k, v in environment.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def answers(cfg: TrackingConfig, run_id: str, wait_s: float = 0.0) -> bool:
    """Whether the tracking server answers for ``run_id`` within ``wait_s`` (quick attempts, backing off). An
    empty params record costs one request (the run's params are read to leave existing ones alone)."""
    return MetricOutbox(cfg, run_id, [{"params": {}}]).send(wait_s)


def _now_ms() -> int:
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


def log_pyfunc(cfg: TrackingConfig, run_id: str, code: Path, artifacts: Mapping[str, str],
               params: Iterable[tuple[str, str, Any]], requirements: list[str], metadata: Mapping[str, Any],
               register_as: str | None = None, alias: str | None = None) -> str | None:
    """Log a models-from-code pyfunc (``code``: its Python file; nothing is pickled) under the artifact name
    ``model`` in run ``run_id``; register it as ``register_as`` (and set ``alias``); returns the version.

    ``params``: (name, MLflow type, default) of the predict params, which become the signature's params schema.
    No input schema: MLflow enforces a declared one on every call, and a list of images of different sizes or
    paths fits none (the model checks its inputs itself and names the bad one)."""
    signature = ModelSignature(params=ParamSchema([ParamSpec(n, t, d) for n, t, d in params]))
    with _store(cfg.tracking_uri), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # An input example needs an input schema, which this model has not.
        warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
        logged = mlflow.pyfunc.log_model(
            name="model", python_model=str(code), artifacts=dict(artifacts), signature=signature,
            pip_requirements=[*requirements, f"mlflow=={mlflow.__version__}"], registered_model_name=register_as,
            metadata=dict(metadata))
    if register_as is None:
        return None
    version = str(logged.registered_model_version)
    if alias:
        client(cfg).set_registered_model_alias(register_as, alias, version)
    return version


def load_pyfunc_model(uri: str, tracking_uri: str | None = None):
    """Load any MLflow model URI (``models:/name@alias``, ``runs:/id/model``, a local folder) as a pyfunc.
    ``tracking_uri`` (also the registry) defaults to $MLFLOW_TRACKING_URI, else the project's sqlite:///mlruns.db."""
    store = model_store(uri, tracking_uri)
    try:
        with _store(store):
            return mlflow.pyfunc.load_model(uri)
    except (mlflow.exceptions.MlflowException, OSError) as err:
        raise FileNotFoundError(f"{uri}: cannot load the model ({err})") from None


def model_store(uri: str, tracking_uri: str | None) -> str:
    """The store a model URI is read from: ``tracking_uri``, else $MLFLOW_TRACKING_URI, else the project's
    sqlite:///mlruns.db; a missing sqlite file is an error here, because MLflow would retry opening it for about
    two minutes before failing. A relative sqlite path is made absolute: other processes (Ray actors) may start
    elsewhere."""
    store = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or TrackingConfig().tracking_uri
    db = Path(store.removeprefix("sqlite:///")) if store.startswith("sqlite:///") else None
    if uri.startswith(("models:/", "runs:/")) and db is not None and not db.is_file():
        raise FileNotFoundError(f"{uri}: no MLflow store at {db} (tracking URI {store}); pass the store with "
                                "--tracking-uri or MLFLOW_TRACKING_URI")
    return f"sqlite:///{db.resolve()}" if db is not None else store


def pinned_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/name@alias`` -> ``models:/name/<version>``, the version holding the alias now; any other URI as
    given. A job that loads the model in many processes pins it first, so a promotion during the job cannot give
    two processes two different models."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    name, alias = uri.removeprefix("models:/").split("@", 1)
    store = model_store(uri, tracking_uri)
    found = get_alias(TrackingConfig(tracking_uri=store), name, alias)
    if found is None:
        raise FileNotFoundError(f"{uri}: cannot resolve the alias (no version of {name!r} holds {alias!r} in "
                                f"{store})")
    return f"models:/{name}/{found.version}"


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def _store(uri: str) -> Iterator[None]:
    """MLflow's fluent calls (log_model, pyfunc.load_model) read global URIs, and setting those also exports
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, so every process started afterwards (a later fit's Ray workers, a
    subprocess) would inherit this store over its own. Set them for the call, then put both back as found."""
    before = {k: os.environ.get(k) for k in _URI_VARIABLES}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])  # None unsets it
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
        _put_back(before)


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
