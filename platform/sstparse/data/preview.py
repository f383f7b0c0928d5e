"""Preview grid: one row per domain, image next to its colour-coded label, read back from the shards."""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from sstparse.data.shards import filesystem, part_paths
from sstparse.domains import LabelDomain


def first_rows(root: str, domain: str, split: str, n: int, storage_options: dict | None = None) -> list[dict]:
    """The first ``n`` rows (image and label bytes) of a split, reading as few parts as needed."""
    fs, _ = filesystem(root, storage_options)
    rows: list[dict] = []
    for path in part_paths(root, domain, split, storage_options):
        with fs.open(filesystem(path, storage_options)[1], "rb") as f:
            rows += pq.read_table(f, columns=["image", "label"]).slice(0, n - len(rows)).to_pylist()
        if len(rows) >= n:
            break
    return rows


def tile(img: np.ndarray, height: int) -> Image.Image:
    """An array as a picture of the given height (nearest: label colours stay exact)."""
    im = Image.fromarray(img)
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST)


def row(tiles: list[Image.Image], caption: str = "", gap: int = 4) -> Image.Image:
    """Tiles side by side on white, after an optional caption column."""
    left = 120 if caption else 0
    height = max(t.height for t in tiles) + 2 * gap
    out = Image.new("RGB", (left + sum(t.width + gap for t in tiles), height), (255, 255, 255))
    if caption:
        ImageDraw.Draw(out).text((6, height // 2 - 6), caption, fill=(0, 0, 0))
    x = left
    for t in tiles:
        out.paste(t, (x, gap))
        x += t.width + gap
    return out


def column(rows: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def preview_grid(root: str, domains: Iterable[LabelDomain], n: int = 6, split: str = "val", height: int = 160,
                 storage_options: dict | None = None) -> Image.Image:
    """A picture of what is in the shards: for each domain, ``n`` (image, coloured label) pairs."""
    rows = []
    for d in domains:
        tiles = []
        for r in first_rows(root, d.name, split, n, storage_options):
            img = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"))
            lbl = d.palette[np.asarray(Image.open(io.BytesIO(r["label"])))]
            tiles += [tile(img, height), tile(lbl, height)]
        rows.append(row(tiles, d.name))
    return column(rows)
