"""A sweep's config: one YAML file (jobs/configs/sweep*.yaml) -> :class:`SweepConfig`.

The sweep names a job YAML (relative to the sweep file) and says which of its knobs to search. Everything else
comes from that job, so a sweep never repeats the data, model or scaling settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sstparse.config import ConfigError, StrictModel, load_yaml
from sstparse.train.config import JobConfig


class Range(StrictModel):
    """Search between ``low`` and ``high`` (uniformly, or uniformly in log space)."""

    low: float = Field(ge=0, description="Lower bound (> 0 when log).")
    high: float = Field(description="Upper bound (> low).")
    log: bool = Field(False, description="Sample log-uniformly (learning rates, loss weights spanning decades).")

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.high <= self.low:
            raise ValueError(f"high ({self.high}) must be greater than low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError("low must be > 0 for a log range")
        return self


class Fixed(StrictModel):
    """Not searched: every trial uses this value."""

    fixed: float = Field(ge=0, description="The value.")


Param = Range | Fixed


def _knob(job_field: str, description: str) -> Any:
    """A searchable knob: the job field it sets (``section.field``) is declared here and nowhere else."""
    return Field(None, description=f"{job_field}: {description}", json_schema_extra={"job_field": job_field})


class SearchSpace(StrictModel):
    """What Tune searches. A knob left out keeps the job's value. Adding a knob is one line here."""

    lambda_mse: Param | None = _knob("sst.lambda_mse", "intra-domain enhancement weight.")
    lambda_mst: Param | None = _knob("sst.lambda_mst", "cross-domain transfer weight.")
    lambda_kd: Param | None = _knob("sst.lambda_kd", "distillation weight (universal or dedicated mode).")
    lambda_transfer: Param | None = _knob("sst.lambda_transfer", "label transfer weight.")
    temperature: Param | None = _knob("sst.temperature", "distillation temperature T.")
    lr: Param | None = _knob("optim.lr", "peak learning rate.")
    domain_mix: Param | None = Field(
        None, description="One weight per training domain (those with weight > 0 in the job), drawn from this "
                          "range and normalised to sum to 1; a domain with weight 0 stays out of training.")


# Knob name -> (job section, field), read from SearchSpace's declarations (domain_mix is apart: one weight per
# training domain).
TARGETS: dict[str, tuple[str, str]] = {
    name: tuple(f.json_schema_extra["job_field"].split("."))  # type: ignore[index, union-attr]
    for name, f in SearchSpace.model_fields.items() if f.json_schema_extra}


class SearchConfig(StrictModel):
    """The searcher: Optuna TPE behind a concurrency limit."""

    num_samples: int = Field(8, ge=1, description="Trials in the sweep.")
    max_concurrent: int = Field(2, ge=1, description="Trials running at once (ConcurrencyLimiter).")
    seed: int = Field(0, description="TPE sampler seed.")
    n_startup_trials: int = Field(4, ge=1, description="Random trials before TPE models the objective.")


class SchedulerConfig(StrictModel):
    """Early stopping of poor trials."""

    kind: Literal["asha", "none"] = Field("asha", description="ASHA, or run every trial for train.epochs.")
    grace_period: int = Field(1, ge=1, description="Epochs every trial gets before it can be stopped.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/reduction_factor of trials per rung.")


class SweepConfig(StrictModel):
    """One Tune sweep over a training job."""

    job: str = Field(description="The job YAML to tune, relative to this file (e.g. universal.yaml).")
    job_overrides: list[str] = Field([], description="key=value overrides applied to that job (e.g. train.epochs=4).")
    name: str = Field("sweep", description="Sweep name: the Tune experiment folder and the MLflow parent run. "
                                           "Reusing it with the same storage restores the sweep.")
    storage_path: str | None = Field(None, description="Where the sweep lives (local or s3://); default: the "
                                                       "job's train.storage_path.")
    space: SearchSpace = SearchSpace()
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    trial_max_failures: int = Field(
        1, ge=0, description="Times Tune starts a failed trial again (0: never). A trial whose node is lost (a "
                             "preempted machine) fails with it; started again once a node has room, its training "
                             "resumes from its last checkpoint in the same MLflow run. A trial that raises (bad data) "
                             "is started again too, and fails the same way.")
    register_alias: str | None = Field(
        "challenger", description="Register the best trial's model under the job's model name with this alias "
                                  "(None: do not register). With 'challenger' and no champion yet under the name, "
                                  "the model is promoted at once (sstparse.promote).")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``job.train.epochs=2`` goes to the job (prefix removed); anything else to the sweep."""
    sweep, job = [], []
    for o in overrides:
        (job if o.startswith("job.") else sweep).append(o[4:] if o.startswith("job.") else o)
    return sweep, job


def load_sweep(path: str | Path, overrides: list[str] | None = None,
               job_smoke_overrides: list[str] | None = None) -> tuple[SweepConfig, JobConfig]:
    """Load the sweep and the job it names; job overrides apply after the sweep's own ``job_overrides``."""
    sweep_overrides, job_overrides = split_overrides(list(overrides or []))
    sweep = load_yaml(SweepConfig, path, sweep_overrides)
    job_path = (Path(path).parent / sweep.job)
    if not job_path.is_file():
        raise ConfigError(f"{path}: job: {sweep.job!r} not found (looked for {job_path})")
    job = load_yaml(JobConfig, job_path, sweep.job_overrides + list(job_smoke_overrides or []) + job_overrides)
    if sweep.space.lambda_kd is not None and (job.train.mode == "single" or not job.sst.enabled):
        raise ConfigError(f"{path}: space.lambda_kd: distillation needs SST and several domains, the job is "
                          f"{job.train.mode} with sst.enabled={job.sst.enabled}")
    if job.train.val_every != 1:
        raise ConfigError(f"{path}: job.train.val_every: must be 1 in a sweep (the scheduler compares the "
                          f"objective every epoch), got {job.train.val_every}")
    return sweep, job
