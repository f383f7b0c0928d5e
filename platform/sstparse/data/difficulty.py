"""How hard is a synthetic domain? The best colour-only classifier as a floor a real model must clear.

A per-pixel lookup from quantised RGB (16 levels per channel) to the class most frequent for that colour on
train images is the best any colour-only classifier can do at that quantisation. If it scores well, the generator
is too easy: a network could parse by colour lookup instead of learning shape and context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sstparse.data.synth import render, sample_rng
from sstparse.domains import LabelDomain
from sstparse.evaluate import confusion_matrix, scores

LEVELS = 16


@dataclass(frozen=True)
class ColourBaseline:
    miou: float                          # val mIoU, the same definition as every model score (evaluate.scores)
    left_right_accuracy: dict[str, float]  # per flip pair: accuracy telling left from right by colour alone


def _features(domain: LabelDomain, split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for i in range(n):
        r = render(domain, sample_rng(seed, domain.name, split, i))
        q = (r.image // (256 // LEVELS)).astype(np.int32)
        xs.append(((q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]).ravel())
        ys.append(r.label(domain).ravel())
    return np.concatenate(xs), np.concatenate(ys)


def colour_only_baseline(domain: LabelDomain, n_train: int = 300, n_val: int = 100, seed: int = 0) -> ColourBaseline:
    c = domain.num_classes
    x, y = _features(domain, "train", n_train, seed)
    xv, yv = _features(domain, "val", n_val, seed)
    counts = np.zeros((LEVELS ** 3, c), np.int64)
    np.add.at(counts, (x, y), 1)
    pred = counts.argmax(1)[xv]
    miou = scores(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(yv), c))["miou"]
    lr = {}
    for a, b in domain.flip_pairs:
        m = (yv == a) | (yv == b)
        if m.any():
            says_a = (counts[:, a] >= counts[:, b])[xv[m]]
            lr[f"{domain.classes[a]}/{domain.classes[b]}"] = float((says_a == (yv[m] == a)).mean())
    return ColourBaseline(miou, lr)
