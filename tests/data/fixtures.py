"""Tiny raw dataset trees in exactly the layouts the real datasets ship, for converter tests.

Each builder takes, per split, a list of sample *kinds* and writes one 24x32 sample per kind. Good kinds end up
in the shards; bad kinds must be reported (error) or skipped with a reason. The returned :class:`Built` says
what a correct conversion produces.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sstparse.data.shards import Sample, ShardWriter, build_manifest, encode_jpeg, encode_png, write_manifest
from sstparse.domains import load_domains

H, W = 24, 32

# kind -> substring of the reason a correct conversion gives (None: the sample is valid and written)
KINDS: dict[str, str | None] = {
    "ok": None,
    "gray_jpeg": None,        # converted to RGB, with a note
    "cmyk_jpeg": None,        # converted to RGB, with a note
    "palette_label": None,    # P-mode PNG: the palette indices are the classes
    "u16_label": None,        # 16-bit PNG with values that fit 0..255
    "undecodable_image": "undecodable image",
    "missing_label": "label file missing",
    "missing_image": "image file missing",
    "size_mismatch": "label size 30x24 != image size 32x24",
    "out_of_range": "label values [40]",
    "rgb_label": "got mode RGB",
    "u16_too_big": "values up to 300",
}
GOOD = [k for k, v in KINDS.items() if v is None]
BAD = [k for k, v in KINDS.items() if v is not None]
NOTE = {"gray_jpeg": "image mode L converted to RGB", "cmyk_jpeg": "image mode CMYK converted to RGB"}


@dataclass
class Built:
    """What was written and what a correct conversion must produce."""

    src: Path                                                # what to pass as SRC
    root: Path                                               # the layout root sources are relative to
    labels: dict[str, np.ndarray] = field(default_factory=dict)   # sample id -> expected label (good ids)
    splits: dict[str, str | None] = field(default_factory=dict)   # sample id -> split (None: hash-assigned)
    bad: dict[str, str] = field(default_factory=dict)        # relative path of the named file -> reason part
    notes: dict[str, str] = field(default_factory=dict)      # relative image path -> note
    listed: int = 0                                          # ids the layout lists


def label_array(seed: int, num_classes: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Blocky labels using several classes plus a few ignore (255) pixels."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, num_classes, (shape[0] // 4 + 1, shape[1] // 4 + 1)).repeat(4, 0).repeat(4, 1)
    lab = lab[: shape[0], : shape[1]].astype(np.uint8)
    lab[0, :3] = 255
    return lab


def image_array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _jpeg(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def image_bytes(kind: str, seed: int) -> bytes | None:
    if kind == "undecodable_image":
        return b"this is not a jpeg"
    if kind == "missing_image":
        return None
    mode = {"gray_jpeg": "L", "cmyk_jpeg": "CMYK"}.get(kind, "RGB")
    return _jpeg(image_array(seed), mode)


def label_bytes(kind: str, lab: np.ndarray) -> bytes | None:
    """Encode ``lab`` the way ``kind`` says (or a broken variant of it)."""
    if kind == "missing_label":
        return None
    if kind == "size_mismatch":
        return _png(Image.fromarray(lab[:, :30].copy()))
    if kind == "out_of_range":
        lab = lab.copy()
        lab[5, 5] = 40
    if kind == "rgb_label":
        return _png(Image.fromarray(np.stack([lab] * 3, -1)))
    if kind == "palette_label":
        return _png(_as_palette(lab))
    if kind in ("u16_label", "u16_too_big"):
        arr = lab.astype(np.uint16)
        if kind == "u16_too_big":
            arr[3, 3] = 300
        return _png(Image.fromarray(arr))
    return _png(Image.fromarray(lab))


def _as_palette(lab: np.ndarray) -> Image.Image:
    """A P-mode image whose indices are exactly ``lab`` (colours arbitrary, as LIP/CIHP ship them)."""
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.tobytes())
    im.putpalette([(i * 37 + c * 91) % 256 for i in range(256) for c in range(3)])
    return im


def write_sample(built: Built, split: str | None, sid: str, kind: str, num_classes: int, seed: int,
                 image_rel: str, label_rel: str) -> None:
    """Write one sample's files and record what a conversion must make of it."""
    lab = label_array(seed, num_classes)
    img, lbl = image_bytes(kind, seed), label_bytes(kind, lab)
    for rel, data in ((image_rel, img), (label_rel, lbl)):
        if data is not None:
            (built.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (built.root / rel).write_bytes(data)
    built.listed += 1
    if KINDS[kind] is None:
        built.labels[sid], built.splits[sid] = lab, split
        if kind in NOTE:
            built.notes[image_rel] = NOTE[kind]
    else:
        names_label = kind in ("missing_label", "size_mismatch", "out_of_range", "rgb_label", "u16_too_big")
        built.bad[label_rel if names_label else image_rel] = KINDS[kind]


def _ids(prefix: str, kinds: list[str]) -> list[tuple[str, str]]:
    return [(f"{prefix}{i:04d}_{kind}", kind) for i, kind in enumerate(kinds)]


def _write_ids(path: Path, ids: list[str], line=lambda i: i) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unsorted on purpose: the converter must not depend on the list's order.
    path.write_text("".join(line(i) + "\n" for i in reversed(ids)))


def build_lip(src: Path, kinds: dict[str, list[str]], ids_at_root: bool = False, num_classes: int = 20) -> Built:
    """LIP: TrainVal_images/{split}_images/<id>.jpg, TrainVal_parsing_annotations/{split}_segmentations/<id>.png,
    {split}_id.txt inside TrainVal_images/ (as the zip ships them) or at the root."""
    built = Built(src, src)
    for split, ks in kinds.items():
        ids = _ids(f"{100 + len(split)}_", ks)
        for n, (sid, kind) in enumerate(ids):
            write_sample(built, split, sid, kind, num_classes, 5 * n + len(split),
                         f"TrainVal_images/{split}_images/{sid}.jpg",
                         f"TrainVal_parsing_annotations/{split}_segmentations/{sid}.png")
        (src / "TrainVal_images").mkdir(parents=True, exist_ok=True)
        _write_ids((src if ids_at_root else src / "TrainVal_images") / f"{split}_id.txt", [i for i, _ in ids])
    for split in kinds:  # a label folder with no sample still exists in the real layout
        (src / f"TrainVal_parsing_annotations/{split}_segmentations").mkdir(parents=True, exist_ok=True)
        (src / f"TrainVal_images/{split}_images").mkdir(parents=True, exist_ok=True)
    return built


def build_cihp(src: Path, kinds: dict[str, list[str]], id_lists: bool = True, nested: bool = True,
               num_classes: int = 20) -> Built:
    """CIHP: instance-level_human_parsing/{Training,Validation}/{Images/<id>.jpg, Category_ids/<id>.png} and
    {train,val}_id.txt inside Training/ and Validation/. ``nested=False`` builds the inner folder only."""
    root = src / "instance-level_human_parsing" if nested else src
    built = Built(src, root)
    for split, folder in (("train", "Training"), ("val", "Validation")):
        ids = _ids(f"{len(split):07d}", kinds.get(split, []))
        for n, (sid, kind) in enumerate(ids):
            write_sample(built, split, sid, kind, num_classes, 7 * n + len(split),
                         f"{folder}/Images/{sid}.jpg", f"{folder}/Category_ids/{sid}.png")
        for sub in ("Images", "Category_ids", "Instance_ids", "Human_ids"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        if id_lists:
            _write_ids(root / folder / f"{split}_id.txt", [i for i, _ in ids])
    return built


def build_atr(src: Path, kinds: list[str], nested: bool = True, num_classes: int = 18) -> Built:
    """ATR: humanparsing/{JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png}; no split files."""
    root = src / "humanparsing" if nested else src
    built = Built(src, root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    for n, (sid, kind) in enumerate(_ids("atr_", kinds)):
        if kind == "missing_image":
            raise ValueError("ATR lists ids by its image folder: a missing image cannot be listed")
        write_sample(built, None, sid, kind, num_classes, 11 * n, f"JPEGImages/{sid}.jpg",
                     f"SegmentationClassAug/{sid}.png")
    return built


def build_pascal_person_part(src: Path, kinds: dict[str, list[str]], pair_lists: bool = False,
                             num_classes: int = 7) -> Built:
    """PASCAL-Person-Part: JPEGImages/<id>.jpg, SegmentationPart/<id>.png, list/{split}_id.txt (or, with
    ``pair_lists``, list/{split}.txt of "/JPEGImages/<id>.jpg /SegmentationPart/<id>.png" lines)."""
    built = Built(src, src)
    (src / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (src / "SegmentationPart").mkdir(parents=True, exist_ok=True)
    for split, ks in kinds.items():
        ids = _ids(f"2008_{len(split)}", ks)
        for n, (sid, kind) in enumerate(ids):
            write_sample(built, split, sid, kind, num_classes, 13 * n + len(split), f"JPEGImages/{sid}.jpg",
                         f"SegmentationPart/{sid}.png")
        if pair_lists:
            _write_ids(src / "list" / f"{split}.txt", [i for i, _ in ids],
                       lambda i: f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png")
        else:
            _write_ids(src / "list" / f"{split}_id.txt", [i for i, _ in ids])
    return built


def crafted_root(path, sizes: list[tuple[int, int]], bad: dict[int, str]) -> str:
    """syn_ppp shards with given image sizes; rows in `bad` get an undecodable image or an out-of-range label."""
    d = load_domains()["syn_ppp"]
    rng = np.random.default_rng(0)
    summaries = []
    for split in ("train", "val"):
        with ShardWriter(str(path), d, split, rows_per_part=4) as w:
            for i, (h, wd) in enumerate(sizes):
                lbl = rng.integers(0, d.num_classes, (h, wd)).astype(np.uint8)
                img = rng.integers(0, 256, (h, wd, 3), dtype=np.uint8)
                if bad.get(i) == "label":
                    lbl[0, 0] = 40
                image = b"\xff\xd8 not a jpeg" if bad.get(i) == "image" else encode_jpeg(img)
                w.add(Sample(f"{split}-{i}", split, image, encode_png(lbl), h, wd, f"crafted/{i}", lbl))
        summaries.append(w.summary)
    write_manifest(str(path), build_manifest(d, summaries, [], {"tool": "test"}))
    return str(path)
