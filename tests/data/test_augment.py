"""Joint augmentation (no Ray): flip with per-domain L/R swap, scale + crop with ignore padding, jitter, decode."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sstparse.data import augment as aug
from sstparse.data.shards import BadRecord, encode_jpeg, encode_png
from sstparse.data.synth import render, sample_rng
from sstparse.domains import load_domains

DOMAINS = load_domains()


def info(name: str) -> aug.DomainInfo:
    return aug.DomainInfo.from_domain(DOMAINS[name], 0)


def synth_pair(name: str, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = render(DOMAINS[name], sample_rng(0, name, "train", i))
    return r.image, r.label(DOMAINS[name])


@pytest.mark.parametrize("name", ["syn_lip", "syn_atr", "lip", "atr", "syn_ppp"])
def test_flip_twice_restores(name):
    d = info(name)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    lbl = rng.choice(np.r_[np.arange(d.num_classes), 255], (20, 30)).astype(np.uint8)
    img2, lbl2 = aug.hflip(*aug.hflip(img, lbl, d.flip_lut), d.flip_lut)
    assert np.array_equal(img2, img) and np.array_equal(lbl2, lbl)


@pytest.mark.parametrize("name", ["syn_lip", "syn_atr"])
def test_flip_left_pixels_are_mirrored_right_pixels(name):
    """On a real synthetic sample: after a flip, class `left` sits exactly where the mirrored `right` was."""
    d = info(name)
    img, lbl = synth_pair(name)
    present = [(a, b) for a, b in DOMAINS[name].flip_pairs if (lbl == a).any() and (lbl == b).any()]
    assert present, "the sample should show at least one left/right pair"
    _, flipped = aug.hflip(img, lbl, d.flip_lut)
    for a, b in DOMAINS[name].flip_pairs:
        assert np.array_equal(flipped == a, (lbl == b)[:, ::-1])
        assert np.array_equal(flipped == b, (lbl == a)[:, ::-1])
    unpaired = ~np.isin(lbl, np.ravel(DOMAINS[name].flip_pairs))
    assert np.array_equal(flipped[unpaired[:, ::-1]], lbl[:, ::-1][unpaired[:, ::-1]])


def test_flip_uses_each_domains_own_pairs():
    """Pairs are per domain: ATR's 9/10 (left/right shoe) and 12/13 (legs) are not pairs in LIP (pants, jumpsuits,
    skirt, face), and LIP's 16/17 (legs) are not a pair in ATR."""
    lip, atr = info("lip"), info("atr")
    lbl = np.array([[9, 10, 12, 13, 14, 16]], np.uint8)
    _, l_lip = aug.hflip(lbl[..., None].repeat(3, -1), lbl, lip.flip_lut)
    _, l_atr = aug.hflip(lbl[..., None].repeat(3, -1), lbl, atr.flip_lut)
    assert l_lip[0].tolist() == [17, 15, 13, 12, 10, 9]   # mirrored: 16->17, 14->15; 9,10,12,13 unchanged
    assert l_atr[0].tolist() == [16, 15, 12, 13, 9, 10]   # mirrored: 9<->10, 12<->13, 14<->15; 16 unchanged


def test_scale_crop_shapes_and_ignore_padding():
    d = info("syn_lip")
    img, lbl = synth_pair("syn_lip")
    h, w = lbl.shape
    rng = np.random.default_rng(0)
    out_img, out_lbl = aug.scale_crop(img, lbl, 320, 0.5, rng, d.ignore_index)  # 128x96 pasted into 320x320
    assert out_img.shape == (320, 320, 3) and out_lbl.shape == (320, 320)
    assert out_img.dtype == out_lbl.dtype == np.uint8
    on_image = out_lbl != 255
    assert on_image.sum() == round(h * 0.5) * round(w * 0.5)
    assert (out_img[~on_image] == aug.FILL).all()
    assert set(np.unique(out_lbl)) <= set(np.unique(lbl)) | {255}   # nearest neighbour: no invented classes


def test_scale_one_crop_is_a_window_of_the_original():
    img, lbl = synth_pair("syn_atr")
    rng = np.random.default_rng(3)
    out_img, out_lbl = aug.scale_crop(img, lbl, 128, 1.0, rng)
    # find the window: the crop must equal some 128x128 sub-array of the label and image
    h, w = lbl.shape
    hits = [(y, x) for y in range(h - 127) for x in range(w - 127)
            if np.array_equal(lbl[y:y + 128, x:x + 128], out_lbl)]
    assert hits
    y, x = hits[0]
    assert np.abs(img[y:y + 128, x:x + 128].astype(int) - out_img).max() <= 1


def test_augment_is_deterministic_per_seed_and_varies_across_seeds():
    d, spec = info("syn_lip"), aug.AugmentSpec(crop_size=96)
    img, lbl = synth_pair("syn_lip")
    a = aug.augment(img, lbl, d, spec, aug.sample_rng(0, 1, 0, 2, 3, 0))
    b = aug.augment(img, lbl, d, spec, aug.sample_rng(0, 1, 0, 2, 3, 0))
    c = aug.augment(img, lbl, d, spec, aug.sample_rng(0, 2, 0, 2, 3, 0))   # next epoch
    e = aug.augment(img, lbl, d, spec, aug.sample_rng(0, 1, 0, 2, 3, 1))   # another copy, same epoch
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], e[0])
    assert a[0].shape == (96, 96, 3) and a[1].shape == (96, 96)


def test_color_jitter_changes_image_only_and_zero_is_identity():
    img, _ = synth_pair("syn_ppp")
    rng = np.random.default_rng(0)
    out = aug.color_jitter(img, rng, 0.4, 0.4, 0.4)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    assert np.array_equal(aug.color_jitter(img, rng, 0, 0, 0), img)


def test_normalize_and_stack_to_model_dtypes():
    x = np.zeros((2, 4, 5, 3), np.uint8)
    x[..., 0] = 255
    y = aug.normalize(x)
    assert y.shape == (2, 3, 4, 5) and y.dtype == np.float32 and y.flags.c_contiguous
    assert np.allclose(y[:, 0], (255 - aug.MEAN[0]) / aug.STD[0]) and np.allclose(y[:, 1], -aug.MEAN[1] / aug.STD[1])


def test_the_stream_finishes_batches_exactly_as_normalize_does():
    """Blocks carry uint8 crops; finish_batch (the consumer side, on any device) must give the very floats the
    evaluation path's normalize gives, so training and validation see the same inputs."""
    import torch

    from sstparse.data.pipeline import finish_batch

    imgs = np.random.default_rng(0).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    labels = np.array([np.full((6, 5), 255, np.uint8), np.zeros((6, 5), np.uint8), np.ones((6, 5), np.uint8)])
    out = finish_batch({"image": torch.from_numpy(imgs), "label": torch.from_numpy(labels),
                        "domain": torch.tensor([0, 1, 2])})
    assert out["image"].dtype == torch.float32 and out["image"].is_contiguous()
    assert np.array_equal(out["image"].numpy(), aug.normalize(imgs))   # bit-identical, not just close
    assert out["label"].dtype == torch.int64 and out["label"][0, 0, 0] == 255
    assert out["domain"].tolist() == [0, 1, 2]


def test_train_sample_end_to_end_from_bytes():
    d = info("syn_lip")
    img, lbl = synth_pair("syn_lip")
    spec = aug.AugmentSpec(crop_size=128, flip=1.0)
    out_img, out_lbl = aug.train_sample(encode_jpeg(img), encode_png(lbl), d, spec, np.random.default_rng(0), "x")
    assert out_img.shape == (128, 128, 3) and out_lbl.shape == (128, 128)
    assert set(np.unique(out_lbl)) <= set(range(d.num_classes)) | {255}


@pytest.mark.parametrize("case, reason", [
    ("garbage_image", "undecodable image"),
    ("size_mismatch", "label size 30x20 != image size 32x20"),
    ("out_of_range", "label values [40]"),
])
def test_decode_pair_rejects_bad_records_naming_the_source(case, reason):
    d = info("syn_ppp")
    img = np.zeros((20, 32, 3), np.uint8)
    lbl = np.zeros((20, 32), np.uint8)
    image_bytes, label_bytes = encode_jpeg(img), encode_png(lbl)
    if case == "garbage_image":
        image_bytes = b"not a jpeg"
    elif case == "size_mismatch":
        label_bytes = encode_png(np.zeros((20, 30), np.uint8))
    else:
        lbl[3, 4] = 40
        label_bytes = encode_png(lbl)
    with pytest.raises(BadRecord, match=re.escape(reason)) as err:
        aug.decode_pair(image_bytes, label_bytes, d, "s3://b/syn_ppp/train/part-00000.parquet#row=3")
    assert err.value.source.endswith("#row=3")


def test_augment_equals_the_chained_steps():
    """`augment` chains the steps on PIL images internally; it must equal applying the public steps in order."""
    d = info("syn_atr")
    img, lbl = synth_pair("syn_atr", 2)
    for seed in range(6):
        spec = aug.AugmentSpec(crop_size=200, scale_range=(0.4, 1.6), flip=0.5)
        got = aug.augment(img, lbl, d, spec, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        i, lb = aug.scale_crop(img, lbl, 200, float(rng.uniform(0.4, 1.6)), rng, d.ignore_index)
        if rng.random() < spec.flip:
            i, lb = aug.hflip(i, lb, d.flip_lut)
        i = aug.color_jitter(i, rng, spec.brightness, spec.contrast, spec.saturation)
        assert np.array_equal(got[0], i) and np.array_equal(got[1], lb)
