"""Losses of universal and dedicated SST training, and how they add up.

    loss = CE + lambda_mse * L_mse + lambda_mst * L_mst + lambda_transfer * ramp * L_transfer + lambda_kd * L_kd

* CE: every pixel is scored by *its own domain's* head. It is the mean over all labelled pixels of the batch, i.e.
  ``sum_d (n_d / N) * CE_d`` -- the plain ``sum_d CE_d`` weighted by each domain's share of the batch, so the
  ``domain_mix`` (a tunable) really sets how much each domain counts and the loss scale does not jump with the
  number of domains a batch happens to hold. Per-domain means are returned for logging.
* L_mse = KL(relation target || learned relation attention) + pixel-to-prototype CE (see sst.py).
* L_mst = transfer NLL (below): P_b @ M(b->a) must explain domain a's labels, for every b != a.
* L_transfer (label transfer, universal and dedicated): on an image of domain b, every other head a learns from
  b's *labels* through the estimated association: its target at a pixel labelled j is row j of M(b->a), i.e.
  P(a's label | head b says j), estimated on a's labelled images (sst.py). Rows whose largest entry is below the
  confidence threshold are left out (an even split such as "arm" -> left/right arm teaches nothing). M is
  detached. Ramped in over the first ``transfer_ramp`` of training (M is noise while the heads are).
* L_kd (dedicated mode: the target t; universal mode: every head t, averaged): on pixels of every other domain a,
  head t at temperature T is distilled towards ``mean_{b != t} P_b @ M(b->t)`` where P_b is head b's softened
  prediction -- or, for b = a, the ground truth one-hot, which is how a's *labels* reach t through M(a->t). The
  teacher is detached: distillation trains head t, not the associations or the other heads. Scaled by T^2 as in
  Hinton et al. so gradients do not shrink with T.

Weighting: CE is a mean over every labelled pixel, and each head gets only its own domain's share of it. So that
a foreign signal never outweighs a head's own labels at weight <= 1, L_transfer and L_kd are sums over the
foreign pixels a head learns from divided by ``(D - 1) * N`` (N: the batch's labelled pixels, D: domains): with
balanced domains a head's foreign term then has the weight of its own CE times lambda.

Heads whose domain is absent from a batch enter CE with weight zero (``0 * logits.sum()``) so that every
parameter is reached by autograd every step and DDP needs no ``find_unused_parameters`` (which costs an extra
traversal of the autograd graph every step).
Labels use -100 for "no supervision" here; the callers map 255 / out-of-range values to it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sstparse.model.config import SSTConfig

IGNORE = -100


def local_labels(labels: Tensor, domain_idx: Tensor, num_classes: Tensor) -> Tensor:
    """Long labels with every value outside the sample's own domain (255 included) set to IGNORE."""
    labels = labels.long()
    valid = labels < num_classes[domain_idx].view(-1, *([1] * (labels.dim() - 1)))
    return torch.where(valid, labels, torch.full_like(labels, IGNORE))


def domain_cross_entropy(logits: Mapping[str, Tensor], labels: Tensor, domain_idx: Tensor
                         ) -> tuple[Tensor, dict[str, Tensor]]:
    """Pixel-mean CE of each sample under its own domain's head, at the labels' resolution.

    ``logits`` (name -> (B, C_d, h, w), in domain-index order) may be on a coarser grid; only the rows of a
    head's own samples are upsampled, so memory stays at one head's worth of full-resolution logits.
    """
    total = labels.new_zeros((), dtype=torch.float32)
    count = labels.new_zeros((), dtype=torch.float32)
    per_domain: dict[str, Tensor] = {}
    for k, (name, z) in enumerate(logits.items()):
        idx = torch.nonzero(domain_idx == k).flatten()
        if idx.numel() == 0:
            total = total + 0.0 * z.sum()  # keeps the head in the graph (DDP); contributes nothing
            continue
        up = F.interpolate(z[idx], size=labels.shape[-2:], mode="bilinear", align_corners=False)
        y = labels[idx]
        loss_sum = F.cross_entropy(up.float(), y, ignore_index=IGNORE, reduction="sum")
        n = (y != IGNORE).sum().float()
        total, count = total + loss_sum, count + n
        per_domain[name] = (loss_sum / n.clamp_min(1)).detach()
    return total / count.clamp_min(1), per_domain


def transfer_loss(probs: Mapping[str, Tensor], labels: Tensor, domain_idx: Tensor,
                  assoc: Mapping[tuple[str, str], Tensor], to_heads: bool = False) -> Tensor:
    """MST transfer NLL: on an image of domain a, ``P_b @ M(b->a)`` must explain a's labels, for every b != a.

    ``probs``: name -> (B, C_b, h, w) softmax of each head; ``labels``: (B, h, w) local labels on that grid;
    ``assoc[(b, a)]``: (C_b, C_a) row-stochastic. The mean over (pair, pixel) of -log q_a(y).
    Gradients reach M(b->a) (and through it the class embeddings). With ``to_heads`` they also reach head b, which
    then learns from a's labels -- but head b and M(b->a) can then co-adapt into a permuted, self-consistent
    solution on a's images (seen on syn_lip/syn_ppp: face -> "upper-arms"), so by default P_b is detached and
    M(b->a) is an honest estimate of P(class of a | head b's prediction).
    """
    names = list(probs)
    losses = []
    for ka, a in enumerate(names):
        idx = torch.nonzero(domain_idx == ka).flatten()
        if idx.numel() == 0:
            continue
        y = labels[idx].flatten()
        valid = y != IGNORE
        if not bool(valid.any()):
            continue
        for b in names:
            if b == a:
                continue
            p = probs[b][idx].permute(0, 2, 3, 1).reshape(-1, probs[b].shape[1])[valid]
            p = p if to_heads else p.detach()
            q = p @ assoc[(b, a)]  # (pixels, C_a): a distribution over a's classes
            losses.append(-torch.log(q.gather(1, y[valid, None]).clamp_min(1e-6)).mean())
    if not losses:
        return next(iter(probs.values())).sum() * 0.0
    return torch.stack(losses).mean()


def kl_rows(target: Tensor, log_pred: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean over rows of KL(target_row || pred_row); zero target entries contribute nothing."""
    kl = (torch.xlogy(target, target) - target * log_pred).sum(-1)
    return (kl * weight).sum() / weight.sum().clamp_min(1)


def distillation_loss(logits: Mapping[str, Tensor], labels: Tensor, domain_idx: Tensor,
                      assoc: Mapping[tuple[str, str], Tensor], targets: Sequence[str], temperature: float) -> Tensor:
    """KD into each head of ``targets`` (one in dedicated mode, every head in universal mode), averaged, on the
    labelled pixels of every other domain's images. Each source head's softened prediction is computed once per
    batch and shared by all targets (recomputing it per target cost D x (D - 1) softmaxes in universal mode)."""
    names = list(logits)
    if len(names) < 2:  # no other head to learn from; zero, still connected to the heads (DDP)
        return torch.stack([logits[t].sum() for t in targets]).sum() * 0.0
    denom = (labels != IGNORE).sum().float().clamp_min(1) * (len(names) - 1)  # see the module doc: weighting
    # Only images some target learns on need a teacher: in dedicated mode, not the target domain's own images.
    rows = torch.nonzero(torch.stack([domain_idx != names.index(t) for t in targets]).any(0)).flatten()
    labels, domain_idx = labels[rows], domain_idx[rows]
    sources = [b for b in names if any(b != t for t in targets)]
    soft = _soft_predictions(logits, rows, labels, domain_idx, sources, temperature)
    return torch.stack([_distil_into(t, names, logits[t][rows], soft, labels, domain_idx, assoc, temperature)
                        for t in targets]).mean() / denom


@torch.no_grad()
def _soft_predictions(logits: Mapping[str, Tensor], rows: Tensor, labels: Tensor, domain_idx: Tensor,
                      heads: Sequence[str], temperature: float) -> dict[str, Tensor]:
    """Head b's prediction at temperature T on the images ``rows`` (``labels`` and ``domain_idx`` are theirs) --
    except on the labelled pixels of b's own domain's images, where its ground truth (one-hot) is better than its
    head. Detached: the teacher trains nothing."""
    valid = labels != IGNORE
    out = {}
    for kb, b in enumerate(logits):
        if b in heads:
            p = F.softmax(logits[b][rows].float() / temperature, dim=1)
            own = (domain_idx == kb).view(-1, 1, 1) & valid
            onehot = F.one_hot(torch.where(own, labels, 0), p.shape[1]).permute(0, 3, 1, 2).float()
            out[b] = torch.where(own[:, None], onehot, p)
    return out


def _distil_into(target: str, names: Sequence[str], zt: Tensor, soft: Mapping[str, Tensor], labels: Tensor,
                 domain_idx: Tensor, assoc: Mapping[tuple[str, str], Tensor], temperature: float) -> Tensor:
    """KD into head ``target`` (its logits ``zt``) on the images ``soft``, ``labels`` and ``domain_idx`` cover."""
    # Labelled pixels of the other domains' images (a mask, not a gather: in dedicated mode that is every image).
    # None (a batch of the target's images only) gives 0 through kl_rows, still connected to the head.
    keep = (labels != IGNORE) & (domain_idx != names.index(target)).view(-1, 1, 1)
    with torch.no_grad():
        teacher = zt.new_zeros(zt.shape, dtype=torch.float32)
        for b in (b for b in names if b != target):
            teacher += torch.einsum("bjhw,jk->bkhw", soft[b], assoc[(b, target)].float())
        teacher /= len(names) - 1
    log_student = F.log_softmax(zt.float() / temperature, dim=1)
    t = teacher.permute(0, 2, 3, 1)[keep]
    s = log_student.permute(0, 2, 3, 1)[keep]
    return _kl_sum(t, s) * temperature ** 2  # a sum over pixels: the caller divides (module doc, weighting)


def _kl_sum(target: Tensor, log_pred: Tensor) -> Tensor:
    """Sum over rows of KL(target_row || pred_row); 0 (still connected to ``log_pred``) when there are no rows."""
    return (torch.xlogy(target, target) - target * log_pred).sum()


def label_transfer_loss(logits: Mapping[str, Tensor], labels: Tensor, domain_idx: Tensor,
                        assoc: Mapping[tuple[str, str], Tensor], confidence: float) -> Tensor:
    """Every head a learns from every other domain b's labels: on b's labelled pixels of class j, KL(M(b->a)[j]
    || softmax(head a)), for the rows of M(b->a) whose largest entry is at least ``confidence``. ``assoc`` is
    detached here; ``labels`` are local labels on the logits' grid. Sum over pixels / ((D - 1) * N)."""
    names = list(logits)
    denom = (labels != IGNORE).sum().float().clamp_min(1) * max(len(names) - 1, 1)
    total = next(iter(logits.values())).sum() * 0.0  # connected to the heads even with nothing to transfer
    for kb, b in enumerate(names):
        idx = torch.nonzero(domain_idx == kb).flatten()
        if idx.numel() == 0:
            continue
        y = labels[idx]
        valid = y != IGNORE
        for a in names:
            if a == b:
                continue
            rows = assoc[(b, a)].detach().float()
            usable = rows.max(1).values >= confidence          # (C_b,)
            keep = valid & usable[y.clamp_min(0)]
            if not bool(keep.any()):
                continue
            log_p = F.log_softmax(logits[a][idx].float(), dim=1).permute(0, 2, 3, 1)[keep]
            total = total + _kl_sum(rows[y[keep]], log_p)
    return total / denom


def transfer_ramp(cfg: SSTConfig, progress: float) -> float:
    """The factor on lambda_transfer at ``progress`` (fraction of training done): linear from 0 to 1."""
    return 1.0 if cfg.transfer_ramp == 0 else min(1.0, max(0.0, progress) / cfg.transfer_ramp)


def total_loss(parts: Mapping[str, Tensor], cfg: SSTConfig, progress: float = 1.0) -> Tensor:
    """CE + the SST terms at the ``sst:`` section's weights. Zero-weighted terms are still added (times 0) so the
    graph never shrinks."""
    loss = parts["ce"]
    for key, lam in (("mse", cfg.lambda_mse), ("mst", cfg.lambda_mst), ("kd", cfg.lambda_kd),
                     ("transfer", cfg.lambda_transfer * transfer_ramp(cfg, progress)),
                     ("aux", cfg.deep_supervision)):
        if key in parts:
            loss = loss + lam * parts[key]
    return loss
