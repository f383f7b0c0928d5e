"""Train an SST parser on Ray: the `ray job submit` entrypoint.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config jobs/configs/universal.yaml [key=value ...] [--smoke-test]
"""

from __future__ import annotations

import argparse

from sstparse.train.job import run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="job YAML (jobs/configs/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.epochs=3 sst.lambda_mst=0.2")
    ap.add_argument("--smoke-test", action="store_true", help="one tiny epoch on one worker")
    ap.add_argument("--out", help="folder for the pictures (default: a temp folder; they go to MLflow anyway)")
    ap.add_argument("--verbose", action="store_true", help="Ray's INFO lines and progress bars in the console too")
    args = ap.parse_args(argv)
    run(args.config, args.overrides, args.smoke_test, args.out, args.verbose)


if __name__ == "__main__":
    main()
