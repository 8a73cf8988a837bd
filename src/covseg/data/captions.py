"""Captions and prompt types made from a mask: where the infection is, how many regions, how much.

A dataset without radiology text can still train the text-guided models if its captions are
made from the masks. :func:`describe_mask` measures a binary mask against a lung frame; the
writers turn the measurement into a QaTa-COV19-style caption (:func:`qata_caption`) or into
the prompt types of the CRIS/CLIPSeg transfer study (:func:`prompt_types`, P0..P4).

QaTa conventions (``shared/data/README.md``): *left/right* are **image sides** (the viewer's
left), the lungs are cut into six zones (left upper, middle, lower; right upper, middle,
lower: the order of QaTa's ``pseudo_label``), and "N infected areas" counts the **zones** that
hold infection (in QaTa's 2,429 captions ``infected_area`` always equals the number of 1s of
``pseudo_label``). The number of separate infected regions (connected components) is reported
beside it and used by the count prompt.

Lung frame: without a lung mask the frame is the image with fixed fractions (top 0.10, bottom
0.65 of the height, midline 0.5 of the width) and zone boundaries at the thirds of
[top, bottom]; upper starts at the image top and lower runs to the image bottom. These
fractions were fitted to QaTa ``train`` (1,000 masks against their human ``pseudo_label``; see
``bench/bench_prompts.py``). With a lung mask the frame is the lung mask's bounding box and the
thirds of its height. A zone counts as infected when at least ``min_zone_fraction`` of the
lung area (of the image area without a lung mask) falls in it: QaTa's annotators ignore specks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ZONES = ("upper", "middle", "lower")
SIDES = ("left", "right")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
CLASS_NAME = "pulmonary infection"
#: extent words by the infected share of the lung frame: (upper bound, word)
EXTENT_WORDS = ((0.05, "small"), (0.20, "moderate"), (float("inf"), "extensive"))
PROMPT_TYPES = ("P0", "P1", "P2", "P3", "P4")
PROMPT_TYPE_HELP = {
    "P0": "class name",
    "P1": "P0 + location (sides and lung zones)",
    "P2": "P1 + number of infected regions",
    "P3": "P2 + extent (share of the lung field, or of the image without a lung mask)",
    "P4": "full caption (the human one when given, else the QaTa-style generated one)",
}


@dataclass(frozen=True)
class LungFrame:
    """Where the lungs are, as fractions of the image: zone cuts at the thirds of [top, bottom]."""

    top: float = 0.10
    bottom: float = 0.65
    midline: float = 0.5
    #: True: the upper zone starts at the image top and the lower runs to the image bottom
    open_ends: bool = True

    def zone_rows(self, height: int) -> list[tuple[int, int]]:
        """Row ranges ``[a, b)`` of the upper, middle and lower zones in an image of ``height`` rows."""
        span = self.bottom - self.top
        cuts = [self.top, self.top + span / 3, self.top + 2 * span / 3, self.bottom]
        rows = [round(c * height) for c in cuts]
        if self.open_ends:
            rows[0], rows[3] = 0, height
        return [(rows[i], max(rows[i], rows[i + 1])) for i in range(3)]

    @classmethod
    def from_lung_mask(cls, lungs: np.ndarray) -> LungFrame:
        """The frame of a lung mask: its bounding box, midline halfway across it, closed ends."""
        fg = np.asarray(lungs) > 0
        if not fg.any():
            raise ValueError("the lung mask is empty")
        h, w = fg.shape
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        top, bottom = rows[0] / h, (rows[-1] + 1) / h
        midline = (cols[0] + cols[-1] + 1) / 2 / w
        return cls(float(top), float(bottom), float(midline), open_ends=False)


@dataclass
class MaskFacts:
    """What a mask says about the infection, in the caption's terms."""

    zones: list[int]  # six 0/1 flags: left upper, middle, lower, right upper, middle, lower (image sides)
    regions: int  # connected components of at least the minimum size
    extent: float  # infected share of the lung mask's area (of the image's without one), at most 1
    frame: dict[str, Any] = field(default_factory=dict)

    @property
    def sides(self) -> list[str]:
        return [s for i, s in enumerate(SIDES) if any(self.zones[3 * i : 3 * i + 3])]

    @property
    def laterality(self) -> str | None:
        """``bilateral`` / ``unilateral`` / None (no infection)."""
        return {0: None, 1: "unilateral", 2: "bilateral"}[len(self.sides)]

    @property
    def pulmonary_infection(self) -> int:
        """QaTa's field: 1 unilateral, 2 bilateral (0: none)."""
        return len(self.sides)

    @property
    def infected_areas(self) -> int:
        """QaTa's ``infected_area``: the number of infected zones."""
        return int(sum(self.zones))

    @property
    def extent_word(self) -> str:
        return next(word for bound, word in EXTENT_WORDS if self.extent < bound)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "laterality": self.laterality, "infected_areas": self.infected_areas}


def _components(fg: np.ndarray, min_pixels: int) -> int:
    from scipy import ndimage

    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_pixels).sum())


def describe_mask(
    mask: np.ndarray,
    frame: LungFrame | None = None,
    lungs: np.ndarray | None = None,
    min_zone_fraction: float = 0.004,
    min_region_fraction: float = 0.001,
) -> MaskFacts:
    """Zones, region count and extent of a binary 2D mask (``> 0`` is infection).

    ``lungs`` (a lung mask of the same size) sets the frame, and the extent and thresholds are
    shares of the lung area; otherwise ``frame`` (default :class:`LungFrame`) cuts the zones and
    the shares are of the whole image. Shares do not depend on the resolution.
    """
    fg = np.asarray(mask) > 0
    if fg.ndim != 2:
        raise ValueError(f"describe_mask takes a 2D mask, got shape {fg.shape}")
    h, w = fg.shape
    if lungs is not None:
        lung_fg = np.asarray(lungs) > 0
        if lung_fg.shape != fg.shape:
            raise ValueError(f"lung mask shape {lung_fg.shape} differs from the mask's {fg.shape}")
        frame = LungFrame.from_lung_mask(lung_fg)
        area = float(lung_fg.sum())
    else:
        frame = frame or LungFrame()
        area = float(h * w)
    split = round(frame.midline * w)
    zones = []
    for cols in (slice(0, split), slice(split, w)):
        for a, b in frame.zone_rows(h):
            zones.append(int(fg[a:b, cols].sum() >= max(1.0, min_zone_fraction * area)))
    regions = _components(fg, max(1, round(min_region_fraction * area)))
    infected = float(np.logical_and(fg, lung_fg).sum()) if lungs is not None else float(fg.sum())
    extent = min(1.0, infected / area) if area else 0.0
    return MaskFacts(zones, regions, extent, {**asdict(frame), "extent_of": "lungs" if lungs is not None else "image"})


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _plural(n: int, noun: str) -> str:
    return f"{number_word(n)} {noun}{'' if n == 1 else 's'}"


def location_phrase(zones: Sequence[int]) -> str:
    """``upper middle lower left lung and lower right lung`` (QaTa's order: left side first)."""
    parts = []
    for i, side in enumerate(SIDES):
        names = [z for z, flag in zip(ZONES, zones[3 * i : 3 * i + 3]) if flag]
        if names:
            parts.append(f"{' '.join(names)} {side} lung")
    return " and ".join(parts)


def qata_caption(facts: MaskFacts) -> str:
    """A caption in QaTa's own words: laterality, number of infected zones, the zones."""
    if facts.laterality is None:
        return "no pulmonary infection."
    return (
        f"{facts.laterality} pulmonary infection, {_plural(facts.infected_areas, 'infected area')}, "
        f"{location_phrase(facts.zones)}."
    )


def prompt_types(facts: MaskFacts, caption: str | None = None) -> dict[str, list[str]]:
    """The study's prompt types P0..P4, each a list of phrasings (the first is the canonical one).

    P0 the class name; P1 adds the location; P2 the number of separate infected regions; P3 the
    extent; P4 the full caption (``caption`` when given, e.g. the human one, else :func:`qata_caption`).
    """
    full = caption or qata_caption(facts)
    p0 = [CLASS_NAME, "lung infection", "COVID-19 infection"]
    if facts.laterality is None:
        none = "no pulmonary infection"
        return {"P0": p0, "P1": [none], "P2": [none], "P3": [none], "P4": [full]}
    where = location_phrase(facts.zones)
    lat = facts.laterality
    count = _plural(facts.regions, "infected region")
    of = "the lung field" if facts.frame.get("extent_of") == "lungs" else "the image"
    extent = f"{facts.extent_word} extent, about {round(100 * facts.extent)}% of {of}"
    return {
        "P0": p0,
        "P1": [f"{lat} {CLASS_NAME} in the {where}", f"{CLASS_NAME} in the {where}"],
        "P2": [f"{lat} {CLASS_NAME} in the {where}, {count}", f"{count} of {lat} {CLASS_NAME} in the {where}"],
        "P3": [
            f"{lat} {CLASS_NAME} in the {where}, {count}, {extent}",
            f"{count} of {lat} {CLASS_NAME} in the {where}, {extent}",
        ],
        "P4": [full],
    }


def zone_agreement(predicted: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> dict[str, float]:
    """How generated zone flags agree with reference ones (QaTa's ``pseudo_label``)."""
    p, r = np.asarray(predicted, dtype=int), np.asarray(reference, dtype=int)
    side = lambda z: (z[:, :3].any(1).astype(int) + z[:, 3:].any(1))  # noqa: E731
    return {
        "cases": len(p),
        "all_six_zones": float((p == r).all(1).mean()),
        "per_zone": float((p == r).mean()),
        "laterality": float((side(p) == side(r)).mean()),
        "infected_area_count": float((p.sum(1) == r.sum(1)).mean()),
    }


# --- files: a folder of masks → captions.csv (QaTa columns) and CRIS-style prompts JSON ------------

CAPTION_COLUMNS = ("name", "caption", "pulmonary_infection", "infected_area", "pseudo_label", "regions", "extent")


@dataclass
class CaptionRow:
    """One mask's generated caption, its facts and its prompt types."""

    mask: Any  # Path
    facts: MaskFacts
    caption: str
    prompts: dict[str, list[str]]

    @property
    def name(self) -> str:
        from covseg.data.imageio import stem_of

        return stem_of(self.mask)

    def csv_cells(self) -> list[str]:
        f = self.facts
        return [
            self.name, self.caption, str(f.pulmonary_infection), str(f.infected_areas),
            str(list(f.zones)), str(f.regions), f"{f.extent:.4f}",
        ]  # fmt: skip


def mask_files(folder: Any) -> list[Any]:
    """The 2D mask images of a folder (sorted; hidden files skipped)."""
    from pathlib import Path

    from covseg.data.imageio import IMAGE_SUFFIXES, suffix_of
    from covseg.errors import DataError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("mask folder not found", folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and suffix_of(p) in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no mask images ({', '.join(IMAGE_SUFFIXES)}) in this folder", folder)
    return files


def caption_for_file(mask_path: Any, lungs_dir: Any = None, human: Any = None, **kwargs: Any) -> CaptionRow:
    """Read one mask (and its lung mask of the same name in ``lungs_dir``) and caption it.

    ``human`` is a :class:`~covseg.data.text_sources.TextTable` whose caption becomes P4.
    Raises :class:`~covseg.errors.DataError` naming the file for an unreadable or non-2D mask.
    """
    from pathlib import Path

    from covseg.data.imageio import read_mask
    from covseg.data.loading import read_label_mask
    from covseg.errors import DataError

    mask_path = Path(mask_path)
    mask = read_label_mask(mask_path)  # grey-level masks are refused: "> 0" would caption their anti-aliasing
    if mask.ndim != 2:
        raise DataError(f"make-captions takes 2D masks, this one has shape {mask.shape}", mask_path)
    lungs = None
    if lungs_dir is not None:
        candidates = [p for p in Path(lungs_dir).glob(mask_path.stem + ".*") if p.is_file()]
        if not candidates:
            raise DataError(f"no lung mask named {mask_path.stem}.* in {lungs_dir}", mask_path)
        lungs = read_mask(candidates[0])
        if lungs.shape != mask.shape:
            raise DataError(f"lung mask size {lungs.shape} differs from the mask's {mask.shape}", candidates[0])
        if not (lungs > 0).any():
            raise DataError("the lung mask is empty", candidates[0])
    facts = describe_mask(mask, lungs=lungs, **kwargs)
    caption = qata_caption(facts)
    entry = human.lookup(mask_path) if human is not None else None
    prompts = prompt_types(facts, entry.text if entry is not None else None)
    return CaptionRow(mask_path, facts, caption, prompts)


def captions_csv(rows: Sequence[CaptionRow]) -> str:
    """QaTa's ``captions.csv`` columns (+ ``regions``, ``extent``), readable by ``load_texts``."""
    from covseg.utils.outputs import csv_text

    return csv_text([row.csv_cells() for row in rows], CAPTION_COLUMNS)


def prompts_json(rows: Sequence[CaptionRow]) -> list[dict[str, Any]]:
    """CRIS / medvlsm-style list ``[{img_name, mask_name, prompts: {P0: [...], ...}}]``.

    ``img_name`` is the mask's own name: the datasets here name an image and its mask alike.
    """
    return [
        {"img_name": row.mask.name, "mask_name": row.mask.name, "prompts": row.prompts, "facts": row.facts.to_dict()}
        for row in rows
    ]


def write_captions(
    masks: Any,
    out: Any,
    *,
    lungs: Any = None,
    prompts: Any = None,
    captions: Any = None,
    min_zone_fraction: float = 0.004,
    strict: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[CaptionRow], list[tuple[Any, str]]]:
    """Caption every mask of ``masks`` into ``out`` (``captions.csv`` columns) and, with ``prompts``, the
    prompt types as JSON; ``captions``: human captions (any text source) that become P4. Returns the rows
    and ``(path, reason)`` of each mask that could not be captioned (``strict``: raise at the first)."""
    from covseg.errors import CovsegError
    from covseg.utils.atomic import write_json, write_text
    from covseg.utils.outputs import real, report_file

    for target in (out, prompts):
        if target is not None:
            report_file(target, "text make-captions", [masks, lungs, captions])
    if prompts is not None and real(prompts) == real(out):
        raise CovsegError("--prompts and --out name the same file; give two", prompts)
    human = None
    if captions is not None:
        from covseg.data.text_sources import load_texts

        human = load_texts(captions)
    files = mask_files(masks)
    if on_start is not None:
        on_start(len(files))
    rows, failed = [], []
    for path in files:
        try:
            rows.append(caption_for_file(path, lungs, human, min_zone_fraction=min_zone_fraction))
        except CovsegError as exc:
            if strict:
                raise
            failed.append((path, str(exc)))
        if on_done is not None:
            on_done()
    if not rows:
        why = f" ({failed[0][1]}{f'; and {len(failed) - 1} more' if len(failed) > 1 else ''})" if failed else ""
        raise CovsegError(f"no mask could be captioned{why}", masks)
    write_text(out, captions_csv(rows))
    if prompts is not None:
        write_json(prompts, prompts_json(rows))
    return rows, failed
