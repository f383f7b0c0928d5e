"""Preview grid: one row per domain, image next to its colour-coded label, read back from the shards."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from sstparse.data.shards import BadRecord, decode_image, decode_label, filesystem, part_paths
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


def samples(root: str, domain: str, split: str, n: int | None = None, storage_options: dict | None = None,
            skip_bad: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(H x W x 3 uint8 image, H x W uint8 label) for the first ``n`` rows of a split (all of them when None),
    decoded as the stream decodes them; a bad record is a BadRecord naming the part, or left out with
    ``skip_bad`` (the job's ``on_bad_record: skip``, whose stream counts and reports it)."""
    for i, r in enumerate(first_rows(root, domain, split, n if n is not None else 2**62, storage_options)):
        source = f"{root}/{domain}/{split} row {i}"
        try:
            pair = decode_image(r["image"], source)[0], decode_label(r["label"], source)
        except BadRecord:
            if not skip_bad:
                raise
            continue
        yield pair


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
        for img, lbl in samples(root, d.name, split, n, storage_options):
            tiles += [tile(img, height), tile(d.palette[lbl], height)]
        rows.append(row(tiles, d.name))
    return column(rows)
