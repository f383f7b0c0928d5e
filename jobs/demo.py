"""`make demo`: the main job on embedded synthetic data, end to end on this machine.

Stages: synthetic multi-domain shards (generated once; reused when their manifests exist) -> preview picture ->
shard summary.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from sstparse.data.generate import generate
from sstparse.data.inspect import summarize
from sstparse.data.preview import preview_grid
from sstparse.data.shards import list_domains
from sstparse.domains import load_domains


def ensure_synthetic(root: str, scale: float, seed: int) -> list:
    domains = [d for d in load_domains().values() if d.is_synthetic]
    missing = [d for d in domains if d.name not in list_domains(root)] if Path(root).exists() else domains
    if missing:
        print(f"[demo] generating {', '.join(d.name for d in missing)} into {root}")
        generate(root, missing, seed=seed, scale=scale, workers=os.cpu_count() or 1)
    else:
        print(f"[demo] synthetic shards found in {root}")
    return domains


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="data/synth", help="shard root (local or s3://)")
    ap.add_argument("--out", default="demo_out", help="where pictures and reports go")
    ap.add_argument("--scale", type=float, default=1.0, help="synthetic dataset size multiplier")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    domains = ensure_synthetic(args.data, args.scale, args.seed)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    preview = Path(args.out) / "preview.png"
    preview_grid(args.data, domains).save(preview)
    print(f"[demo] preview grid: {preview}")
    print(summarize(args.data))
    print(f"[demo] done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
