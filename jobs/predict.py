"""Batch prediction on a Ray cluster: the `ray job submit` entrypoint for `sstparse predict --ray`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/predict.py --model models:/sst-universal@champion --domain syn_lip \
        s3://bucket/photos/ --out s3://bucket/parsed/ --concurrency 8 --num-gpus-per-actor 1

Takes every option of `sstparse predict` (see `sstparse predict --help`); --ray is implied.
"""

from __future__ import annotations

import sys

from sstparse.cli import main

if __name__ == "__main__":
    main(["predict", "--ray", *sys.argv[1:]], prog_name="jobs/predict.py")
