"""Entry for `jobs/train.py` and `sstparse train`: load the YAML, apply overrides, connect to Ray, fit, print.

Under `ray job submit` the driver already runs inside the cluster (RAY_ADDRESS is set) and ``ray.init()``
connects to it; run directly, it starts a local Ray instance sized to this machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray

from sstparse.config import load_yaml
from sstparse.train.config import JobConfig
from sstparse.train.trainer import FitResult, fit

# Small enough to finish in about a minute on a laptop CPU; the point is to exercise every stage.
SMOKE_OVERRIDES = [
    "train.epochs=1", "train.num_workers=1", "train.cpus_per_worker=0.5", "data.epoch_size=16",
    "data.batch_size=4", "data.crop_size=96", "model.backbone=tiny", "train.smoke_test=true",
]


def load_job(path: str | Path, overrides: list[str] | None = None, smoke_test: bool = False) -> JobConfig:
    return load_yaml(JobConfig, path, (SMOKE_OVERRIDES if smoke_test else []) + list(overrides or []))


def connect(num_cpus: int | None = None) -> None:
    """Join the cluster `ray job submit` runs us in, or start a local instance (dashboard only on 127.0.0.1).

    The local dashboard is not a nicety: it serves the state API through which Ray Train's placement-group
    cleaner sees that a Tune trial stopped by ASHA took its training controller with it; without it those
    workers' CPUs stay reserved and later trials wait for ever. ``num_cpus`` sizes a local instance only."""
    if ray.is_initialized():
        return
    # Ray Data's INFO lines ("Dataset ... execution finished", per dataset and epoch) come from its own processes,
    # which read this at start: a local instance inherits it from here (a cluster's nodes from their environment;
    # cluster/local/common.sh sets it). Export RAY_DATA_LOG_LEVEL=INFO to see them.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    # MLflow's download bars (registration, promotion) are two more lines per model; export it =true to see them.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if os.environ.get("RAY_ADDRESS"):
        ctx = ray.init()
    else:
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
    # The quiet console (train.verbose false) hides Ray's INFO lines and progress bars, not their files.
    print(f"[sstparse] full logs: {ctx.address_info['session_dir']}/logs (each worker's output; Ray Train's own "
          f"under train/); --verbose prints Ray's lines here too", flush=True)


def run(path: str | Path, overrides: list[str] | None = None, smoke_test: bool = False,
        out_dir: str | None = None, verbose: bool = False) -> FitResult:
    job = load_job(path, list(overrides or []) + (["train.verbose=true"] if verbose else []), smoke_test)
    connect()
    result = fit(job, out_dir=out_dir)
    print(format_result(result))
    return result


def format_result(result: FitResult) -> str:
    m = result.metrics
    lines = [f"{'domain':<20} {'mIoU':>7} {'pixel acc':>10} {'mean acc':>9}"]
    for name in result.job.domain_names:
        lines.append(f"{name:<20} {100 * m[f'val/{name}/miou']:6.1f}% {100 * m[f'val/{name}/pixel_acc']:9.1f}% "
                     f"{100 * m[f'val/{name}/mean_acc']:8.1f}%")
    lines.append(f"{'mean':<20} {100 * m['val/mean_miou']:6.1f}%   (TTA {m.get('val/tta', '?')}, "
                 f"epoch {m.get('epoch')})")
    if result.registered_version:
        lines.append(f"registered {result.job.registered_name} version {result.registered_version} "
                     f"(MLflow run {result.run_id})")
    if result.unsent_metrics:
        lines.append(f"MLflow did not answer: the values it did not take are in {result.unsent_metrics}; nothing "
                     f"was registered (run the same job again once it answers)")
    if result.skipped_records:
        where = ("beside the checkpoints until MLflow answers" if result.unsent_metrics else
                 "in the run's data/skipped_records.csv")
        lines.append(f"skipped {result.skipped_records} bad record(s) (on_bad_record: skip; listed {where})")
    return "\n".join(lines)
