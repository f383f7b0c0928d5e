"""ASHA vs no early stopping: the same sweep twice, side by side, in one run.

Both arms draw the same trial configurations (TPE's seeded random start-up phase covers every trial), so the only
difference is the scheduler. Printed per arm: trials, trial-epochs spent, best objective, wall time; then the
ratio of epochs and the difference of best objectives against a noise estimate: the best configuration trained
again with another seed (the spread a single run has anyway).

    python jobs/benchmark_tune.py --config jobs/configs/sweep.yaml            # default size: ~40 min on 2 cores
    python jobs/benchmark_tune.py --config jobs/configs/sweep.yaml search.num_samples=16 job.train.epochs=8
"""

from __future__ import annotations

import argparse
import time

from sstparse.train.job import connect
from sstparse.train.trainer import fit
from sstparse.tune.config import load_sweep
from sstparse.tune.job import local_cpus
from sstparse.tune.sweep import apply_params, format_sweep, row_params, run_sweep

# Sized for a 2-core machine: 6 trials x 4 epochs of 640 samples; no registration (this is a measurement).
DEFAULT_OVERRIDES = ["search.num_samples=6", "register_alias=null", "job.train.epochs=4",
                     "job.data.epoch_size=640", "job.train.max_failures=0"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/sweep.yaml")
    ap.add_argument("overrides", nargs="*", help="sweep overrides and job.* overrides, after the defaults")
    ap.add_argument("--ray-cpus", type=int, default=None,
                    help="logical CPUs of the local Ray instance (default: what the concurrent trials need)")
    args = ap.parse_args()
    base = DEFAULT_OVERRIDES + args.overrides
    sweep, job = load_sweep(args.config, base)
    connect(args.ray_cpus or local_cpus(sweep, job))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {}
    for kind in ("asha", "none"):
        arm, arm_job = load_sweep(args.config, base + [
            f"scheduler.kind={kind}", f"name={sweep.name}-bench-{kind}-{stamp}",
            f"search.n_startup_trials={sweep.search.num_samples}"])
        t0 = time.perf_counter()
        results[kind] = (run_sweep(arm, arm_job), time.perf_counter() - t0)
        print(f"\n[{kind}]\n{format_sweep(results[kind][0])}", flush=True)

    # Noise: the no-stopping arm's best configuration again, with another seed.
    best = results["none"][0].best
    again = apply_params(job, row_params(best))
    again = again.model_copy(update={
        "train": again.train.model_copy(update={"seed": 1, "name": f"bench-noise-{stamp}"}),
        "tracking": again.tracking.model_copy(update={"enabled": False})})
    noise_value = fit(again, log_model=False).metrics[job.objective]
    report(results, job.objective, best[job.objective], noise_value)


def report(results: dict, objective: str, best_seed0: float, best_seed1: float) -> None:
    print(f"\n{'arm':<8} {'trials':>6} {'trial-epochs':>13} {'best ' + objective:>22} {'wall':>8}")
    for kind, (r, seconds) in results.items():
        print(f"{kind:<8} {len(r.rows):>6} {r.trial_epochs:>13} {100 * r.best[objective]:>21.2f}% "
              f"{seconds / 60:>7.1f}m")
    asha, none = results["asha"][0], results["none"][0]
    noise = abs(best_seed0 - best_seed1)
    delta = none.best[objective] - asha.best[objective]
    print(f"\nepochs ASHA / no stopping: {asha.trial_epochs / none.trial_epochs:.2f}")
    print(f"best objective, no stopping - ASHA: {100 * delta:+.2f} points; seed noise of the best configuration "
          f"(seed 0 vs 1): {100 * noise:.2f} points -> {'within' if delta <= noise else 'beyond'} noise")


if __name__ == "__main__":
    main()
