"""Synthetic generator: images/s on one core per domain (target 20 img/s/core), and how far a colour-only
classifier gets (it must stay far below a real model: the images need shape and context).

    python jobs/benchmark_synth.py [--images 200] [--smoke-test]

Renders, encodes and validates exactly what `sstparse synth` writes (no disk I/O), in this one process.
"""

from __future__ import annotations

import argparse
import time

from sstparse.data.difficulty import colour_only_baseline
from sstparse.data.synth import render_samples
from sstparse.domains import load_domains

TARGET = 20.0  # images/s per core at ~256 px (issue 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="images per domain")
    ap.add_argument("--smoke-test", action="store_true", help="10 images per domain")
    args = ap.parse_args()
    n = 10 if args.smoke_test else args.images
    print(f"{'domain':<10} {'size':>9} {'img/s':>8} {'vs target':>10}")
    total_imgs, total_s = 0, 0.0
    for d in (d for d in load_domains().values() if d.is_synthetic):
        style = d.card.synthetic.style
        t0 = time.perf_counter()
        render_samples(d, "train", 0, n, seed=0)
        dt = time.perf_counter() - t0
        total_imgs, total_s = total_imgs + n, total_s + dt
        print(f"{d.name:<10} {style.height:>4}x{style.width:<4} {n / dt:8.1f} {n / dt / TARGET:9.1f}x")
    print(f"{'all':<10} {'':>9} {total_imgs / total_s:8.1f} {total_imgs / total_s / TARGET:9.1f}x  "
          f"(target {TARGET:.0f} img/s/core)")
    n_tr, n_val = (40, 10) if args.smoke_test else (300, 100)
    print(f"\ncolour-only classifier (quantised RGB lookup fitted on {n_tr} train images, scored on {n_val} val):")
    for d in (d for d in load_domains().values() if d.is_synthetic):
        base = colour_only_baseline(d, n_tr, n_val)
        lr = " ".join(f"{k}={v:.2f}" for k, v in base.left_right_accuracy.items()) or "-"
        print(f"  {d.name:<10} mIoU {100 * base.miou:5.1f}%   left/right accuracy: {lr}")


if __name__ == "__main__":
    main()
