"""The driver: builds the TorchTrainer (scaling, storage, checkpoints, fault tolerance), runs it, and turns the
best checkpoint into MLflow artifacts and a registered model.

The MLflow run is opened here, before any worker starts, and its id is stored beside the checkpoints
(``<storage>/<name>/mlflow_run_id``): a worker group restarted by FailureConfig, or the same job submitted again
with the same name, appends to that run instead of opening a second one.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer

from sstparse import export, plots, registry, tracking
from sstparse.config import TrackingConfig, local_absolute
from sstparse.data import pipeline
from sstparse.data.augment import normalize
from sstparse.data.preview import samples
from sstparse.data.shards import read_manifest
from sstparse.data.synth import true_association
from sstparse.domains import load_domains
from sstparse.model.sst import inference_model
from sstparse.promote import CHALLENGER, settle_new_version
from sstparse.train.config import JobConfig
from sstparse.train import checkpoints
from sstparse.train.checkpoints import storage_filesystem
from sstparse.train.loop import tracked_outbox, train_loop_per_worker


@dataclass
class FitResult:
    job: JobConfig
    metrics: dict[str, Any]        # the best checkpoint's metrics (by job.objective)
    last: dict[str, Any]           # the last epoch's reported metrics (per-class IoUs left out)
    checkpoint_path: str           # where the best checkpoint lives (local path or bucket path)
    run_id: str | None             # MLflow run
    registered_version: str | None
    skipped_records: int = 0       # distinct records dropped under on_bad_record: skip (listed in the run)
    # The metrics of every epoch this attempt ran (a worker-group restart or a resume starts it afresh).
    history: list[dict[str, Any]] = field(default_factory=list)
    # Set when MLflow did not answer at the end: the file (beside the checkpoints) holding what it did not take
    unsent_metrics: str | None = None


def storage(job: JobConfig) -> tuple[pafs.FileSystem | None, str]:
    return storage_at(job.train.storage_path)


def storage_at(path: str) -> tuple[pafs.FileSystem | None, str]:
    """(pyarrow filesystem, path) for Ray Train and Tune; remote roots go through fsspec (s3fs) so one set of
    credentials and endpoint settings (the environment) serves shards, checkpoints and artifacts alike."""
    if "://" not in path:
        return None, str(Path(path).resolve())
    fs, bare = storage_filesystem(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), bare


def recorded_run_id(storage_path: str, name: str) -> str | None:
    fs, base = storage_filesystem(storage_path)
    marker = posixpath.join(base, name, "mlflow_run_id")
    if not fs.exists(marker):
        return None
    with fs.open(marker, "r") as f:
        return f.read().strip()


def recorded_run(cfg: TrackingConfig, storage_path: str, name: str, parent_run_id: str | None = None,
                 tags: dict[str, str] | None = None) -> str:
    """The MLflow run recorded at ``<storage_path>/<name>/mlflow_run_id``, or a new run, recorded there.

    Keyed by storage so that whatever resumes from that storage (a FailureConfig restart, the same job submitted
    again, a restored Tune sweep) appends to the same run, which is RUNNING again from here on."""
    recorded = recorded_run_id(storage_path, name)
    if recorded:
        # An interrupted sweep can leave a trial's run FAILED (its fit() saw the TorchTrainer torn down); without
        # reopening, the resumed trial would log into a closed run and the sweep would never close it.
        tracking.reopen_run(cfg, recorded)
        return recorded
    fs, base = storage_filesystem(storage_path)
    marker = posixpath.join(base, name, "mlflow_run_id")
    run_id = tracking.start_run(cfg, name, parent_run_id=parent_run_id, tags=tags)
    fs.makedirs(posixpath.dirname(marker), exist_ok=True)
    with fs.open(marker, "w") as f:
        f.write(run_id)
    return run_id


def check_resumable(job: JobConfig, name: str) -> int:
    """Ray Train resumes a run from the latest checkpoint under ``<storage_path>/<name>``: refuse, before any worker
    starts, when this job describes another network than the one that checkpoint holds. Returns the epochs that
    checkpoint holds (0 without one)."""
    fs, base = storage_filesystem(job.train.storage_path)
    latest = checkpoints.latest(fs, posixpath.join(base, name))
    if latest is None:
        return 0
    meta = checkpoints.read_meta(latest, fs)
    diffs = checkpoints.job_differences(JobConfig.model_validate(meta["job"]), job)
    if diffs:
        raise checkpoints.CheckpointError(
            f"{latest}: run {name!r} would resume from this checkpoint, trained by a different job ("
            f"{'; '.join(diffs)}); use the same settings to resume, or another train.name to start afresh")
    return int(meta["epoch"])


def trained_run(job: JobConfig, name: str) -> ray.train.Result:
    """The result of a run whose checkpoints already hold every planned epoch (the same job submitted again, as
    after an MLflow outage), read from its storage: no worker group is started only to find nothing to train."""
    print(f"[restore] {name}: its checkpoints hold all {job.train.epochs} epoch(s), nothing to train", flush=True)
    fs, path = storage(job)
    return ray.train.Result.from_path(posixpath.join(path, name), storage_filesystem=fs)


def _run_id(job: JobConfig, name: str, parent_run_id: str | None) -> str | None:
    if not job.tracking.enabled:
        return None
    return recorded_run(job.tracking, job.train.storage_path, name, parent_run_id,
                        tags={"mode": job.train.mode, "target": job.train.target or ""})


def build_trainer(job: JobConfig, name: str, run_id: str | None, callbacks: list | None = None,
                  stream: pipeline.DataStream | None = None) -> TorchTrainer:
    domains = [load_domains()[n] for n in job.domain_names]
    data = job.training_data()
    stream = stream or pipeline.DataStream(data, domains)
    pipeline.set_verbose(job.train.verbose)
    if not job.train.verbose:
        # Ray Train sends a worker's print() to stdout and to its logger, which prints it again; without the patch
        # each progress line appears once. Ray propagates this variable from the driver to the workers.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    datasets = {"train": stream.train_dataset(), "val": stream.val_dataset()}
    world = job.train.num_workers
    steps = max(1, stream.epoch_size // (world * data.batch_size))
    fs, path = storage(job)
    resources = {"CPU": job.train.cpus_per_worker, **({"GPU": 1} if job.train.use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job.model_dump(mode="json"), "mlflow_run_id": run_id, "steps_per_epoch": steps,
                           "started_at": time.time(),
                           "unsent_path": checkpoints.unsent_path(job.train.storage_path, name)},
        scaling_config=ray.train.ScalingConfig(num_workers=world, use_gpu=job.train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.train.num_to_keep,
                                                         checkpoint_score_attribute=job.objective,
                                                         checkpoint_score_order="max"),
            failure_config=ray.train.FailureConfig(max_failures=job.train.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if job.train.verbose else "WARNING")),
        datasets=datasets, dataset_config=ray.train.DataConfig(execution_options=ingest_options(data.preserve_order)),
    )


def ingest_options(preserve_order: bool) -> dict[str, ray.data.ExecutionOptions]:
    """Ray Data's options for the datasets Ray Train feeds its workers. Ray Train replaces a dataset's options with
    the driver's defaults unless given its own; those defaults (DataConfig.default_ingest_options) set the
    deprecated ``exclude_resources``, and Ray 2.60 then warns on the job's console from the driver and from the
    dataset manager. These are the same limits without it; only training's order follows ``data.preserve_order``
    (validation sums confusion matrices, whose order does not matter)."""
    current = ray.data.DataContext.get_current().execution_options

    def options(ordered: bool) -> ray.data.ExecutionOptions:
        return ray.data.ExecutionOptions(resource_limits=current.resource_limits, preserve_order=ordered,
                                         verbose_progress=current.verbose_progress)
    return {"train": options(preserve_order), "val": options(current.preserve_order)}


def run_name(job: JobConfig) -> str:
    """The run's folder under storage_path (Ray Train resumes a folder that exists) and MLflow run name. A smoke
    test gets its own, so it never resumes, nor is resumed by, the real job's run."""
    name = job.train.name or (f"{job.train.mode}-{job.train.target}" if job.train.target else job.train.mode)
    return f"{name}-smoke" if job.train.smoke_test and not job.train.name else name


def absolute_paths(job: JobConfig) -> JobConfig:
    """Relative local paths are relative to where the driver runs; Ray workers run elsewhere, so resolve them here
    (shard roots, checkpoint storage, a sqlite tracking store, the artifact root)."""
    uri = job.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return job.model_copy(update={
        "data": job.data.absolute(),
        "train": job.train.model_copy(update={"storage_path": local_absolute(job.train.storage_path)}),
        "tracking": job.tracking.model_copy(update={
            "tracking_uri": uri, "artifact_location": local_absolute(job.tracking.artifact_location)})})


def fit(job: JobConfig, name: str | None = None, parent_run_id: str | None = None, callbacks: list | None = None,
        register: bool = True, alias: str | None = None, out_dir: str | None = None,
        log_model: bool = True) -> FitResult:
    """Train, then log the best checkpoint's pictures and model to MLflow (and register it) and close the run.

    ``log_model=False`` (sweep trials) stops after training and leaves the run open: the sweep logs the model of
    its best trial only, and a trial ASHA stops is killed before it could get here anyway."""
    job = absolute_paths(job)
    name = name or run_name(job)
    if register and log_model and job.tracking.enabled:
        registry.check_job(job)  # hours of training must not end in a refused registration
    # Nothing left to train: no workers, unless callbacks (a sweep trial's reports to Tune) wait for a training run.
    trained = check_resumable(job, name) >= job.train.epochs and not callbacks
    # Reads every manifest: a missing or wrong data root fails here, before an MLflow run is opened.
    stream = pipeline.DataStream(job.training_data(), [load_domains()[n] for n in job.domain_names])
    run_id = _run_id(job, name, parent_run_id)
    try:
        result = trained_run(job, name) if trained else build_trainer(job, name, run_id, callbacks, stream).fit()
        if result.error is not None:  # failures beyond max_failures: do not register a half-trained model
            raise result.error
    except Exception:
        if run_id:
            tracking.end_run(job.tracking, run_id, "FAILED")
        raise
    best = _best_checkpoint(result, job.objective)
    unsent = tracking_outage(job, name, run_id, best.path)
    skipped = stream.bad_records()
    report_skipped(job, name, None if unsent else run_id, skipped, int((result.metrics or {}).get("epoch", 0)))
    history = list(result.return_value or [])
    with best.as_directory() as d:
        version = (finalize(job, Path(d), run_id, register, alias, out_dir, source=best.path, history=history)
                   if log_model and not unsent else None)
        meta = checkpoints.read_meta(Path(d))
    return FitResult(job, meta["metrics"], dict(result.metrics or {}), best.path, run_id, version,
                     len({r["source"] for r in skipped}), history, unsent)


def send_kept(cfg: TrackingConfig, run_id: str, path: str) -> list[dict[str, Any]]:
    """Send the values a run kept at ``path`` while MLflow was away; returns what is still unsent (and kept)."""
    outbox = tracked_outbox(cfg, run_id, path)
    if outbox.unsent:
        outbox.send()
    return outbox.unsent


def tracking_outage(job: JobConfig, name: str, run_id: str | None, best: str) -> str | None:
    """After training: when MLflow still does not answer (rank 0 waited ``tracking.outage_wait_s`` for it before it
    kept its unsent metrics beside the checkpoints), the job finishes without logging or registering its model and
    says so, naming the kept file; None when the run can be finished normally."""
    if not run_id:
        return None
    path = checkpoints.unsent_path(job.train.storage_path, name)
    kept = send_kept(job.tracking, run_id, path)  # one more try: the server may be back since rank 0 gave up
    if not kept and tracking.answers(job.tracking, run_id, job.tracking.outage_wait_s):
        return None
    print(f"[tracking] {job.tracking.tracking_uri} does not answer: MLflow run {run_id} stays open with "
          f"{len(kept)} value(s) kept in {path}; its pictures and model were not logged and nothing was registered. "
          f"The checkpoints are intact (best: {best}). Run the same job again once the server answers: it trains "
          f"no further, sends the kept values, logs and registers the model.", flush=True)
    return path


SKIPPED_FILE = "skipped_records.csv"


def report_skipped(job: JobConfig, name: str, run_id: str | None, records: list[dict], epoch: int) -> None:
    """Records dropped under ``on_bad_record: skip`` are counted and listed, never lost: the run gets the count
    (``data/skipped_records``, distinct records) and every occurrence (epoch, domain, sample, source, reason) as
    ``data/skipped_records.csv``; the console says so. When MLflow does not answer (``run_id`` None with tracking
    on), the list is kept beside the checkpoints instead, and the same job run again sends it."""
    fs, base = storage_filesystem(job.train.storage_path)
    kept = posixpath.join(base, name, SKIPPED_FILE)
    earlier = fs.exists(kept)  # left by an earlier attempt that could not reach MLflow
    if earlier:
        with fs.open(kept, "r", newline="") as f:
            records = list(csv.DictReader(f)) + list(records)
    if not records:
        return
    distinct = len({r["source"] for r in records})
    said = f"[data] skipped {distinct} bad record(s), {len(records)} time(s) over the epochs (on_bad_record: skip)"
    if run_id is None and job.tracking.enabled:
        fs.makedirs(posixpath.dirname(kept), exist_ok=True)
        with fs.open(kept, "w", newline="") as f:
            _write_skipped(f, records)
        print(f"{said}; listed in {kept} until MLflow answers", flush=True)
        return
    print(said + (f"; listed in the MLflow run's data/{SKIPPED_FILE}" if run_id else ""), flush=True)
    if not run_id:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SKIPPED_FILE
        with path.open("w", newline="") as f:
            _write_skipped(f, records)
        tracking.log_artifacts(job.tracking, run_id, [path], "data")
    tracking.log_metrics(job.tracking, run_id, {"data/skipped_records": distinct}, step=epoch)
    if earlier:
        fs.rm(kept)


def _write_skipped(f, records: list[dict]) -> None:
    writer = csv.DictWriter(f, ["stream", "epoch", "domain", "sample_id", "source", "reason"])
    writer.writeheader()
    writer.writerows(records)


def _best_checkpoint(result, objective: str):
    scored = [(m.get(objective, -math.inf), c) for c, m in (result.best_checkpoints or [])]
    if not scored:
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
        return result.checkpoint
    return max(scored, key=lambda t: t[0])[1]


def finalize(job: JobConfig, ckpt: Path, run_id: str | None, register: bool, alias: str | None,
             out_dir: str | None, source: str | None = None, history: list[dict] | None = None) -> str | None:
    """Pictures of the best checkpoint (confusion matrices, learned vs true associations), then the model: logged,
    registered with its description and tags, and given ``alias`` (default challenger; a name's first version
    becomes champion through promotion). ``source``: the checkpoint's storage path, for the version's tags;
    ``history``: the epochs' metrics, for the time-to-accuracy curve."""
    _, model, meta = checkpoints.load_model(ckpt)
    out = Path(out_dir or tempfile.mkdtemp(prefix="sstparse-artifacts-"))
    pictures = artifact_pictures(job, model, checkpoints.read_eval(ckpt), out)
    curve = plots.time_to_accuracy_figure(history or [], job.domain_names, out / "miou_vs_minutes.png")
    pictures += [curve] if curve else []
    if not run_id:
        return None
    tracking.log_artifacts(job.tracking, run_id, pictures, "plots")
    tracking.log_artifacts(job.tracking, run_id, [ckpt / checkpoints.META_FILE], "checkpoint")
    name = job.registered_name if register else None
    parser = inference_model(model)  # the heads it serves: all, or a dedicated model's target
    layout = registry.layout_of([load_domains()[n] for n in parser.domain_names])
    if name:
        registry.check_layout(job.tracking, name, layout, job.tracking.allow_layout_change)
    version = export.log_pyfunc_model(job.tracking, run_id, parser, register_as=name)
    if version:
        card = registry.version_card(job, layout, meta, run_id, source or str(ckpt), name)
        registry.describe(job.tracking, name, version, card, layout)
        decision = settle_new_version(job.tracking, name, version, {d: job.data.root_of(d) for d in layout},
                                      job.data.storage_options, alias or CHALLENGER,
                                      skip_bad=job.data.on_bad_record == "skip")
        if decision:
            print(decision.summary(), flush=True)
    tracking.end_run(job.tracking, run_id)
    return version


def artifact_pictures(job: JobConfig, model, evals, out: Path) -> list[Path]:
    domains = load_domains()
    paths = [plots.confusion_figure(evals[f"confusion/{n}"], domains[n], out / f"confusion_{n}.png")
             for n in model.domain_names]
    for key in (k for k in evals.files if k.startswith("assoc/")):
        _, a, b = key.split("/")
        true = None
        if domains[a].is_synthetic and domains[b].is_synthetic:
            # M(a->b) is fitted on b's labelled images: its truth is taken over b's atoms.
            hist = read_manifest(job.data.root_of(b), b, job.data.storage_options)["atom_histogram"]["train"]
            true = true_association(domains[a], domains[b], np.asarray(hist))
        paths.append(plots.association_figure(evals[key], true, domains[a], domains[b],
                                              out / f"association_{a}_to_{b}.png"))
    for name in model.domain_names:
        paths.append(prediction_overlays(job, model, domains[name], out / f"predictions_{name}.png"))
    return paths


@torch.no_grad()
def prediction_overlays(job: JobConfig, model, domain, path: Path, n: int = 4) -> Path:
    """Image | ground truth | prediction for the first validation images of a domain."""
    rows = []
    for image, label in samples(job.data.root_of(domain.name), domain.name, "val", n, job.data.storage_options,
                                skip_bad=job.data.on_bad_record == "skip"):
        x = torch.from_numpy(normalize(image))[None]
        pred = model.parser(x, domain.name).argmax(1)[0].numpy().astype(np.uint8)
        rows.append((image, label, pred))
    return plots.overlay_grid(rows, domain, path)
