"""Metrics against hand-computed confusion matrices; TTA flip with each domain's own left/right swap."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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


def _stripes(h: int, w: int) -> torch.Tensor:
    """Label map of vertical stripes, classes 1, 2, 3 from left to right (widths w/4, w/2, w/4)."""
    y = torch.full((h, w), 2, dtype=torch.long)
    y[:, : w // 4], y[:, 3 * w // 4:] = 1, 3
    return y


def _reads_the_class_from_the_image(num_classes: int):
    """A 'network' whose logits at a pixel pick the class written in the image's first channel there: it is
    right only where every view (rescaled, flipped) is mapped back onto the right pixels."""
    def fn(x):
        cls = x[:, 0].round().long().clamp(0, num_classes - 1)
        return 5.0 * F.one_hot(cls, num_classes).permute(0, 3, 1, 2).float()
    return fn


def test_multiscale_tta_maps_every_view_back_onto_its_pixels():
    d = get_domain("pascal_person_part")  # no left/right classes: the flip needs no channel swap here
    labels = _stripes(20, 32)[None]
    image = labels[:, None].float().expand(1, 3, 20, 32).clone()
    ev = DomainEvaluator(d, TTA(flip=True, scales=(0.5, 1.0, 1.5)))
    ev.update(_reads_the_class_from_the_image(d.num_classes), image, labels)
    out = ev.compute()
    assert out["tta"] == "flip=1,scales=0.5+1+1.5"
    # Rescaling blurs the stripe borders by a pixel or so; everywhere else every view must agree.
    pred = predict_probs(_reads_the_class_from_the_image(d.num_classes), image, d,
                         TTA(flip=True, scales=(0.5, 1.0, 1.5))).argmax(1)
    interior = torch.ones(32, dtype=torch.bool)
    for edge in (8, 24):
        interior[edge - 2: edge + 2] = False
    assert torch.equal(pred[..., interior], labels[..., interior])
    assert out["pixel_acc"] > 0.85 and out["miou"] > 0.75
    # A view mapped back mirrored (a flip not undone) would swap the outer stripes: the check above would fail.
    mirrored = predict_probs(lambda x: _reads_the_class_from_the_image(d.num_classes)(x.flip(-1)), image, d,
                             TTA(scales=(0.5, 1.0, 1.5))).argmax(1)
    assert not torch.equal(mirrored[..., interior], labels[..., interior])
