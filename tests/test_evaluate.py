"""Metrics against hand-computed confusion matrices; TTA flip with each domain's own left/right swap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sstparse.domains import get_domain
from sstparse.evaluate import TTA, DomainEvaluator, confusion_matrix, flip_channels, predict_probs, scores


def test_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    m = confusion_matrix(pred, target, 3)
    assert m.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]  # the ignore pixel is not counted


def test_scores_by_hand():
    m = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    s = scores(m, ["bg", "a", "b"])
    # IoU: bg 1/(2+1-1)=0.5, a 2/(2+3-2)=2/3, b 1
    assert s["iou/bg"] == pytest.approx(0.5) and s["iou/a"] == pytest.approx(2 / 3) and s["iou/b"] == 1.0
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert s["pixel_acc"] == pytest.approx(4 / 5)
    assert s["mean_acc"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_absent_class_is_nan_but_false_positive_counts():
    m = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])  # class 1 predicted once, never present; class 2 absent
    s = scores(m)
    assert s["iou/1"] == 0.0 and math.isnan(s["iou/2"])
    assert s["miou"] == pytest.approx((0.75 + 0.0) / 2)


def test_out_of_range_target_is_an_error():
    with pytest.raises(ValueError, match="class 7"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), 3)


@pytest.mark.parametrize("name", ["lip", "atr"])
def test_flip_channels_swaps_that_domains_pairs(name):
    d = get_domain(name)
    logits = torch.randn(1, d.num_classes, 4, 6)
    flipped = flip_channels(logits, d)
    for a, b in d.flip_pairs:
        assert torch.equal(flipped[0, a], logits[0, b].flip(-1))
    assert torch.equal(flip_channels(flipped, d), logits)


def _side_model(domain, a, b):
    """Predicts class a on the image's left half and b on its right half: correct for people facing the camera
    one way, and equivariant under flip + left/right swap, so flip TTA must agree with it exactly."""
    def fn(x):
        n, _, h, w = x.shape
        out = torch.zeros(n, domain.num_classes, h, w)
        out[:, a, :, : w // 2] = 5.0
        out[:, b, :, w // 2:] = 5.0
        return out
    return fn


@pytest.mark.parametrize("name", ["lip", "atr"])
def test_flip_tta_uses_the_domains_own_pairs(name):
    d = get_domain(name)
    x = torch.zeros(2, 3, 8, 8)
    for a, b in d.flip_pairs:
        fn = _side_model(d, a, b)
        assert torch.equal(predict_probs(fn, x, d).argmax(1), predict_probs(fn, x, d, TTA(flip=True)).argmax(1))
    # Without the channel swap the flipped view would contradict the plain one: check the swap really happens.
    a, b = d.flip_pairs[0]
    only_a = _side_model(d, a, a)
    probs = predict_probs(only_a, x, d, TTA(flip=True))
    assert torch.allclose(probs[:, a], probs[:, b])


def test_multiscale_tta_returns_input_resolution_and_evaluator_records_settings():
    d = get_domain("pascal_person_part")
    ev = DomainEvaluator(d, TTA(flip=True, scales=(0.5, 1.0, 1.5)))
    labels = torch.zeros(1, 10, 14, dtype=torch.long)
    ev.update(lambda x: torch.zeros(x.shape[0], d.num_classes, *x.shape[-2:]).index_fill_(1, torch.tensor([0]), 1.0),
              torch.zeros(1, 3, 10, 14), labels)
    out = ev.compute()
    assert out["miou"] == 1.0 and out["pixel_acc"] == 1.0 and out["tta"] == "flip=1,scales=0.5+1+1.5"
