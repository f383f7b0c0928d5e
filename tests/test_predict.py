"""``sstparse predict`` through the CLI: folders, files, an S3 prefix, flip TTA, and bad images both ways."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sstparse import tracking
from sstparse.cli import main
from tests.serving import images, log_tiny


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return log_tiny(tmp_path_factory.mktemp("predict"))


def _write(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    ims = images(seed, [(64, 48), (40, 70), (64, 64)][: len(names)])
    for name, im in zip(names, ims):
        Image.fromarray(im).save(folder / name)
    return ims


def _predict(served, *args):
    return CliRunner().invoke(main, ["predict", "--model", served.uri, "--tracking-uri", served.cfg.tracking_uri,
                                     *map(str, args)])


def test_folder_input_writes_labels_colours_and_overlays(served, tmp_path):
    src = tmp_path / "in"
    ims = _write(src, ["a.png", "b.jpg"]) + _write(src / "sub", ["a.png"], seed=1)
    (src / "notes.txt").write_text("not an image: ignored in a folder")
    out = tmp_path / "out"
    res = _predict(served, "--domain", "syn_lip", src, "--out", out, "--flip-tta", "--batch-size", "2")
    assert res.exit_code == 0, res.output
    assert "wrote 3 image(s)" in res.output
    model = tracking.load_pyfunc_model(served.uri, served.cfg.tracking_uri)
    palette = model.unwrap_python_model().heads["syn_lip"].palette
    for name, im in zip(["a", "b", "sub/a"], ims):
        label = np.asarray(Image.open(out / f"{name}.png"))
        assert label.shape == im.shape[:2] and label.dtype == np.uint8 and label.max() < 20
        assert np.array_equal(np.asarray(Image.open(out / f"{name}_color.png")), palette[label])
        assert Image.open(out / f"{name}_overlay.jpg").size == (im.shape[1], im.shape[0])
    # The written maps are what the pyfunc returns for the same decoded images (JPEG decoded once, by PIL).
    decoded = [np.asarray(Image.open(src / n).convert("RGB")) for n in ["a.png", "b.jpg", "sub/a.png"]]
    expected = model.predict(decoded, params={"domain": "syn_lip", "flip_tta": True})
    for name, exp in zip(["a", "b", "sub/a"], expected):
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), exp)


def test_bad_image_stops_the_run_and_names_the_file(served, tmp_path):
    _write(tmp_path / "in", ["a.png"])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    res = _predict(served, "--domain", "syn_ppp", tmp_path / "in", "--out", tmp_path / "out")
    assert res.exit_code != 0
    assert "broken.jpg: undecodable image" in res.output


def test_keep_going_skips_and_lists_bad_images(served, tmp_path):
    _write(tmp_path / "in", ["a.png", "c.png"])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "tiny.png")
    res = _predict(served, "--domain", "syn_ppp", tmp_path / "in", "--out", tmp_path / "out", "--keep-going",
                   "--batch-size", "1")
    assert res.exit_code == 0, res.output
    assert "wrote 2 image(s)" in res.output and "skipped 2 image(s):" in res.output
    assert "broken.jpg: undecodable image" in res.output and "tiny.png: 8x8 is too small" in res.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "a_color.png", "c.png",
                                                                         "c_color.png"]


@pytest.mark.s3
def test_s3_prefix_input(served, tmp_path, s3_server, monkeypatch):
    import s3fs

    prefix = f"{s3_server.bucket}/test_predict/images"
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    ims = _write(tmp_path / "local", ["x.png", "y.png"])
    fs.put(str(tmp_path / "local") + "/", prefix, recursive=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.url)  # the CLI takes the endpoint from the environment
    res = _predict(served, "--domain", "syn_ppp", f"s3://{prefix}", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    for name, im in zip(["x", "y"], ims):
        assert np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).shape == im.shape[:2]


def test_explicit_files_and_clear_errors(served, tmp_path):
    _write(tmp_path / "a", ["same.png"])
    _write(tmp_path / "b", ["same.png", "other.png"])
    res = _predict(served, "--domain", "syn_ppp", tmp_path / "b" / "other.png", "--out", tmp_path / "out")
    assert res.exit_code == 0 and (tmp_path / "out" / "other_overlay.jpg").is_file(), res.output
    clash = _predict(served, "--domain", "syn_ppp", tmp_path / "a" / "same.png", tmp_path / "b" / "same.png",
                     "--out", tmp_path / "out")
    assert clash.exit_code != 0 and "would write the same outputs" in clash.output
    missing = _predict(served, "--domain", "syn_ppp", tmp_path / "nope", "--out", tmp_path / "out")
    assert missing.exit_code != 0 and "nope: no such file, folder or prefix" in missing.output
    unknown = _predict(served, "--domain", "lip", tmp_path / "a", "--out", tmp_path / "out")
    assert unknown.exit_code != 0 and "unknown domain 'lip'" in unknown.output and "syn_ppp" in unknown.output
    no_domain = _predict(served, tmp_path / "a", "--out", tmp_path / "out")
    assert no_domain.exit_code != 0 and "'domain' is required" in no_domain.output
