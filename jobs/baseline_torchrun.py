"""The peer jobs/benchmark_train.py measures sstparse against: the same training written as a plain `torchrun` DDP
script with a torch DataLoader, the way a user would without Ray. Not part of the package.

    torchrun --nproc_per_node 2 jobs/baseline_torchrun.py --job job.json --out result.json [--loader-workers 1]

Same as a Ray Train worker of the job: the SST model (seeded init), DDP (gloo on CPU, NCCL on GPU), AdamW/SGD with
the poly schedule and warm-up, the loop's own optimiser step (loop.train_step: AMP, gradient scaling, clipping;
plain torch), the label-transfer ramp; the same epoch plans and
per-sample augmentation (jobs/benchmark_data.PlanDataset: same samples, same crops, same flips), split between the
ranks by a DistributedSampler; the same batch and number of steps. No validation, no checkpoints: training only.
Rank 0 writes per-epoch timings in the fields Ray Train's loop reports (train/steady_img_per_s, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from benchmark_data import PlanDataset, collate  # jobs/ is on sys.path when this script runs
from sstparse.data.pipeline import DataStream, finish_batch
from sstparse.domains import load_domains
from sstparse.train.checkpoints import build_model
from sstparse.train.config import JobConfig
from sstparse.train.loop import build_optimizer, poly_lambda, train_step


def main() -> None:
    started = time.time()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", required=True, help="the job as JSON (JobConfig.model_dump)")
    ap.add_argument("--out", required=True, help="rank 0 writes its per-epoch timings here (JSON)")
    ap.add_argument("--loader-workers", type=int, default=1, help="DataLoader worker processes per rank")
    args = ap.parse_args()
    with open(args.job) as f:
        job = JobConfig.model_validate(json.load(f))
    use_gpu = job.train.use_gpu and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}") if use_gpu else torch.device("cpu")
    domains = [load_domains()[n] for n in job.domain_names]
    stream = DataStream(job.training_data(), domains)
    torch.manual_seed(job.train.seed)
    model = build_model(job, domains).to(device)
    if job.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = DistributedDataParallel(model, device_ids=[device.index] if use_gpu else None)
    optimizer = build_optimizer(job.optim, model, job.sst.assoc_lr_mult)
    steps_per_epoch = stream.epoch_size // (world * job.data.batch_size)
    total = steps_per_epoch * job.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(job.optim, total))
    history = []
    for epoch in range(job.train.epochs):
        data = PlanDataset(stream, epoch)
        loader = DataLoader(data, batch_size=job.data.batch_size, collate_fn=collate, num_workers=args.loader_workers,
                            sampler=DistributedSampler(data, world, rank, shuffle=False, drop_last=True),
                            drop_last=True, pin_memory=use_gpu, persistent_workers=False)
        history.append(train_epoch(model, optimizer, scheduler, loader, job, device, total))
        history[-1].update({"epoch": epoch + 1, "time/elapsed_s": time.time() - started})
        if rank == 0:
            print(f"[torchrun] epoch {epoch + 1}: loss {history[-1]['train/loss']:.3f}, "
                  f"{history[-1]['train/steady_img_per_s']:.1f} img/s per worker", flush=True)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump({"started_at": started, "world_size": world, "torch_threads": torch.get_num_threads(),
                       "history": history}, f)
    dist.destroy_process_group()


def train_epoch(model, optimizer, scheduler, loader, job: JobConfig, device, total: int) -> dict:
    """One epoch as sstparse.train.loop.train_one_epoch runs it (its train_step, the transfer ramp, losses summed
    on the device), fed by the DataLoader instead of the Ray Data shard."""
    model.train()
    scaler = torch.amp.GradScaler(device.type, enabled=job.train.amp == "fp16")
    loss_sum, steps, images, t0 = torch.zeros((), device=device), 0, 0, time.perf_counter()
    first_step_end, first_images = None, 0
    data_wait, step_end = 0.0, t0
    for batch in loader:
        data_wait += time.perf_counter() - step_end if first_step_end is not None else 0.0
        batch = finish_batch({k: v.to(device, non_blocking=True) for k, v in batch.items()})
        model.module.progress = scheduler.last_epoch / max(total, 1)
        out = train_step(model, optimizer, scheduler, scaler, batch, job)  # the loop's step: pure torch
        loss_sum += out["loss"].detach().float()
        steps, images = steps + 1, images + len(batch["domain"])
        if first_step_end is None:
            first_step_end, first_images = time.perf_counter(), images
        step_end = time.perf_counter()
    end = time.perf_counter()
    return {"train/loss": float(loss_sum) / max(steps, 1), "train/steps": steps,
            "train/img_per_s": images / (end - t0), "time/epoch_s": end - t0,
            "train/first_step_s": first_step_end - t0,
            "train/data_wait_frac": data_wait / (end - first_step_end) if steps > 1 else 0.0,
            "train/steady_img_per_s": (images - first_images) / (end - first_step_end) if steps > 1 else 0.0}


if __name__ == "__main__":
    main()
