"""Backgrounds and colours for the synthetic generator; one scene style per domain.

Scenes reuse the domain's garment palette and include limb-like capsules in skin tones ("clutter"), so that
background pixels cannot be told from people by colour alone.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

# (saturation range, value range) per palette; hue is uniform. A quarter of draws ignore the palette so that
# domains overlap in colour as real datasets do.
PALETTES = {
    "vivid": ((0.5, 1.0), (0.5, 1.0)),
    "muted": ((0.08, 0.45), (0.3, 0.8)),
    "dark": ((0.1, 0.7), (0.1, 0.5)),
    "pastel": ((0.12, 0.4), (0.72, 1.0)),
}


def sample_color(rng: np.random.Generator, palette: str) -> np.ndarray:
    (s0, s1), (v0, v1) = PALETTES[palette] if rng.random() < 0.75 else ((0.0, 1.0), (0.1, 1.0))
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(s0, s1), rng.uniform(v0, v1))
    return np.array([r, g, b]) * 255.0


def _rgb(c) -> tuple[int, int, int]:
    return tuple(int(x) for x in np.clip(c, 0, 255))


def _room(rng, d: ImageDraw.ImageDraw, h, w, palette):
    horizon = int(h * rng.uniform(0.55, 0.85))
    d.rectangle([0, 0, w, horizon], fill=_rgb(sample_color(rng, palette)))
    d.rectangle([0, horizon, w, h], fill=_rgb(sample_color(rng, palette)))
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = rng.uniform(0, w), rng.uniform(0, horizon)
        d.rectangle([x0, y0, x0 + rng.uniform(0.1, 0.4) * w, y0 + rng.uniform(0.1, 0.4) * h],
                    fill=_rgb(sample_color(rng, palette)))


def _street(rng, d, h, w, palette):
    sky = np.array([rng.uniform(120, 200), rng.uniform(150, 210), rng.uniform(180, 255)])
    d.rectangle([0, 0, w, h], fill=_rgb(sky))
    ground = int(h * rng.uniform(0.7, 0.9))
    x = -rng.uniform(0, 0.2) * w
    while x < w:
        bw, top = rng.uniform(0.15, 0.45) * w, rng.uniform(0.05, 0.5) * h
        col = sample_color(rng, palette)
        d.rectangle([x, top, x + bw, ground], fill=_rgb(col))
        win = _rgb(col * rng.uniform(0.4, 0.7))
        for wy in np.arange(top + 6, ground - 8, rng.uniform(10, 18)):
            for wx in np.arange(x + 4, x + bw - 6, rng.uniform(9, 16)):
                d.rectangle([wx, wy, wx + 4, wy + 5], fill=win)
        x += bw
    d.rectangle([0, ground, w, h], fill=_rgb(np.full(3, rng.uniform(60, 140))))


def _studio(rng, d, h, w, palette):
    c0, c1 = sample_color(rng, palette), sample_color(rng, palette)
    for y in range(0, h, 4):
        t = y / max(h - 1, 1)
        d.rectangle([0, y, w, y + 4], fill=_rgb(c0 * (1 - t) + c1 * t))


def _clutter(rng, d, h, w, palette):
    d.rectangle([0, 0, w, h], fill=_rgb(sample_color(rng, palette)))
    for _ in range(int(rng.integers(15, 40))):
        col = _rgb(sample_color(rng, palette))
        x, y, s = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.25) * min(h, w)
        kind = rng.integers(4)
        if kind == 0:
            d.rectangle([x, y, x + s, y + s * rng.uniform(0.3, 2)], fill=col)
        elif kind == 1:
            d.ellipse([x, y, x + s, y + s * rng.uniform(0.5, 1.5)], fill=col)
        else:  # limb-like capsules, some in skin tones: a colour lookup cannot tell them from arms
            if kind == 3:
                r, g, b = colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.95))
                col = _rgb(np.array([r, g, b]) * 255)
            a = rng.uniform(0, math.pi)
            d.line([x, y, x + s * math.cos(a), y + s * math.sin(a)], fill=col, width=max(2, int(s * 0.25)))


SCENES = {"room": _room, "street": _street, "studio": _studio, "clutter": _clutter}


def render_background(rng: np.random.Generator, kind: str, h: int, w: int, palette: str) -> np.ndarray:
    """(h, w, 3) float32 scene."""
    im = Image.new("RGB", (w, h))
    SCENES[kind](rng, ImageDraw.Draw(im), h, w, palette)
    return np.asarray(im, dtype=np.float32).copy()


def occluder(rng: np.random.Generator, h: int, w: int) -> list[tuple[float, float]]:
    """A polygon in front of the people (a pole, a table edge, a sign); it is background in every domain."""
    if rng.random() < 0.5:  # vertical pole
        x, bw = rng.uniform(0.1, 0.9) * w, rng.uniform(0.04, 0.12) * w
        return [(x, 0), (x + bw, 0), (x + bw, h), (x, h)]
    y, x0 = rng.uniform(0.55, 0.85) * h, rng.uniform(-0.2, 0.5) * w
    return [(x0, y), (x0 + rng.uniform(0.4, 0.9) * w, y), (x0 + rng.uniform(0.4, 0.9) * w, h), (x0, h)]
