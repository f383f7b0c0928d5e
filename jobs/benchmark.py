"""The SST benchmark: arms A-D at equal passes over every dataset, paired seeds, scored on the held-out test split.

    python jobs/benchmark.py --seeds 0 1 2                  # the headline (A, B, C, D), CPU size
    python jobs/benchmark.py --seeds 0 --arms A2 C-LT C-MST C-MSE BDS   # convergence check and ablations
    python jobs/benchmark.py --protocol steps --arms B C    # secondary: equal steps per model
    python jobs/benchmark.py --smoke-test                   # every code path, a few steps (CI runs it)
    python jobs/benchmark.py --size gpu                     # the larger size for one GPU

Every (protocol, arm, seed) is stored as <out>/runs/<protocol>-<arm>-s<seed>.json once scored, and its training
resumes by name, so an invocation can be interrupted and re-run, and seeds or arms run as separate invocations;
<out>/report.md always covers every stored result. Delete <out>/runs and ray_results/bench-* for a fresh start.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from sstparse import tracking
from sstparse.train import benchmark as bench
from sstparse.train.benchmark_report import write_report
from sstparse.train.job import connect, load_job
from sstparse.train.trainer import absolute_paths

SIZES = {
    "cpu": [],
    "gpu": ["train.use_gpu=true", "train.num_workers=1", "train.cpus_per_worker=4", "train.epochs=30",
            "data.epoch_size=2000", "data.crop_size=256", "data.batch_size=16", "model.backbone=resnet50"],
}
# A few steps per model, on whatever data.root says: every arm's code path, the scoring, the report.
SMOKE = ["train.epochs=1", "train.val_every=1", "data.epoch_size=8", "data.crop_size=64", "data.batch_size=4",
         "train.num_workers=1", "train.cpus_per_worker=0.5", "optim.warmup_steps=1", "model.decoder_channels=16",
         "model.low_level_channels=8", "model.feature_dim=16", "sst.embed_dim=8"]


def _size(job) -> str:
    return f"{job.model.backbone}, crop {job.data.crop_size}, batch {job.data.batch_size}"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/benchmark.yaml")
    ap.add_argument("--size", choices=sorted(SIZES), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", choices=bench.ARMS, default=list(bench.HEADLINE))
    ap.add_argument("--protocol", choices=bench.PROTOCOLS, default="passes")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--smoke-test", action="store_true",
                    help="every distinct code path (benchmark.SMOKE_ARMS; A on syn_ppp only), one seed, a few steps "
                         "per model, 4 test images per domain")
    ap.add_argument("--report-only", action="store_true",
                    help="merge the stored results into <out>/report.md without training or timing anything")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the base job")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.arms = args.seeds[:1], list(bench.SMOKE_ARMS)
        # Its own folder and fresh names each time, so a smoke run never skips (or mixes with) stored results.
        args.out = args.out if args.out != "bench_out" else "bench_out_smoke"
        shutil.rmtree(Path(args.out) / "runs", ignore_errors=True)
        args.overrides = [f"train.name=bench-smoke-{time.strftime('%Y%m%d-%H%M%S')}",
                          f"train.storage_path={Path(args.out) / 'ray_results'}",
                          "tracking.experiment=sst-benchmark-smoke"] + args.overrides
    return args


def run_arms(args, base, parent: str | None) -> None:
    """Train and score what is not stored yet; each result is saved as soon as it is scored."""
    folder = Path(args.out) / "runs"
    for seed in args.seeds:
        for arm in args.arms:
            path = folder / f"{args.protocol}-{arm}-s{seed}.json"
            if path.exists():
                check_stored(path, bench.ArmRun.load(path), base)
                print(f"[benchmark] {path.name}: stored, skipped", flush=True)
                continue
            run = bench.run_arm(base, arm, seed, args.protocol, parent, latency_runs=1 if args.smoke_test else 5,
                                score_limit=4 if args.smoke_test else None,
                                single_domains=bench.SMOKE_SINGLE_DOMAINS if args.smoke_test else bench.DOMAINS)
            run.base = bench.base_settings(base)
            run.save(folder)
            print(f"[benchmark] {run.key} ({run.minutes:.1f} min): " + ", ".join(
                f"{d} {100 * v:.1f}" for d, v in run.miou.items()), flush=True)


def check_stored(path: Path, run, base) -> None:
    """A stored result is reused, or reported beside this job's, only if it came from the same base job."""
    wrong = bench.base_mismatch(run, base)
    if wrong:
        raise SystemExit(f"{path}: stored by a different base job ({'; '.join(wrong)}); give this job its own "
                         "--out folder (and train.name) or move the stored result away")


def step_times(args, base) -> dict[str, tuple[float, float]]:
    if args.smoke_test:
        return {f"{_size(base)} (as trained)": bench.step_time_ratio(base, steps=1)}
    steps = {f"{_size(base)} (as trained)": bench.step_time_ratio(base)}
    if args.size == "cpu":  # SST's cost next to a real backbone: the GPU size's model, timed on this CPU
        gpu = load_job(args.config, SIZES["gpu"] + args.overrides + ["data.batch_size=4"])
        steps[f"{_size(gpu)} (the GPU size's model, on this CPU)"] = bench.step_time_ratio(gpu, steps=4)
    return steps


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    overrides = SIZES[args.size] + (SMOKE if args.smoke_test else []) + args.overrides
    base = absolute_paths(load_job(args.config, overrides))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parent = None
    if not args.report_only:
        connect()
        parent = tracking.start_run(base.tracking, f"sst-benchmark-{time.strftime('%Y%m%d-%H%M%S')}",
                                    tags={"benchmark": "sst"}) if base.tracking.enabled else None
        run_arms(args, base, parent)
    stored = sorted((out / "runs").glob("*.json"))
    runs = [bench.ArmRun.load(p) for p in stored]
    for path, run in zip(stored, runs):
        check_stored(path, run, base)
    first_c = min((r for r in runs if r.arm == "C" and r.protocol == "passes"), key=lambda r: r.seed, default=None)
    pairs = bench.association_recovery(base, Path(first_c.checkpoints["C"]))[1] if first_c else None
    command = shlex.join(["python", "jobs/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    text = write_report(out, base, runs, {} if args.report_only else step_times(args, base), command, pairs)
    print(text)
    if parent:
        tracking.log_artifacts(base.tracking, parent, sorted(out.glob("*.*")), "benchmark")
        tracking.end_run(base.tracking, parent)
    return text


if __name__ == "__main__":
    main()
