"""The SST benchmark: does one SST model beat a separate model per dataset, what does it cost, and does it learn the
true label associations?

Protocol ``passes`` (the headline): every multi-domain model sees each domain's images as often as that domain's
single-domain model does, so its steps equal the single-domain models' together (equal data *and* equal compute).
Protocol ``steps`` (secondary): every model gets the single-domain model's steps (the multi-domain arms see a
quarter of each domain). ``data.epoch_size`` of the base job is the samples per epoch of *one domain*.

Arms (same backbone, seeds and data plan per seed; B, C and D share init and data order, so seeds pair up):

* A: one single-domain model per domain; A2: A at twice the steps (convergence check); A4: A at a quarter;
* B: the plain multi-domain network (one head per domain, no SST module);
* C: SST universal: MSA, MSE, MST and label transfer (every head learns from every domain's labels through M);
* D: SST dedicated to syn_ppp (the scarce domain): C plus distillation into its head;
* ablations: C-LT (C without label transfer), C-MST (without MST: no transfer NLL, no label transfer), C-MSE
  (without MSE), BDS (B plus deep supervision: an auxiliary CE classifier on the feature levels MSA reads), CK (C
  plus distillation into every head).

Per arm and seed: per-domain mIoU on the held-out *test* split (the checkpoint was selected on validation), without
and with flip TTA, exported parameters and FLOPs, CPU latency; for SST arms the learned associations against the
generator's exact ones. Results are stored per (protocol, arm, seed) so runs resume by name and merge into one
report (:mod:`sstparse.train.benchmark_report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from sstparse import tracking
from sstparse.data.augment import normalize
from sstparse.data.preview import samples
from sstparse.data.shards import read_manifest
from sstparse.data.synth import true_joint
from sstparse.domains import LabelDomain, load_domains
from sstparse.evaluate import TTA, DomainEvaluator
from sstparse.model.sst import build_sst_model, inference_model
from sstparse.model.stats import count_flops, count_params
from sstparse.train.config import JobConfig
from sstparse.train import checkpoints
from sstparse.train.trainer import fit

DOMAINS = ("syn_lip", "syn_cihp", "syn_atr", "syn_ppp")
TARGET = "syn_ppp"
SINGLE_ARMS = {"A": 1.0, "A2": 2.0, "A4": 0.25}  # arm -> samples per epoch relative to data.epoch_size
ARMS = ("A", "A2", "A4", "B", "BDS", "C", "C-LT", "C-MST", "C-MSE", "CK", "D")
HEADLINE = ("A", "B", "C", "D")
# Every distinct code path of the harness: a single-domain model, SST universal (association scores), SST
# dedicated (one exported head). The other arms differ from these in arm_jobs' settings only (unit-tested in
# tests/train/test_benchmark.py; their model paths, the plain network of B, deep supervision and universal
# distillation, in tests/model), and A's four models differ only in their domain, so the smoke test trains the one
# D is compared with: a Ray Train fit costs about 30 s on a 2-core machine, most of it starting the controller, the
# worker and Ray Data's split coordinators.
SMOKE_ARMS = ("A", "C", "D")
SMOKE_SINGLE_DOMAINS = (TARGET,)
PROTOCOLS = ("passes", "steps")
SCORE_SPLIT = "test"


@dataclass
class ArmRun:
    arm: str
    seed: int
    protocol: str = "passes"
    miou: dict[str, float] = field(default_factory=dict)        # domain -> test mIoU, no TTA
    miou_flip: dict[str, float] = field(default_factory=dict)   # domain -> test mIoU, flip TTA
    val_miou: dict[str, float] = field(default_factory=dict)    # domain -> validation mIoU of the selected ckpt
    params: int = 0                            # exported network(s); A: the sum over its four models
    params_by_model: dict[str, int] = field(default_factory=dict)  # A: one entry per domain model
    flops: int = 0                             # per 512x512 image, inference, every head kept
    latency_ms: float = 0.0                    # CPU, 512x512, batch 1
    steps: int = 0                             # optimisation steps (all of the arm's models together)
    minutes: float = 0.0                       # wall time of training and scoring
    assoc: dict[str, float] = field(default_factory=dict)       # SST arms: recovery of the true associations
    checkpoints: dict[str, str] = field(default_factory=dict)   # model (domain or arm) -> selected checkpoint
    base: dict[str, Any] = field(default_factory=dict)          # base_settings() of the job it came from

    @property
    def key(self) -> str:
        return f"{self.protocol}-{self.arm}-s{self.seed}"

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key}.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "ArmRun":
        return cls(**json.loads(path.read_text()))


# Where a job ran and what it is called do not change its scores.
_PLACE = ("data.root", "train.name", "train.storage_path", "train.verbose")


def base_settings(base: JobConfig) -> dict[str, Any]:
    """The base job's settings that differ from the schema's defaults, flattened, less where it ran: what a stored
    result must match to be reused or reported beside results of the running base job."""
    flat = tracking.flatten(base.model_dump(mode="json", exclude_defaults=True, exclude={"tracking"}))
    return {k: v for k, v in flat.items() if k not in _PLACE}


def base_mismatch(run: ArmRun, base: JobConfig) -> list[str]:
    """``"key: stored -> now"`` for each base setting a stored result differs in (all of them for a result stored
    without its settings)."""
    now = base_settings(base)
    if not run.base:
        return ["stored without its base job's settings (a result from before they were recorded)"]
    return [f"{k}: {run.base.get(k, '<default>')!r} -> {now.get(k, '<default>')!r}"
            for k in sorted(set(now) | set(run.base)) if run.base.get(k) != now.get(k)]


def arm_jobs(base: JobConfig, arm: str, seed: int, protocol: str = "passes",
             single_domains: Sequence[str] = DOMAINS) -> list[JobConfig]:
    """The training jobs of one arm (single-domain arms have one per domain of ``single_domains``; the others one).
    ``base.sst`` holds C's and D's settings (``lambda_transfer``; ``lambda_kd`` for D and CK)."""
    if arm not in ARMS or protocol not in PROTOCOLS:
        raise ValueError(f"unknown arm {arm!r} or protocol {protocol!r}; arms: {list(ARMS)}, "
                         f"protocols: {list(PROTOCOLS)}")
    if base.data.epoch_size is None:
        raise ValueError("data.epoch_size: the benchmark needs the samples per epoch of one domain's model")
    if arm == "CK" and base.sst.lambda_kd == 0:
        raise ValueError("arm CK distils into every head: set sst.lambda_kd > 0")
    per_domain = base.data.epoch_size
    multi = per_domain * len(DOMAINS) if protocol == "passes" else per_domain
    tag = "" if protocol == "passes" else "-steps"

    def job(mode: str, target: str | None, name: str, epoch_size: int, **sst: Any) -> JobConfig:
        return base.model_copy(update={
            "train": base.train.model_copy(update={"mode": mode, "target": target, "seed": seed,
                                                   "name": f"{base.train.name or 'bench'}{tag}-{name}-s{seed}"}),
            "sst": base.sst.model_copy(update={"enabled": True, "lambda_kd": 0.0, **sst}),
            "data": base.data.model_copy(update={"seed": seed, "epoch_size": max(1, int(epoch_size))})})

    if arm in SINGLE_ARMS:
        return [job("single", d, f"{arm}-{d}", per_domain * SINGLE_ARMS[arm], enabled=False) for d in single_domains]
    variants = {
        "B": ("universal", {"enabled": False}),
        "BDS": ("universal", {"enabled": False, "deep_supervision": base.sst.lambda_mse}),
        "C": ("universal", {}),
        "C-LT": ("universal", {"lambda_transfer": 0.0}),
        "C-MST": ("universal", {"lambda_transfer": 0.0, "lambda_mst": 0.0}),
        "C-MSE": ("universal", {"lambda_mse": 0.0}),
        "CK": ("universal", {"lambda_kd": base.sst.lambda_kd}),
        "D": ("dedicated", {"lambda_kd": base.sst.lambda_kd}),
    }
    mode, sst = variants[arm]
    return [job(mode, TARGET if mode == "dedicated" else None, arm, multi, **sst)]


def run_arm(base: JobConfig, arm: str, seed: int, protocol: str = "passes", parent_run_id: str | None = None,
            latency_runs: int = 5, score_limit: int | None = None, single_domains: Sequence[str] = DOMAINS) -> ArmRun:
    """Train the arm's model(s) and score each on its domain's test split (``score_limit``: the first images only,
    and ``single_domains``: the single-domain arms' models, for smoke tests)."""
    out, domains, t0 = ArmRun(arm, seed, protocol), load_domains(), time.perf_counter()
    for job in arm_jobs(base, arm, seed, protocol, single_domains):
        # No model logging: nothing here is for serving; the scores below go to the run instead.
        result = fit(job, parent_run_id=parent_run_id, register=False, log_model=False)
        ckpt = Path(result.checkpoint_path)  # local storage: the benchmark runs on one machine
        _, model, meta = checkpoints.load_model(ckpt)
        exported = inference_model(model)
        for name in exported.domain_names:
            out.miou[name], out.miou_flip[name] = score(exported, domains[name], job, (TTA(), TTA(flip=True)),
                                                        limit=score_limit)
            out.val_miou[name] = float(meta["metrics"].get(f"val/{name}/miou", float("nan")))
        x = torch.randn(1, 3, 512, 512)
        out.checkpoints[job.train.target or arm] = str(ckpt)
        out.params_by_model[job.train.target or arm] = count_params(exported)
        out.params += count_params(exported)
        out.flops += count_flops(exported, x)
        out.latency_ms += latency(exported, x, latency_runs)
        out.steps += int(result.last.get("train/steps", 0)) * job.train.epochs
        if model.sst is not None:
            out.assoc = association_recovery(job, ckpt)[0]
        if result.run_id:
            tracking.log_metrics(job.tracking, result.run_id, {
                **{f"bench/{d}/miou": v for d, v in out.miou.items()},
                **{f"bench/{d}/miou_flip": v for d, v in out.miou_flip.items()},
                **{f"bench/assoc/{k}": v for k, v in out.assoc.items()}}, step=0)
            tracking.end_run(job.tracking, result.run_id)
    out.minutes = (time.perf_counter() - t0) / 60
    return out


@torch.no_grad()
def score(parser, domain: LabelDomain, job: JobConfig, ttas: tuple[TTA, ...], split: str = SCORE_SPLIT,
          limit: int | None = None) -> list[float]:
    """mIoU of one head on every image of a split of its domain, one per TTA (each image decoded once)."""
    evs = [DomainEvaluator(domain, tta) for tta in ttas]
    for image, label_map in samples(job.data.root_of(domain.name), domain.name, split, limit,
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


def _merge(matrix: np.ndarray, pairs, axis: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Merge left/right classes (``pairs``) along ``axis``: columns are summed, rows averaged by ``weights``."""
    m = np.moveaxis(np.asarray(matrix, dtype=np.float64), axis, 0)
    w = np.ones(m.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = np.ones(m.shape[0], bool)
    m, w = m.copy(), w.copy()
    for i, j in pairs:
        if weights is None:
            m[i] = m[i] + m[j]
        else:
            m[i] = (w[i] * m[i] + w[j] * m[j]) / max(w[i] + w[j], 1e-12)
            w[i] = w[i] + w[j]
        keep[j] = False
    return np.moveaxis(m[keep], 0, axis), w[keep]


def association_scores(learned: np.ndarray, joint: np.ndarray, a: LabelDomain, b: LabelDomain
                       ) -> dict[str, np.ndarray]:
    """Per row of M(a->b) over the classes of a that occur: TV distance to the truth, argmax agreement, the row's
    pixel share (for frequency weighting), and argmax agreement with left/right classes merged on both sides.
    ``joint``: true pixel counts of (a's class, b's class) on the images M was fitted on (domain b's)."""
    mass = joint.sum(1)
    rows = mass > 0
    true = joint[rows] / mass[rows, None]
    out = {"tv": 0.5 * np.abs(learned[rows] - true).sum(1), "agree": learned[rows].argmax(1) == true.argmax(1),
           "weight": mass[rows] / mass.sum()}
    lj, _ = _merge(joint, a.flip_pairs, 0)
    lj, _ = _merge(lj, b.flip_pairs, 1)
    ll, _ = _merge(learned, a.flip_pairs, 0, weights=mass)
    ll, _ = _merge(ll, b.flip_pairs, 1)
    merged_rows = lj.sum(1) > 0
    out["agree_lr"] = ll[merged_rows].argmax(1) == lj[merged_rows].argmax(1)
    return out


def association_recovery(job: JobConfig, ckpt: Path) -> tuple[dict[str, float], dict[str, Any]]:
    """Learned M(a->b) against the generator's exact P(b | a) on domain b's training images (where M is fitted),
    over every ordered pair. Means over all rows: ``tv`` (row total-variation distance), ``argmax_agreement``,
    ``argmax_weighted`` (rows weighted by their pixel share, mean over pairs) and ``argmax_lr_merged``."""
    domains, evals = load_domains(), checkpoints.read_eval(ckpt)
    hists = {d: np.asarray(read_manifest(job.data.root_of(d), d, job.data.storage_options)["atom_histogram"]["train"])
             for d in DOMAINS}
    tv, agree, weighted, merged, pairs = [], [], [], [], {}
    for a in DOMAINS:
        for b in DOMAINS:
            if a == b or f"assoc/{a}/{b}" not in evals.files:
                continue
            learned, joint = evals[f"assoc/{a}/{b}"], true_joint(domains[a], domains[b], hists[b])
            s = association_scores(learned, joint, domains[a], domains[b])
            tv += list(s["tv"])
            agree += list(s["agree"])
            merged += list(s["agree_lr"])
            weighted.append(float((s["agree"] * s["weight"]).sum()))
            with np.errstate(invalid="ignore", divide="ignore"):
                pairs[(a, b)] = (learned, joint / joint.sum(1, keepdims=True))
    scores = {"tv": float(np.mean(tv)), "argmax_agreement": float(np.mean(agree)),
              "argmax_weighted": float(np.mean(weighted)), "argmax_lr_merged": float(np.mean(merged))}
    return scores, pairs


def step_time_ratio(base: JobConfig, steps: int = 10) -> tuple[float, float]:
    """Seconds per training step (forward + backward) of B (plain) and C (SST) on the same batch, interleaved.
    C's label transfer runs from the first step (the ramp only scales its weight)."""
    domains = [load_domains()[d] for d in DOMAINS]
    torch.manual_seed(0)
    # Confidence 0: every association row takes part in label transfer, as in a trained model (random heads give
    # no confident row, which would time C without its transfer term).
    sst = arm_jobs(base, "C", 0)[0].sst.model_copy(update={"transfer_confidence": 0.0})
    c = build_sst_model(base.model, domains, sst).train()
    b = build_sst_model(base.model, domains, sst.model_copy(update={"enabled": False})).train()
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
