"""Procedural multi-domain synthetic humans: the embedded default data for the demo, tests and benchmarks.

Each person is an articulated figure (random pose, scale, body shape, facing) rendered into two aligned atomic
maps -- body part and garment (see :mod:`sstparse.atoms`) -- plus an RGB image. A synthetic domain card maps
atoms to that domain's classes and sets its style (background, palette, texture, scale, people count, crops,
occlusion, image size). Because every pixel's atom is known, :func:`true_association` gives the exact cross-domain
label association P(class in b | class in a).

Colour is deliberately uninformative: all garments draw from one palette per domain, skin tone is shared by face,
arms, legs and torso skin, left and right limbs share colours, and backgrounds reuse garment colours; a network has
to use shape and context (and facing, for left/right).
"""

from __future__ import annotations

import colorsys
import math
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sstparse import atoms
from sstparse.atoms import GARMENT_INDEX as G
from sstparse.atoms import PART_INDEX as P
from sstparse.data.backgrounds import occluder, render_background, sample_color
from sstparse.data.shards import encode_jpeg, encode_png, validate_record
from sstparse.domains import LabelDomain, SynthStyle


@dataclass(frozen=True)
class Rendered:
    image: np.ndarray     # (H, W, 3) uint8
    parts: np.ndarray     # (H, W) uint8 index into atoms.PARTS
    garments: np.ndarray  # (H, W) uint8 index into atoms.GARMENTS

    @property
    def atoms(self) -> np.ndarray:
        return self.parts.astype(np.int32) * len(atoms.GARMENTS) + self.garments

    def label(self, domain: LabelDomain) -> np.ndarray:
        return domain.atom_lut[self.atoms]


def sample_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    """Independent stream per sample: images are disjoint across domains and reproducible one by one."""
    return np.random.default_rng([seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index])


# ----------------------------------------------------------------------------------------------- people
@dataclass
class Outfit:
    top: int
    sleeves: str          # none | short | long
    bottom: int           # pants | skirt | dress | jumpsuit garment index
    long_bottom: bool
    hair: str             # none | short | long
    hat: bool
    sunglasses: bool
    scarf: bool
    belt: bool
    bag: int              # 0 none, -1 person's right side, +1 left side
    gloves: bool
    socks: bool
    shoes: bool
    open_coat: bool


def sample_outfit(rng: np.random.Generator) -> Outfit:
    top = int(rng.choice([G["upper_clothes"], G["coat"], G["dress"], G["jumpsuit"]], p=[0.55, 0.2, 0.15, 0.1]))
    if top == G["dress"]:
        bottom = G["dress"]
    elif top == G["jumpsuit"]:
        bottom = G["jumpsuit"]
    else:
        bottom = int(rng.choice([G["pants"], G["skirt"]], p=[0.7, 0.3]))
    sleeves = "long" if top == G["coat"] else str(rng.choice(["none", "short", "long"], p=[0.2, 0.45, 0.35]))
    return Outfit(
        top=top, sleeves=sleeves, bottom=bottom,
        long_bottom=bool(bottom in (G["pants"], G["jumpsuit"]) and rng.random() < 0.7),
        hair=str(rng.choice(["none", "short", "long"], p=[0.08, 0.5, 0.42])),
        hat=bool(rng.random() < 0.2), sunglasses=bool(rng.random() < 0.15), scarf=bool(rng.random() < 0.15),
        belt=bool(bottom in (G["pants"], G["skirt"]) and rng.random() < 0.3),
        bag=int(rng.choice([0, -1, 1], p=[0.75, 0.125, 0.125])), gloves=bool(rng.random() < 0.1),
        socks=bool(rng.random() < 0.3), shoes=bool(rng.random() < 0.85), open_coat=bool(rng.random() < 0.6),
    )


def sample_pose(rng: np.random.Generator, width: float) -> dict[str, tuple[float, float]]:
    """Joint positions in body units (height 1, y down, x positive toward the person's left)."""
    j = {"head": (0.0, 0.075), "neck": (0.0, 0.14)}
    for side, s in (("l", 1.0), ("r", -1.0)):
        sh = (s * 0.1 * width, 0.18)
        a1 = math.radians(rng.uniform(-5, 100) if rng.random() < 0.5 else rng.uniform(5, 30))
        a2 = a1 + math.radians(rng.uniform(0, 110)) * rng.choice([-1, 1])
        el = (sh[0] + s * 0.165 * math.sin(a1), sh[1] + 0.165 * math.cos(a1))
        wr = (el[0] + s * 0.145 * math.sin(a2), el[1] + 0.145 * math.cos(a2))
        hd = (wr[0] + s * 0.05 * math.sin(a2), wr[1] + 0.05 * math.cos(a2))
        hip = (s * 0.062 * width, 0.5)
        b1 = math.radians(rng.uniform(-4, 22))
        b2 = b1 - math.radians(rng.uniform(0, 25))
        kn = (hip[0] + s * 0.24 * math.sin(b1), hip[1] + 0.24 * math.cos(b1))
        an = (kn[0] + s * 0.22 * math.sin(b2), min(kn[1] + 0.22 * math.cos(b2), 0.97))
        ft = (an[0] + s * 0.045, an[1] + 0.025)
        j.update({f"shoulder_{side}": sh, f"elbow_{side}": el, f"wrist_{side}": wr, f"hand_{side}": hd,
                  f"hip_{side}": hip, f"knee_{side}": kn, f"ankle_{side}": an, f"toe_{side}": ft})
    return j


class Canvas:
    """Draws each shape into the part, garment and person-id maps at once (PIL: fast C rasterisation)."""

    def __init__(self, h: int, w: int):
        self.maps = [Image.new("L", (w, h), 0) for _ in range(3)]
        self.draws = [ImageDraw.Draw(m) for m in self.maps]
        self.pid = 0
        # Image-only marks (eyes, mouth) drawn after colouring: (kind, person id, centre, radius).
        self.details: list[tuple[str, int, tuple[float, float], float]] = []

    def _fill(self, part: int, garment: int) -> tuple[int, int, int]:
        return (part, garment, self.pid if garment else 0)

    def poly(self, pts, part, garment):
        for d, v in zip(self.draws, self._fill(part, garment)):
            d.polygon(pts, fill=v)

    def ellipse(self, c, rx, ry, part, garment):
        box = [c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry]
        for d, v in zip(self.draws, self._fill(part, garment)):
            d.ellipse(box, fill=v)

    def capsule(self, p0, p1, width, part, garment):
        w = max(1, int(round(width)))
        for d, v in zip(self.draws, self._fill(part, garment)):
            d.line([p0, p1], fill=v, width=w)
            for p in (p0, p1):
                d.ellipse([p[0] - w / 2, p[1] - w / 2, p[0] + w / 2, p[1] + w / 2], fill=v)


@dataclass
class Person:
    cx: float
    top: float
    height: float
    facing: int   # +1 facing the camera (person's left on image right), -1 facing away
    width: float
    outfit: Outfit
    pose: dict

    def at(self, name_or_pt) -> tuple[float, float]:
        x, y = self.pose[name_or_pt] if isinstance(name_or_pt, str) else name_or_pt
        return (self.cx + self.facing * x * self.height, self.top + y * self.height)


def _draw_limbs(cv: Canvas, p: Person, side: str) -> None:
    o, u, s = p.outfit, p.height, ("l" if side == "l" else "r")
    sleeve_up = o.top if o.sleeves != "none" else G["skin"]
    sleeve_lo = o.top if o.sleeves == "long" else G["skin"]
    cv.capsule(p.at(f"shoulder_{s}"), p.at(f"elbow_{s}"), 0.052 * u * p.width, P[f"upper_arm_{s}"], sleeve_up)
    cv.capsule(p.at(f"elbow_{s}"), p.at(f"wrist_{s}"), 0.043 * u * p.width, P[f"lower_arm_{s}"], sleeve_lo)
    cv.capsule(p.at(f"wrist_{s}"), p.at(f"hand_{s}"), 0.046 * u, P[f"hand_{s}"],
               G["glove"] if o.gloves else G["skin"])


def _draw_legs(cv: Canvas, p: Person, side: str) -> None:
    o, u, s = p.outfit, p.height, side
    legwear = o.bottom if o.bottom in (G["pants"], G["jumpsuit"]) else G["skin"]
    lower = legwear if o.long_bottom else G["skin"]
    cv.capsule(p.at(f"hip_{s}"), p.at(f"knee_{s}"), 0.078 * u * p.width, P[f"upper_leg_{s}"], legwear)
    cv.capsule(p.at(f"knee_{s}"), p.at(f"ankle_{s}"), 0.06 * u * p.width, P[f"lower_leg_{s}"], lower)
    if o.socks and not o.long_bottom:
        kx, ky = p.pose[f"knee_{s}"]
        ax, ay = p.pose[f"ankle_{s}"]
        cv.capsule(p.at((kx + 0.6 * (ax - kx), ky + 0.6 * (ay - ky))), p.at(f"ankle_{s}"), 0.058 * u * p.width,
                   P[f"lower_leg_{s}"], G["sock"])
    foot = G["shoe"] if o.shoes else (G["sock"] if o.socks else G["skin"])
    cv.capsule(p.at(f"ankle_{s}"), p.at(f"toe_{s}"), 0.05 * u, P[f"foot_{s}"], foot)


def _draw_torso(cv: Canvas, p: Person) -> None:
    o, w = p.outfit, p.width
    neck = [(-0.028, 0.11), (0.028, 0.11), (0.03, 0.19), (-0.03, 0.19)]
    cv.poly([p.at(q) for q in neck], P["torso"], G["scarf"] if o.scarf else G["skin"])
    body = [(-0.115 * w, 0.17), (0.115 * w, 0.17), (0.085 * w, 0.52), (-0.085 * w, 0.52)]
    cv.poly([p.at(q) for q in body], P["torso"], o.top)
    if o.top == G["coat"] and o.open_coat:
        cv.poly([p.at(q) for q in [(-0.025, 0.18), (0.025, 0.18), (0.02, 0.5), (-0.02, 0.5)]],
                P["torso"], G["upper_clothes"])
    if o.top == G["upper_clothes"] and o.sleeves == "none":  # tank top: skin at the neckline
        cv.poly([p.at(q) for q in [(-0.04, 0.17), (0.04, 0.17), (0.0, 0.215)]], P["torso"], G["skin"])
    if o.belt:
        cv.poly([p.at(q) for q in [(-0.088 * w, 0.47), (0.088 * w, 0.47), (0.087 * w, 0.495),
                                   (-0.087 * w, 0.495)]], P["torso"], G["belt"])
    if o.scarf:
        cv.poly([p.at(q) for q in [(-0.06, 0.15), (0.06, 0.15), (0.05, 0.2), (-0.05, 0.2)]], P["torso"], G["scarf"])


def _draw_flare(cv: Canvas, p: Person, rng: np.random.Generator) -> None:
    """Skirt or dress below the waist: each half belongs to the upper leg on its side."""
    o, w = p.outfit, p.width
    if o.bottom not in (G["skirt"], G["dress"]):
        return
    y0, y1 = (0.46, rng.uniform(0.66, 0.72)) if o.bottom == G["skirt"] else (0.5, rng.uniform(0.68, 0.74))
    flare = rng.uniform(0.12, 0.2) * w
    for s, sgn in (("l", 1), ("r", -1)):
        pts = [(0, y0), (sgn * 0.09 * w, y0), (sgn * flare, y1), (0, y1)]
        cv.poly([p.at(q) for q in pts], P[f"upper_leg_{s}"], o.bottom)


def _draw_head(cv: Canvas, p: Person) -> None:
    o, u = p.outfit, p.height
    hc, rx, ry = p.at("head"), 0.05 * u, 0.068 * u
    if o.hair == "long":  # hair falling behind the head, down to the shoulders
        cv.poly([p.at(q) for q in [(-0.06, 0.05), (0.06, 0.05), (0.075, 0.22), (-0.075, 0.22)]],
                P["head"], G["hair"])
    front = p.facing > 0
    cv.ellipse(hc, rx, ry, P["head"], G["face"] if front else (G["hair"] if o.hair != "none" else G["skin"]))
    if o.hair != "none" and front:
        cv.poly([p.at(q) for q in [(-0.053, 0.085), (-0.055, 0.03), (0.0, 0.0), (0.055, 0.03), (0.053, 0.085),
                                   (0.04, 0.045), (-0.04, 0.045)]], P["head"], G["hair"])
    elif o.hair == "long":
        cv.ellipse(hc, rx * 1.05, ry * 1.02, P["head"], G["hair"])
    if front:
        for dx in (-0.018, 0.018):
            cv.details.append(("eye", cv.pid, p.at((dx, 0.07)), 0.006 * u))
        cv.details.append(("mouth", cv.pid, p.at((0.0, 0.11)), 0.012 * u))
        if o.sunglasses:
            cv.poly([p.at(q) for q in [(-0.042, 0.058), (0.042, 0.058), (0.04, 0.08), (-0.04, 0.08)]],
                    P["head"], G["sunglasses"])
    if o.hat:
        cv.ellipse(p.at((0, 0.03)), 0.055 * u, 0.035 * u, P["head"], G["hat"])
        cv.poly([p.at(q) for q in [(-0.075, 0.03), (0.075, 0.03), (0.075, 0.045), (-0.075, 0.045)]],
                P["head"], G["hat"])


def _draw_bag(cv: Canvas, p: Person) -> None:
    if not p.outfit.bag:
        return
    s = p.outfit.bag
    cv.capsule(p.at((s * 0.09, 0.18)), p.at((-s * 0.07, 0.48)), 0.012 * p.height, P["none"], G["bag"])
    cv.poly([p.at(q) for q in [(s * 0.08, 0.46), (s * 0.2, 0.46), (s * 0.21, 0.6), (s * 0.07, 0.6)]],
            P["none"], G["bag"])


def draw_person(cv: Canvas, p: Person, rng: np.random.Generator) -> None:
    # Painter's order: the far arm behind the torso, the near one in front. "Near" is the person's left
    # when facing away from the camera, and the right otherwise; the viewer cannot tell from colour alone.
    far, near = (("l", "r") if rng.random() < 0.5 else ("r", "l"))
    _draw_limbs(cv, p, far)
    for side in ("l", "r"):
        _draw_legs(cv, p, side)
    _draw_torso(cv, p)
    _draw_flare(cv, p, rng)
    _draw_head(cv, p)
    _draw_limbs(cv, p, near)
    _draw_bag(cv, p)


def place_people(rng: np.random.Generator, style: SynthStyle, h: int, w: int) -> list[Person]:
    n = int(rng.integers(style.persons[0], style.persons[1] + 1))
    people = []
    for _ in range(n):
        if rng.random() < style.upper_body_crop:
            height = h * rng.uniform(1.4, 1.8)
            top = h * rng.uniform(0.01, 0.08)
        else:
            height = h * rng.uniform(*style.person_scale) * (1.0 if n == 1 else rng.uniform(0.8, 1.0))
            top = rng.uniform(0.0, max(h - height, 0.0) + 1e-3)
        margin = 0.18 * height
        cx = rng.uniform(min(margin, w / 2), max(w - margin, w / 2))
        facing = -1 if rng.random() < style.back_view else 1
        people.append(Person(cx, top, height, facing, rng.uniform(0.85, 1.2), sample_outfit(rng),
                             sample_pose(rng, 1.0)))
    return sorted(people, key=lambda q: q.height)  # smaller = farther away, drawn first


# ----------------------------------------------------------------------------------------------- colouring
def _skin(rng) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.95))
    return np.array([r, g, b]) * 255


def _hair(rng) -> np.ndarray:
    base = [(25, 20, 18), (70, 45, 30), (120, 80, 45), (200, 170, 110), (150, 150, 150)]
    if rng.random() < 0.15:
        return sample_color(rng, "vivid")
    return np.array(base[int(rng.integers(len(base)))], float) * rng.uniform(0.8, 1.2)


def person_colors(rng: np.random.Generator, palette: str) -> np.ndarray:
    """(num_garments, 3) colour table for one person: clothes from the domain palette, shared skin tone."""
    table = np.stack([sample_color(rng, palette) for _ in atoms.GARMENTS])
    skin = _skin(rng)
    table[G["skin"]] = table[G["face"]] = skin
    if rng.random() < 0.5:  # gloves and socks often match something else
        table[G["glove"]] = table[G["upper_clothes"]]
    table[G["hair"]] = _hair(rng)
    table[G["sunglasses"]] = (20, 20, 25)
    return table


def _texture(rng, ys, xs, scale) -> np.ndarray:
    """Boolean pattern (stripes, checks or dots) at the given pixel coordinates."""
    kind = rng.integers(3)
    period = rng.uniform(0.02, 0.06) * scale
    th = rng.uniform(0, math.pi)
    u = (xs * math.cos(th) + ys * math.sin(th)) / period
    if kind == 0:
        return (u % 1.0) < 0.5
    v = (-xs * math.sin(th) + ys * math.cos(th)) / period
    if kind == 1:
        return ((np.floor(u) + np.floor(v)) % 2) == 0
    return ((u % 1.0 - 0.5) ** 2 + (v % 1.0 - 0.5) ** 2) < 0.08


def colorize(rng, style: SynthStyle, people: list[Person], parts, garments, pids, bg) -> np.ndarray:
    img = bg.copy()
    h, w = parts.shape
    for k, person in enumerate(people, start=1):
        table = person_colors(rng, style.palette)
        mask = pids == k
        img[mask] = table[garments[mask]]
        for g in np.unique(garments[mask]):
            if g in (G["skin"], G["face"], G["hair"]) or rng.random() >= style.texture:
                continue
            ys, xs = np.nonzero(mask & (garments == g))
            pat = _texture(rng, ys.astype(np.float32), xs.astype(np.float32), person.height)
            img[ys[pat], xs[pat]] = sample_color(rng, style.palette)
    # Region boundaries darken (the outline shading real photos have), lighting varies across the frame.
    a = parts.astype(np.int32) * 32 + garments
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= a[:, 1:] != a[:, :-1]
    edge[1:, :] |= a[1:, :] != a[:-1, :]
    img[edge] *= 0.72
    th = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 1.0 + rng.uniform(0.1, 0.35) * ((xx / w - 0.5) * math.cos(th) + (yy / h - 0.5) * math.sin(th))
    return img * light[..., None]


def _finish(rng, style: SynthStyle, img: np.ndarray, details, garments, pids) -> np.ndarray:
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(out)
    h, w = pids.shape
    for kind, pid, c, r in details:
        x, y = int(c[0]), int(c[1])
        # Only on a face that is still visible (not hidden by another person, a hat or an occluder).
        if not (0 <= x < w and 0 <= y < h and pids[y, x] == pid and garments[y, x] == G["face"]):
            continue
        if kind == "eye":
            d.ellipse([c[0] - r, c[1] - r * 0.7, c[0] + r, c[1] + r * 0.7], fill=(25, 20, 20))
        else:
            d.line([c[0] - r, c[1], c[0] + r, c[1]], fill=(120, 40, 40), width=max(1, int(r / 3)))
    out = out.filter(ImageFilter.GaussianBlur(radius=0.6))
    arr = np.asarray(out, dtype=np.float32)
    if style.noise:
        arr = arr + rng.normal(0.0, style.noise, arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def render(domain: LabelDomain, rng: np.random.Generator) -> Rendered:
    """One synthetic image of ``domain``'s style with its aligned atomic maps."""
    if domain.card.synthetic is None:
        raise ValueError(f"domain {domain.name} is not synthetic")
    style = domain.card.synthetic.style
    h, w = style.height, style.width
    bg = render_background(rng, style.background, h, w, style.palette)
    cv = Canvas(h, w)
    people = place_people(rng, style, h, w)
    for k, person in enumerate(people, start=1):
        cv.pid = k
        draw_person(cv, person, rng)
    occ = None
    if rng.random() < style.occlusion:
        occ = occluder(rng, h, w)
        cv.pid = 0
        cv.poly(occ, P["none"], G["none"])
    parts, garments, pids = (np.asarray(m) for m in cv.maps)
    img = colorize(rng, style, people, parts, garments, pids, bg)
    if occ is not None:
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).polygon(occ, fill=1)
        img[np.asarray(mask, bool)] = sample_color(rng, style.palette)
    return Rendered(_finish(rng, style, img, cv.details, garments, pids), parts.copy(), garments.copy())


# ----------------------------------------------------------------------------------------------- association
def true_joint(a: LabelDomain, b: LabelDomain, atom_hist: np.ndarray) -> np.ndarray:
    """Pixel counts of (class of a, class of b) over pixels whose atoms have frequencies ``atom_hist``."""
    joint = np.zeros((a.num_classes, b.num_classes))
    np.add.at(joint, (a.atom_lut, b.atom_lut), np.asarray(atom_hist, dtype=np.float64))
    return joint


def true_association(a: LabelDomain, b: LabelDomain, atom_hist: np.ndarray) -> np.ndarray:
    """Exact P(class_b = j | class_a = i) over pixels whose atoms have frequencies ``atom_hist``.

    ``atom_hist`` is a (NUM_ATOMS,) pixel count, e.g. the generator's histogram over one domain's images (stored
    in the manifest). Which domain's images matter: a learned M(a->b) is fitted on b's labelled images, so its
    truth uses b's histogram (framing and garments differ by domain). Rows of classes that never occur are NaN
    (no evidence either way).
    """
    joint = true_joint(a, b, atom_hist)
    with np.errstate(invalid="ignore", divide="ignore"):
        return joint / joint.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------- shards
def render_samples(domain: LabelDomain, split: str, start: int, stop: int, seed: int):
    """Render, encode and validate samples [start, stop) of one split; returns (samples, atom histogram)."""
    style = domain.card.synthetic.style
    hist = np.zeros(atoms.NUM_ATOMS, np.int64)
    samples = []
    for i in range(start, stop):
        r = render(domain, sample_rng(seed, domain.name, split, i))
        hist += np.bincount(r.atoms.ravel(), minlength=atoms.NUM_ATOMS)
        # The generator's records go through the same validation as converted ones: one code path, one schema.
        samples.append(validate_record(
            f"{domain.name}-{split}-{i:06d}", split, encode_jpeg(r.image, style.jpeg_quality),
            encode_png(r.label(domain)), domain, source=f"synth:seed={seed}:{domain.name}:{split}:{i}"))
    return samples, hist
