"""Write synthetic domains as shards (the same format the converters write), in parallel and reproducibly.

Work is cut into chunks of ``rows_per_part`` samples; each chunk renders in a worker process and becomes exactly
one part file, written by the parent in order, so the output is identical for any number of workers.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

import sstparse
from sstparse.data.shards import ShardWriter, build_manifest, filesystem, write_manifest

# Synthetic domains get a held-out test split (its own seed stream: sample_rng hashes the split name) that the
# benchmark scores on, so that no reported score comes from the images used to pick the checkpoint.
SYNTH_SPLITS = ("train", "val", "test")
from sstparse.data.synth import render_samples
from sstparse.domains import LabelDomain, load_domains


def _chunk(args):
    datasets_dir, name, split, start, stop, seed = args
    return render_samples(load_domains(datasets_dir)[name], split, start, stop, seed)


def split_sizes(domain: LabelDomain, scale: float) -> dict[str, int]:
    style = domain.card.synthetic.style
    return {split: max(1, round(getattr(style, f"{split}_images") * scale)) for split in SYNTH_SPLITS}


def generate(root: str, domains: Iterable[LabelDomain], seed: int = 0, scale: float = 1.0, workers: int = 1,
             rows_per_part: int = 256, storage_options: dict | None = None, datasets_dir: str | Path | None = None,
             progress: bool = True) -> list[dict]:
    """Generate every split of every synthetic domain; returns the manifests written."""
    domains = list(domains)
    for d in domains:
        if not d.is_synthetic:
            raise ValueError(f"domain {d.name} is not synthetic (its card has no `synthetic` section)")
    filesystem(root, storage_options, check=True)  # an unusable s3:// root: one error naming it, before rendering
    jobs = []
    for d in domains:
        for split, n in split_sizes(d, scale).items():
            jobs += [(d, split, s, min(s + rows_per_part, n)) for s in range(0, n, rows_per_part)]
    bar = tqdm(total=sum(j[3] - j[2] for j in jobs), unit="img", desc="synth", disable=not progress)
    ddir = str(datasets_dir) if datasets_dir else None
    args = [(ddir, d.name, split, a, b, seed) for d, split, a, b in jobs]
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        results = iter(pool.map(_chunk, args))
        manifests = []
        for d in domains:
            summaries, hists = [], {}
            for split in SYNTH_SPLITS:
                hists[split] = np.zeros(0, np.int64)
                with ShardWriter(root, d, split, rows_per_part, storage_options) as w:
                    for _ in range(sum(1 for j in jobs if j[0] is d and j[1] == split)):
                        samples, hist = next(results)  # chunks arrive in job order: one chunk = one part
                        for s in samples:
                            w.add(s)
                        hists[split] = hist if hists[split].size == 0 else hists[split] + hist
                        bar.update(len(samples))
                summaries.append(w.summary)
            manifest = build_manifest(
                d, summaries, skipped=[], extra={"atom_histogram": {k: v.tolist() for k, v in hists.items()}},
                producer={"tool": "sstparse.synth", "seed": seed, "scale": scale, "version": sstparse.__version__})
            write_manifest(root, manifest, storage_options)
            manifests.append(manifest)
    bar.close()
    return manifests


class _Inline:
    """Same interface as an executor, runs in-process (no fork cost for small jobs and in tests)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return map(fn, items)
