"""``sstparse predict --ray``: the same bytes as single-process predict (local and S3), resume, bad images."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import s3fs
from click.testing import CliRunner
from PIL import Image

from sstparse.cli import main
from tests.serving import images, log_tiny

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return log_tiny(tmp_path_factory.mktemp("batch_predict"))


def _predict(served, *args):
    return CliRunner().invoke(main, ["predict", "--model", served.uri, "--tracking-uri", served.cfg.tracking_uri,
                                     "--domain", "syn_lip", *map(str, args)])


def _inputs(folder: Path) -> Path:
    shapes = [(64, 48), (40, 70), (64, 48), (72, 72), (48, 64)]
    for i, im in enumerate(images(3, shapes)):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else "") / f"im{i}.{'jpg' if i == 1 else 'png'}")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ray_writes_the_bytes_single_process_predict_writes(served, tmp_path, s3_server, ray_session,
                                                             monkeypatch):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    src = _inputs(tmp_path / "in")
    assert _predict(served, src, "--out", tmp_path / "one", "--flip-tta").exit_code == 0
    expected = _files(tmp_path / "one")
    assert len(expected) == 15

    res = _predict(served, src, "--out", tmp_path / "ray", "--flip-tta", "--ray", "--concurrency", "2",
                   "--batch-size", "2", "--num-cpus-per-actor", "0.5")
    assert res.exit_code == 0, res.output
    assert "predicted 5 image(s)" in res.output and "skipped 0 bad image(s)" in res.output
    got = _files(tmp_path / "ray")
    assert got.pop("skipped.csv") == b"file,reason\r\n"
    assert got == expected

    # From an S3 prefix to an S3 prefix: the same bytes again.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)  # the CLI takes the endpoint from the environment
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    prefix = f"{s3_server.bucket}/test_batch_predict"
    fs.put(str(src) + "/", f"{prefix}/in", recursive=True)
    res = _predict(served, f"s3://{prefix}/in", "--out", f"s3://{prefix}/out", "--flip-tta", "--ray")
    assert res.exit_code == 0, res.output
    fs.invalidate_cache()
    from_s3 = {p.removeprefix(f"{prefix}/out/"): fs.cat_file(p) for p in fs.find(f"{prefix}/out")}
    from_s3.pop("skipped.csv")
    assert from_s3 == expected


def test_bad_images_are_listed_and_a_rerun_resumes(served, tmp_path, ray_session, monkeypatch):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    src = _inputs(tmp_path / "in")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(images(0, [(8, 8)])[0]).save(src / "sub" / "tiny.png")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)  # relative paths, as typed: the actors start in another folder

    first = _predict(served, "in", "--out", "out/", "--ray", "--batch-size", "3")
    assert first.exit_code == 0, first.output
    assert "predicted 5 image(s)" in first.output and "skipped 2 bad image(s)" in first.output
    with open(out / "skipped.csv") as f:
        rows = list(csv.DictReader(f))
    reasons = {Path(r["file"]).name: r["reason"] for r in rows}
    assert reasons.keys() == {"broken.jpg", "tiny.png"}
    assert reasons["broken.jpg"].startswith("undecodable image") and "too small" in reasons["tiny.png"]

    # A job killed half-way leaves some images without outputs: the re-run does those (and retries the bad ones).
    (out / "sub" / "im1_overlay.jpg").unlink()
    (out / "im2.png").unlink()
    done_before = (out / "im0.png").stat().st_mtime_ns
    again = _predict(served, src, "--out", out, "--ray")
    assert again.exit_code == 0, again.output
    assert "predicted 2 image(s)" in again.output and "3 already done and kept" in again.output
    assert (out / "im0.png").stat().st_mtime_ns == done_before and (out / "sub" / "im1_overlay.jpg").is_file()

    redo = _predict(served, src, "--out", out, "--ray", "--overwrite")
    assert "predicted 5 image(s)" in redo.output and "already done" not in redo.output
    assert not list(out.rglob("*.tmp"))


def test_clear_errors_before_any_work(served, tmp_path, ray_session):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    src = _inputs(tmp_path / "in")
    unknown = CliRunner().invoke(main, ["predict", "--model", served.uri, "--tracking-uri",
                                        served.cfg.tracking_uri, "--domain", "lip", str(src), "--out",
                                        str(tmp_path / "out"), "--ray"])
    assert unknown.exit_code != 0 and "unknown domain 'lip'" in unknown.output
    alias = CliRunner().invoke(main, ["predict", "--model", f"models:/{served.name}@nobody", "--tracking-uri",
                                      served.cfg.tracking_uri, str(src), "--out", str(tmp_path / "out"), "--ray"])
    assert alias.exit_code != 0 and "cannot resolve the alias" in alias.output
    assert not (tmp_path / "out").exists()
