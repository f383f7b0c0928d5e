"""Label domains: one immutable :class:`LabelDomain` per dataset, loaded from ``datasets/<name>.yaml`` cards.

A card holds the class list in the order the dataset ships it, a colour per class, the left/right flip pairs of
*that* dataset (LIP swaps 14/15, 16/17, 18/19; ATR 9/10, 12/13, 14/15 -- never assume one dataset's pairs for
another), the ignore index, the raw layout the converter reads, and for synthetic domains the mapping from the
generator's atoms (body part, garment) to classes plus the domain's visual style.

Adding a dataset means adding a card; nothing in the code names a domain. ``load_domains()`` returns a plain
read-only mapping (no global registry is mutated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

import numpy as np
from pydantic import Field, field_validator, model_validator

from sstparse.config import ConfigError, StrictModel, read_yaml, validate
from sstparse import atoms

DEFAULT_DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"

RawFormat = Literal["lip", "cihp", "atr", "pascal_person_part", "mhp_v2", "synthetic"]
Range = tuple[float, float]


class RawLayout(StrictModel):
    """How the dataset ships on disk; the converter for ``format`` reads this layout."""

    format: RawFormat = Field(description="Which converter reads the raw layout (see datasets/README.md).")
    val_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="For layouts without an official split (ATR): fraction of samples put in val, chosen by a "
                    "stable hash of the sample id so re-runs agree.")
    url: str = Field("", description="Where users obtain the dataset (informational).")


class SynthRule(StrictModel):
    """Atoms matching ``parts`` and ``garments`` (empty = any) get class ``cls``. First matching rule wins."""

    cls: str = Field(alias="class", description="Class name in this card's `classes`.")
    parts: tuple[str, ...] = Field((), description="Body parts this rule matches (empty: any part).")
    garments: tuple[str, ...] = Field((), description="Garments this rule matches (empty: any garment).")

    @field_validator("parts")
    @classmethod
    def _known_parts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if p not in atoms.PART_INDEX]
        if bad:
            raise ValueError(f"unknown body part(s) {bad}; known: {list(atoms.PARTS)}")
        return v

    @field_validator("garments")
    @classmethod
    def _known_garments(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [g for g in v if g not in atoms.GARMENT_INDEX]
        if bad:
            raise ValueError(f"unknown garment(s) {bad}; known: {list(atoms.GARMENTS)}")
        return v


class SynthStyle(StrictModel):
    """How a synthetic domain looks; domains differ here as real datasets do."""

    train_images: int = Field(ge=1, description="Default number of training images.")
    val_images: int = Field(ge=1, description="Default number of validation images (checkpoint selection, ASHA).")
    test_images: int = Field(ge=1, description="Default number of test images: rendered from their own seed "
                                               "stream and never used for selection; benchmark scores use them.")
    height: int = Field(ge=32, le=2048, description="Image height in pixels.")
    width: int = Field(ge=32, le=2048, description="Image width in pixels.")
    persons: tuple[int, int] = Field((1, 1), description="Min and max number of people per image.")
    person_scale: Range = Field((0.7, 0.95), description="Person height as a fraction of image height.")
    upper_body_crop: float = Field(0.0, ge=0, le=1, description="Probability of framing only the upper body.")
    back_view: float = Field(0.1, ge=0, le=1, description="Probability a person faces away from the camera.")
    occlusion: float = Field(0.0, ge=0, le=1, description="Probability of an occluding object in front.")
    background: Literal["room", "street", "studio", "clutter"] = Field(description="Background generator.")
    palette: Literal["vivid", "muted", "dark", "pastel"] = Field(description="Garment colour distribution.")
    texture: float = Field(0.3, ge=0, le=1, description="Probability a garment is patterned.")
    noise: float = Field(4.0, ge=0, le=40, description="Std of per-pixel sensor noise (0-255 scale).")
    jpeg_quality: int = Field(90, ge=30, le=100, description="JPEG quality of the stored image.")

    @model_validator(mode="after")
    def _ordered(self) -> "SynthStyle":
        for name in ("persons", "person_scale"):
            lo, hi = getattr(self, name)
            if lo > hi or lo <= 0:
                raise ValueError(f"{name}: need 0 < min <= max, got {(lo, hi)}")
        return self


class SynthSpec(StrictModel):
    """Synthetic-domain section of a card: atom -> class rules and visual style."""

    rules: tuple[SynthRule, ...] = Field(min_length=1, description="Ordered atom -> class rules.")
    style: SynthStyle


class DomainCard(StrictModel):
    """Schema of ``datasets/<name>.yaml``."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Domain id; must equal the file stem.")
    description: str = Field("", description="One line on what the dataset is.")
    classes: tuple[str, ...] = Field(min_length=2, max_length=255, description="Class names in label-index order.")
    colors: tuple[tuple[int, int, int], ...] = Field(description="RGB colour per class, same order as classes.")
    flip_pairs: tuple[tuple[int, int], ...] = Field((), description="Left/right class index pairs swapped by a flip.")
    ignore_index: int = Field(255, ge=0, le=255, description="Label value that carries no supervision.")
    multi_person: bool = Field(False, description="Images may hold several people.")
    raw: RawLayout
    synthetic: SynthSpec | None = Field(None, description="Present only for generated domains.")

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        seen = [c for i, c in enumerate(v) if c in v[:i]]
        if seen:
            raise ValueError(f"duplicate class name(s) {sorted(set(seen))}")
        return v

    @field_validator("colors")
    @classmethod
    def _rgb(cls, v):
        for i, c in enumerate(v):
            if not all(0 <= x <= 255 for x in c):
                raise ValueError(f"colour {i} {list(c)} has a component outside 0-255")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DomainCard":
        n = len(self.classes)
        if len(self.colors) != n:
            raise ValueError(f"colors: {len(self.colors)} colours for {n} classes")
        if self.ignore_index < n:
            raise ValueError(f"ignore_index: {self.ignore_index} collides with a class index (< {n})")
        used: set[int] = set()
        for k, (a, b) in enumerate(self.flip_pairs):
            if not (0 <= a < n and 0 <= b < n) or a == b:
                raise ValueError(f"flip_pairs.{k}: pair {[a, b]} out of range 0..{n - 1} or not distinct")
            if used & {a, b}:
                raise ValueError(f"flip_pairs.{k}: class {sorted(used & {a, b})} appears in two pairs")
            used |= {a, b}
        if self.synthetic is not None:
            unknown = [r.cls for r in self.synthetic.rules if r.cls not in self.classes]
            if unknown:
                raise ValueError(f"synthetic.rules: class(es) {unknown} not in classes")
        return self


@dataclass(frozen=True)
class LabelDomain:
    """An immutable label domain. Build with :func:`load_domain` / :func:`load_domains`."""

    card: DomainCard

    def __repr__(self) -> str:
        return f"LabelDomain({self.name!r}, {self.num_classes} classes)"

    name = property(lambda self: self.card.name)
    classes = property(lambda self: self.card.classes)
    flip_pairs = property(lambda self: self.card.flip_pairs)
    ignore_index = property(lambda self: self.card.ignore_index)
    is_synthetic = property(lambda self: self.card.synthetic is not None)

    @property
    def num_classes(self) -> int:
        return len(self.card.classes)

    def index(self, class_name: str) -> int:
        try:
            return self.card.classes.index(class_name)
        except ValueError:
            raise KeyError(f"domain {self.name}: no class {class_name!r}") from None

    @cached_property
    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colour lookup; the ignore index is white, unused values black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.card.colors, np.uint8)
        lut[self.ignore_index] = 255
        lut.setflags(write=False)
        return lut

    @cached_property
    def flip_lut(self) -> np.ndarray:
        """(256,) uint8 label lookup applied after a horizontal flip: swaps this domain's left/right classes."""
        lut = np.arange(256, dtype=np.uint8)
        for a, b in self.card.flip_pairs:
            lut[a], lut[b] = b, a
        lut.setflags(write=False)
        return lut

    @cached_property
    def atom_lut(self) -> np.ndarray:
        """(NUM_ATOMS,) uint8: class of every generator atom (synthetic domains only)."""
        spec = self.card.synthetic
        if spec is None:
            raise ValueError(f"domain {self.name} is not synthetic: it has no atom mapping")
        lut = np.full(atoms.NUM_ATOMS, 255, np.uint8)
        for p, part in enumerate(atoms.PARTS):
            for g, garment in enumerate(atoms.GARMENTS):
                for rule in spec.rules:
                    if (not rule.parts or part in rule.parts) and (not rule.garments or garment in rule.garments):
                        lut[atoms.atom(p, g)] = self.index(rule.cls)
                        break
        lut.setflags(write=False)
        return lut


def _check_atom_coverage(domain: LabelDomain, source: str) -> None:
    uncovered = [atoms.split_atom(a) for a in np.flatnonzero(domain.atom_lut == 255)]
    if uncovered:
        names = [f"({atoms.PARTS[p]}, {atoms.GARMENTS[g]})" for p, g in uncovered[:5]]
        raise ConfigError(f"{source}: synthetic.rules: {len(uncovered)} atom(s) match no rule, e.g. "
                          f"{', '.join(names)}; end the rules with a catch-all")


def load_domain(path: str | Path) -> LabelDomain:
    """Load and validate one card; errors name the file and the field."""
    path = Path(path)
    card = validate(DomainCard, read_yaml(path), str(path))
    if card.name != path.stem:
        raise ConfigError(f"{path}: name: {card.name!r} must equal the file name {path.stem!r}")
    domain = LabelDomain(card)
    if domain.is_synthetic:
        _check_atom_coverage(domain, str(path))
    return domain


def datasets_dir() -> Path:
    return Path(os.environ.get("SSTPARSE_DATASETS", DEFAULT_DATASETS_DIR))


@lru_cache(maxsize=8)
def _load_dir(directory: Path) -> Mapping[str, LabelDomain]:
    cards = sorted(directory.glob("*.yaml"))
    if not cards:
        raise ConfigError(f"{directory}: no domain cards (*.yaml) found")
    return MappingProxyType({p.stem: load_domain(p) for p in cards})


def load_domains(directory: str | Path | None = None) -> Mapping[str, LabelDomain]:
    """All cards in ``directory`` (default: the repo's datasets/, or $SSTPARSE_DATASETS) as a read-only mapping."""
    return _load_dir(Path(directory or datasets_dir()).resolve())


def get_domain(name: str, directory: str | Path | None = None) -> LabelDomain:
    domains = load_domains(directory)
    if name not in domains:
        raise KeyError(f"unknown domain {name!r}; known: {sorted(domains)}")
    return domains[name]
