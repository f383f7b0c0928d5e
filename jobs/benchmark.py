"""The SST benchmark (arms A-D, several seeds): per-domain mIoU with and without flip TTA, cost, association recovery.

    python jobs/benchmark.py                       # default CPU size, 2 seeds: < 60 min on a 2-core machine
    python jobs/benchmark.py --size gpu            # the larger size for one GPU
    python jobs/benchmark.py --seeds 0 1 2 train.epochs=5

Writes <out>/report.md (tables, association heatmaps) and logs one MLflow run per trained model under a parent run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sstparse import plots, tracking
from sstparse.domains import load_domains
from sstparse.train import benchmark as bench
from sstparse.train.job import connect, load_job
from sstparse.train.trainer import absolute_paths

SIZES = {
    "cpu": [],
    "gpu": ["train.use_gpu=true", "train.num_workers=1", "train.cpus_per_worker=4", "train.epochs=30",
            "data.epoch_size=8000", "data.crop_size=256", "data.batch_size=16", "model.backbone=resnet50"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/benchmark.yaml")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", nargs="+", default=["A", "B", "C", "D"])
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
    step_b, step_c = bench.step_time_ratio(base)
    text = write_report(out, base, runs, step_b, step_c, time.perf_counter() - t0, args)
    print(text)
    if parent:
        tracking.log_artifacts(base.tracking, parent, sorted(out.glob("*")), "benchmark")
        tracking.end_run(base.tracking, parent)


def write_report(out: Path, base, runs, step_b: float, step_c: float, seconds: float, args) -> str:
    domains = load_domains()
    pictures = []
    for r in [r for r in runs if r.arm == "C"][:1]:
        for (a, b), (learned, true) in r.assoc_pairs.items():
            if b == bench.TARGET or a == bench.TARGET:
                pictures.append(plots.association_figure(learned, true, domains[a], domains[b],
                                                         out / f"association_{a}_to_{b}.png"))
    lines = [f"# SST benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"`python jobs/benchmark.py --size {args.size} --seeds {' '.join(map(str, args.seeds))}`, "
             f"{seconds / 60:.0f} min; backbone {base.model.backbone}, {base.train.epochs} epochs x "
             f"{base.data.epoch_size} samples, crop {base.data.crop_size}, seeds {args.seeds}.", "",
             "Validation mIoU (%), mean ± half-range over seeds; params/GFLOPs/CPU ms of the exported network(s) "
             "at 512x512 (A: the four single-domain models together).", "", bench.report_table(runs), "",
             bench.association_summary(runs), "", bench.param_check(runs), "",
             f"Training step time (forward + backward, batch 8, crop {base.data.crop_size}, one process): "
             f"B {1000 * step_b:.0f} ms, C {1000 * step_c:.0f} ms, C/B {step_c / step_b:.2f}.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
