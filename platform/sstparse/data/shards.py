"""Parquet shards: the one on-disk format every source (converters, the synthetic generator) writes.

Layout::

    <root>/<domain>/<split>/part-NNNNN.parquet     rows of SCHEMA
    <root>/<domain>/manifest.json                  counts, class pixel histograms, checksums, skipped records

``root`` is a local path or ``s3://bucket/prefix``; fsspec (s3fs) resolves it, with credentials and endpoint from
the environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) or explicit ``storage_options``, and botocore's standard
retries (:func:`s3_options`). Entry points check a root first (``filesystem(..., check=True)``): storage that
cannot be used is one :class:`StorageError` naming the URL.

Every record is validated on the way in (:func:`validate_record`); a bad one raises :class:`BadRecord` naming its
source, and callers either stop or skip-and-list it in the manifest. Writing is idempotent: a re-run rewrites the
same part files and deletes stale ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from sstparse.domains import LabelDomain

SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),   # encoded JPEG/PNG, RGB
    pa.field("label", pa.binary(), nullable=False),   # single-channel uint8 PNG of class indices
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # original file (or generator seed) for tracing
])
SPLITS = ("train", "val", "test")  # converted datasets write train and val (convert.RAW_SPLITS)
MANIFEST = "manifest.json"
OnBadRecord = Literal["error", "skip"]
Image.MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs, allow large real photos


class BadRecord(ValueError):
    """A sample that cannot be used; ``source`` names the file, ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class StorageError(OSError):
    """Remote storage cannot be used: its endpoint does not answer, it refuses the credentials, the bucket does not
    exist, or it still throttles after every retry. The message names the URL (and the endpoint); a subclass of the
    matching built-in where there is one."""


class StorageNotFound(StorageError, FileNotFoundError):
    pass


class StorageDenied(StorageError, PermissionError):
    pass


class StorageUnreachable(StorageError, ConnectionError):
    pass


class StorageBusy(StorageError):
    """The endpoint still throttled (503 SlowDown and kin) after every retry."""


# S3's and S3-compatible stores' answers for "too many requests, slow down".
THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "TooManyRequestsException", "RequestThrottled", "ServiceUnavailable", "503"}


def s3_options(storage_options: dict | None = None) -> dict:
    """``storage_options`` for s3fs with the platform's defaults under the caller's ``config_kwargs``.

    botocore's "standard" retry mode retries throttling (503 SlowDown), 500/502/503/504 and connection errors
    (refused, dropped, timed out) with capped, jittered exponential backoff, behind a retry quota that stops a
    client hammering an endpoint that is down. s3fs retries SlowDown and dropped connections again, up to 5
    times, around that (``S3FileSystem.retries``), but not a refused connection: 4 attempts bound how long an
    unreachable endpoint takes to report (about 4 s, at most 7 s of backoff). AWS_RETRY_MODE or AWS_MAX_ATTEMPTS
    in the environment hand the retry policy back to botocore's own resolution."""
    options = dict(storage_options or {})
    config: dict[str, Any] = {"connect_timeout": 3}  # s3fs's default is 5 s per attempt
    if not {"AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"} & os.environ.keys():
        config["retries"] = {"mode": "standard", "total_max_attempts": 4}
    options["config_kwargs"] = {**config, **options.get("config_kwargs", {})}
    return options


def filesystem(root: str, storage_options: dict | None = None,
               check: bool = False) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fs, path-without-scheme) for a local path or URL such as s3://bucket/prefix.

    ``check``: make sure an s3:// root's bucket answers (one LIST request), so that a wrong endpoint, key or bucket
    stops an entry point with one :class:`StorageError` naming ``root``, instead of a botocore traceback, an
    empty listing or a bucket created by a write."""
    if fsspec.core.split_protocol(root)[0] in ("s3", "s3a"):
        storage_options = s3_options(storage_options)
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    path = path.rstrip("/")
    if check and _is_s3(fs):
        bucket, key, _ = fs.split_path(path)
        with storage_errors(root, fs):
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
    return fs, path


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in fs.protocol


@contextmanager
def storage_errors(url: str, fs: fsspec.AbstractFileSystem) -> Iterator[None]:
    """Re-raise an S3 failure inside the block (after s3fs and botocore gave up retrying) as a
    :class:`StorageError` naming ``url``; anything else, and any failure of another filesystem, as it is."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        translated = _storage_error(url, fs, err) if _is_s3(fs) else None
        if translated is None:
            raise
        raise translated from err


def _storage_error(url: str, fs: Any, err: Exception) -> StorageError | None:
    import botocore.exceptions as boto

    try:
        endpoint = fs.s3.meta.endpoint_url
    except Exception:  # the client itself could not be made: name what was asked for
        endpoint = fs.client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "(AWS default)"
    # s3fs turns S3 error responses into OSErrors and keeps the botocore ClientError (and its code) as the cause.
    cause = err.__cause__ if isinstance(err.__cause__, boto.ClientError) else err
    code = getattr(cause, "response", {}).get("Error", {}).get("Code")
    if isinstance(err, (boto.ConnectionError, boto.HTTPClientError)):  # refused, timed out, dropped every time
        return StorageUnreachable(f"{url}: cannot reach the S3 endpoint {endpoint} ({err})")
    if isinstance(err, PermissionError):
        return StorageDenied(f"{url}: the S3 endpoint {endpoint} denies access ({code}: {err}); check the "
                             "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or storage_options key/secret) "
                             "and that they may read and list this prefix")
    if code in THROTTLING:
        return StorageBusy(f"{url}: the S3 endpoint {endpoint} still answered {code} (slow down) after every retry; "
                           "lower the request rate (fewer concurrent readers or writers) or try again later")
    if isinstance(err, FileNotFoundError) and code == "NoSuchBucket":
        return StorageNotFound(f"{url}: bucket {fs.split_path(url)[0]!r} does not exist at the S3 endpoint "
                               f"{endpoint}")
    return None


# ----------------------------------------------------------------------------------------------- decoding
def _why(err: Exception) -> str:
    # PIL's UnidentifiedImageError message embeds the BytesIO repr, a memory address: drop it so the reason (and
    # the manifest's skipped list) is identical across runs.
    if isinstance(err, UnidentifiedImageError):
        return "UnidentifiedImageError: not a recognised image format"
    return f"{type(err).__name__}: {err}"


def decode_image(data: bytes, source: str) -> tuple[np.ndarray, str | None]:
    """Decode to (H, W, 3) uint8 RGB. Grayscale/CMYK/palette/alpha images are converted (and the conversion is
    reported as a note) because real datasets ship a few of them and dropping them would lose data."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            rgb = im.convert("RGB") if mode != "RGB" else im
            arr = np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise BadRecord(source, f"undecodable image ({_why(err)})") from None
    note = None if mode == "RGB" else f"image mode {mode} converted to RGB"
    return arr, note


def decode_label(data: bytes, source: str) -> np.ndarray:
    """Decode a label PNG to (H, W) uint8 class indices.

    Accepted: 8-bit grayscale ("L") and palette ("P": the palette *indices* are the classes, as LIP/CIHP/PASCAL
    ship them), and 16-bit grayscale whose values fit in 0..255. Rejected with a reason: RGB/RGBA colour-coded
    labels (ambiguous without a colour map) and 16-bit values above 255.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BadRecord(source, f"undecodable label ({_why(err)})") from None
    if mode in ("L", "P"):
        return arr.astype(np.uint8, copy=False)
    if mode.startswith("I"):  # I;16, I;16B, I (32-bit)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadRecord(source, f"{mode} label has values up to {int(arr.max())}; class indices must be 0..255")
        return arr.astype(np.uint8)
    raise BadRecord(source, f"label must be a single-channel index PNG (L, P or I;16), got mode {mode}")


def check_label(label: np.ndarray, domain: LabelDomain, source: str) -> None:
    """Every value must be a class of ``domain`` or its ignore index."""
    values = np.unique(label)
    bad = values[(values >= domain.num_classes) & (values != domain.ignore_index)]
    if bad.size:
        raise BadRecord(source, f"label values {bad.tolist()} outside domain {domain.name}'s "
                                f"{domain.num_classes} classes (ignore index {domain.ignore_index})")


def encode_png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8, copy=False), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Sample:
    """A validated sample ready to be written."""

    sample_id: str
    split: str
    image: bytes
    label: bytes
    height: int
    width: int
    source: str
    label_array: np.ndarray = field(repr=False, compare=False)
    note: str | None = None


def validate_record(sample_id: str, split: str, image_bytes: bytes, label_bytes: bytes,
                    domain: LabelDomain, source: str, label_source: str | None = None) -> Sample:
    """Decode, check and normalise one raw record; raises :class:`BadRecord` naming the offending file."""
    if split not in SPLITS:
        raise BadRecord(source, f"split {split!r} is not one of {SPLITS}")
    image, note = decode_image(image_bytes, source)
    label_source = label_source or source
    label = decode_label(label_bytes, label_source)
    if label.shape != image.shape[:2]:
        raise BadRecord(label_source, f"label size {label.shape[1]}x{label.shape[0]} != image size "
                                      f"{image.shape[1]}x{image.shape[0]}")
    check_label(label, domain, label_source)
    # Original image bytes are kept when already RGB (no generation loss); labels are always re-encoded as
    # plain 8-bit "L" PNGs so every reader decodes one format whatever the source shipped (P, I;16, ...).
    img_out = image_bytes if note is None else encode_jpeg(image)
    return Sample(sample_id, split, img_out, encode_png(label), int(image.shape[0]), int(image.shape[1]), source,
                  label, note)


# ----------------------------------------------------------------------------------------------- writing
@dataclass
class SplitSummary:
    """What one writer wrote for one (domain, split)."""

    split: str
    count: int = 0
    class_pixels: list[int] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)


class ShardWriter:
    """Writes one domain's split as ``part-NNNNN.parquet`` files of ``rows_per_part`` rows.

    Use as a context manager; ``close()`` flushes, deletes stale parts from a previous larger run (idempotency)
    and returns a :class:`SplitSummary` for the manifest.
    """

    def __init__(self, root: str, domain: LabelDomain, split: str, rows_per_part: int = 512,
                 storage_options: dict | None = None):
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {SPLITS}")
        self.fs, base = filesystem(root, storage_options)
        self.dir = posixpath.join(base, domain.name, split)
        self.domain, self.rows_per_part = domain, rows_per_part
        self.summary = SplitSummary(split, class_pixels=[0] * domain.num_classes)
        self._rows: list[Sample] = []
        with storage_errors(self.fs.unstrip_protocol(self.dir), self.fs):
            self.fs.makedirs(self.dir, exist_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()

    def add(self, sample: Sample) -> None:
        counts = np.bincount(sample.label_array.ravel(), minlength=256)[: self.domain.num_classes]
        self.summary.class_pixels = [a + int(b) for a, b in zip(self.summary.class_pixels, counts)]
        if sample.note:
            self.summary.notes.append({"source": sample.source, "note": sample.note})
        self._rows.append(sample)
        if len(self._rows) >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"part-{len(self.summary.parts):05d}.parquet"
        table = pa.Table.from_pydict({
            "sample_id": [s.sample_id for s in self._rows],
            "domain": [self.domain.name] * len(self._rows),
            "split": [s.split for s in self._rows],
            "image": [s.image for s in self._rows],
            "label": [s.label for s in self._rows],
            "height": [s.height for s in self._rows],
            "width": [s.width for s in self._rows],
            "source": [s.source for s in self._rows],
        }, schema=SCHEMA)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="none")  # images are already compressed
        data = buf.getvalue().to_pybytes()
        path = posixpath.join(self.dir, name)
        with storage_errors(self.fs.unstrip_protocol(path), self.fs), self.fs.open(path, "wb") as f:
            f.write(data)
        self.summary.parts.append({"file": f"{self.summary.split}/{name}", "rows": len(self._rows),
                                   "sha256": hashlib.sha256(data).hexdigest()})
        self.summary.count += len(self._rows)
        self._rows = []

    def close(self) -> SplitSummary:
        self._flush()
        keep = {posixpath.basename(p["file"]) for p in self.summary.parts}
        for path in self.fs.glob(posixpath.join(self.dir, "part-*.parquet")):
            if posixpath.basename(path) not in keep:
                self.fs.rm(path)
        return self.summary


# ----------------------------------------------------------------------------------------------- manifest
def build_manifest(domain: LabelDomain, splits: list[SplitSummary], skipped: list[dict[str, str]],
                   producer: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest is deterministic (no timestamps) so re-running a conversion reproduces it byte for byte."""
    return {
        "domain": domain.name,
        "classes": list(domain.classes),
        "producer": producer,
        "splits": {s.split: {"count": s.count, "class_pixels": s.class_pixels, "parts": s.parts,
                             "notes": s.notes} for s in sorted(splits, key=lambda s: s.split)},
        "skipped": sorted(skipped, key=lambda r: (r["source"], r["reason"])),
        **(extra or {}),
    }


def write_manifest(root: str, manifest: dict[str, Any], storage_options: dict | None = None) -> str:
    fs, base = filesystem(root, storage_options)
    path = posixpath.join(base, manifest["domain"], MANIFEST)
    with storage_errors(fs.unstrip_protocol(path), fs), fs.open(path, "w") as f:
        json.dump(manifest, f, indent=1)
    return path


def read_manifest(root: str, domain: str, storage_options: dict | None = None) -> dict[str, Any]:
    fs, base = filesystem(root, storage_options)
    path = posixpath.join(base, domain, MANIFEST)
    with storage_errors(root, fs):
        if not fs.exists(path):
            raise FileNotFoundError(f"{root}: no manifest for domain {domain!r} (expected {path})")
        with fs.open(path, "r") as f:
            return json.load(f)


def list_domains(root: str, storage_options: dict | None = None) -> list[str]:
    """Domains under ``root`` that have a manifest."""
    fs, base = filesystem(root, storage_options, check=True)  # a missing bucket is an error, not "no domains"
    return sorted(posixpath.basename(posixpath.dirname(p)) for p in fs.glob(posixpath.join(base, "*", MANIFEST)))


def part_paths(root: str, domain: str, split: str, storage_options: dict | None = None) -> list[str]:
    """Full paths (with scheme for remote roots) of a split's parts, in manifest order."""
    manifest = read_manifest(root, domain, storage_options)
    if split not in manifest["splits"]:
        raise KeyError(f"{root}: domain {domain} has no split {split!r}; has {sorted(manifest['splits'])}")
    return [posixpath.join(root.rstrip("/"), domain, p["file"]) for p in manifest["splits"][split]["parts"]]


def verify(root: str, domain: str, storage_options: dict | None = None) -> list[str]:
    """Re-hash every part listed in the manifest; returns a list of problems (empty when all match)."""
    fs, base = filesystem(root, storage_options)
    problems = []
    parts = [p for split in read_manifest(root, domain, storage_options)["splits"].values() for p in split["parts"]]
    with storage_errors(root, fs):
        for p in parts:
            path = posixpath.join(base, domain, p["file"])
            if not fs.exists(path):
                problems.append(f"{path}: missing")
                continue
            with fs.open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != p["sha256"]:
                    problems.append(f"{path}: checksum mismatch")
    return problems
