"""`make gpu-check`: is this machine's GPU path sound, and how fast is it? Under 8 minutes on one GPU.

    python jobs/gpu_check.py [--backbone resnet50] [--size 384] [--batch 16] [--steps 30] [--settings ...]

For each setting (AMP off/bf16/fp16; channels_last and torch.compile each on and off around bf16) a short
training run of the universal SST model (every head, SST modules on) at the GPU size, through the training loop's
own step (sstparse.train.loop.train_step): images/s after warm-up, peak GPU memory, and whether every loss stayed
finite. With more than one GPU visible: the same steps under DDP with NCCL on all of them (one process per GPU),
images/s summed. With ONNX Runtime's CUDA provider installed: latency of the exported inference network.
Batches are seeded random tensors (labels within each head's classes, domains taking turns): the check is about
the arithmetic and the speed, not learning.

On a machine without CUDA it says so and exits 0 with nothing measured (`--device cpu` runs the same code on the
CPU at whatever size you give it; the tests do, tiny).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from sstparse.config import load_yaml
from sstparse.domains import load_domains
from sstparse.train.checkpoints import build_model
from sstparse.train.config import JobConfig
from sstparse.train.loop import build_optimizer, poly_lambda, train_step

# name: (train.amp, train.channels_last, train.compile)
SETTINGS = {
    "fp32": ("none", False, False),
    "bf16": ("bf16", False, False),
    "fp16": ("fp16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+compile": ("bf16", False, True),
    "bf16+channels_last+compile": ("bf16", True, True),
}
WARMUP = 5  # steps before timing: cuDNN autotuning, the allocator's first growth, compilation


def job_for(args, setting: str) -> JobConfig:
    amp, channels_last, compiled = SETTINGS[setting]
    return load_yaml(JobConfig, args.config, [
        f"model.backbone={args.backbone}", f"data.crop_size={args.size}", f"data.batch_size={args.batch}",
        f"train.amp={amp}", f"train.channels_last={str(channels_last).lower()}",
        f"train.compile={str(compiled).lower()}", f"train.use_gpu={str(args.device == 'cuda').lower()}"])


def batch_for(job: JobConfig, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    domains = [load_domains()[n] for n in job.domain_names]
    b, s = job.data.batch_size, job.data.crop_size
    dom = torch.arange(b) % len(domains)
    label = torch.stack([torch.randint(0, domains[int(d)].num_classes, (s, s), generator=g) for d in dom])
    return {"image": torch.randn(b, 3, s, s, generator=g).to(device), "label": label.to(device),
            "domain": dom.to(device)}


def build(job: JobConfig, device: torch.device, ddp_rank: int | None = None):
    torch.manual_seed(job.train.seed)
    model = build_model(job).to(device)
    if job.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ddp_rank is not None:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[ddp_rank])
    if job.train.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(job.optim, model, job.sst.assoc_lr_mult)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(job.optim, 10_000))
    scaler = torch.amp.GradScaler(device.type, enabled=job.train.amp == "fp16")
    return model, optimizer, scheduler, scaler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(job: JobConfig, device: torch.device, steps: int, ddp_rank: int | None = None) -> dict:
    """Warm-up, then ``steps`` timed steps; img/s of this process, peak memory (GiB), all losses finite?"""
    model, optimizer, scheduler, scaler = build(job, device, ddp_rank)
    batches = [batch_for(job, device, seed) for seed in range(4)]
    finite = torch.ones((), dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_warm = time.perf_counter()
    for i in range(WARMUP + steps):
        if i == WARMUP:
            sync(device)
            t0 = time.perf_counter()
        out = train_step(model, optimizer, scheduler, scaler, batches[i % len(batches)], job)
        finite &= torch.isfinite(out["loss"].detach())  # stays on the device: no sync per step
    sync(device)
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    return {"img_s": steps * job.data.batch_size / dt, "peak_gib": peak, "finite": bool(finite),
            "warmup_s": t0 - t_warm, "last_loss": float(out["loss"].detach())}


def row(name: str, r: dict) -> str:
    return (f"| {name} | {r['img_s']:.1f} | {r['peak_gib']:.2f} | {'yes' if r['finite'] else 'NO'} | "
            f"{r['warmup_s']:.1f} | {r['last_loss']:.3f} |")


def _ddp_worker(rank: int, world: int, args, setting: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    r = measure(job_for(args, setting), torch.device("cuda", rank), args.steps, ddp_rank=rank)
    total = torch.tensor([r["img_s"], float(r["finite"])], device=f"cuda:{rank}")
    torch.distributed.all_reduce(total)
    if rank == 0:
        Path(out).write_text(f"{total[0].item()} {total[1].item() == world} {r['peak_gib']} {r['warmup_s']} "
                             f"{r['last_loss']}")
    torch.distributed.destroy_process_group()


def ddp_check(args, setting: str) -> dict:
    import socket

    world = torch.cuda.device_count()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.txt")
        torch.multiprocessing.spawn(_ddp_worker, args=(world, args, setting, port, out), nprocs=world)
        img_s, finite, peak, warm, loss = Path(out).read_text().split()
    return {"img_s": float(img_s), "finite": finite == "True", "peak_gib": float(peak), "warmup_s": float(warm),
            "last_loss": float(loss)}


def onnx_latency(args) -> str:
    """ms per batch of the exported inference network on ONNX Runtime's CUDA provider, or why not measured."""
    import onnxruntime as ort

    from sstparse import export
    from sstparse.model.sst import inference_model

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"not measured: ONNX Runtime has no CUDA provider here ({', '.join(ort.get_available_providers())};"
                f" install onnxruntime-gpu)")
    net = export.StackedHeads(inference_model(build_model(job_for(args, "fp32")))).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export.save_onnx(net, path)
        session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
        x = torch.randn(args.batch, 3, args.size, args.size).numpy()
        for _ in range(5):
            session.run(None, {export.INPUT_NAME: x})
        t0 = time.perf_counter()
        for _ in range(20):
            session.run(None, {export.INPUT_NAME: x})
    ms = 1000 * (time.perf_counter() - t0) / 20
    return f"{ms:.1f} ms per batch of {args.batch} at {args.size} px ({args.batch * 1000 / ms:.0f} img/s)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="jobs/configs/universal.yaml", help="the job whose model is checked")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=384, help="crop size (px)")
    ap.add_argument("--batch", type=int, default=16, help="images per step (per GPU)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per setting, after warm-up")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible to torch (torch.cuda.is_available() is False): nothing measured.")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"gpu-check: {name}, torch {torch.__version__}, {args.backbone} at {args.size} px, batch {args.batch}, "
          f"{args.steps} timed steps after {WARMUP}")
    print("| setting | img/s | peak GiB | losses finite | warm-up s | last loss |\n|---|---|---|---|---|---|")
    failed = []
    for setting in args.settings:
        r = measure(job_for(args, setting), device, args.steps)
        print(row(setting, r), flush=True)
        failed += [] if r["finite"] else [setting]
    if args.device == "cuda" and torch.cuda.device_count() > 1:
        r = ddp_check(args, "bf16+channels_last")
        print(row(f"DDP NCCL x{torch.cuda.device_count()} (bf16+channels_last)", r), flush=True)
        failed += [] if r["finite"] else ["ddp"]
    if args.device == "cuda":
        print(f"ONNX Runtime CUDA: {onnx_latency(args)}")
    if failed:
        print(f"gpu-check: non-finite losses under {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
