"""The SST benchmark: does semantic transfer help, what does it cost, and does it learn the true associations?

Arms, every one trained with the same backbone, seed set and number of optimisation steps:

* A: one single-domain model per domain (mode single);
* A4 (optional): A with a quarter of the steps per model, so the four models together take one B's steps;
* B: the plain multi-domain network, one head per domain, no SST modules (sst.enabled=false);
* C: SST universal (MSA, MSE, MST; no distillation);
* CK (optional): SST universal with KD into every head (``lambda_kd`` > 0, see docs/sst.md);
* D: SST dedicated to syn_ppp (the scarce domain), distilling from the others.

Per arm and seed: per-domain validation mIoU without TTA and with flip TTA (the best checkpoint, re-scored here
on every validation image), exported parameters and FLOPs, CPU latency; for C the learned associations against
the generator's exact ones. Step time of C relative to B is measured side by side on one process (same batch,
same threads), so a busy machine slows both alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sstparse import plots, tracking
from sstparse.data.augment import normalize
from sstparse.data.preview import samples
from sstparse.data.shards import read_manifest
from sstparse.data.synth import true_association
from sstparse.domains import LabelDomain, load_domains
from sstparse.evaluate import TTA, DomainEvaluator
from sstparse.model.sst import build_sst_model, inference_model
from sstparse.model.stats import count_flops, count_params
from sstparse.train.config import JobConfig
from sstparse.train.loop import EVAL_FILE
from sstparse.train.trainer import fit, load_checkpoint_model

DOMAINS = ("syn_lip", "syn_cihp", "syn_atr", "syn_ppp")
TARGET = "syn_ppp"
ARMS = ("A", "A4", "B", "C", "CK", "D")


@dataclass
class ArmRun:
    arm: str                                   # A, B, C, D
    seed: int
    miou: dict[str, float] = field(default_factory=dict)        # domain -> mIoU, no TTA
    miou_flip: dict[str, float] = field(default_factory=dict)   # domain -> mIoU, flip TTA
    params: int = 0                            # exported network(s); A: the sum over its four models
    params_by_model: dict[str, int] = field(default_factory=dict)  # A: one entry per domain model
    flops: int = 0                             # per 512x512 image, inference, every head kept
    latency_ms: float = 0.0                    # CPU, 512x512, batch 1
    assoc: dict[str, float] = field(default_factory=dict)       # C only: tv, argmax agreement
    assoc_pairs: dict[str, Any] = field(default_factory=dict)   # C only: (a, b) -> (learned, true)


def arm_jobs(base: JobConfig, arm: str, seed: int) -> list[JobConfig]:
    """The training jobs of one arm (A has one per domain; the others one). ``base.sst.lambda_kd`` is D's (and
    CK's) distillation weight; C trains without KD."""
    def job(mode: str, target: str | None, sst: bool, name: str, kd: float = base.sst.lambda_kd) -> JobConfig:
        return base.model_copy(update={
            "train": base.train.model_copy(update={"mode": mode, "target": target, "seed": seed,
                                                   "name": f"{base.train.name or 'bench'}-{name}-s{seed}"}),
            "sst": base.sst.model_copy(update={"enabled": sst, "lambda_kd": kd}),
            "data": base.data.model_copy(update={"seed": seed})})
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; arms: {list(ARMS)}")
    if arm == "CK" and base.sst.lambda_kd == 0:
        raise ValueError("arm CK distils into every head: set sst.lambda_kd > 0")
    if arm in ("A", "A4"):
        jobs = [job("single", d, False, f"{arm}-{d}") for d in DOMAINS]
        if arm == "A4":  # equal compute: a quarter of the samples per epoch, same epochs and batch
            jobs = [j.model_copy(update={"data": j.data.model_copy(
                update={"epoch_size": max(1, j.data.epoch_size // len(DOMAINS))})}) for j in jobs]
        return jobs
    return [{"B": lambda: job("universal", None, False, "B"), "C": lambda: job("universal", None, True, "C", 0.0),
             "CK": lambda: job("universal", None, True, "CK"),
             "D": lambda: job("dedicated", TARGET, True, "D")}[arm]()]


def run_arm(base: JobConfig, arm: str, seed: int, parent_run_id: str | None = None,
            latency_runs: int = 5) -> ArmRun:
    out, domains = ArmRun(arm, seed), load_domains()
    for job in arm_jobs(base, arm, seed):
        # No model logging: nothing here is for serving; the scores below go to the run instead.
        result = fit(job, parent_run_id=parent_run_id, register=False, log_model=False)
        ckpt = Path(result.checkpoint_path)  # local storage: the benchmark runs on one machine
        _, model, _ = load_checkpoint_model(ckpt)
        exported = inference_model(model)
        for name in exported.domain_names:
            out.miou[name], out.miou_flip[name] = score(exported, domains[name], job, (TTA(), TTA(flip=True)))
        x = torch.randn(1, 3, 512, 512)
        out.params_by_model[job.train.target or arm] = count_params(exported)
        out.params += count_params(exported)
        out.flops += count_flops(exported, x)
        out.latency_ms += latency(exported, x, latency_runs)
        if arm in ("C", "CK"):
            out.assoc, out.assoc_pairs = association_recovery(job, ckpt)
        if result.run_id:
            tracking.log_metrics(job.tracking, result.run_id, {
                **{f"bench/{d}/miou": v for d, v in out.miou.items()},
                **{f"bench/{d}/miou_flip": v for d, v in out.miou_flip.items()},
                **{f"bench/assoc/{k}": v for k, v in out.assoc.items()}}, step=0)
            tracking.end_run(job.tracking, result.run_id)
    return out


@torch.no_grad()
def score(parser, domain: LabelDomain, job: JobConfig, ttas: tuple[TTA, ...]) -> list[float]:
    """mIoU of one head on every validation image of its domain, one per TTA (each image decoded once)."""
    evs = [DomainEvaluator(domain, tta) for tta in ttas]
    for image, label_map in samples(job.data.root_of(domain.name), domain.name, "val",
                                    storage_options=job.data.storage_options):
        label = torch.from_numpy(label_map.astype(np.int64))[None]
        x = torch.from_numpy(normalize(image))[None]
        for ev in evs:
            ev.update(lambda x: parser(x, domain.name), x, label)
    return [float(ev.compute(reduce=False)["miou"]) for ev in evs]


@torch.no_grad()
def latency(module, x: torch.Tensor, runs: int) -> float:
    module.eval()
    module(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def association_recovery(job: JobConfig, ckpt: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Mean row total-variation distance between learned M(a->b) and the generator's P(b|a), and the share of
    rows whose argmax agrees, over every ordered pair of domains (rows of classes that occur)."""
    domains, evals = load_domains(), np.load(ckpt / EVAL_FILE)
    tvs, agree, pairs = [], [], {}
    for a in DOMAINS:
        hist = np.asarray(read_manifest(job.data.root_of(a), a, job.data.storage_options)["atom_histogram"]["train"])
        for b in DOMAINS:
            if a == b:
                continue
            learned, true = evals[f"assoc/{a}/{b}"], true_association(domains[a], domains[b], hist)
            rows = ~np.isnan(true).any(1)
            tvs += list(0.5 * np.abs(learned[rows] - true[rows]).sum(1))
            agree += list(learned[rows].argmax(1) == true[rows].argmax(1))
            pairs[(a, b)] = (learned, true)
    return {"tv": float(np.mean(tvs)), "argmax_agreement": float(np.mean(agree))}, pairs


def step_time_ratio(base: JobConfig, steps: int = 10) -> tuple[float, float]:
    """Seconds per training step (forward + backward) of B (plain) and C (SST) on the same batch, interleaved."""
    domains = [load_domains()[d] for d in DOMAINS]
    torch.manual_seed(0)
    sst = arm_jobs(base, "C", 0)[0].sst
    c = build_sst_model(base.model.parser_config(), domains, sst.sst_config(), sst.loss_weights()).train()
    b = build_sst_model(base.model.parser_config(), domains, None).train()
    size, batch = base.data.crop_size, base.data.batch_size
    x = torch.randn(batch, 3, size, size)
    didx = torch.arange(batch) % len(domains)
    y = torch.stack([torch.randint(0, domains[i].num_classes, (size, size)) for i in didx.tolist()])
    times = {"B": [], "C": []}
    for i in range(steps + 2):
        for name, model in (("B", b), ("C", c)):
            t0 = time.perf_counter()
            model(x, y, didx)["loss"].backward()
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - t0)
    return float(np.median(times["B"])), float(np.median(times["C"]))


def _stat(values: list[float]) -> str:
    """mean +- half-range over seeds, in mIoU points."""
    v = 100 * np.asarray(values)
    return f"{v.mean():.1f} ± {(v.max() - v.min()) / 2:.1f}"


def report_table(runs: list[ArmRun]) -> str:
    """Markdown: per-domain mIoU (no TTA / flip TTA) per arm, mean over seeds with the spread."""
    arms = sorted({r.arm for r in runs})
    head = "| arm | " + " | ".join(DOMAINS) + " | mean (4 domains) | params | GFLOPs | CPU ms |"
    lines = [head, "|" + "---|" * (len(DOMAINS) + 5)]
    for tta in ("miou", "miou_flip"):
        for arm in arms:
            rs = [r for r in runs if r.arm == arm]
            cells = []
            for d in DOMAINS:
                vals = [getattr(r, tta)[d] for r in rs if d in getattr(r, tta)]
                cells.append(_stat(vals) if vals else "–")
            means = [np.mean([getattr(r, tta)[d] for d in DOMAINS]) for r in rs
                     if all(d in getattr(r, tta) for d in DOMAINS)]
            label = f"{arm}{' +flip' if tta == 'miou_flip' else ''}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {_stat(means) if means else '–'} | "
                         f"{rs[0].params / 1e6:.3f} M | {rs[0].flops / 1e9:.2f} | "
                         f"{np.mean([r.latency_ms for r in rs]):.0f} |")
    return "\n".join(lines)


def association_summary(runs: list[ArmRun]) -> str:
    lines = []
    for arm in ("C", "CK"):
        c = [r for r in runs if r.arm == arm and r.assoc]
        if not c:
            continue
        tv = [r.assoc["tv"] for r in c]
        agree = [r.assoc["argmax_agreement"] for r in c]
        lines.append(f"{arm} association recovery over {len(c)} seed(s): mean row TV distance {np.mean(tv):.3f} "
                     f"(seeds {', '.join(f'{v:.3f}' for v in tv)}), argmax agreement {100 * np.mean(agree):.1f}% "
                     f"(seeds {', '.join(f'{100 * v:.1f}%' for v in agree)})")
    return "\n\n".join(lines) or "no SST universal run"


def param_check(runs: list[ArmRun]) -> str:
    """B, C and D export exactly A's networks' parts: one backbone + decoder with four heads (B, C) or with
    syn_ppp's head (D = A's syn_ppp model)."""
    first = {r.arm: r for r in reversed(runs)}
    parts = []
    if "B" in first and "C" in first:
        parts.append(f"exported params B {first['B'].params:,} vs C {first['C'].params:,} "
                     f"({'equal' if first['B'].params == first['C'].params else 'DIFFERENT'})")
    if "A" in first and "D" in first:
        a = first["A"].params_by_model.get(TARGET)
        same = "equal" if a == first["D"].params else "DIFFERENT"
        parts.append(f"D {first['D'].params:,} vs A's {TARGET} model {a:,} ({same})")
    return "; ".join(parts)


def write_report(out: Path, base: JobConfig, runs: list[ArmRun], steps: dict[str, tuple[float, float]],
                 seconds: float, command: str) -> str:
    """``out``/report.md (returned too) and C's association heatmaps beside it. ``steps``: model size -> seconds
    per training step of (B, C)."""
    domains = load_domains()
    pictures = []
    for r in [r for r in runs if r.arm == "C"][:1]:
        for (a, b), (learned, true) in r.assoc_pairs.items():
            if TARGET in (a, b):
                pictures.append(plots.association_figure(learned, true, domains[a], domains[b],
                                                         out / f"association_{a}_to_{b}.png"))
    lines = [f"# SST benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"`{command}`, {seconds / 60:.0f} min; backbone {base.model.backbone}, {base.train.epochs} epochs x "
             f"{base.data.epoch_size} samples, crop {base.data.crop_size}, seeds {sorted({r.seed for r in runs})}.",
             "",
             "Validation mIoU (%), mean ± half-range over seeds; params/GFLOPs/CPU ms of the exported network(s) "
             "at 512x512 (A: the four single-domain models together).", "", report_table(runs), "",
             association_summary(runs), "", param_check(runs), "",
             "Training step time (forward + backward, one process, B and C interleaved on the same batch):", ""]
    lines += [f"- {what}: B {1000 * b:.0f} ms, C {1000 * c:.0f} ms, C/B {c / b:.2f}" for what, (b, c) in steps.items()]
    lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
