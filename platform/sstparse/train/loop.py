"""The per-worker training loop: ``train_loop_per_worker(config)``, run by every Ray Train worker (DDP rank).

Read top to bottom: build the SST model -> DDP -> optimiser and poly schedule -> restore the latest checkpoint ->
for each epoch: train on this worker's shard of the mixed stream, validate every domain on this worker's shard of
its validation set (confusion matrices all-reduced, so every rank sees dataset-wide scores), then report metrics
with a checkpoint. Rank 0 writes the checkpoint and logs to MLflow (the run was opened by the driver; its id
comes in the config and is kept in the checkpoint).
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from torch import nn

from sstparse import tracking
from sstparse.config import TrackingConfig
from sstparse.data import pipeline
from sstparse.domains import LabelDomain, load_domains
from sstparse.evaluate import TTA, DomainEvaluator, all_reduce_
from sstparse.model.sst import SSTModel
from sstparse.train import checkpoints
from sstparse.train.checkpoints import build_model
from sstparse.train.config import JobConfig, OptimConfig

LOSS_TERMS = ("loss", "ce", "mse", "mst", "kd", "transfer", "aux")  # logged per epoch as train/<term>


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, Any]] | None:
    job = JobConfig.model_validate(config["job"])
    if not job.train.verbose:  # e.g. Ray Train's "Reporting training result ..." (whole metric dict) per rank
        logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    domains = [load_domains()[n] for n in job.domain_names]
    torch.manual_seed(job.train.seed)  # identical init on every rank (DDP broadcasts rank 0's anyway)

    model = build_model(job, domains)
    if job.train.channels_last:  # NHWC: what tensor cores want (GPU); the batches follow in train_step
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)  # to device; DDP (gloo on CPU, NCCL on GPU) when world > 1
    if job.train.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(job.optim, model, job.sst.assoc_lr_mult)
    total_steps = config["steps_per_epoch"] * job.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_lambda(job.optim, total_steps))
    start_epoch, restored = restore(ray.train.get_checkpoint(), model, optimizer, scheduler)

    run_id = config.get("mlflow_run_id") if job.tracking.enabled and rank == 0 else None
    outbox = tracked_outbox(job.tracking, run_id, config.get("unsent_path")) if run_id else None
    if outbox and not restored:
        outbox.add_params({**job.model_dump(mode="json"), "domains": job.domain_names,
                           "world_size": ctx.get_world_size()})
        send_tracked(outbox)
    train_shard = ray.train.get_dataset_shard("train")
    history = []  # rank 0 returns it: Result.return_value, the driver's FitResult.history
    for epoch in range(start_epoch, job.train.epochs):
        t0 = time.perf_counter()
        train_metrics = train_one_epoch(model, optimizer, scheduler, train_shard, job, epoch, restored, rank,
                                        total_steps)
        validated = (epoch + 1) % job.train.val_every == 0 or epoch + 1 == job.train.epochs
        val_metrics, matrices = validate(model, domains, job) if validated else ({}, {})
        metrics = {"epoch": epoch + 1, **train_metrics, **val_metrics, "time/epoch_s": time.perf_counter() - t0}
        if "started_at" in config:  # the driver's clock: the x axis of the time-to-accuracy curve
            metrics["time/elapsed_s"] = time.time() - config["started_at"]
        if rank == 0:
            print(epoch_line(metrics, job.train.epochs), flush=True)
        if outbox:
            outbox.add(metrics, step=epoch + 1)
            send_tracked(outbox)
        report(metrics, model, optimizer, scheduler, job, epoch, matrices, run_id, rank, validated)
        history.append({k: v for k, v in metrics.items() if "/iou/" not in k})
    if outbox:  # the end waits a while for a server that is away (a resumed, finished run sends what it kept)
        send_tracked(outbox, job.tracking.outage_wait_s)
    return history if rank == 0 else None


def tracked_outbox(cfg: TrackingConfig, run_id: str, unsent_path: str | None) -> tracking.MetricOutbox:
    """Rank 0's way to MLflow: what the server does not take is kept in the run's folder (``unsent_path``, beside
    the checkpoints) until it does, so neither an outage nor a crash of this worker during one loses a value; a
    restarted or resumed run starts with what the file holds (and the driver sends what is left there at the end)."""
    if not unsent_path:
        return tracking.MetricOutbox(cfg, run_id)
    return tracking.MetricOutbox(cfg, run_id, checkpoints.read_unsent(unsent_path), where=unsent_path,
                                 keep=lambda records: checkpoints.write_unsent(unsent_path, records))


def send_tracked(outbox: tracking.MetricOutbox, wait_s: float = 0.0) -> None:
    if not outbox.send(wait_s):
        then = f"after waiting {wait_s:.0f} s" if wait_s else "sent with the next epoch's"
        print(f"[tracking] {outbox.cfg.tracking_uri} did not answer ({outbox.why}): "
              f"{len(outbox.unsent)} value(s) kept in {outbox.where or 'memory'}, {then}", flush=True)


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """The console's one line per epoch: loss, validation score when validated, time left at this epoch's pace."""
    done, seconds = metrics["epoch"], metrics["time/epoch_s"]
    val = f", val mean mIoU {100 * metrics['val/mean_miou']:.1f}%" if "val/mean_miou" in metrics else ""
    return (f"epoch {done}/{epochs}: loss {metrics.get('train/loss', float('nan')):.3f}{val}, "
            f"{metrics.get('train/img_per_s', 0.0):.0f} img/s per worker, {seconds:.0f} s, "
            f"about {(epochs - done) * seconds / 60:.1f} min left")


def build_optimizer(cfg: OptimConfig, model: nn.Module, assoc_lr_mult: float = 1.0) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: decaying them only hurts (standard for ResNets and DeepLab). The
    # association's scale and residuals get their own group at a higher rate and no decay (decay would pull M
    # back towards pure embedding similarity).
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assoc = [p for n, p in named if ".mst." in f".{n}"]
    rest = [(n, p) for n, p in named if ".mst." not in f".{n}"]
    groups = [{"params": [p for _, p in rest if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in rest if p.ndim <= 1], "weight_decay": 0.0}]
    if assoc:
        groups.append({"params": assoc, "weight_decay": 0.0, "lr": cfg.lr * assoc_lr_mult})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def poly_lambda(cfg: OptimConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return max(1e-3, (1.0 - progress) ** cfg.poly_power)
    return factor


def _unwrap(model: nn.Module) -> SSTModel:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)      # DDP


def train_one_epoch(model, optimizer, scheduler, shard, job: JobConfig, epoch: int, restored: bool,
                    rank: int, total_steps: int) -> dict[str, float]:
    model.train()
    device = ray.train.torch.get_device()
    scaler = torch.amp.GradScaler(device.type, enabled=job.train.amp == "fp16")
    # Loss terms are summed on the device and read at the log interval: a float() per term and step would make the
    # host wait for the GPU every step.
    sums: dict[str, torch.Tensor] = {}
    steps, images, t0 = 0, 0, time.perf_counter()
    first_step_end, first_images = None, 0  # the first step waits for the stream's start: timed apart
    data_wait, step_end = 0.0, t0  # time spent waiting for the next batch after the first
    fault = job.train.fault_injection
    # drop_last: Ray Train splits the stream into equal shards, so every rank runs the same number of steps
    # (a rank with an extra partial batch would wait forever in DDP's all-reduce).
    for batch in pipeline.iter_train_batches(shard, job.training_data(), device=device, drop_last=True):
        data_wait += time.perf_counter() - step_end if first_step_end is not None else 0.0
        if fault and not restored and epoch == fault.epoch and steps == fault.after_steps and \
                rank == fault.rank:
            print(f"[fault injection] rank {fault.rank} exits in epoch {epoch} after {steps} steps", flush=True)
            os._exit(1)  # a hard crash, as a lost node or an OOM kill would look to Ray
        # The scheduler's step count survives a restore, so the label-transfer ramp resumes where it was.
        _unwrap(model).progress = scheduler.last_epoch / max(total_steps, 1)
        out = train_step(model, optimizer, scheduler, scaler, batch, job)
        for k in LOSS_TERMS:
            if k in out:
                term = out[k].detach().float()
                sums[k] = sums[k] + term if k in sums else term
        steps, images = steps + 1, images + len(batch["domain"])
        if first_step_end is None:
            first_step_end, first_images = time.perf_counter(), images
        if steps % job.train.log_every == 0 and rank == 0:
            print(f"epoch {epoch + 1} step {steps}: loss {float(sums['loss']) / steps:.3f}", flush=True)
        step_end = time.perf_counter()
    end = time.perf_counter()
    steady = (images - first_images) / (end - first_step_end) if steps > 1 else 0.0
    return {**{f"train/{k}": float(v) / max(steps, 1) for k, v in sums.items()}, "train/steps": steps,
            "train/img_per_s": images / (end - t0) if steps else 0.0, "train/steady_img_per_s": steady,
            "train/first_step_s": (first_step_end - t0) if steps else 0.0,
            "train/data_wait_frac": data_wait / (end - first_step_end) if steps > 1 else 0.0,
            "lr": scheduler.get_last_lr()[0]}


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_step(model, optimizer, scheduler, scaler, batch: dict[str, torch.Tensor], job: JobConfig
               ) -> dict[str, torch.Tensor]:
    """One optimiser step: forward under the job's autocast, backward (loss scaled for fp16), clipping, step.
    Returns the model's loss terms, still on the device (reading them would wait for the GPU)."""
    image = batch["image"]
    if job.train.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    amp = AMP_DTYPES.get(job.train.amp)
    with torch.autocast(image.device.type, dtype=amp) if amp else nullcontext():
        out = model(image, batch["label"], batch["domain"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    if job.optim.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return out


@torch.no_grad()
def validate(model, domains: list[LabelDomain], job: JobConfig) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    parser = _unwrap(model).parser
    parser.eval()
    device = ray.train.torch.get_device()
    tta = TTA(flip=job.train.val_flip, scales=tuple(job.train.val_scales))
    metrics: dict[str, Any] = {"val/tta": tta.tag()}
    matrices, evs = {}, [DomainEvaluator(d, tta) for d in domains]
    # One dataset holds every domain's images; the `domain` column indexes `domains` (= job.domain_names).
    batches = pipeline.iter_val_batches(ray.train.get_dataset_shard("val"), job.train.val_batch_size)
    for i, images, labels in same_size_groups(batches):
        evs[i].update(lambda x, name=domains[i].name: parser(x, name), images.to(device), labels.to(device))
    for d, ev in zip(domains, evs):
        # Summed over the ranks in place, so the scores and the matrix the checkpoint keeps (plots, benchmark) are
        # both dataset-wide; every rank calls it, domains in the same order.
        all_reduce_(ev.matrix)
        scores = ev.compute(reduce=False)
        matrices[d.name] = ev.matrix.numpy().copy()
        metrics.update({f"val/{d.name}/{k}": v for k, v in scores.items() if k != "tta"})
    metrics["val/mean_miou"] = float(np.mean([metrics[f"val/{d.name}/miou"] for d in domains]))
    parser.train()
    return metrics, matrices


def same_size_groups(batches) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(domain index, images, labels) stacks of consecutive validation images of one domain and one size, from
    batches of any sizes: the network sees each image whole, unpadded (padding would change what a convolution
    sees near the border, so the scores would depend on the batch), and an evaluation-mode network scores every
    image of a stack on its own."""
    for batch in batches:
        keys = [(int(d), tuple(im.shape)) for d, im in zip(batch["domain"], batch["image"])]
        start = 0
        for end in range(1, len(keys) + 1):
            if end == len(keys) or keys[end] != keys[start]:
                yield (keys[start][0], torch.stack(batch["image"][start:end]),
                       torch.stack(batch["label"][start:end]))
                start = end


def report(metrics, model, optimizer, scheduler, job: JobConfig, epoch: int, matrices, run_id, rank,
           validated: bool = True) -> None:
    """Every rank reports the same metrics; only rank 0 attaches the checkpoint (DDP replicas are identical).
    Checkpoints come with validated epochs only: they are ranked by the objective, a validation score."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0 and validated:
            checkpoints.save(Path(tmp), _unwrap(model), optimizer, scheduler, job, epoch, matrices, run_id,
                                  metrics)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        # Per-class IoUs go to MLflow and the checkpoint; Ray (and Tune's result tables) get the summary.
        ray.train.report({k: v for k, v in metrics.items() if "/iou/" not in k}, checkpoint=checkpoint)


def restore(checkpoint, model, optimizer, scheduler) -> tuple[int, bool]:
    """Resume from Ray Train's latest checkpoint (set after a worker failure or when a run is resumed); when its
    state cannot be read (a node lost while uploading it, a truncated file), from the newest one that can."""
    if checkpoint is None:
        return 0, False
    state = None
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            with candidate.as_directory() as d:
                state = checkpoints.read_state(Path(d))
            break
        except Exception as err:  # torch.load's errors for a damaged file vary (RuntimeError, EOFError, pickle)
            print(f"[restore] {candidate.path}/{checkpoints.STATE_FILE} is unreadable ({type(err).__name__}: "
                  f"{str(err)[:200]}); trying the previous checkpoint", flush=True)
    if state is None:
        raise checkpoints.CheckpointError(
            f"{checkpoint.path}: no checkpoint of this run can be read (see the [restore] lines); start afresh "
            f"with another train.name, or restore {checkpoints.STATE_FILE} from a copy")
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"[restore] resuming after epoch {state['epoch'] + 1}", flush=True)
    return state["epoch"] + 1, True


def _older_checkpoints(checkpoint) -> list[ray.train.Checkpoint]:
    """The run's other checkpoints older than ``checkpoint``, newest first (Ray Train keeps num_to_keep of them
    beside each other, named checkpoint_<timestamp>)."""
    parent = posixpath.dirname(checkpoint.path.rstrip("/"))
    found = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted(i.path for i in found if i.type == pafs.FileType.Directory
                   and posixpath.basename(i.path).startswith("checkpoint_") and i.path < checkpoint.path)
    return [ray.train.Checkpoint(p, filesystem=checkpoint.filesystem) for p in reversed(older)]
