"""The SST benchmark (arms A-D, several seeds): per-domain mIoU with and without flip TTA, cost, association recovery.

    python jobs/benchmark.py                       # default CPU size, 2 seeds: < 60 min on a 2-core machine
    python jobs/benchmark.py --size gpu            # the larger size for one GPU
    python jobs/benchmark.py --seeds 0 1 2 train.epochs=5

Writes <out>/report.md (tables, association heatmaps) and logs one MLflow run per trained model under a parent run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from sstparse import tracking
from sstparse.train import benchmark as bench
from sstparse.train.job import connect, load_job
from sstparse.train.trainer import absolute_paths

SIZES = {
    "cpu": [],
    "gpu": ["train.use_gpu=true", "train.num_workers=1", "train.cpus_per_worker=4", "train.epochs=30",
            "data.epoch_size=8000", "data.crop_size=256", "data.batch_size=16", "model.backbone=resnet50"],
}


def _size(job) -> str:
    return f"{job.model.backbone}, crop {job.data.crop_size}, batch {job.data.batch_size}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/benchmark.yaml")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", nargs="+", choices=bench.ARMS, default=["A", "B", "C", "D"],
                    help="optional: A4 (A at one B's total steps), CK (universal SST with KD into every head)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    base = absolute_paths(load_job(args.config, SIZES[args.size] + args.overrides))
    connect()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    parent = tracking.start_run(base.tracking, f"sst-benchmark-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={"benchmark": "sst"}) if base.tracking.enabled else None
    runs = []
    for seed in args.seeds:
        for arm in args.arms:
            runs.append(bench.run_arm(base, arm, seed, parent))
            print(f"[benchmark] arm {arm} seed {seed}: " + ", ".join(
                f"{d} {100 * v:.1f}" for d, v in runs[-1].miou.items()), flush=True)
    steps = {f"{_size(base)} (as trained)": bench.step_time_ratio(base)}
    if args.size == "cpu":  # SST's cost next to a real backbone: the GPU size's model, timed on this CPU
        gpu = load_job(args.config, SIZES["gpu"] + args.overrides + ["data.batch_size=4"])
        steps[f"{_size(gpu)} (the GPU size's model, on this CPU)"] = bench.step_time_ratio(gpu, steps=4)
    command = shlex.join(["python", "jobs/benchmark.py", *sys.argv[1:]])
    text = bench.write_report(out, base, runs, steps, time.perf_counter() - t0, command)
    print(text)
    if parent:
        tracking.log_artifacts(base.tracking, parent, sorted(out.glob("*")), "benchmark")
        tracking.end_run(base.tracking, parent)


if __name__ == "__main__":
    main()
