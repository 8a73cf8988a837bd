"""QaTa-COV19 captions read back into their structured fields (the inverse of :func:`~covseg.data.captions.qata_caption`).

QaTa's captions (LViT's text annotations, SGSeg's ``captions.csv``) follow one template:
``"bilateral pulmonary infection, five infected areas, upper middle lower left lung and middle
lower right lung."`` C2FVL reads the same facts as 8 numbers per image (their ``utils.read_attr``:
``bilateral``, ``number``, then the six zones ``lupper``..``rlower``), so a run of the published
C2FVL can take its input from the caption alone: :func:`caption_attributes` gives that vector.

Codes are those of QaTa's ``captions.csv``: ``pulmonary_infection`` 1 unilateral / 2 bilateral,
``infected_area`` the number of infected zones, ``pseudo_label`` six 0/1 zones, left upper,
middle, lower, then right upper, middle, lower (image sides).
"""

from __future__ import annotations

import re
from typing import Any

from covseg.data.captions import NUMBER_WORDS, SIDES, ZONES

LATERALITY_CODES = {"unilateral": 1, "bilateral": 2}
#: the names of C2FVL's 8 attributes in the order their ``read_attr`` returns them
ATTRIBUTE_NAMES = ("bilateral", "number", "lupper", "lmiddle", "llower", "rupper", "rmiddle", "rlower")
_CAPTION = re.compile(
    r"^\s*(unilateral|bilateral) pulmonary infection, (\w+) infected areas?, (.+?)\.?\s*$", re.IGNORECASE
)
_PLACE = re.compile(r"^((?:(?:upper|middle|lower)\s+)+)(left|right) lung$")


def _zones(location: str) -> list[int] | None:
    zones = [0] * 6
    for part in location.lower().split(" and "):
        match = _PLACE.match(part.strip())
        if match is None:
            return None
        side = SIDES.index(match.group(2))
        for zone in match.group(1).split():
            zones[3 * side + ZONES.index(zone)] = 1
    return zones


def caption_fields(caption: str | None) -> dict[str, Any] | None:
    """``{"pulmonary_infection", "infected_area", "pseudo_label"}`` of a QaTa-style caption, or None
    when the caption does not follow the template (a free-text caption)."""
    if not caption:
        return None
    match = _CAPTION.match(caption)
    if match is None:
        return None
    count = match.group(2).lower()
    if count.isdigit():
        number = int(count)
    elif count in NUMBER_WORDS:
        number = NUMBER_WORDS.index(count)
    else:
        return None
    zones = _zones(match.group(3))
    if zones is None:
        return None
    return {
        "pulmonary_infection": LATERALITY_CODES[match.group(1).lower()],
        "infected_area": number,
        "pseudo_label": zones,
    }


def fields_to_attributes(fields: dict[str, Any]) -> list[float]:
    """C2FVL's 8 attributes from QaTa's fields: ``[bilateral, number, *six zones]``, unscaled, as
    their ``read_attr`` reads the spreadsheet columns and their loader stacks them."""
    return [
        float(fields["pulmonary_infection"]),
        float(fields["infected_area"]),
        *(float(z) for z in fields["pseudo_label"]),
    ]


def caption_attributes(caption: str | None) -> list[float] | None:
    """C2FVL's 8 attributes of a QaTa-style caption, or None when it does not follow the template."""
    fields = caption_fields(caption)
    return None if fields is None else fields_to_attributes(fields)
