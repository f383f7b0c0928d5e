"""Joint image/label augmentation in plain numpy + PIL (no Ray, no torch): the same functions run inside Ray Data's
``map_batches`` (pipeline.py) and inside the torch DataLoader baseline (jobs/benchmark_data.py).

Training sample path, in this order::

    decode -> random scale + crop to (S, S) with ignore padding -> horizontal flip (+ L/R class swap) -> colour jitter

Scale and crop are done in one step: the crop window is chosen in the *scaled* frame, mapped back to the source, and
only that box is resized (PIL ``resize(box=...)``). This is the same distribution as "resize the whole image, then
crop", but it resizes only the pixels that survive the crop, which matters at scale factors up to 2.

Labels are resized with nearest neighbour (class indices must never be interpolated); padding is the domain's
ignore index for labels and the mean colour for images (so it normalises to ~0). The flip swaps left/right classes
through ``domain.flip_lut``: each domain has its own pairs (LIP 14/15, 16/17, 18/19; ATR 9/10, 12/13, 14/15).

Randomness only comes from an explicit ``np.random.Generator`` so a sample's augmentation is a pure function of
its seed (pipeline.py derives the seed from (config seed, epoch, domain, part, row, copy)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageEnhance

from sstparse.data.shards import BadRecord, decode_image, decode_label

# ImageNet statistics: the backbones may start from ImageNet weights, which expect this normalisation.
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
FILL = tuple(int(round(v)) for v in MEAN)  # image padding colour: normalises to ~0


@dataclass(frozen=True)
class DomainInfo:
    """What augmentation needs to know about a domain; small and picklable (shipped to every Ray task)."""

    name: str
    index: int            # position in the config's ordered domain list (the `domain` column)
    num_classes: int
    ignore_index: int
    flip_lut: np.ndarray  # (256,) uint8, swaps this domain's left/right classes

    @classmethod
    def from_domain(cls, domain, index: int) -> "DomainInfo":
        return cls(domain.name, index, domain.num_classes, domain.ignore_index, np.asarray(domain.flip_lut))

    @cached_property
    def valid_lut(self) -> np.ndarray:
        """(256,) bool: label values allowed in this domain (its classes and the ignore index)."""
        ok = np.zeros(256, bool)
        ok[: self.num_classes] = True
        ok[self.ignore_index] = True
        return ok


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation parameters (built from ``DataConfig`` by the pipeline)."""

    crop_size: int = 256
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: float = 0.5                 # probability of a horizontal flip
    brightness: float = 0.3           # factors drawn from [1 - x, 1 + x]; 0 disables
    contrast: float = 0.3
    saturation: float = 0.3


# ----------------------------------------------------------------------------------------------- decode
def decode_pair(image: bytes, label: bytes, domain: DomainInfo, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check one record: (H, W, 3) uint8 image, (H, W) uint8 label; :class:`BadRecord` if unusable."""
    img, _ = decode_image(image, source)
    lbl = decode_label(label, source)
    if lbl.shape != img.shape[:2]:
        raise BadRecord(source, f"label size {lbl.shape[1]}x{lbl.shape[0]} != image size "
                                f"{img.shape[1]}x{img.shape[0]}")
    # A 256-entry lookup is ~10x cheaper than np.unique on every training sample.
    if not domain.valid_lut[lbl].all():
        values = np.unique(lbl)
        bad = values[~domain.valid_lut[values]]
        raise BadRecord(source, f"label values {bad.tolist()} outside domain {domain.name}'s "
                                f"{domain.num_classes} classes (ignore index {domain.ignore_index})")
    return img, lbl


# ----------------------------------------------------------------------------------------------- geometry
# The steps work on PIL images internally (C loops; no numpy <-> PIL round trip between steps); the public
# functions take and return numpy arrays and are exactly the steps `augment` chains.
def _offset(scaled: int, size: int, rng: np.random.Generator) -> int:
    """Top/left of the crop window in the scaled frame; negative when the scaled image is smaller (= padding)."""
    if scaled >= size:
        return int(rng.integers(0, scaled - size + 1))
    return -int(rng.integers(0, size - scaled + 1))


def _scale_crop(im: Image.Image, lb: Image.Image, size: int, scale: float, rng: np.random.Generator,
                ignore_index: int) -> tuple[Image.Image, Image.Image]:
    w, h = im.size
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    y0, x0 = _offset(sh, size, rng), _offset(sw, size, rng)
    # Part of the crop window that lies on the scaled image, in scaled coordinates.
    ys, ye, xs, xe = max(y0, 0), min(y0 + size, sh), max(x0, 0), min(x0 + size, sw)
    fy, fx = sh / h, sw / w
    # The same region in source pixels (clamped: float round-off must not step outside the image).
    box = (xs / fx, ys / fy, min(xe / fx, w), min(ye / fy, h))
    out_im = Image.new("RGB", (size, size), FILL)
    out_im.paste(im.resize((xe - xs, ye - ys), Image.BILINEAR, box=box), (xs - x0, ys - y0))
    out_lb = Image.new("L", (size, size), ignore_index)
    out_lb.paste(lb.resize((xe - xs, ye - ys), Image.NEAREST, box=box), (xs - x0, ys - y0))
    return out_im, out_lb


def _hflip(im: Image.Image, lb: Image.Image, flip_lut: np.ndarray) -> tuple[Image.Image, Image.Image]:
    return (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            lb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).point(flip_lut.tolist()))


def scale_crop(img: np.ndarray, lbl: np.ndarray, size: int, scale: float, rng: np.random.Generator,
               ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Resize by ``scale`` and take a random ``size`` x ``size`` crop, padding with ignore / mean colour."""
    im, lb = _scale_crop(Image.fromarray(img), Image.fromarray(lbl), size, scale, rng, ignore_index)
    return np.asarray(im), np.asarray(lb)


def hflip(img: np.ndarray, lbl: np.ndarray, flip_lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; the person's left arm becomes a right arm, so the label's L/R classes are swapped."""
    im, lb = _hflip(Image.fromarray(img), Image.fromarray(lbl), flip_lut)
    return np.asarray(im), np.asarray(lb)


# ----------------------------------------------------------------------------------------------- photometric
def _jitter(im: Image.Image, rng: np.random.Generator, brightness: float, contrast: float,
            saturation: float) -> Image.Image:
    ops = [(ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
           (ImageEnhance.Color, saturation)]
    factors = [rng.uniform(1 - x, 1 + x) if x > 0 else None for _, x in ops]
    order = rng.permutation(len(ops))  # always drawn, so the stream of draws does not depend on the settings
    for i in order:
        if factors[i] is not None:
            im = ops[i][0](im).enhance(factors[i])
    return im


def color_jitter(img: np.ndarray, rng: np.random.Generator, brightness: float = 0.3, contrast: float = 0.3,
                 saturation: float = 0.3) -> np.ndarray:
    """Random brightness, contrast and saturation (factors in [1-x, 1+x]) in random order.

    PIL's ImageEnhance runs in C on uint8, several times faster than the same blends in float numpy. Hue is left
    out on purpose: an HSV round trip would cost more than the rest of the augmentation together.
    """
    return np.asarray(_jitter(Image.fromarray(img), rng, brightness, contrast, saturation))


def normalize(images: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32, ImageNet mean/std."""
    x = np.moveaxis(np.asarray(images), -1, -3)
    out = np.empty(x.shape, np.float32)  # C order (a plain ufunc would keep the input's channels-last strides)
    np.subtract(x, MEAN[:, None, None], out=out)
    out *= (1.0 / STD)[:, None, None]
    return out


# ----------------------------------------------------------------------------------------------- composites
def augment(img: np.ndarray, lbl: np.ndarray, domain: DomainInfo, spec: AugmentSpec,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Decoded sample -> (S, S, 3) uint8 image, (S, S) uint8 label (ignore = the domain's ignore index).

    Same result as scale_crop -> hflip -> color_jitter on numpy arrays (a test checks it), ~25% cheaper."""
    lo, hi = spec.scale_range
    im, lb = _scale_crop(Image.fromarray(img), Image.fromarray(lbl), spec.crop_size, float(rng.uniform(lo, hi)),
                         rng, domain.ignore_index)
    if rng.random() < spec.flip:
        im, lb = _hflip(im, lb, domain.flip_lut)
    if spec.brightness or spec.contrast or spec.saturation:
        im = _jitter(im, rng, spec.brightness, spec.contrast, spec.saturation)
    return np.asarray(im), np.asarray(lb)


def train_sample(image: bytes, label: bytes, domain: DomainInfo, spec: AugmentSpec, rng: np.random.Generator,
                 source: str) -> tuple[np.ndarray, np.ndarray]:
    """Encoded record -> augmented uint8 arrays. Raises :class:`BadRecord` for an unusable record."""
    img, lbl = decode_pair(image, label, domain, source)
    return augment(img, lbl, domain, spec, rng)


def sample_rng(seed: int, epoch: int, domain: int, part: int, row: int, copy: int) -> np.random.Generator:
    """The generator of one planned sample: independent of which task or worker happens to process it."""
    return np.random.default_rng([seed, epoch, domain, part, row, copy])
