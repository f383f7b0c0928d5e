"""Training throughput: sstparse (Ray Train + the Ray Data stream) against a plain `torchrun` DDP script with a
torch DataLoader (jobs/baseline_torchrun.py), same model, data, augmentation, batch and steps, run one after the
other on this machine; prints steady-state images/s of each, their ratio, and start-up apart.

    python jobs/benchmark_train.py [--config jobs/configs/universal.yaml] [--rounds 2] [--smoke-test] [key=value ...]

Default job: jobs/configs/universal.yaml (2 workers, tiny backbone, 128 px crops, batch 8) at 3 epochs of 1,600
samples, tracking off, no validation until the last epoch (Ray) or none (torchrun).
- steady img/s: images per second after each epoch's first step (the first waits for the data to start), summed
  over the workers, averaged over the epochs after the first.
- start-up: seconds from launch (before `ray.init` / before `torchrun` starts) to the end of the first step:
  cluster and worker start, model build, the stream's first batch. Ray is started and stopped in every round, so
  each arm has the machine to itself.
Each round runs both, alternating which goes first (other load on a shared machine then biases neither).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from sstparse.train.job import connect, load_job
from sstparse.train.trainer import fit

DEFAULTS = ["train.epochs=3", "data.epoch_size=1600", "train.val_every=1000", "tracking.enabled=false",
            "data.root=data/synth"]
SMOKE = ["train.epochs=2", "data.epoch_size=64", "data.crop_size=64", "data.batch_size=4"]


def summary(history: list[dict], launched: float, started_at: float, world: int) -> dict:
    """Steady rate over the epochs after the first (all of them when there is one) and time to the first step."""
    steady = [h["train/steady_img_per_s"] for h in history[1:] or history]
    first = history[0]
    to_first_step = started_at - launched + first["time/elapsed_s"] - first["time/epoch_s"] + \
        first["train/first_step_s"]
    waits = [h.get("train/data_wait_frac", np.nan) for h in history[1:] or history]
    return {"steady": world * float(np.mean(steady)), "per_epoch": [world * s for s in steady],
            "data_wait": float(np.mean(waits)),
            "startup_s": to_first_step, "loss": history[-1]["train/loss"],
            "steps": sum(int(h["train/steps"]) for h in history)}


def run_ray(overrides: list[str], args, storage: str, tag: str) -> dict:
    job = load_job(args.config, [*overrides, f"train.storage_path={storage}", f"train.name=bench-train-{tag}"])
    launched = time.time()
    connect()
    t_init = time.time() - launched
    started_at = time.time()
    try:
        result = fit(job, register=False, log_model=False)
    finally:
        # A local instance started here stops (its idle processes cost the other arm ~10% of a 2-core machine);
        # under RAY_ADDRESS this only disconnects.
        ray.shutdown()
    out = summary(result.history, launched, started_at, job.train.num_workers)
    return {**out, "ray_init_s": t_init}


def run_torchrun(overrides: list[str], args, tmp: str, tag: str) -> dict:
    job = load_job(args.config, overrides)
    job_file, out_file = Path(tmp) / f"job-{tag}.json", Path(tmp) / f"torchrun-{tag}.json"
    job_file.write_text(json.dumps(job.model_dump(mode="json")))
    launched = time.time()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={job.train.num_workers}", str(Path(__file__).with_name("baseline_torchrun.py")),
           "--job", str(job_file), "--out", str(out_file), "--loader-workers", str(args.loader_workers)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    res = json.loads(out_file.read_text())
    return summary(res["history"], launched, res["started_at"], res["world_size"])


def fmt(name: str, r: dict) -> str:
    return (f"{name:<26} steady {r['steady']:6.1f} img/s  start-up {r['startup_s']:5.1f} s  "
            f"waiting for data {100 * r['data_wait']:.0f}%  ({r['steps']} steps, last loss {r['loss']:.3f}; per epoch "
            f"{', '.join(f'{x:.1f}' for x in r['per_epoch'])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/universal.yaml")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each arm, alternating which goes first")
    ap.add_argument("--loader-workers", type=int, default=1, help="torchrun arm: DataLoader workers per rank")
    ap.add_argument("--threads", type=int, default=1,
                    help="torchrun arm: OMP/torch threads per rank (Ray gives a worker with <= 1 CPU one thread)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny job, one round (CI)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the job, after the benchmark's defaults")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local single-machine run; keep auth on for clusters
    overrides = DEFAULTS + (SMOKE if args.smoke_test else []) + args.overrides
    rounds = 1 if args.smoke_test else args.rounds
    results: dict[str, list[dict]] = {"ray": [], "torchrun": []}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for rnd in range(rounds):
            for arm in (["torchrun", "ray"] if rnd % 2 == 0 else ["ray", "torchrun"]):
                tag = f"{rnd}-{int(time.time())}"
                r = (run_ray(overrides, args, tmp, tag) if arm == "ray" else run_torchrun(overrides, args, tmp, tag))
                results[arm].append(r)
                print(f"round {rnd}  " + fmt("Ray Train + Ray Data" if arm == "ray" else "torchrun + DataLoader", r)
                      + (f"  [ray.init {r['ray_init_s']:.1f} s]" if arm == "ray" else ""), flush=True)
    report(results)


def report(results: dict[str, list[dict]]) -> None:
    ray_rate = float(np.mean([r["steady"] for r in results["ray"]]))
    torch_rate = float(np.mean([r["steady"] for r in results["torchrun"]]))
    ratios = [r["steady"] / t["steady"] for r, t in zip(results["ray"], results["torchrun"])]
    print(f"steady state: Ray Train {ray_rate:.1f} img/s, torchrun {torch_rate:.1f} img/s, "
          f"ratio Ray / torchrun {ray_rate / torch_rate:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"start-up to the first step: Ray Train {np.mean([r['startup_s'] for r in results['ray']]):.1f} s "
          f"(starting Ray included), torchrun "
          f"{np.mean([r['startup_s'] for r in results['torchrun']]):.1f} s")


if __name__ == "__main__":
    main()
