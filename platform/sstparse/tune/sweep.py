"""The sweep tier: a Ray Tune Tuner over the training driver.

Each trial is a function that applies its sampled parameters to the job and calls :func:`sstparse.train.trainer.fit`
(a TorchTrainer run) with Tune's report callback, so every epoch's validation scores reach Tune (ASHA stops poor
trials between epochs). Optuna's TPE proposes parameters behind a ConcurrencyLimiter.

Resuming: the sweep lives at ``<storage>/<name>``; running the same sweep again restores it (``Tuner.restore``):
finished trials are kept, unfinished ones restart under the same trial id, and because a trial's TorchTrainer is
named after its trial id, Ray Train resumes it from its last checkpoint and it appends to its own MLflow run.

MLflow: one parent run per sweep (its id recorded beside the sweep), one nested child run per trial, named from
the trial id; the parent gets the results table and plots; the best finished trial's model is registered under
the job's model name with the alias ``challenger``.
"""

from __future__ import annotations

import math
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray.train
import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sstparse import plots, registry, tracking
from sstparse.config import ConfigError, validate
from sstparse.train.config import JobConfig
from sstparse.train import checkpoints
from sstparse.train.trainer import (absolute_paths, finalize, fit, recorded_run, recorded_run_id, send_kept,
                                   storage_at)
from sstparse.tune.config import TARGETS, Range, SweepConfig

MIX = "mix."


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]     # one per trial: trial_id, params, best objective, epochs, status, run_id
    objective: str
    best: dict[str, Any] | None    # the best finished trial's row
    parent_run_id: str | None
    registered_version: str | None
    alias: str | None = None
    interrupted: bool = False      # stopped by a signal before every trial finished; resume by running it again

    @property
    def trial_epochs(self) -> int:
        return sum(r["epochs"] for r in self.rows)


def training_domains(job: JobConfig) -> list[str]:
    return [d for d, w in job.training_data().domain_mix.items() if w > 0]


def searched(sweep: SweepConfig, job: JobConfig) -> dict[str, Range]:
    """Tune parameter name -> range, for every knob that is searched (not fixed, not left out)."""
    out = {k: v for k in TARGETS if isinstance(v := getattr(sweep.space, k), Range)}
    if isinstance(sweep.space.domain_mix, Range):
        out.update({MIX + d: sweep.space.domain_mix for d in training_domains(job)})
    return out


def param_space(sweep: SweepConfig, job: JobConfig) -> dict[str, Any]:
    space = {k: (ray.tune.loguniform if r.log else ray.tune.uniform)(r.low, r.high)
             for k, r in searched(sweep, job).items()}
    if not space:
        raise ConfigError(f"sweep {sweep.name}: space: nothing to search (every knob is fixed or left out)")
    return space


def fixed_params(sweep: SweepConfig, job: JobConfig) -> dict[str, float]:
    out = {k: v.fixed for k in TARGETS if (v := getattr(sweep.space, k)) is not None and not isinstance(v, Range)}
    mix = sweep.space.domain_mix
    if mix is not None and not isinstance(mix, Range):
        out.update({MIX + d: mix.fixed for d in training_domains(job)})
    return out


def apply_params(job: JobConfig, params: dict[str, float]) -> JobConfig:
    """The job a trial trains: searched and fixed values written into their sections; mix weights normalised."""
    data = job.model_dump(mode="json")
    for key, value in params.items():
        if key in TARGETS:
            section, field = TARGETS[key]
            data[section][field] = value
    mix = {k[len(MIX):]: v for k, v in params.items() if k.startswith(MIX)}
    if mix:
        total = sum(mix.values())
        if total <= 0:
            raise ConfigError(f"space.domain_mix: weights {mix} sum to {total}; need a positive sum")
        # Keep the job's domain order: it is the head order.
        data["data"]["domain_mix"] = {d: mix[d] / total if d in mix else w for d, w in job.data.domain_mix.items()}
    return validate(JobConfig, data, f"trial parameters {params}")


def _trial(config: dict[str, Any], job: dict, fixed: dict[str, float], parent_run_id: str | None,
           train_storage: str) -> None:
    """One Tune trial: a full training run named after the trial id."""
    trial_job = apply_params(JobConfig.model_validate(job), {**fixed, **config})
    trial_id = ray.tune.get_context().get_trial_id()
    trial_job = trial_job.model_copy(update={"train": trial_job.train.model_copy(
        update={"storage_path": train_storage, "name": trial_id})})
    fit(trial_job, name=trial_id, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()], log_model=False)


def sweep_storage(sweep: SweepConfig, job: JobConfig) -> str:
    return sweep.storage_path or job.train.storage_path


def trials_folder(sweep: SweepConfig, job: JobConfig) -> str:
    """Where the trials' training runs live: each trial's checkpoints and MLflow run marker under its trial id."""
    return posixpath.join(sweep_storage(sweep, job), sweep.name, "train")


def build_tuner(sweep: SweepConfig, job: JobConfig, parent_run_id: str | None,
                callbacks: list | None = None) -> ray.tune.Tuner:
    """A new Tuner, or the interrupted one restored when ``<storage>/<name>`` holds a sweep."""
    base = sweep_storage(sweep, job)
    fs, path = storage_at(base)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(_trial, job=job.model_dump(mode="json"), fixed=fixed_params(sweep, job),
                                 parent_run_id=parent_run_id,
                                 train_storage=trials_folder(sweep, job)),
        # The trial function only drives a TorchTrainer, whose workers hold the real resources.
        {"cpu": 0.01})
    experiment = posixpath.join(path, sweep.name)
    if ray.tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        print(f"[sweep] restoring {experiment}", flush=True)
        return ray.tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                      storage_filesystem=fs)
    return ray.tune.Tuner(trainable, param_space=param_space(sweep, job), tune_config=tune_config(sweep, job),
                          run_config=run_config(sweep, path, fs, callbacks))


def run_config(sweep: SweepConfig, path: str, fs, callbacks: list | None) -> ray.tune.RunConfig:
    """The sweep's folder, and trials started again after a failure (a lost node takes its trials with it)."""
    return ray.tune.RunConfig(name=sweep.name, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
                              failure_config=ray.tune.FailureConfig(max_failures=sweep.trial_max_failures))


def tune_config(sweep: SweepConfig, job: JobConfig) -> ray.tune.TuneConfig:
    """Optuna TPE behind the concurrency limit, ASHA (or FIFO) on epochs, both on the job's objective (the mean mIoU
    in universal mode, the target's mIoU otherwise)."""
    sampler = optuna.samplers.TPESampler(seed=sweep.search.seed, n_startup_trials=sweep.search.n_startup_trials)
    searcher = ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=sweep.search.max_concurrent)
    scheduler = FIFOScheduler()
    if sweep.scheduler.kind == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=job.train.epochs, grace_period=sweep.scheduler.grace_period,
                                  reduction_factor=sweep.scheduler.reduction_factor)
    return ray.tune.TuneConfig(metric=job.objective, mode="max", search_alg=searcher, scheduler=scheduler,
                               num_samples=sweep.search.num_samples)


def run_sweep(sweep: SweepConfig, job: JobConfig, callbacks: list | None = None,
              out_dir: str | None = None) -> SweepResult:
    """Run (or resume) the sweep, then summarise it in MLflow and register the best model as the challenger."""
    job = absolute_paths(job)
    base = sweep_storage(sweep, job)
    if "://" not in base:
        base = str(Path(base).resolve())
    sweep = sweep.model_copy(update={"storage_path": base})
    parent = None
    if job.tracking.enabled and sweep.register_alias:
        registry.check_job(job)
    if job.tracking.enabled:
        parent = recorded_run(job.tracking, base, sweep.name, tags={"sweep": "parent", "objective": job.objective})
        tracking.log_params(job.tracking, parent, {"sweep": sweep.model_dump(mode="json")})
    try:
        grid = build_tuner(sweep, job, parent, callbacks).fit()
    except Exception:
        if parent:
            tracking.end_run(job.tracking, parent, "FAILED")
        raise
    rows = trial_rows(grid, sweep, job)
    if len(grid) < sweep.search.num_samples or grid.num_terminated + grid.num_errors < len(grid):
        # Ctrl-C (or SIGUSR1): Tune saved its state; leave the parent open so the resumed sweep completes it.
        print(f"[sweep] interrupted after {grid.num_terminated} of {sweep.search.num_samples} trials; run the "
              f"same sweep again to resume it", flush=True)
        return SweepResult(rows, job.objective, None, parent, None, sweep.register_alias, interrupted=True)
    return summarize(rows, sweep, job, parent, out_dir)


def trial_rows(grid, sweep: SweepConfig, job: JobConfig) -> list[dict[str, Any]]:
    """One row per trial with its best objective over epochs (the checkpoint fit() keeps is the best one too)."""
    objective, train_storage = job.objective, trials_folder(sweep, job)
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        scored = history.dropna(subset=[objective]) if history is not None and objective in history else None
        best = scored.loc[scored[objective].idxmax()] if scored is not None and len(scored) else None
        epochs = int(history["epoch"].max()) if history is not None and "epoch" in history else 0
        status = "error" if result.error else ("completed" if epochs >= job.train.epochs else "stopped early")
        rows.append({"trial_id": trial_id, **{k: result.config.get(k) for k in sorted(result.config)},
                     objective: math.nan if best is None else float(best[objective]), "epochs": epochs,
                     "status": status, "run_id": recorded_run_id(train_storage, trial_id),
                     # TuneReportCallback adds the path of the checkpoint reported with these metrics
                     "checkpoint": None if best is None else best.get("checkpoint_path")})
    return sorted(rows, key=lambda r: r["trial_id"])


def summarize(rows: list[dict[str, Any]], sweep: SweepConfig, job: JobConfig, parent: str | None,
              out_dir: str | None = None) -> SweepResult:
    objective = job.objective
    finished = [r for r in rows if r["status"] == "completed" and math.isfinite(r[objective]) and r["checkpoint"]]
    best = max(finished, key=lambda r: r[objective], default=None)
    version = None
    out = Path(out_dir or tempfile.mkdtemp(prefix="sstparse-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    table = write_table(rows, out / "trials.csv")
    if parent and not tracking_answers(rows, sweep, job, parent, table):
        return SweepResult(rows, objective, best, parent, None, sweep.register_alias)
    if parent:
        logs = {k: r.log for k, r in searched(sweep, job).items()}
        pictures = plots.sweep_figures(rows, logs, objective, out)
        tracking.log_artifacts(job.tracking, parent, [table, *pictures], "sweep")
        tracking.log_metrics(job.tracking, parent, {
            "sweep/trials": len(rows), "sweep/completed": len(finished),
            "sweep/trial_epochs": sum(r["epochs"] for r in rows),
            **({f"best/{objective}": best[objective]} if best else {})}, step=0)
        if best:
            tracking.set_tags(job.tracking, parent, {"best_trial": best["trial_id"], "best_run_id": best["run_id"]})
            version = log_best(best, sweep, job, out / "best")
        close_child_runs(rows, best, job)
        tracking.end_run(job.tracking, parent)
    return SweepResult(rows, objective, best, parent, version, sweep.register_alias)


def tracking_answers(rows: list[dict[str, Any]], sweep: SweepConfig, job: JobConfig, parent: str,
                     table: Path) -> bool:
    """Before the summary: the values trials kept while MLflow was away are sent (each trial's
    ``unsent_metrics.jsonl``, beside its checkpoints); when the server does not answer within
    ``tracking.outage_wait_s``, the sweep ends without its summary, saying what is where."""
    train_storage = trials_folder(sweep, job)
    left = []
    for r in rows:
        path = checkpoints.unsent_path(train_storage, r["trial_id"])
        if r["run_id"] and send_kept(job.tracking, r["run_id"], path):
            left.append(path)
    if not left and tracking.answers(job.tracking, parent, job.tracking.outage_wait_s):
        return True
    print(f"[sweep] {job.tracking.tracking_uri} does not answer: the sweep's MLflow run {parent} stays open and "
          f"nothing was registered; the trials' table is {table}, their checkpoints are under {train_storage}"
          + (f", values MLflow did not take are kept in {', '.join(left)}" if left else ""), flush=True)
    return False


def log_best(best: dict[str, Any], sweep: SweepConfig, job: JobConfig, out: Path) -> str | None:
    """The best trial's pictures and model go to its child run; the model is registered with the sweep's alias.
    Done once, here, rather than in every trial: most trials' models would never be looked at."""
    # The reported path is relative to the storage filesystem (a bare bucket/key on S3).
    fs, _ = storage_at(sweep.storage_path)
    checkpoint = ray.train.Checkpoint(best["checkpoint"], filesystem=fs)
    with checkpoint.as_directory() as d:
        trial_job = checkpoints.read_job(Path(d))
        # A checkpoint's job has its credentials redacted; reading shards for the pictures needs the real ones.
        trial_job = trial_job.model_copy(update={"data": trial_job.data.model_copy(
            update={"storage_options": job.data.storage_options})})
        return finalize(trial_job, Path(d), best["run_id"], register=sweep.register_alias is not None,
                        alias=sweep.register_alias, out_dir=str(out), source=best["checkpoint"])


def close_child_runs(rows: list[dict[str, Any]], best: dict[str, Any] | None, job: JobConfig) -> None:
    """Completed trials end FINISHED, those ASHA stopped KILLED, errored ones FAILED (tagged with why);
    finalize closed the best one. The sweep's word is final: Tune stops a trial as soon as ASHA decides (at max_t
    too, right after the last report), and the trial's fit() may then have marked its own run FAILED."""
    status = {"completed": "FINISHED", "stopped early": "KILLED", "error": "FAILED"}
    for r in rows:
        if r["run_id"] and r is not best and tracking.run_status(job.tracking, r["run_id"]) != status[r["status"]]:
            tracking.set_tags(job.tracking, r["run_id"], {"sweep.status": r["status"]})
            tracking.end_run(job.tracking, r["run_id"], status[r["status"]])


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def row_params(row: dict[str, Any]) -> dict[str, float]:
    """The searched parameters of a results row."""
    return {k: v for k, v in row.items() if k in TARGETS or k.startswith(MIX)}


def format_sweep(result: SweepResult) -> str:
    o = result.objective
    lines = [f"{len(result.rows)} trials, {result.trial_epochs} trial-epochs"]
    for r in result.rows:
        params = " ".join(f"{k}={v:.3g}" for k, v in row_params(r).items())
        lines.append(f"  {r['trial_id']:<14} {o} {100 * r[o]:5.1f}%  {r['epochs']} ep  {r['status']:<13} {params}")
    if result.best:
        lines.append(f"best: {result.best['trial_id']} {o} {100 * result.best[o]:.1f}%")
    if result.registered_version:
        lines.append(f"registered version {result.registered_version} (alias {result.alias})")
    return "\n".join(lines)
