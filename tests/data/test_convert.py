"""convert.py (raw layouts -> shards) and inspect.py (manifest summary)."""

from __future__ import annotations

import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import sstparse
from sstparse.cli import main
from sstparse.data.convert import ConvertError, convert, split_of
from sstparse.data.inspect import summarize
from sstparse.data.shards import BadRecord, list_domains, part_paths, read_manifest, verify
from sstparse.domains import LabelDomain, load_domains

from tests.data.fixtures import BAD, GOOD, NOTE, Built, build_atr, build_cihp, build_lip, build_pascal_person_part

DOMAINS = load_domains()
LAYOUTS = ["lip", "cihp", "atr", "pascal_person_part"]


def _build(dataset: str, src: Path, train: list[str], val: list[str], **kw) -> Built:
    if dataset == "atr":
        return build_atr(src, train + val, **kw)
    builder = {"lip": build_lip, "cihp": build_cihp, "pascal_person_part": build_pascal_person_part}[dataset]
    return builder(src, {"train": train, "val": val}, **kw)


def _with_val_fraction(name: str, fraction: float) -> dict[str, LabelDomain]:
    card = DOMAINS[name].card
    raw = card.raw.model_copy(update={"val_fraction": fraction})
    return {**DOMAINS, name: LabelDomain(card.model_copy(update={"raw": raw}))}


def _rows(root: str, domain: str, split: str, storage_options=None, filesystem=None) -> list[dict]:
    rows = []
    for path in part_paths(root, domain, split, storage_options):
        path = path.split("://", 1)[-1] if filesystem is not None else path
        rows += pq.read_table(path, filesystem=filesystem).to_pylist()
    return rows


def _label(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _check_output(root: str, dataset: str, built: Built, manifest: dict, storage_options=None, filesystem=None):
    """Shards hold exactly the good samples, in the right split, with labels identical to the raw ones."""
    assert read_manifest(root, dataset, storage_options) == manifest
    seen = {}
    for split in ("train", "val"):
        rows = _rows(root, dataset, split, storage_options, filesystem)
        assert [r["sample_id"] for r in rows] == sorted(r["sample_id"] for r in rows)  # deterministic order
        assert manifest["splits"][split]["count"] == len(rows)
        hist = np.zeros(DOMAINS[dataset].num_classes, np.int64)
        for r in rows:
            assert (r["domain"], r["split"], r["height"], r["width"]) == (dataset, split, 24, 32)
            lab = _label(r["label"])
            np.testing.assert_array_equal(lab, built.labels[r["sample_id"]])
            hist += np.bincount(lab.ravel(), minlength=256)[: len(hist)]
            with Image.open(io.BytesIO(r["image"])) as im:
                assert im.mode == "RGB" and im.size == (32, 24)
            assert (built.root / r["source"]).is_file()
            seen[r["sample_id"]] = split
        assert manifest["splits"][split]["class_pixels"] == hist.tolist()
    assert set(seen) == set(built.labels)
    assert sorted(manifest["splits"]) == ["train", "val"]  # real layouts ship labelled train/val only: no test
    for sid, split in built.splits.items():
        assert seen[sid] == (split or split_of(sid, DOMAINS[dataset].card.raw.val_fraction))


# ----------------------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("dataset", LAYOUTS)
def test_layout_converts(tmp_path, dataset):
    built = _build(dataset, tmp_path / "raw", ["ok", "ok", "palette_label"], ["ok", "u16_label"])
    out = str(tmp_path / "shards")
    manifest = convert(dataset, built.src, out, rows_per_part=2)
    _check_output(out, dataset, built, manifest)
    assert manifest["producer"] == {"tool": "sstparse.convert", "dataset": dataset, "version": sstparse.__version__}
    assert manifest["skipped"] == [] and sum(manifest["listed"].values()) == 5
    assert verify(out, dataset) == []


@pytest.mark.parametrize("dataset,variant", [
    ("lip", {"ids_at_root": True}),
    ("cihp", {"id_lists": False}),
    ("cihp", {"nested": False}),
    ("atr", {"nested": False}),
    ("pascal_person_part", {"pair_lists": True}),
])
def test_layout_variants(tmp_path, dataset, variant):
    built = _build(dataset, tmp_path / "raw", ["ok", "ok"], ["ok"], **variant)
    out = str(tmp_path / "shards")
    _check_output(out, dataset, built, convert(dataset, built.src, out))


def test_cihp_accepts_src_pointing_at_inner_folder(tmp_path):
    built = build_cihp(tmp_path / "raw", {"train": ["ok"], "val": ["ok"]})
    out = str(tmp_path / "shards")
    manifest = convert("cihp", tmp_path / "raw" / "instance-level_human_parsing", out)
    _check_output(out, "cihp", built, manifest)


def test_atr_split_is_a_stable_hash(tmp_path):
    built = build_atr(tmp_path / "raw", ["ok"] * 12)
    domains = _with_val_fraction("atr", 0.5)
    m1 = convert("atr", built.src, str(tmp_path / "a"), domains=domains)
    m2 = convert("atr", built.src, str(tmp_path / "b"), domains=domains)
    assert m1 == m2
    val = [r["sample_id"] for r in _rows(str(tmp_path / "a"), "atr", "val")]
    # crc32, not hash(): the same on every machine and run. Pinned so a change of rule is a visible decision.
    assert val == [sid for sid in sorted(built.labels) if zlib.crc32(sid.encode()) < 2**31]
    assert val == ["atr_0001_ok", "atr_0002_ok", "atr_0004_ok", "atr_0007_ok", "atr_0008_ok", "atr_0011_ok"]
    assert m1["splits"]["train"]["count"] == 6 and "crc32" in m1["split_rule"]


# ----------------------------------------------------------------------------------------------- bad records
def _all_kinds(dataset: str) -> tuple[list[str], list[str]]:
    kinds = GOOD + [k for k in BAD if not (dataset == "atr" and k == "missing_image")]
    return kinds[::2], kinds[1::2]


@pytest.mark.parametrize("dataset", LAYOUTS)
def test_skip_lists_every_bad_record(tmp_path, dataset):
    built = _build(dataset, tmp_path / "raw", *_all_kinds(dataset))
    out = str(tmp_path / "shards")
    manifest = convert(dataset, built.src, out, on_bad_record="skip", rows_per_part=3)
    _check_output(out, dataset, built, manifest)
    skipped = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == set(built.bad)
    for source, reason in built.bad.items():
        assert reason in skipped[source], (source, skipped[source])
    written = sum(s["count"] for s in manifest["splits"].values())
    assert written + len(manifest["skipped"]) == sum(manifest["listed"].values()) == built.listed
    notes = {n["source"]: n["note"] for s in manifest["splits"].values() for n in s["notes"]}
    assert notes == built.notes and len(notes) == len(NOTE)


@pytest.mark.parametrize("kind", BAD)
def test_error_names_the_file(tmp_path, kind):
    built = build_lip(tmp_path / "raw", {"train": ["ok", kind, "ok"], "val": ["ok"]})
    [(rel, reason)] = built.bad.items()
    with pytest.raises(BadRecord) as info:
        convert("lip", built.src, str(tmp_path / "shards"))
    assert info.value.source == str(built.root / rel)
    assert reason in info.value.reason
    # no manifest: a failed conversion must not look like a finished one
    assert list_domains(str(tmp_path / "shards")) == []


def test_failed_rerun_removes_previous_manifest(tmp_path):
    built = build_lip(tmp_path / "raw", {"train": ["ok", "ok"], "val": ["ok"]})
    out = str(tmp_path / "shards")
    convert("lip", built.src, out)
    train_id = next(sid for sid, split in built.splits.items() if split == "train")
    (built.root / "TrainVal_images/train_images" / f"{train_id}.jpg").write_bytes(b"broken")
    with pytest.raises(BadRecord, match="undecodable image"):
        convert("lip", built.src, out)
    assert list_domains(out) == []


def test_duplicate_id_is_reported(tmp_path):
    built = build_pascal_person_part(tmp_path / "raw", {"train": ["ok", "ok"], "val": ["ok"]})
    ids = tmp_path / "raw/list/train_id.txt"
    first = ids.read_text().splitlines()[0]
    ids.write_text(ids.read_text() + first + "\n")
    with pytest.raises(BadRecord, match="listed more than once in list/train_id.txt"):
        convert("pascal_person_part", built.src, str(tmp_path / "a"))
    m = convert("pascal_person_part", built.src, str(tmp_path / "b"), on_bad_record="skip")
    assert m["splits"]["train"]["count"] == 2 and m["listed"]["train"] == 3
    assert m["skipped"] == [{"source": f"JPEGImages/{first}.jpg", "split": "train",
                             "reason": "id '%s' listed more than once in list/train_id.txt" % first}]


# ----------------------------------------------------------------------------------------------- layout errors
def _break(path: Path, how: str) -> None:
    if how == "rm":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        path.write_text("\n\n")


@pytest.mark.parametrize("dataset,rel,how,message", [
    ("lip", "TrainVal_images", "rm", "LIP: expected folder {root}/TrainVal_images not found"),
    ("lip", "TrainVal_images/val_id.txt", "rm", "LIP val ids: expected file {root}/val_id.txt or "
                                                "{root}/TrainVal_images/val_id.txt not found"),
    ("lip", "TrainVal_images/train_id.txt", "empty", "{root}/TrainVal_images/train_id.txt: id list is empty"),
    ("lip", "TrainVal_parsing_annotations/val_segmentations", "rm",
     "LIP val labels: expected folder {root}/TrainVal_parsing_annotations/val_segmentations not found"),
    ("cihp", "instance-level_human_parsing/Validation", "rm",
     "CIHP val: expected folder {root}/instance-level_human_parsing/Validation not found"),
    ("cihp", "instance-level_human_parsing", "rm", "CIHP: expected folder "
     "{root}/instance-level_human_parsing/Training or {root}/Training not found"),
    ("atr", "humanparsing/SegmentationClassAug", "rm",
     "ATR labels: expected folder {root}/humanparsing/SegmentationClassAug not found"),
    ("pascal_person_part", "list/val_id.txt", "rm",
     "PASCAL-Person-Part val ids: expected file {root}/list/val_id.txt or {root}/list/val.txt not found"),
])
def test_layout_errors_name_the_expected_path(tmp_path, dataset, rel, how, message):
    src = tmp_path / "raw"
    _build(dataset, src, ["ok"], ["ok"])
    _break(src / rel, how)
    with pytest.raises(ConvertError) as info:
        convert(dataset, src, str(tmp_path / "shards"))
    assert str(info.value) == message.format(root=src)
    assert not (tmp_path / "shards").exists()  # nothing written before the layout is known to be complete


def test_cihp_empty_images_folder(tmp_path):
    build_cihp(tmp_path / "raw", {"train": ["ok"], "val": []}, id_lists=False)
    with pytest.raises(ConvertError, match=r"CIHP val images: no \*.jpg images in .*Validation/Images"):
        convert("cihp", tmp_path / "raw", str(tmp_path / "shards"))


def test_unsupported_datasets(tmp_path):
    with pytest.raises(ConvertError, match=r"no converter exists for the 'mhp_v2' raw layout \(dataset mhp_v2\) "
                                           r"yet; converters exist for: atr, cihp, lip, pascal_person_part"):
        convert("mhp_v2", tmp_path, str(tmp_path / "out"))
    with pytest.raises(ConvertError, match=r"unknown dataset 'coco'; domain cards: atr, cihp, lip, mhp_v2"):
        convert("coco", tmp_path, str(tmp_path / "out"))
    with pytest.raises(ConvertError, match="syn_lip is a synthetic domain"):
        convert("syn_lip", tmp_path, str(tmp_path / "out"))
    with pytest.raises(ConvertError, match="source folder not found"):
        convert("lip", tmp_path / "nope", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="on_bad_record must be 'error' or 'skip'"):
        convert("lip", tmp_path, str(tmp_path / "out"), on_bad_record="ignore")


# ----------------------------------------------------------------------------------------------- idempotency
def test_rerun_is_idempotent_and_removes_stale_parts(tmp_path):
    built = build_lip(tmp_path / "raw", {"train": ["ok", "gray_jpeg", "ok", "undecodable_image", "ok"],
                                         "val": ["ok", "missing_label"]})
    out = tmp_path / "shards"
    m1 = convert("lip", built.src, str(out), on_bad_record="skip", rows_per_part=2)
    manifest_bytes = (out / "lip/manifest.json").read_bytes()
    parts = {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
    stale = out / "lip/train/part-00099.parquet"
    stale.write_bytes(b"left over from an older, larger run")
    m2 = convert("lip", built.src, str(out), on_bad_record="skip", rows_per_part=2)
    assert m2 == m1 and json.loads(manifest_bytes) == m1
    assert (out / "lip/manifest.json").read_bytes() == manifest_bytes
    assert not stale.exists()
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))} == parts
    assert [p["rows"] for p in m2["splits"]["train"]["parts"]] == [2, 2]


def test_verify_detects_tampered_part(tmp_path):
    built = build_lip(tmp_path / "raw", {"train": ["ok", "ok", "ok"], "val": ["ok"]})
    out = str(tmp_path / "shards")
    convert("lip", built.src, out, rows_per_part=2)
    part = tmp_path / "shards/lip/train/part-00001.parquet"
    data = bytearray(part.read_bytes())
    data[-20] ^= 0x01
    part.write_bytes(bytes(data))
    assert verify(out, "lip") == [f"{part}: checksum mismatch"]
    # The same check from the command line: the part is named and the exit status says it failed.
    bad = CliRunner().invoke(main, ["inspect", "--verify", out])
    assert bad.exit_code == 1 and f"{part}: checksum mismatch" in bad.output and "1 shard part(s)" in bad.output
    convert("lip", built.src, out, rows_per_part=2)  # rewritten: clean again
    good = CliRunner().invoke(main, ["inspect", "--verify", out])
    assert good.exit_code == 0 and "verified: every part" in good.output, good.output


# ----------------------------------------------------------------------------------------------- inspect
def test_summarize_local(tmp_path):
    out = str(tmp_path / "shards")
    built = build_lip(tmp_path / "lip", {"train": ["ok", "ok", "missing_label"], "val": ["ok"]})
    convert("lip", built.src, out, on_bad_record="skip", rows_per_part=1)
    built = build_pascal_person_part(tmp_path / "ppp", {"train": ["ok"], "val": ["ok"]})
    convert("pascal_person_part", built.src, out)
    text = summarize(out)
    lines = text.splitlines()
    assert lines[0] == f"shards under {out}"
    assert lines[1].split() == ["domain", "split", "images", "parts", "skipped"]
    assert ["lip", "train", "2", "2", "1"] in [ln.split() for ln in lines]
    assert ["lip", "total", "3", "3", "1"] in [ln.split() for ln in lines]
    assert ["pascal_person_part", "val", "1", "1", "0"] in [ln.split() for ln in lines]
    assert "lip: class pixels" in text and "pascal_person_part: class pixels" in text
    hist = read_manifest(out, "lip")["splits"]
    pixels = sum(s["class_pixels"][14] for s in hist.values())
    total = sum(sum(s["class_pixels"]) for s in hist.values())
    [left_arm] = [ln.split() for ln in lines if ln.startswith("left-arm ")]
    assert left_arm == ["left-arm", f"{pixels:,}", f"{100 * pixels / total:.2f}"]
    only = summarize(out, domains=["pascal_person_part"])
    assert "lip" not in only.replace("pascal_person_part", "")
    assert "lip: class pixels" in summarize(out, domains=DOMAINS)  # a load_domains() mapping restricts nothing here
    assert summarize(str(tmp_path / "empty")).endswith("no shards (no <domain>/manifest.json)")


# ----------------------------------------------------------------------------------------------- s3
@pytest.mark.s3
def test_convert_to_s3_and_read_back(tmp_path, s3_server):
    import s3fs

    built = build_lip(tmp_path / "raw", {"train": ["ok", "cmyk_jpeg", "ok", "rgb_label"], "val": ["ok", "ok"]})
    root, so = f"s3://{s3_server.bucket}/convert/shards", s3_server.storage_options
    manifest = convert("lip", built.src, root, on_bad_record="skip", rows_per_part=2, storage_options=so)
    fs = s3fs.S3FileSystem(**so)
    stale = f"{s3_server.bucket}/convert/shards/lip/val/part-00099.parquet"
    fs.pipe(stale, b"stale")
    assert convert("lip", built.src, root, on_bad_record="skip", rows_per_part=2, storage_options=so) == manifest
    fs.invalidate_cache()
    assert not fs.exists(stale)
    assert list_domains(root, so) == ["lip"]
    assert part_paths(root, "lip", "train", so) == [f"{root}/lip/train/part-00000.parquet",
                                                    f"{root}/lip/train/part-00001.parquet"]
    _check_output(root, "lip", built, manifest, so, filesystem=fs)
    assert [s["source"] for s in manifest["skipped"]] == list(built.bad)
    assert verify(root, "lip", so) == []
    text = summarize(root, so)
    assert ["lip", "train", "3", "2", "1"] in [ln.split() for ln in text.splitlines()]
