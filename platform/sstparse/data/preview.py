"""Preview grid: one row per domain, image next to its colour-coded label, read back from the shards."""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from sstparse.data.shards import filesystem, part_paths
from sstparse.domains import LabelDomain


def _first_rows(root: str, domain: str, split: str, n: int, storage_options: dict | None) -> list[dict]:
    fs, _ = filesystem(root, storage_options)
    rows: list[dict] = []
    for path in part_paths(root, domain, split, storage_options):
        with fs.open(filesystem(path, storage_options)[1], "rb") as f:
            rows += pq.read_table(f, columns=["image", "label"]).slice(0, n - len(rows)).to_pylist()
        if len(rows) >= n:
            break
    return rows


def _tile(img: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(img)
    return im.resize((max(1, round(im.width * height / im.height)), height), Image.NEAREST)


def preview_grid(root: str, domains: Iterable[LabelDomain], n: int = 6, split: str = "val", height: int = 160,
                 storage_options: dict | None = None) -> Image.Image:
    """A picture of what is in the shards: for each domain, ``n`` (image, coloured label) pairs."""
    rows = []
    for d in domains:
        tiles = []
        for r in _first_rows(root, d.name, split, n, storage_options):
            img = np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB"))
            lbl = d.palette[np.asarray(Image.open(io.BytesIO(r["label"])))]
            tiles += [_tile(img, height), _tile(lbl, height)]
        row = Image.new("RGB", (120 + sum(t.width + 4 for t in tiles), height + 8), (255, 255, 255))
        ImageDraw.Draw(row).text((6, height // 2 - 6), d.name, fill=(0, 0, 0))
        x = 120
        for t in tiles:
            row.paste(t, (x, 4))
            x += t.width + 4
        rows.append(row)
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    return grid
