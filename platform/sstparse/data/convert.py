"""Converters: the real datasets' raw layouts -> Parquet shards (format: :mod:`sstparse.data.shards`).

One function per layout finds the folders and id lists (a :class:`SplitSource` per split); everything after that
is shared: ids become :class:`RawRecord` s in sorted order, each record is read and validated
(:func:`~sstparse.data.shards.validate_record`), and written by one :class:`~sstparse.data.shards.ShardWriter`
per split. Layout problems (missing folder, empty id list) stop the conversion with the expected path named;
record problems (missing or bad file) stop it too, or, with ``on_bad_record="skip"``, are listed in the manifest's
``skipped``. Every listed id ends up written or skipped: ``sum(count) + len(skipped) == sum(listed)``.

Sources in rows and in ``skipped`` are paths relative to the layout root, so a manifest does not depend on where
the dataset was unpacked; errors raised to the user name the full path.
"""

from __future__ import annotations

import logging
import posixpath
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import sstparse
from sstparse.data.shards import (MANIFEST, BadRecord, OnBadRecord, Sample, ShardWriter, SplitSummary,
                                  build_manifest, filesystem, validate_record, write_manifest)
from sstparse.domains import LabelDomain, load_domains

log = logging.getLogger(__name__)

IMAGE_EXT, LABEL_EXT = ".jpg", ".png"  # what all four layouts ship
RAW_SPLITS = ("train", "val")  # the labelled splits the real datasets ship (their test labels are not public)


class ConvertError(ValueError):
    """The dataset or its layout cannot be converted at all (unknown dataset, missing folder, empty id list)."""


@dataclass(frozen=True)
class SplitSource:
    """Where one layout keeps one split: image folder, label folder (relative to the layout root) and the ids."""

    split: str | None          # None: the dataset has no official split; each id is assigned by a stable hash
    images: str
    labels: str
    ids: tuple[str, ...]       # as listed, duplicates included (they are reported, not silently merged)
    listed_in: str             # the id file or folder the ids came from, for messages


@dataclass(frozen=True)
class RawRecord:
    """One listed sample before it is read."""

    split: str
    sample_id: str
    image: str                 # relative to the layout root
    label: str
    listed_in: str
    problem: str | None = None  # known without reading the files (a duplicate id)


Layout = Callable[[Path], tuple[Path, list[SplitSource]]]


# ----------------------------------------------------------------------------------------------- helpers
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConvertError(f"{what}: expected folder {path} not found")
    return path


def _find_root(src: Path, marker: str, candidates: list[Path], what: str) -> Path:
    """The folder holding ``marker``; users point SRC at the unzipped folder or at its parent, accept both."""
    for c in candidates:
        if (c / marker).is_dir():
            return c
    raise ConvertError(f"{what}: expected folder {' or '.join(str(c / marker) for c in candidates)} not found")


def _first_file(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise ConvertError(f"{what}: expected file {' or '.join(map(str, candidates))} not found")


def _parse_id(line: str) -> str:
    # Lists ship either bare ids or "/JPEGImages/<id>.jpg /SegmentationPart/<id>.png" pairs: take the first
    # token's file name without its image/label extension.
    name = posixpath.basename(line.split()[0])
    stem, ext = posixpath.splitext(name)
    return stem if ext.lower() in (".jpg", ".jpeg", ".png") else name


def _read_ids(path: Path) -> tuple[str, ...]:
    ids = tuple(_parse_id(line) for line in path.read_text().splitlines() if line.strip())
    if not ids:
        raise ConvertError(f"{path}: id list is empty")
    return ids


def _listing(folder: Path, what: str) -> tuple[str, ...]:
    ids = tuple(sorted(p.stem for p in _require_dir(folder, what).glob(f"*{IMAGE_EXT}")))
    if not ids:
        raise ConvertError(f"{what}: no *{IMAGE_EXT} images in {folder}")
    return ids


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _check_folders(root: Path, sources: list[SplitSource], what: str) -> None:
    for s in sources:
        name = f"{what} {s.split}" if s.split else what
        _require_dir(root / s.images, f"{name} images")
        _require_dir(root / s.labels, f"{name} labels")


# ----------------------------------------------------------------------------------------------- layouts
def lip_layout(src: Path) -> tuple[Path, list[SplitSource]]:
    """TrainVal_images/{split}_images, TrainVal_parsing_annotations/{split}_segmentations, {split}_id.txt (the
    id lists ship inside TrainVal_images/; some mirrors move them to the root)."""
    _require_dir(src / "TrainVal_images", "LIP")
    sources = []
    for split in RAW_SPLITS:
        ids = _first_file([src / f"{split}_id.txt", src / "TrainVal_images" / f"{split}_id.txt"], f"LIP {split} ids")
        sources.append(SplitSource(split, f"TrainVal_images/{split}_images",
                                   f"TrainVal_parsing_annotations/{split}_segmentations", _read_ids(ids),
                                   _rel(ids, src)))
    _check_folders(src, sources, "LIP")
    return src, sources


def cihp_layout(src: Path) -> tuple[Path, list[SplitSource]]:
    """instance-level_human_parsing/{Training,Validation}/{Images,Category_ids}; ids from {split}_id.txt inside
    the split folder when present, else the sorted Images/ listing."""
    root = _find_root(src, "Training", [src / "instance-level_human_parsing", src], "CIHP")
    sources = []
    for folder, split in (("Training", "train"), ("Validation", "val")):
        d = _require_dir(root / folder, f"CIHP {split}")
        id_file = d / f"{split}_id.txt"
        ids = _read_ids(id_file) if id_file.is_file() else _listing(d / "Images", f"CIHP {split} images")
        listed_in = _rel(id_file if id_file.is_file() else d / "Images", root)
        sources.append(SplitSource(split, f"{folder}/Images", f"{folder}/Category_ids", ids, listed_in))
    _check_folders(root, sources, "CIHP")
    return root, sources


def atr_layout(src: Path) -> tuple[Path, list[SplitSource]]:
    """humanparsing/{JPEGImages,SegmentationClassAug}; no official split (assigned by hash, see _split_of)."""
    root = _find_root(src, "JPEGImages", [src / "humanparsing", src], "ATR")
    sources = [SplitSource(None, "JPEGImages", "SegmentationClassAug", _listing(root / "JPEGImages", "ATR images"),
                           "JPEGImages/")]
    _check_folders(root, sources, "ATR")
    return root, sources


def pascal_person_part_layout(src: Path) -> tuple[Path, list[SplitSource]]:
    """JPEGImages, SegmentationPart, list/{split}_id.txt (or list/{split}.txt)."""
    sources = []
    for split in RAW_SPLITS:
        ids = _first_file([src / "list" / f"{split}_id.txt", src / "list" / f"{split}.txt"],
                          f"PASCAL-Person-Part {split} ids")
        sources.append(SplitSource(split, "JPEGImages", "SegmentationPart", _read_ids(ids), _rel(ids, src)))
    _check_folders(src, sources, "PASCAL-Person-Part")
    return src, sources


# A card's raw.format selects the layout; adding a layout = one function + one entry here.
LAYOUTS: dict[str, Layout] = {
    "lip": lip_layout,
    "cihp": cihp_layout,
    "atr": atr_layout,
    "pascal_person_part": pascal_person_part_layout,
}


# ----------------------------------------------------------------------------------------------- records
def split_of(sample_id: str, val_fraction: float) -> str:
    """Stable split for datasets without one: crc32 is the same on every machine and Python run (``hash()``
    is salted per process), so re-runs and other users get the same val set."""
    return "val" if zlib.crc32(sample_id.encode("utf-8")) / 2**32 < val_fraction else "train"


def records(sources: list[SplitSource], val_fraction: float) -> list[RawRecord]:
    """All listed samples in a deterministic order (split, id), whatever order the id files use."""
    out = []
    for s in sources:
        seen: set[str] = set()
        for sid in s.ids:
            problem = f"id {sid!r} listed more than once in {s.listed_in}" if sid in seen else None
            seen.add(sid)
            out.append(RawRecord(s.split or split_of(sid, val_fraction), sid, f"{s.images}/{sid}{IMAGE_EXT}",
                                 f"{s.labels}/{sid}{LABEL_EXT}", s.listed_in, problem))
    return sorted(out, key=lambda r: (r.split, r.sample_id, r.problem is not None))


def load_record(root: Path, rec: RawRecord, domain: LabelDomain) -> Sample:
    """Read and validate one record; BadRecord sources are relative to ``root``."""
    if rec.problem:
        raise BadRecord(rec.image, rec.problem)
    image, label = root / rec.image, root / rec.label
    if not image.is_file():
        raise BadRecord(rec.image, f"image file missing (id listed in {rec.listed_in})")
    if not label.is_file():
        raise BadRecord(rec.label, f"label file missing for image {rec.image}")
    return validate_record(rec.sample_id, rec.split, image.read_bytes(), label.read_bytes(), domain,
                           source=rec.image, label_source=rec.label)


def write_splits(root: Path, recs: list[RawRecord], domain: LabelDomain, out: str, on_bad_record: OnBadRecord,
                 rows_per_part: int, storage_options: dict | None) -> tuple[list[SplitSummary], list[dict]]:
    # A writer per split even when a split is empty, so parts left by an earlier run are deleted on close.
    writers = {s: ShardWriter(out, domain, s, rows_per_part, storage_options) for s in RAW_SPLITS}
    skipped: list[dict[str, str]] = []
    for rec in recs:
        try:
            sample = load_record(root, rec, domain)
        except BadRecord as err:
            if on_bad_record == "error":
                raise BadRecord(str(root / err.source), err.reason) from None
            skipped.append({"source": err.source, "reason": err.reason, "split": rec.split})
            continue
        writers[rec.split].add(sample)
    return [w.close() for w in writers.values()], skipped


# ----------------------------------------------------------------------------------------------- entry point
def _layout_for(dataset: str, domains: Mapping[str, LabelDomain]) -> tuple[LabelDomain, Layout]:
    if dataset not in domains:
        raise ConvertError(f"unknown dataset {dataset!r}; domain cards: {', '.join(sorted(domains))}")
    domain = domains[dataset]
    fmt = domain.card.raw.format
    if fmt == "synthetic":
        raise ConvertError(f"{dataset} is a synthetic domain: it is generated (sstparse synth), not converted")
    if fmt not in LAYOUTS:
        raise ConvertError(f"no converter exists for the {fmt!r} raw layout (dataset {dataset}) yet; "
                           f"converters exist for: {', '.join(sorted(LAYOUTS))}")
    return domain, LAYOUTS[fmt]


def _drop_manifest(out: str, domain: str, storage_options: dict | None) -> None:
    # The manifest is the commit marker, written last: remove the old one first so a conversion that fails
    # half-way leaves no manifest pointing at parts it has already overwritten. The first request to ``out``:
    # check it, so that a wrong endpoint, key or bucket is one clear error (and no bucket gets created).
    fs, base = filesystem(out, storage_options, check=True)
    path = posixpath.join(base, domain, MANIFEST)
    if fs.exists(path):
        fs.rm(path)


def convert(dataset: str, src: str | Path, out: str, on_bad_record: OnBadRecord = "error", rows_per_part: int = 512,
            storage_options: dict | None = None, domains: Mapping[str, LabelDomain] | None = None) -> dict[str, Any]:
    """Convert the raw dataset at ``src`` (the card ``dataset``'s layout) into shards under ``out`` (local or
    s3://...). Returns the manifest written to ``<out>/<dataset>/manifest.json``."""
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    if rows_per_part < 1:
        raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
    domain, layout = _layout_for(dataset, load_domains() if domains is None else domains)
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: source folder not found")
    root, sources = layout(src)  # every layout error surfaces here, before anything is written
    recs = records(sources, domain.card.raw.val_fraction)
    log.info("%s: %d records listed under %s", dataset, len(recs), root)
    _drop_manifest(out, domain.name, storage_options)
    summaries, skipped = write_splits(root, recs, domain, out, on_bad_record, rows_per_part, storage_options)
    listed = {s: sum(r.split == s for r in recs) for s in RAW_SPLITS}
    split_rule = ("official id lists" if all(s.split for s in sources)
                  else f"val if zlib.crc32(sample_id) / 2**32 < {domain.card.raw.val_fraction}")
    manifest = build_manifest(domain, summaries, skipped,
                              {"tool": "sstparse.convert", "dataset": dataset, "version": sstparse.__version__},
                              {"raw_format": domain.card.raw.format, "split_rule": split_rule, "listed": listed})
    write_manifest(out, manifest, storage_options)
    log.info("%s: wrote %s, skipped %d", dataset, {s.split: s.count for s in summaries}, len(skipped))
    return manifest
