"""shards.py: record validation, part writing, manifests."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sstparse.data.shards import (BadRecord, ShardWriter, build_manifest, list_domains, part_paths, read_manifest,
                                  validate_record, verify, write_manifest)
from sstparse.domains import load_domains

from tests.data.fixtures import H, W, image_bytes, label_array, label_bytes

LIP = load_domains()["lip"]
PPP = load_domains()["pascal_person_part"]


def _validate(image_kind: str = "ok", label_kind: str = "ok", domain=LIP, seed: int = 1):
    lab = label_array(seed, domain.num_classes)
    return validate_record("s1", "train", image_bytes(image_kind, seed), label_bytes(label_kind, lab), domain,
                           "img/s1.jpg", "lbl/s1.png"), lab


def _decode_label(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L"
        return np.asarray(im)


# ----------------------------------------------------------------------------------------------- validate_record
def test_valid_record_keeps_image_bytes_and_reencodes_label():
    sample, lab = _validate()
    assert (sample.height, sample.width) == (H, W)
    assert sample.image == image_bytes("ok", 1)  # RGB JPEG kept as shipped: no generation loss
    np.testing.assert_array_equal(_decode_label(sample.label), lab)
    assert sample.note is None and sample.source == "img/s1.jpg"


@pytest.mark.parametrize("label_kind", ["palette_label", "u16_label"])
def test_palette_and_16bit_labels_keep_indices(label_kind):
    sample, lab = _validate(label_kind=label_kind)
    np.testing.assert_array_equal(_decode_label(sample.label), lab)
    np.testing.assert_array_equal(sample.label_array, lab)


@pytest.mark.parametrize("kind,mode", [("gray_jpeg", "L"), ("cmyk_jpeg", "CMYK")])
def test_gray_and_cmyk_images_converted_with_note(kind, mode):
    sample, _ = _validate(image_kind=kind)
    assert sample.note == f"image mode {mode} converted to RGB"
    with Image.open(io.BytesIO(sample.image)) as im:
        assert im.mode == "RGB" and im.size == (W, H)


@pytest.mark.parametrize("image_kind,label_kind,source,reason", [
    ("undecodable_image", "ok", "img/s1.jpg", "undecodable image (UnidentifiedImageError"),
    ("ok", "size_mismatch", "lbl/s1.png", "label size 30x24 != image size 32x24"),
    ("ok", "out_of_range", "lbl/s1.png", "label values [40] outside domain lip's 20 classes"),
    ("ok", "rgb_label", "lbl/s1.png", "single-channel index PNG (L, P or I;16), got mode RGB"),
    ("ok", "u16_too_big", "lbl/s1.png", "I;16 label has values up to 300"),
])
def test_bad_records_name_the_file_and_reason(image_kind, label_kind, source, reason):
    with pytest.raises(BadRecord) as info:
        _validate(image_kind, label_kind)
    assert info.value.source == source
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{source}: ")


def test_truncated_and_undecodable_label():
    good = image_bytes("ok", 1)
    lab = label_bytes("ok", label_array(1, 20))
    with pytest.raises(BadRecord, match=r"img/s1.jpg: undecodable image \(OSError"):
        validate_record("s1", "train", good[: len(good) // 2], lab, LIP, "img/s1.jpg", "lbl/s1.png")
    with pytest.raises(BadRecord, match=r"lbl/s1.png: undecodable label"):
        validate_record("s1", "train", good, b"\x89PNG broken", LIP, "img/s1.jpg", "lbl/s1.png")


def test_undecodable_reason_is_reproducible():
    # The reason lands in the manifest, so it must not carry a memory address that changes every run.
    reasons = set()
    for _ in range(3):
        with pytest.raises(BadRecord) as info:
            _validate("undecodable_image")
        reasons.add(info.value.reason)
    assert len(reasons) == 1 and "0x" not in reasons.pop()


def test_class_range_is_per_domain():
    lab = label_array(3, LIP.num_classes)  # values up to 19: fine for LIP, not for the 7-class PASCAL domain
    validate_record("s", "train", image_bytes("ok", 3), label_bytes("ok", lab), LIP, "i", "l")
    with pytest.raises(BadRecord, match="outside domain pascal_person_part's 7 classes"):
        validate_record("s", "train", image_bytes("ok", 3), label_bytes("ok", lab), PPP, "i", "l")


def test_unknown_split_rejected():
    with pytest.raises(BadRecord, match="split 'testing'"):
        validate_record("s", "testing", image_bytes("ok", 1), label_bytes("ok", label_array(1, 20)), LIP, "i")


# ----------------------------------------------------------------------------------------------- writing
def _samples(n: int, split: str = "train"):
    out = []
    for i in range(n):
        lab = label_array(i, LIP.num_classes)
        out.append(validate_record(f"s{i}", split, image_bytes("gray_jpeg" if i == 1 else "ok", i),
                                   label_bytes("ok", lab), LIP, f"img/s{i}.jpg"))
    return out


def test_writer_splits_parts_and_counts(tmp_path):
    samples = _samples(5)
    with ShardWriter(str(tmp_path), LIP, "train", rows_per_part=2) as w:
        for s in samples:
            w.add(s)
    summary = w.summary
    assert summary.count == 5
    assert [p["rows"] for p in summary.parts] == [2, 2, 1]
    assert [p["file"] for p in summary.parts] == [f"train/part-0000{i}.parquet" for i in range(3)]
    expected = np.bincount(np.concatenate([s.label_array.ravel() for s in samples]), minlength=256)[:20]
    assert summary.class_pixels == expected.tolist()
    assert summary.notes == [{"source": "img/s1.jpg", "note": "image mode L converted to RGB"}]
    table = pq.read_table(tmp_path / "lip" / "train" / "part-00001.parquet")
    assert table.column("sample_id").to_pylist() == ["s2", "s3"]
    assert set(table.column("domain").to_pylist()) == {"lip"}


def test_writer_removes_stale_parts(tmp_path):
    with ShardWriter(str(tmp_path), LIP, "train", rows_per_part=1) as w:
        for s in _samples(3):
            w.add(s)
    with ShardWriter(str(tmp_path), LIP, "train", rows_per_part=2) as w:
        for s in _samples(3):
            w.add(s)
    assert sorted(p.name for p in (tmp_path / "lip" / "train").iterdir()) == ["part-00000.parquet",
                                                                               "part-00001.parquet"]


def test_writer_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="split 'testing'"):
        ShardWriter(str(tmp_path), LIP, "testing")


# ----------------------------------------------------------------------------------------------- manifest
def _write_domain(root, rows_per_part=2, skipped=()):
    summaries = []
    for split in ("train", "val"):
        with ShardWriter(str(root), LIP, split, rows_per_part=rows_per_part) as w:
            for s in _samples(3, split):
                w.add(s)
        summaries.append(w.summary)
    return build_manifest(LIP, summaries[::-1], list(skipped), {"tool": "test"}, {"listed": 7})


def test_manifest_is_deterministic(tmp_path):
    skipped = [{"source": "b.jpg", "reason": "x"}, {"source": "a.jpg", "reason": "y"}]
    m1 = _write_domain(tmp_path / "one", skipped=skipped)
    m2 = _write_domain(tmp_path / "two", skipped=skipped[::-1])
    assert json.dumps(m1) == json.dumps(m2)
    assert list(m1["splits"]) == ["train", "val"]
    assert [s["source"] for s in m1["skipped"]] == ["a.jpg", "b.jpg"]
    assert m1["listed"] == 7 and m1["classes"] == list(LIP.classes)
    write_manifest(str(tmp_path / "one"), m1)
    write_manifest(str(tmp_path / "two"), m2)
    assert (tmp_path / "one/lip/manifest.json").read_bytes() == (tmp_path / "two/lip/manifest.json").read_bytes()


def test_manifest_roundtrip_paths_and_verify(tmp_path):
    root = str(tmp_path)
    write_manifest(root, _write_domain(tmp_path))
    assert list_domains(root) == ["lip"]
    assert read_manifest(root, "lip")["splits"]["val"]["count"] == 3
    paths = part_paths(root, "lip", "val")
    assert paths == [f"{root}/lip/val/part-00000.parquet", f"{root}/lip/val/part-00001.parquet"]
    assert sum(pq.read_table(p).num_rows for p in paths) == 3
    assert verify(root, "lip") == []
    with pytest.raises(KeyError, match="no split 'test'"):
        part_paths(root, "lip", "test")
    with pytest.raises(FileNotFoundError, match="no manifest for domain 'atr'"):
        read_manifest(root, "atr")


def test_verify_detects_tampered_and_missing_parts(tmp_path):
    root = str(tmp_path)
    write_manifest(root, _write_domain(tmp_path))
    part = tmp_path / "lip" / "train" / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    (tmp_path / "lip" / "val" / "part-00001.parquet").unlink()
    problems = verify(root, "lip")
    assert len(problems) == 2
    assert problems[0].endswith("lip/train/part-00000.parquet: checksum mismatch")
    assert problems[1].endswith("lip/val/part-00001.parquet: missing")
