"""Sweep SST loss weights, domain mix and learning rate with Ray Tune (Optuna TPE + ASHA), tracked in MLflow.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py --config jobs/configs/sweep.yaml [key=value ...] [job.section.key=value ...]

Running the same sweep again (same name and storage) restores it: finished trials are kept.
"""

from __future__ import annotations

import argparse

from sstparse.tune.job import run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="sweep YAML (jobs/configs/sweep*.yaml)")
    ap.add_argument("overrides", nargs="*",
                    help="sweep overrides (search.num_samples=16) and job overrides (job.train.epochs=2)")
    ap.add_argument("--smoke-test", action="store_true", help="two tiny one-epoch trials")
    ap.add_argument("--out", help="folder for the results table and plots (they go to MLflow anyway)")
    ap.add_argument("--verbose", action="store_true", help="Ray's INFO lines and progress bars in the console too")
    args = ap.parse_args()
    run(args.config, args.overrides, args.smoke_test, args.out, args.verbose)


if __name__ == "__main__":
    main()
