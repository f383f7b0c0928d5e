"""Entry for `jobs/tune.py`: load the sweep and its job, connect to Ray, run (or resume) the sweep, print."""

from __future__ import annotations

import math
import os
from pathlib import Path

from sstparse.train.job import SMOKE_OVERRIDES, connect
from sstparse.train.config import JobConfig
from sstparse.tune.config import SweepConfig, load_sweep
from sstparse.tune.sweep import SweepResult, format_sweep, run_sweep

# Two one-epoch trials, one at a time: exercises search, reporting, MLflow and registration in about a minute.
SMOKE_SWEEP_OVERRIDES = ["search.num_samples=2", "search.max_concurrent=1", "search.n_startup_trials=2"]


def local_cpus(sweep: SweepConfig, job: JobConfig) -> int:
    """Logical CPUs for a local Ray instance: every concurrent trial's workers plus two for Ray Data's read
    tasks (which take a whole CPU each); fewer and the data stream waits for ever behind the trials' workers."""
    needed = sweep.search.max_concurrent * job.train.num_workers * job.train.cpus_per_worker + 2
    return max(os.cpu_count() or 1, math.ceil(needed))


def run(path: str | Path, overrides: list[str] | None = None, smoke_test: bool = False,
        out_dir: str | None = None, verbose: bool = False) -> SweepResult:
    sweep_overrides = (SMOKE_SWEEP_OVERRIDES if smoke_test else []) + list(overrides or []) + \
        (["job.train.verbose=true"] if verbose else [])
    sweep, job = load_sweep(path, sweep_overrides, SMOKE_OVERRIDES if smoke_test else None)
    connect(local_cpus(sweep, job))
    result = run_sweep(sweep, job, out_dir=out_dir)
    print(format_sweep(result))
    return result
