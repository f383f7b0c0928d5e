"""The synthetic generator's atomic vocabulary.

Every rendered pixel carries one body part and one garment (its "atom"). A synthetic domain card maps atoms to
its classes, so the exact cross-domain association P(class_b | class_a) follows from atom frequencies.
Left/right are the person's own. Index 0 of each list is "none" (background, or a person pixel on no body part
such as a bag or flowing hair).
"""

from __future__ import annotations

PARTS: tuple[str, ...] = (
    "none", "head", "torso",
    "upper_arm_l", "upper_arm_r", "lower_arm_l", "lower_arm_r", "hand_l", "hand_r",
    "upper_leg_l", "upper_leg_r", "lower_leg_l", "lower_leg_r", "foot_l", "foot_r",
)
GARMENTS: tuple[str, ...] = (
    "none", "hair", "hat", "face", "sunglasses", "skin", "upper_clothes", "coat", "dress", "jumpsuit",
    "skirt", "pants", "belt", "scarf", "bag", "glove", "sock", "shoe",
)
PART_INDEX = {n: i for i, n in enumerate(PARTS)}
GARMENT_INDEX = {n: i for i, n in enumerate(GARMENTS)}
NUM_ATOMS = len(PARTS) * len(GARMENTS)

# Parts whose name ends in _l/_r swap under a horizontal flip of the person.
PART_MIRROR = {i: PART_INDEX[n[:-1] + ("r" if n.endswith("_l") else "l")] if n[-2:] in ("_l", "_r") else i
               for i, n in enumerate(PARTS)}


def atom(part: int, garment: int) -> int:
    return part * len(GARMENTS) + garment


def split_atom(a: int) -> tuple[int, int]:
    return divmod(a, len(GARMENTS))
