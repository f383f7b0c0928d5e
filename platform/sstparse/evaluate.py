"""Segmentation metrics from dataset-wide confusion matrices, and test-time augmentation.

Scores come from one confusion matrix per domain accumulated over the whole validation set (summed across
workers with an all-reduce), never from averaging per-batch scores, which would weight small images wrongly.
Every score is reported with the TTA settings that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from sstparse.domains import LabelDomain

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # (B,3,H,W) normalised images -> (B,C,H,W) logits


class FlipSwap(Protocol):
    """What flip TTA needs of a domain: a LabelDomain, or the pyfunc's HeadSpec (which has no card to load)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def flip_lut(self) -> np.ndarray: ...


@dataclass(frozen=True)
class TTA:
    """Test-time augmentation settings; recorded next to every score they produce."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def tag(self) -> str:
        s = "+".join(f"{x:g}" for x in self.scales)
        return f"flip={int(self.flip)},scales={s}"


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
                     ) -> torch.Tensor:
    """(C, C) int64 matrix, rows = ground truth, columns = prediction; ignore pixels are left out."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and int(t.max()) >= num_classes:
        raise ValueError(f"target holds class {int(t.max())} but the domain has {num_classes} classes")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def all_reduce_(matrix: torch.Tensor) -> torch.Tensor:
    """Sum a confusion matrix over all workers in place (no-op outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        # NCCL reduces CUDA tensors only; gloo wants CPU ones.
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else matrix.device
        buf = matrix.to(dev)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        matrix.copy_(buf.to(matrix.device))
    return matrix


def scores(matrix: np.ndarray | torch.Tensor, class_names: Iterable[str] | None = None) -> dict[str, float]:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU.

    A class absent from both ground truth and prediction has no IoU (NaN) and is left out of the means; a class
    predicted but never present scores 0, as it should.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp, gt, pr = np.diag(m), m.sum(1), m.sum(0)
    union = gt + pr - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    out = {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_acc": float(tp.sum() / m.sum()) if m.sum() else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
    }
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
    out.update({f"iou/{n}": float(v) for n, v in zip(names, iou)})
    return out


def flip_channels(logits: torch.Tensor, domain: FlipSwap) -> torch.Tensor:
    """Mirror logits horizontally and swap the domain's left/right class channels, so a prediction on a flipped
    image lines up with the original image's classes."""
    perm = torch.as_tensor(domain.flip_lut[: domain.num_classes].astype(np.int64), device=logits.device)
    return logits.flip(-1).index_select(1, perm)


@torch.no_grad()
def predict_probs(logits_fn: LogitsFn, images: torch.Tensor, domain: FlipSwap, tta: TTA = TTA()) -> torch.Tensor:
    """Class probabilities (B, C, H, W) averaged over the TTA views, at the input resolution."""
    h, w = images.shape[-2:]
    total = None
    for s in tta.scales:
        x = images if s == 1.0 else F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        views = [(x, False)] + ([(x.flip(-1), True)] if tta.flip else [])
        for view, flipped in views:
            logits = logits_fn(view)
            if flipped:
                logits = flip_channels(logits, domain)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.float().softmax(1)
            total = p if total is None else total + p
    return total / (len(tta.scales) * (2 if tta.flip else 1))


@dataclass
class DomainEvaluator:
    """Accumulates one domain's confusion matrix over a validation set."""

    domain: LabelDomain
    tta: TTA = TTA()

    def __post_init__(self):
        n = self.domain.num_classes
        self.matrix = torch.zeros(n, n, dtype=torch.int64)

    def update(self, logits_fn: LogitsFn, images: torch.Tensor, labels: torch.Tensor) -> None:
        pred = predict_probs(logits_fn, images, self.domain, self.tta).argmax(1)
        self.matrix += confusion_matrix(pred.cpu(), labels.cpu(), self.domain.num_classes, self.domain.ignore_index)

    def compute(self, reduce: bool = True) -> dict[str, float | str]:
        m = all_reduce_(self.matrix.clone()) if reduce else self.matrix
        return {**scores(m, self.domain.classes), "tta": self.tta.tag()}
