"""Training-stream throughput: the Ray Data stream (sstparse.data.pipeline) vs a plain torch DataLoader doing the
same decode + augmentation from the same shards, in one run; prints images/s of each and the ratio.

    python jobs/benchmark_data.py [--root data/bench-shards] [--scale 0.5] [--batches 0] [--smoke-test]

Each round runs one epoch of each pipeline (alternating which goes first, since the machine may be shared); both
pipelines deliver the same batches to a consumer loop that only counts them: the same epoch plan (samples,
copies, order of tasks), the same per-sample function (augment.train_sample with the same per-sample seed) and
the same uint8 blocks from the producer processes, finished the same way in the consumer (pipeline.finish_batch:
float32 CHW images, int64 labels; Ray: iter_train_batches; torch: tensors through shared memory).
The DataLoader reads parquet parts lazily and caches them per worker. CPU ms/img counts every process involved
(DataLoader workers; Ray's GCS, raylet and workers). Shards are generated at --root if absent.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset

from sstparse.data.config import DataConfig
from sstparse.data import augment as aug
from sstparse.data.generate import generate
from sstparse.data.pipeline import READ_COLUMNS, DataStream, finish_batch, iter_train_batches
from sstparse.data.shards import filesystem, list_domains
from sstparse.domains import load_domains

MIX = {"syn_lip": 0.4, "syn_cihp": 0.25, "syn_atr": 0.25, "syn_ppp": 0.1}


class PlanDataset(Dataset):
    """Map-style view of one epoch plan; each worker opens and caches the parquet parts it needs."""

    def __init__(self, stream: DataStream, epoch: int):
        self.plan, self.epoch = stream.epoch_plan(epoch), epoch
        self.paths = {s.info.index: s.paths for s in stream.train_shards}
        self.infos, self.spec, self.seed = stream.infos, stream.spec, stream.cfg.seed
        self.storage_options = dict(stream.cfg.storage_options)
        self._parts: dict[tuple[int, int], object] = {}

    def __len__(self) -> int:
        return len(self.plan)

    def _part(self, d: int, p: int):
        if (d, p) not in self._parts:
            fs, path = filesystem(self.paths[d][p], self.storage_options)
            with fs.open(path, "rb") as f:
                self._parts[(d, p)] = pq.read_table(f, columns=READ_COLUMNS)
        return self._parts[(d, p)]

    def __getitem__(self, i: int):
        d, p, r, c = (int(x) for x in self.plan[i])
        t = self._part(d, p)
        info = self.infos[d]
        rng = aug.sample_rng(self.seed, self.epoch, d, p, r, c)
        img, lbl = aug.train_sample(t["image"][r].as_py(), t["label"][r].as_py(), info, self.spec, rng,
                                    f"{self.paths[d][p]}#row={r}")
        return img, lbl, d


def collate(items):
    """Runs in the DataLoader worker: the same blocks as the Ray map function (uint8 crops); the tensors reach the
    main process through shared memory, where pipeline.finish_batch normalises them, as iter_train_batches does."""
    imgs, lbls, doms = zip(*items)
    return {"image": torch.from_numpy(np.stack(imgs)), "label": torch.from_numpy(np.stack(lbls)),
            "domain": torch.tensor(doms, dtype=torch.int64)}


def consume(batches, limit: int) -> dict:
    """Count images; time to the first batch and the steady rate after it are reported separately."""
    t0 = time.perf_counter()
    n, first, n_after = 0, None, 0
    for i, b in enumerate(batches):
        assert b["image"].dtype == torch.float32
        n += len(b["domain"])
        if first is None:
            first = time.perf_counter()
        else:
            n_after += len(b["domain"])
        if limit and i + 1 >= limit:
            break
    end = time.perf_counter()
    return {"images": n, "seconds": end - t0, "first_batch_s": first - t0,
            "img_s": n / (end - t0), "steady_img_s": n_after / max(end - first, 1e-9)}


def own_cpu() -> float:
    """CPU seconds of this process and its exited, waited-for children (the DataLoader workers)."""
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def tree_cpu() -> float:
    """CPU seconds of this process and its live descendants (Ray's GCS, raylet and worker processes), from
    /proc (Linux; NaN elsewhere). Live processes only: use it where nothing exits during the measurement."""
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime+stime
    except OSError:
        return float("nan")
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(kids)
        frontier += kids
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


def run_torch(stream: DataStream, epoch: int, limit: int, workers: int) -> dict:
    c0 = own_cpu()
    loader = DataLoader(PlanDataset(stream, epoch), batch_size=stream.cfg.batch_size, num_workers=workers,
                        collate_fn=collate, prefetch_factor=2, persistent_workers=False)
    res = consume(map(finish_batch, loader), limit)
    del loader
    gc.collect()  # joins the workers, so their CPU time lands in RUSAGE_CHILDREN
    res["cpu_ms_per_img"] = 1000 * (own_cpu() - c0) / res["images"]
    return res


def run_ray(stream: DataStream, ds, limit: int) -> dict:
    """One pass over ``ds`` = the stream's next epoch (the same plan run_torch gets for that epoch)."""
    c0 = tree_cpu()
    res = consume(iter_train_batches(ds, stream.cfg), limit)
    res["cpu_ms_per_img"] = 1000 * (tree_cpu() - c0) / res["images"]
    return res


def breakdown(stream: DataStream, n: int) -> None:
    """Where one training sample's CPU time goes, stage by stage, in this process (one thread): the same calls the
    stream's read task makes (augment.train_sample = decode_pair + augment, then the batch finishing)."""
    from sstparse.data.shards import decode_image, decode_label

    data = PlanDataset(stream, 0)
    rows = [(data.infos[int(d)], data._part(int(d), int(p)), int(r)) for d, p, r, _ in data.plan[:n]]
    samples = [(t["image"][r].as_py(), t["label"][r].as_py(), info) for info, t, r in rows]
    spec, rng = stream.spec, np.random.default_rng(0)
    stages: dict[str, float] = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        out = fn(*a)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
        return out

    crops = []
    for image, label, info in samples:
        timed("decode JPEG", decode_image, image, "x")
        timed("decode PNG", decode_label, label, "x")
        img, lbl = timed("decode + checks (decode_pair)", aug.decode_pair, image, label, info, "x")
        crops.append(timed("scale, crop, flip, jitter (augment)", aug.augment, img, lbl, info, spec, rng))
    for i in range(0, len(crops), stream.cfg.batch_size):
        chunk = crops[i:i + stream.cfg.batch_size]
        block = timed("stack the uint8 block (read task)", lambda c: {
            "image": torch.from_numpy(np.stack([x[0] for x in c])),
            "label": torch.from_numpy(np.stack([x[1] for x in c]))}, chunk)
        timed("normalise on the consumer (finish_batch)", finish_batch, block)
    print(f"per-sample CPU, {len(samples)} samples, one thread (decode JPEG / PNG are part of decode_pair):")
    for name, sec in stages.items():
        print(f"  {name:<46} {1000 * sec / len(samples):6.2f} ms")
    total = sum(v for k, v in stages.items() if not k.startswith("decode ") or "pair" in k)
    print(f"  {'total':<46} {1000 * total / len(samples):6.2f} ms")


def ensure_shards(root: str, scale: float) -> None:
    have = set(list_domains(root)) if os.path.exists(root) else set()
    if not set(MIX) <= have:
        print(f"generating shards at {root} (scale {scale}) ...", flush=True)
        d = load_domains()
        generate(root, [d[n] for n in MIX], scale=scale, workers=os.cpu_count() or 1, progress=False)


def fmt(name: str, r: dict) -> str:
    return (f"{name:<22} {r['images']:6d} img {r['seconds']:7.2f} s  {r['img_s']:7.1f} img/s  "
            f"(first batch {r['first_batch_s']:.2f} s, then {r['steady_img_s']:.1f} img/s; "
            f"CPU {r['cpu_ms_per_img']:.2f} ms/img)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="data/bench-shards", help="shard root (generated if absent)")
    ap.add_argument("--scale", type=float, default=0.5, help="generator scale when shards are generated")
    ap.add_argument("--batches", type=int, default=0, help="batches per pipeline (0: one epoch)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count(), help="ray.init(num_cpus=...)")
    ap.add_argument("--shuffle-buffer", type=int, default=None, help="override DataConfig.shuffle_buffer")
    ap.add_argument("--block-rows", type=int, default=None, help="override DataConfig.block_rows")
    ap.add_argument("--task-rows", type=int, default=None, help="override DataConfig.task_rows")
    ap.add_argument("--preserve-order", action="store_true", help="DataConfig.preserve_order (blocks in plan order)")
    ap.add_argument("--rounds", type=int, default=3, help="epochs of each pipeline, alternating which goes first")
    ap.add_argument("--skip-torch", action="store_true", help="only run the Ray stream")
    ap.add_argument("--stats", action="store_true", help="print Ray Data's per-operator stats")
    ap.add_argument("--breakdown", type=int, default=0, metavar="N",
                    help="first time each stage of N samples in this process (decode, augment, finishing)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny shards, 4 batches each")
    args = ap.parse_args()
    if args.smoke_test:
        args.root, args.scale, args.batches, args.rounds = os.path.join(args.root, "smoke"), 0.02, 4, 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local single-machine run; keep auth on for clusters
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ensure_shards(args.root, args.scale)
    extra = {k: v for k in ("shuffle_buffer", "block_rows", "task_rows") if (v := getattr(args, k)) is not None}
    extra["preserve_order"] = args.preserve_order
    cfg = DataConfig(domain_mix=MIX, root=args.root, crop_size=args.crop, batch_size=args.batch_size, **extra)
    stream = DataStream(cfg, load_domains())
    print(f"epoch: {stream.epoch_size} images {stream.domain_counts}, batch {cfg.batch_size}, crop {cfg.crop_size}, "
          f"{os.cpu_count()} cores")
    if args.breakdown:
        breakdown(stream, args.breakdown)
    import ray

    # Under RAY_ADDRESS (a cluster, the test suite's) join it; else a local instance of --ray-cpus.
    sized = {} if os.environ.get("RAY_ADDRESS") else {"num_cpus": args.ray_cpus, "include_dashboard": False}
    ray.init(**sized, logging_level="WARNING")
    try:
        ds = stream.train_dataset()
        results: dict[str, list[dict]] = {"torch": [], "ray": []}
        for rnd in range(args.rounds):
            # Alternate which goes first: other load on a shared machine then biases neither side.
            order = ["torch", "ray"] if rnd % 2 == 0 else ["ray", "torch"]
            for name in order:
                if name == "torch" and args.skip_torch:
                    continue
                r = (run_ray(stream, ds, args.batches) if name == "ray"
                     else run_torch(stream, rnd, args.batches, args.workers))
                results[name].append(r)
                label = (f"torch DataLoader (w={args.workers})" if name == "torch"
                         else f"Ray Data (cpus={args.ray_cpus})")
                print(f"epoch {rnd}  " + fmt(label, r), flush=True)
        stats = ds.stats()
    finally:
        ray.shutdown()
    summarize(results)
    if args.stats:
        print(stats)


def summarize(results: dict[str, list[dict]]) -> None:
    def rate(rs, key="seconds"):
        return sum(r["images"] for r in rs) / sum(r[key] for r in rs)

    ray_rs, torch_rs = results["ray"], results["torch"]
    print(f"Ray Data: {rate(ray_rs):.1f} img/s over {len(ray_rs)} epoch(s) "
          f"(CPU {np.mean([r['cpu_ms_per_img'] for r in ray_rs]):.2f} ms/img)")
    if torch_rs:
        print(f"torch DataLoader: {rate(torch_rs):.1f} img/s over {len(torch_rs)} epoch(s) "
              f"(CPU {np.mean([r['cpu_ms_per_img'] for r in torch_rs]):.2f} ms/img)")
        per_epoch = [r["img_s"] / t["img_s"] for r, t in zip(ray_rs, torch_rs)]
        print(f"ratio Ray / torch: {rate(ray_rs) / rate(torch_rs):.2f} "
              f"(per epoch: {', '.join(f'{x:.2f}' for x in per_epoch)}; epoch 0 includes Ray worker start-up)")


if __name__ == "__main__":
    main()
