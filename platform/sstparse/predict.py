"""``sstparse predict``: run a registered (or any) pyfunc model over image files, folders or an S3 prefix.

Per image ``<name>`` it writes ``<name>.png`` (the label map: one class index per pixel, a single-channel PNG),
``<name>_color.png`` (the label map in the domain's colours) and ``<name>_overlay.jpg`` (those colours blended
over the image) under ``--out`` (a folder or an s3:// prefix). A folder or prefix keeps its sub-folders under
``--out``, so equal file names in different folders do not collide; two inputs that would write the same files are
an error. :mod:`sstparse.batch_predict` runs the same steps on Ray Data and writes the same bytes.

The model is loaded through MLflow's pyfunc (:mod:`sstparse.pyfunc`), so this is exactly what a user of
``mlflow.pyfunc.load_model`` gets. An image that cannot be decoded stops the run with an error naming the file, or
with ``keep_going`` is skipped and listed in the result (the command exits 0 and prints the list).
"""

from __future__ import annotations

import io
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import fsspec
from fsspec.implementations.local import LocalFileSystem
import numpy as np
from PIL import Image
from tqdm import tqdm

from sstparse import tracking
from sstparse.data.shards import BadRecord, decode_image, filesystem
from sstparse.plots import overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Input:
    fs: fsspec.AbstractFileSystem
    path: str  # path inside fs
    url: str   # what the user sees in messages (s3://bucket/key or a local path)
    name: str  # output name relative to --out, without suffix


@dataclass
class PredictResult:
    written: list[str] = field(default_factory=list)                 # output names
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (url, reason)


def list_inputs(inputs: Sequence[str], storage_options: dict | None = None) -> list[Input]:
    """Expand files, folders (recursively, image suffixes only) and s3:// prefixes into a sorted list.

    Credentials and a custom endpoint for s3:// come from the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL,
    ...) unless ``storage_options`` are given."""
    found: list[Input] = []
    for given in inputs:
        fs, path = filesystem(given, storage_options, check=True)
        if fs.isdir(path):
            files = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES))
            if not files:
                raise FileNotFoundError(f"{given}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found += [Input(fs, p, _url(fs, p, given), posixpath.splitext(posixpath.relpath(p, path))[0])
                      for p in files]
        elif fs.isfile(path):
            found.append(Input(fs, path, given, posixpath.splitext(posixpath.basename(path))[0]))
        else:
            raise FileNotFoundError(f"{given}: no such file, folder or prefix")
    _check_unique(found)
    return found


def _url(fs: fsspec.AbstractFileSystem, path: str, given: str) -> str:
    return fs.unstrip_protocol(path) if "://" in given else path


def _check_unique(found: Sequence[Input]) -> None:
    by_name: dict[str, list[str]] = {}
    for item in found:
        by_name.setdefault(item.name, []).append(item.url)
    clashes = {n: urls for n, urls in by_name.items() if len(urls) > 1}
    if clashes:
        raise ValueError(f"inputs would write the same outputs: {clashes}; give their folders instead, or rename")


def read(item: Input, min_size: int) -> np.ndarray:
    """Decode one input to HxWx3 uint8; :class:`BadRecord` naming the file if it cannot be used."""
    try:
        data = item.fs.cat_file(item.path)
    except OSError as err:
        raise BadRecord(item.url, f"cannot read ({type(err).__name__}: {err})") from None
    image, _ = decode_image(data, item.url)
    if min(image.shape[:2]) < min_size:
        raise BadRecord(item.url, f"{image.shape[0]}x{image.shape[1]} is too small (the model needs >= {min_size} "
                                  "px a side)")
    return image


OUTPUT_SUFFIXES = ("_color.png", "_overlay.jpg", ".png")  # colours, overlay, label map: the order they are written


def encode_outputs(image: np.ndarray, label: np.ndarray, head: Any) -> dict[str, bytes]:
    """The three output files of one image, encoded (suffix -> bytes); every path writes exactly these bytes."""
    files = {}
    for suffix, picture, kwargs in (("_color.png", head.palette[label], {}),
                                    ("_overlay.jpg", overlay(image, label, head), {"quality": 90}),
                                    (".png", label, {})):
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="JPEG" if suffix.endswith(".jpg") else "PNG", **kwargs)
        files[suffix] = buf.getvalue()
    return files


def write_outputs(fs: fsspec.AbstractFileSystem, out: str, name: str, image: np.ndarray, label: np.ndarray,
                  head: Any) -> None:
    """Write one image's outputs under ``out`` (a path inside ``fs``). Each file appears whole or not at all
    (a local file is written beside and renamed; an S3 object appears when its upload completes), so a killed
    run leaves no half-written output for a resumed one to mistake for done."""
    base = posixpath.join(out, name)
    fs.makedirs(posixpath.dirname(base), exist_ok=True)
    for suffix, data in encode_outputs(image, label, head).items():
        if isinstance(fs, LocalFileSystem):
            tmp = f"{base}{suffix}.{os.getpid()}.tmp"
            Path(tmp).write_bytes(data)
            os.replace(tmp, f"{base}{suffix}")
        else:
            fs.pipe_file(f"{base}{suffix}", data)


def done_names(fs: fsspec.AbstractFileSystem, out: str) -> set[str]:
    """Output names under ``out`` whose three files all exist (one listing, not a request per image)."""
    if not fs.isdir(out):
        return set()
    longest_first = sorted(OUTPUT_SUFFIXES, key=len, reverse=True)  # "_color.png" before ".png"
    found: Counter[str] = Counter()
    for path in fs.find(out):
        rel = posixpath.relpath(path, out)
        suffix = next((x for x in longest_first if rel.endswith(x)), None)
        if suffix:
            found[rel[: -len(suffix)]] += 1
    return {name for name, n in found.items() if n == len(OUTPUT_SUFFIXES)}


def predict(model_uri: str, inputs: Sequence[str], out: str | Path, domain: str | None = None,
            flip_tta: bool = False, keep_going: bool = False, batch_size: int = 8, tracking_uri: str | None = None,
            storage_options: dict | None = None, progress: bool = True) -> PredictResult:
    """Parse every input image with the model at ``model_uri`` and write its outputs under ``out``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list_inputs(inputs, storage_options)  # before loading the model: a typo fails fast
    out_fs, out_path = filesystem(str(out), storage_options, check=True)  # and so does an unusable --out
    model = tracking.load_pyfunc_model(model_uri, tracking_uri)
    served = model.unwrap_python_model()
    head = served.head(domain)  # unknown or missing domain: an error naming the model's heads, before any work
    params = {"domain": head.name, "flip_tta": flip_tta, "batch_size": batch_size}
    result = PredictResult()
    with tqdm(total=len(items), unit="img", desc="predict", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            good: list[tuple[Input, np.ndarray]] = []
            for item in items[start:start + batch_size]:
                try:
                    good.append((item, read(item, served.min_size)))
                except BadRecord as err:
                    if not keep_going:
                        raise
                    result.skipped.append((err.source, err.reason))
            labels = model.predict([im for _, im in good], params=params) if good else []
            for (item, image), label in zip(good, labels):
                write_outputs(out_fs, out_path, item.name, image, label, head)
                result.written.append(item.name)
            bar.update(min(batch_size, len(items) - start))
    return result
