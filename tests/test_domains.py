"""Domain cards: every card validates; bad cards fail with the file and field named; domains are immutable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from sstparse.config import ConfigError
from sstparse import atoms
from sstparse.domains import DEFAULT_DATASETS_DIR, get_domain, load_domain, load_domains

CARDS = sorted(DEFAULT_DATASETS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_every_card_validates(path):
    d = load_domain(path)
    assert d.name == path.stem and d.num_classes == len(d.classes) == len(d.card.colors)
    assert d.classes[0] == "background"
    lut = d.flip_lut
    assert np.array_equal(lut[lut], np.arange(256))  # flipping twice is the identity
    assert d.palette.shape == (256, 3)
    if d.is_synthetic:
        assert (d.atom_lut < d.num_classes).all()
        # Background atoms are background in every synthetic domain.
        assert d.atom_lut[atoms.atom(0, 0)] == 0


@pytest.mark.parametrize("name,n,pairs,extra", [
    ("lip", 20, [(14, 15), (16, 17), (18, 19)], {10: "jumpsuits"}),
    ("cihp", 20, [(14, 15), (16, 17), (18, 19)], {10: "torso-skin"}),
    ("atr", 18, [(9, 10), (12, 13), (14, 15)], {16: "bag"}),
    ("pascal_person_part", 7, [], {1: "head"}),
    ("mhp_v2", 59, [(5, 6), (7, 8), (22, 23), (24, 25), (26, 27), (28, 29), (30, 31), (32, 33)], {}),
])
def test_real_label_sets(name, n, pairs, extra):
    d = get_domain(name)
    assert d.num_classes == n and [tuple(p) for p in d.flip_pairs] == pairs
    for i, cls in extra.items():
        assert d.classes[i] == cls
    for a, b in pairs:  # pairs really are left/right of the same thing
        assert d.classes[a].replace("left", "X") == d.classes[b].replace("right", "X")


@pytest.mark.parametrize("name", ["syn_lip", "syn_cihp", "syn_atr", "syn_ppp"])
def test_synthetic_cards_mirror_real_label_sets(name):
    real = {"syn_lip": "lip", "syn_cihp": "cihp", "syn_atr": "atr", "syn_ppp": "pascal_person_part"}[name]
    assert get_domain(name).classes == get_domain(real).classes
    assert get_domain(name).flip_pairs == get_domain(real).flip_pairs


def _write(tmp_path: Path, name: str, **changes) -> Path:
    card = yaml.safe_load((DEFAULT_DATASETS_DIR / f"{'syn_ppp' if name.startswith('syn') else 'lip'}.yaml").read_text())
    card["name"] = name
    card.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


LIP = yaml.safe_load((DEFAULT_DATASETS_DIR / "lip.yaml").read_text())


@pytest.mark.parametrize("changes,field,message", [
    ({"classes": LIP["classes"][:-1] + ["hat"]}, "classes", "duplicate class name"),
    ({"flip_pairs": [[14, 15], [18, 20]]}, "<root>", "flip_pairs.1"),
    ({"flip_pairs": [[14, 15], [15, 16]]}, "<root>", "appears in two pairs"),
    ({"colors": LIP["colors"][:-1]}, "<root>", "19 colours for 20 classes"),
    ({"colours": []}, "colours", "unknown key"),
    ({"ignore_index": 5}, "<root>", "collides"),
    ({"raw": {"format": "coco"}}, "raw.format", "Input should be"),
])
def test_bad_cards_name_file_and_field(tmp_path, changes, field, message):
    path = _write(tmp_path, "mylip", **changes)
    with pytest.raises(ConfigError) as err:
        load_domain(path)
    text = str(err.value)
    assert str(path) in text and field in text and message in text


def test_bad_synthetic_rules(tmp_path):
    good = yaml.safe_load((DEFAULT_DATASETS_DIR / "syn_ppp.yaml").read_text())
    rules = good["synthetic"]["rules"]
    for bad_rules, message in [
        (rules[:-1], "match no rule"),  # no catch-all: bags would have no class
        ([{"class": "head", "garments": ["cape"]}] + rules, "unknown garment"),
        ([{"class": "tail"}] + rules, "not in classes"),
    ]:
        path = _write(tmp_path, "syn_bad", synthetic={**good["synthetic"], "rules": bad_rules})
        with pytest.raises(ConfigError, match=message) as err:
            load_domain(path)
        assert str(path) in str(err.value)


def test_name_must_match_file(tmp_path):
    path = _write(tmp_path, "other")
    path.rename(tmp_path / "renamed.yaml")
    with pytest.raises(ConfigError, match="must equal the file name"):
        load_domain(tmp_path / "renamed.yaml")


def test_adding_a_card_adds_a_domain(tmp_path):
    _write(tmp_path, "newset")
    assert list(load_domains(tmp_path)) == ["newset"]


def test_domains_are_immutable():
    domains = load_domains()
    d = domains["lip"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.card = None
    with pytest.raises(Exception):
        d.card.classes = ()
    with pytest.raises(TypeError):
        domains["x"] = d
    with pytest.raises(ValueError):
        d.flip_lut[0] = 3
    with pytest.raises(KeyError, match="unknown domain"):
        get_domain("nope")
