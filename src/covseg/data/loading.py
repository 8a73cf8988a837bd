"""Reading a :class:`CaseRecord` into a :class:`Sample`: pixels, masks, edges, geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.data.imageio import (
    analyse_mask,
    is_volume,
    read_image,
    read_label_volume,
    read_mask,
    read_spacing_2d,
    read_volume,
)
from covseg.data.intensity import space_of
from covseg.data.sample import CaseRecord, Sample
from covseg.errors import DataError


def load_sample(record: CaseRecord, channels: int | None = None, derive_edge: bool = True, edge_width: int = 2) -> Sample:
    """Read one case.

    2D: the image as float32 ``(H, W)`` or ``(H, W, C)`` (``channels`` 1 or 3 forces grey or
    RGB), masks as uint8 label maps, ``spacing`` (row, col mm) from the file when it states one
    (or ``record.meta["spacing"]``), else None. 3D: the volume ``(X, Y, Z)`` in its own axis
    order with spacing and RAS affine; multi-channel cases (``meta["channels"]``) stack to
    ``(X, Y, Z, C)``. The edge map is the record's edge file or, when ``derive_edge`` and a mask
    exists, derived from the mask (Inf-Net's 2-pixel edge for ``edge_width=2``).

    Raises :class:`DataError` naming both files when a mask's size differs from the image's,
    and naming the file when a volume holds NaN.
    """
    if is_volume(record.image):
        return _load_volume(record, derive_edge, edge_width)
    image = read_image(record.image, channels)
    shape = image.shape[:2]
    mask = _checked_mask(record.mask, shape, record.image) if record.mask is not None else None
    masks = {name: _checked_mask(p, shape, record.image) for name, p in record.masks.items()}
    edge = None
    if record.edge is not None:
        edge = (_checked_mask(record.edge, shape, record.image) > 0).astype(np.uint8)
    elif derive_edge and mask is not None:
        from covseg.transforms.edges import mask_to_edge

        edge = mask_to_edge(mask, width=edge_width)
    spacing = record.meta.get("spacing") or read_spacing_2d(record.image)
    return Sample(
        case_id=record.case_id,
        image=image,
        mask=mask,
        edge=edge,
        masks=masks,
        text=record.text,
        texts=dict(record.texts),
        label=record.label,
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        affine=None,
        source=Path(record.image),
        meta={**record.meta, "intensity_space": space_of(record.image, image)},
    )


def _checked_mask(path: Path, shape: tuple[int, ...], image_path: Path) -> np.ndarray:
    mask = _clean_mask(Path(path))
    if mask.shape[: len(shape)] != tuple(shape) or mask.ndim != len(shape):
        raise DataError(
            f"size {_fmt(mask.shape)} differs from image {Path(image_path).name} ({_fmt(shape)}; image: {image_path})",
            path,
        )
    return mask


def _clean_mask(path: Path) -> np.ndarray:
    """A 2D label map, refused as ``covseg data check`` would flag it: grey levels or colours are not labels."""
    if is_volume(path):
        return read_mask(path)
    info = analyse_mask(path)
    if info.kind in ("ambiguous", "colour"):
        n = len(info.stored_values)
        what = f"{n}{'+' if n >= 64 else ''} grey levels" if info.kind == "ambiguous" else f"{n}{'+' if n >= 64 else ''} colours"
        raise DataError(
            f"mask holds {what}, not 0/1, 0/255 or class indices (covseg data check reports it as an error; "
            "save it as a binary or class-index PNG)",
            path,
        )
    return info.labels


def read_label_mask(path: str | Path) -> np.ndarray:
    """A mask file as labels, refused in one line when it holds grey levels or colours (as ``data check`` flags)."""
    return _clean_mask(Path(path))


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(s) for s in shape)


def _load_volume(record: CaseRecord, derive_edge: bool, edge_width: int) -> Sample:
    channel_files = [Path(p) for p in record.meta.get("channels", [])] or [Path(record.image)]
    volumes = []
    spacing: tuple[float, ...] = ()
    affine = np.eye(4)
    for i, path in enumerate(channel_files):
        vol, sp, aff = read_volume(path)
        if i == 0:
            spacing, affine = sp, aff
        elif vol.shape != volumes[0].shape:
            raise DataError(f"channel size {_fmt(vol.shape)} differs from {_fmt(volumes[0].shape)} ({channel_files[0]})", path)
        volumes.append(vol)
    image = volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1)
    shape = volumes[0].shape

    def label(path: Path) -> np.ndarray:
        arr, _, mask_affine = read_label_volume(path)
        if arr.shape != shape:
            raise DataError(f"size {_fmt(arr.shape)} differs from image {Path(record.image).name} ({_fmt(shape)}; image: {record.image})", path)
        if not np.allclose(mask_affine, affine, atol=1e-3):
            raise DataError(f"affine differs from image {Path(record.image).name}'s (different orientation or origin)", path)
        return arr

    mask = label(Path(record.mask)) if record.mask is not None else None
    masks = {name: label(Path(p)) for name, p in record.masks.items()}
    edge = None
    if record.edge is not None:
        edge = (label(Path(record.edge)) > 0).astype(np.uint8)
    elif derive_edge and mask is not None:
        from covseg.transforms.edges import mask_to_edge

        edge = mask_to_edge(mask, width=edge_width)
    return Sample(
        case_id=record.case_id,
        image=image,
        mask=mask,
        edge=edge,
        masks=masks,
        text=record.text,
        texts=dict(record.texts),
        label=record.label,
        spacing=tuple(float(s) for s in spacing),
        affine=affine,
        source=Path(record.image),
        meta={**record.meta, "intensity_space": space_of(channel_files[0], volumes[0])},
    )
