"""Batch prediction throughput: single-process ``sstparse predict`` vs ``--ray`` with 1 and 2 actors, on the same
synthetic images, side by side; prints images/s per way and each one's ratio to single-process.

    python jobs/benchmark_predict.py [--images 500] [--actors 1 2] [--model URI] [--out bench_out/predict]

Without ``--model`` the network is the demo job's (jobs/configs/universal.yaml: four heads) with seeded random
weights, logged as the pyfunc to a scratch MLflow store under ``--out``: throughput does not depend on the weights,
and the benchmark needs no trained model. The images are the synthetic test split of syn_lip, rendered once into
``--out``. Each way writes to a fresh folder and is timed from the call to the last file written, model loading
included (what a user waits for); Ray's own start is timed once, apart. The actors share ``--cpus`` (default: all
of them, as the single process's torch threads do). The outputs of every way are compared with single-process
predict's, file by file and label pixel by pixel: a CPU convolution sums in an order that depends on its thread
count, so an actor with fewer threads than the single process can flip a pixel whose top two classes tie within
float rounding.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sstparse import export, tracking
from sstparse.config import TrackingConfig
from sstparse.data.synth import render, sample_rng
from sstparse.domains import load_domains
from sstparse.model.sst import inference_model
from sstparse.train import checkpoints
from sstparse.train.job import connect, load_job

DOMAIN = "syn_lip"


def scratch_model(folder: Path, job_yaml: str = "jobs/configs/universal.yaml", seed: int = 0) -> tuple[str, str]:
    """(model URI, tracking URI) of the job's network with seeded random weights, registered in a scratch store."""
    import torch

    store = f"sqlite:///{folder.resolve()}/mlruns.db"
    cfg = TrackingConfig(tracking_uri=store, artifact_location=str(folder.resolve() / "artifacts"),
                         experiment="benchmark")
    if tracking.get_alias(cfg, "bench", "champion") is None:
        job = load_job(job_yaml)
        torch.manual_seed(seed)
        model = checkpoints.build_model(job, [load_domains()[d] for d in job.domain_names]).eval()
        export.log_pyfunc_model(cfg, tracking.start_run(cfg, "benchmark"), inference_model(model),
                                register_as="bench", alias="champion")
    return "models:/bench@champion", store


def synthetic_images(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    domain = load_domains()[DOMAIN]
    for i in range(n):
        path = folder / f"{i:05d}.jpg"
        if not path.exists():
            Image.fromarray(render(domain, sample_rng(seed, DOMAIN, "test", i)).image).save(path, quality=90)
    return folder


def timed(fn, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def differences(a: Path, b: Path) -> str:
    """Label pixels that differ between two output folders (and files other than the label maps that do)."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    if names != sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and p.name != "skipped.csv"):
        return "different files"
    pixels = total = 0
    for name in (n for n in names if not n.endswith(("_color.png", "_overlay.jpg"))):
        x, y = np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))
        pixels, total = pixels + int((x != y).sum()), total + x.size
    same = len(filecmp.cmpfiles(a, b, names, shallow=False)[0])
    return f"{same}/{len(names)} files, {pixels:,} of {total:,} label pixels differ"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cpus", type=float, default=os.cpu_count(),
                    help="CPUs the actors share (each of n actors gets cpus/n): the single process uses them all")
    ap.add_argument("--model", default=None, help="A model URI (default: the demo network, random weights).")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--out", type=Path, default=Path("bench_out/predict"))
    args = ap.parse_args()
    from sstparse.batch_predict import predict_ray
    from sstparse.predict import predict

    uri, store = (args.model, args.tracking_uri) if args.model else scratch_model(args.out)
    src = synthetic_images(args.out / "images", args.images)
    flags = {"domain": DOMAIN, "batch_size": args.batch_size, "tracking_uri": store}
    rows = [("single process", timed(lambda: predict(uri, [str(src)], args.out / "single", progress=False,
                                                     **flags), args.out / "single"), "(the reference)")]
    t0 = time.perf_counter()
    connect()
    print(f"[benchmark] Ray start: {time.perf_counter() - t0:.1f} s (not counted below)")
    for n in args.actors:
        out = args.out / f"ray{n}"
        seconds = timed(lambda: predict_ray(uri, [str(src)], str(out), concurrency=n, progress=False,
                                            num_cpus_per_actor=args.cpus / n, **flags), out)
        rows.append((f"--ray, {n} actor(s)", seconds, differences(args.out / "single", out)))
    base = args.images / rows[0][1]
    print(f"\n{args.images} images of {DOMAIN}, batch {args.batch_size}\n"
          f"{'way':<22} {'seconds':>8} {'images/s':>9} {'ratio':>6}  identical to single process")
    for name, seconds, same in rows:
        print(f"{name:<22} {seconds:8.1f} {args.images / seconds:9.1f} {args.images / seconds / base:5.2f}x  {same}")


if __name__ == "__main__":
    main()
