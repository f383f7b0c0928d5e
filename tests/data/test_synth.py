"""The synthetic generator: determinism, atom -> class consistency, left/right semantics, difficulty, shards."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from sstparse.cli import main
from sstparse import atoms
from sstparse.data.difficulty import colour_only_baseline
from sstparse.data.generate import generate
from sstparse.data.preview import first_rows, preview_grid
from sstparse.data.shards import read_manifest, verify
from sstparse.data.synth import Canvas, Person, draw_person, render, sample_outfit, sample_pose, sample_rng
from sstparse.data.synth import true_association
from sstparse.domains import load_domains

DOMAINS = load_domains()
SYNTH = sorted(n for n, d in DOMAINS.items() if d.is_synthetic)


@pytest.mark.parametrize("name", SYNTH)
def test_render_matches_card(name):
    d = DOMAINS[name]
    style = d.card.synthetic.style
    for i in range(3):
        r = render(d, sample_rng(0, name, "train", i))
        assert r.image.shape == (style.height, style.width, 3) and r.image.dtype == np.uint8
        assert r.parts.shape == r.garments.shape == (style.height, style.width)
        label = r.label(d)
        assert label.max() < d.num_classes  # every atom maps to a class, never to ignore
        assert (label != 0).mean() > 0.02   # someone is in the picture


def test_deterministic_and_disjoint():
    d = DOMAINS["syn_lip"]
    a, b = render(d, sample_rng(7, "syn_lip", "train", 3)), render(d, sample_rng(7, "syn_lip", "train", 3))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.atoms, b.atoms)
    c = render(d, sample_rng(7, "syn_lip", "val", 3))
    assert not np.array_equal(a.atoms, c.atoms)
    # Across domains: the same seed and index draw another scene (each domain has its own random stream; the
    # images differ in size anyway, so compare the draws and the people drawn) ...
    e = render(DOMAINS["syn_cihp"], sample_rng(7, "syn_cihp", "train", 3))
    assert not np.array_equal(sample_rng(7, "syn_lip", "train", 3).random(16),
                              sample_rng(7, "syn_cihp", "train", 3).random(16))
    share = lambda r: np.bincount(r.atoms.ravel(), minlength=atoms.NUM_ATOMS) / r.atoms.size  # noqa: E731
    assert np.abs(share(a) - share(e)).sum() > 0.05
    # ... and the same pixels are labelled each domain's own way (CIHP's torso-skin is LIP's upper-clothes).
    lip, cihp = a.label(d), a.label(DOMAINS["syn_cihp"])
    assert not np.array_equal(lip, cihp)
    assert (cihp == DOMAINS["syn_cihp"].index("torso-skin")).any()
    assert set(lip[cihp == DOMAINS["syn_cihp"].index("torso-skin")].tolist()) == {d.index("upper-clothes")}


@pytest.mark.parametrize("facing", [1, -1])
def test_left_is_the_persons_left(facing):
    """Facing the camera, the person's left arm appears on the image's right; facing away, on its left."""
    rng = np.random.default_rng(0)
    cv = Canvas(200, 200)
    cv.pid = 1
    person = Person(cx=100, top=10, height=180, facing=facing, width=1.0, outfit=sample_outfit(rng),
                    pose=sample_pose(rng, 1.0))
    draw_person(cv, person, rng)
    parts = np.asarray(cv.maps[0])
    xs = np.arange(200)[None, :].repeat(200, 0)
    left = xs[parts == atoms.PART_INDEX["upper_leg_l"]].mean()
    right = xs[parts == atoms.PART_INDEX["upper_leg_r"]].mean()
    assert (left - right) * facing > 0


def test_colour_alone_does_not_solve_it():
    """The best per-pixel colour lookup (quantised RGB -> most frequent class on train) stays below 40% mIoU on
    val, and cannot tell left from right: images need shape and context."""
    base = colour_only_baseline(DOMAINS["syn_lip"], n_train=120, n_val=40)
    assert base.miou < 0.40
    assert set(base.left_right_accuracy) == {"left-arm/right-arm", "left-leg/right-leg", "left-shoe/right-shoe"}
    for pair, acc in base.left_right_accuracy.items():
        assert acc < 0.62, pair


def _atom_hist(domain, n=20):
    return sum(np.bincount(render(domain, sample_rng(1, domain.name, "train", i)).atoms.ravel(),
                           minlength=atoms.NUM_ATOMS) for i in range(n))


def test_true_association():
    lip, ppp = DOMAINS["syn_lip"], DOMAINS["syn_ppp"]
    m = true_association(lip, ppp, _atom_hist(lip))
    seen = ~np.isnan(m).any(1)
    assert np.allclose(m[seen].sum(1), 1.0)
    # LIP's face is always PPP's head; LIP's left arm is PPP's upper or lower arm, nothing else.
    assert m[lip.index("face"), ppp.index("head")] == pytest.approx(1.0)
    arm = m[lip.index("left-arm")]
    assert arm[ppp.index("upper-arms")] + arm[ppp.index("lower-arms")] == pytest.approx(1.0)
    assert arm[ppp.index("upper-arms")] > 0.05 and arm[ppp.index("lower-arms")] > 0.05
    # A domain against itself is the identity on the classes it shows.
    same = true_association(lip, lip, _atom_hist(lip))
    assert np.allclose(same[seen], np.eye(lip.num_classes)[seen])
    # CIHP's torso-skin is what LIP calls upper-clothes (LIP has no torso-skin class).
    cihp = DOMAINS["syn_cihp"]
    mc = true_association(cihp, lip, _atom_hist(cihp))
    assert mc[cihp.index("torso-skin"), lip.index("upper-clothes")] == pytest.approx(1.0)


def test_generate_shards_idempotent_and_worker_independent(tmp_path):
    doms = [DOMAINS["syn_ppp"], DOMAINS["syn_atr"]]
    m1 = generate(str(tmp_path / "a"), doms, seed=3, scale=0.02, rows_per_part=4, progress=False)
    m2 = generate(str(tmp_path / "b"), doms, seed=3, scale=0.02, rows_per_part=4, workers=2, progress=False)
    assert m1 == m2  # checksums included: same bytes whatever the parallelism
    ppp = read_manifest(str(tmp_path / "a"), "syn_ppp")
    assert ppp["splits"]["train"]["count"] == 6 and len(ppp["splits"]["train"]["parts"]) == 2
    style = DOMAINS["syn_ppp"].card.synthetic.style
    assert sum(ppp["atom_histogram"]["train"]) == 6 * style.height * style.width
    assert sum(ppp["splits"]["train"]["class_pixels"]) == 6 * style.height * style.width
    # A held-out test split with its own seed stream: as large as the card says, none of its images in val.
    assert list(ppp["splits"]) == ["test", "train", "val"] and ppp["splits"]["test"]["count"] == 2
    assert ppp["splits"]["test"]["count"] == round(style.test_images * 0.02)
    images = {split: {r["image"] for r in first_rows(str(tmp_path / "a"), "syn_ppp", split, 100)}
              for split in ("train", "val", "test")}
    assert not images["test"] & images["val"] and not images["test"] & images["train"]
    again = generate(str(tmp_path / "a"), doms, seed=3, scale=0.02, rows_per_part=4, progress=False)
    assert again == m1 and verify(str(tmp_path / "a"), "syn_ppp") == []
    grid = preview_grid(str(tmp_path / "a"), doms, n=2)
    assert grid.height >= 2 * 160


def test_cli_synth_with_preview(tmp_path):
    out, png = tmp_path / "shards", tmp_path / "preview.png"
    res = CliRunner().invoke(main, ["synth", "--out", str(out), "--domain", "syn_ppp", "--scale", "0.01",
                                    "--preview", str(png)])
    assert res.exit_code == 0, res.output
    assert "syn_ppp: train 3, val 1, test 1" in res.output and png.stat().st_size > 1000


def test_cli_rejects_unknown_and_real_domains(tmp_path):
    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--domain", "nope"])
    assert res.exit_code != 0 and "unknown domain" in res.output
    with pytest.raises(ValueError, match="lip is not synthetic"):
        generate(str(tmp_path), [DOMAINS["lip"]], progress=False)


def test_demo_regenerates_shards_that_predate_the_test_split(tmp_path, capsys):
    import json

    from tests.scripts import job_script

    demo = job_script("demo")
    root = str(tmp_path / "shards")
    demo.ensure_synthetic(root, scale=0.01, seed=0)
    manifest = tmp_path / "shards" / "syn_ppp" / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["splits"]["test"]  # as written before the test split existed
    manifest.write_text(json.dumps(old))
    capsys.readouterr()
    demo.ensure_synthetic(root, scale=0.01, seed=0)
    assert "generating syn_ppp into" in capsys.readouterr().out
    assert "test" in read_manifest(root, "syn_ppp")["splits"]
    demo.ensure_synthetic(root, scale=0.01, seed=0)
    assert "synthetic shards found" in capsys.readouterr().out
