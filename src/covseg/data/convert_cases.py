"""How ``covseg data convert`` writes one case in the target layout: 2D files copied or re-encoded,
volumes cut into windowed axial PNG slices, and the report every written file is counted in.

:func:`covseg.data.convert.convert_dataset` walks the dataset and calls these per case; a case's
files are remembered so a failed case leaves none behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.imageio import (
    analyse_mask,
    read_image,
    read_label_volume,
    read_mask,
    read_volume,
    suffix_of,
    write_image,
    write_mask,
)
from covseg.data.intensity import HU, space_of, to_unit
from covseg.data.layouts import INFNET_MASK_DIRS
from covseg.data.sample import CaseRecord
from covseg.data.slicing import apply_window, axial_slices
from covseg.errors import DataError
from covseg.utils.atomic import write_bytes
from covseg.utils.outputs import OutputFolder

TARGETS: dict[str, dict[str, str]] = {
    "folder": {"image": "images", "mask": "masks", "edge": "edges"},
    "infnet": {"image": "Imgs", "mask": "GT", "edge": "Edge"},
    "cosup": {"image": "image", "mask": "mask", "edge": "mask_"},
}


@dataclass
class ConvertReport:
    """What a conversion wrote and which cases failed (with why)."""

    src: Path
    dst: Path
    to: str
    cases: int = 0
    written: int = 0
    slices: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "src": str(self.src),
            "dst": str(self.dst),
            "to": self.to,
            "cases": self.cases,
            "written": self.written,
            "slices": self.slices,
            "failed": [{"case": c, "problem": p} for c, p in self.failed],
            "notes": self.notes,
        }


@dataclass
class _Options:
    to: str
    window: tuple[float, float] | None
    labels: list[int] | None
    orientation: str
    skip_empty: bool
    derive_edges: bool
    uncarried: dict[str, int] = field(default_factory=dict)
    reencoded: int = 0
    case_files: list[Path] = field(default_factory=list)

    guard: OutputFolder | None = None

    def put(self, report: ConvertReport, path: Path, write: Callable[[Path], Any]) -> None:
        """Write one output file (atomically, by ``write``) and remember it for the current case."""
        if self.guard is not None:
            self.guard.check(path)
        write(path)
        self.case_files.append(path)
        report.written += 1

    def dir(self, role: str, out: Path) -> Path:
        return out / TARGETS[self.to][role]

    def extra_dir(self, name: str, out: Path) -> Path | None:
        if self.to == "folder":
            return out / f"masks_{name}"
        if self.to == "infnet":
            return out / INFNET_MASK_DIRS.get(name, name)
        return None


def _copy(src: Path, dst: Path, options: _Options, report: ConvertReport) -> None:
    data = Path(src).read_bytes()
    options.put(report, dst, lambda p: write_bytes(p, data))


def _write_binary_like(
    src: Path, dst_dir: Path, name: str, options: _Options, report: ConvertReport, role: str = "mask"
) -> None:
    """Copy a mask when the target reads it as it is, else re-encode it as a 0/255 (or index) PNG.

    Binary masks and edges must be grey 0/255 (Inf-Net's loader converts to grey and divides
    by 255, so 0/1 or a dark palette colour would be nearly empty); class-index masks and the
    extra named masks (multi-class, prior) are copied when they are PNG, keeping their indices.
    """
    info = analyse_mask(src)
    png = suffix_of(src) == ".png"
    clean_binary = info.kind == "binary" and info.mode == "L" and set(info.stored_values) <= {0, 255}
    keep_labels = role != "edge" and (info.kind == "labels" or (role == "extra" and info.kind == "binary"))
    if png and (clean_binary or keep_labels):
        _copy(src, dst_dir / f"{name}.png", options, report)
        return
    labels = info.labels if keep_labels else (info.labels > 0).astype(np.uint8)
    options.put(
        report, dst_dir / f"{name}.png", lambda p: write_mask(p, labels, scale_binary=not keep_labels)
    )
    options.reencoded += 1


def _convert_image(rec: CaseRecord, name: str, out: Path, options: _Options, report: ConvertReport) -> None:
    image_dir, mask_dir, edge_dir = (options.dir(r, out) for r in ("image", "mask", "edge"))
    if options.to == "cosup":
        _write_cosup(rec, name, image_dir, mask_dir, edge_dir, options, report)
        return
    _copy(rec.image, image_dir / f"{name}{_image_suffix(rec.image)}", options, report)
    if rec.mask is not None:
        _write_binary_like(Path(rec.mask), mask_dir, name, options, report)
    if rec.edge is not None:
        _write_binary_like(Path(rec.edge), edge_dir, name, options, report, role="edge")
    elif options.derive_edges and rec.mask is not None:
        from covseg.transforms.edges import mask_to_edge

        edge = mask_to_edge(read_mask(rec.mask))
        options.put(report, edge_dir / f"{name}.png", lambda p: write_mask(p, edge))
    for extra, path in rec.masks.items():
        folder = options.extra_dir(extra, out)
        if folder is None:
            options.uncarried[f"{extra} masks"] = options.uncarried.get(f"{extra} masks", 0) + 1
            continue
        _write_binary_like(Path(path), folder, name, options, report, role="extra")


def _image_suffix(path: Path) -> str:
    suf = suffix_of(path)
    return ".jpg" if suf == ".jpeg" else suf


def _write_cosup(
    rec: CaseRecord,
    name: str,
    image_dir: Path,
    mask_dir: Path,
    edge_dir: Path,
    options: _Options,
    report: ConvertReport,
) -> None:
    """Co-supervision files share one name in all three folders: PNG image, mask 0/1, edge 0/255
    (its loader divides image and edge by 255 but uses the mask as read)."""
    if suffix_of(rec.image) == ".png":
        _copy(rec.image, image_dir / f"{name}.png", options, report)
    else:
        pixels = read_image(rec.image)
        options.put(report, image_dir / f"{name}.png", lambda p: write_image(p, pixels))
    if rec.mask is None:
        return
    mask = read_mask(rec.mask)
    options.put(
        report,
        mask_dir / f"{name}.png",
        lambda p: write_mask(p, (mask > 0).astype(np.uint8), scale_binary=False),
    )
    if rec.edge is not None:
        edge = read_mask(rec.edge) > 0
    elif options.derive_edges:
        from covseg.transforms.edges import mask_to_edge

        edge = mask_to_edge(mask) > 0
    else:
        edge = None
    if edge is not None:
        options.put(report, edge_dir / f"{name}.png", lambda p: write_mask(p, edge.astype(np.uint8)))
    for extra in rec.masks:
        options.uncarried[f"{extra} masks"] = options.uncarried.get(f"{extra} masks", 0) + 1


def _convert_volume(
    rec: CaseRecord, name: str, out: Path, options: _Options, report: ConvertReport
) -> list[dict[str, Any]]:
    if len(rec.meta.get("channels", [])) > 1:
        options.uncarried["channels after the first"] = (
            options.uncarried.get("channels after the first", 0) + 1
        )
    volume, _, affine = read_volume(rec.image)
    space = space_of(
        rec.image, volume
    )  # the window is for HU; display or 0..1 volumes are never windowed again
    if space == HU and options.window is None:
        raise DataError("volumes in HU need a window (--window lung or --window low,high)", rec.image)
    slices, spacing, z_mm = axial_slices(volume, affine, options.orientation)
    mask_slices = None
    if rec.mask is not None:
        labels, _, mask_affine = read_label_volume(rec.mask)
        if labels.shape != volume.shape:
            raise DataError(
                f"mask size {labels.shape} differs from volume {rec.image} ({volume.shape})", rec.mask
            )
        if not np.allclose(mask_affine, affine, atol=1e-3):
            raise DataError(f"mask affine differs from volume {rec.image}'s", rec.mask)
        if options.labels:
            present = np.unique(labels)
            if not np.isin(options.labels, present).any():
                shown = ", ".join(str(int(v)) for v in present[:20]) + (", ..." if present.size > 20 else "")
                raise DataError(
                    f"none of --labels {','.join(str(v) for v in options.labels)} occurs in this mask (it holds {shown})",
                    rec.mask,
                )
            labels = np.isin(labels, options.labels).astype(np.uint8)
        mask_slices = axial_slices(labels, affine, options.orientation)[0]
    # One encoding per volume: binary volumes as 0/255 (0/1 for cosup), label volumes as indices.
    scale = mask_slices is not None and int(mask_slices.max(initial=0)) <= 1 and options.to != "cosup"
    rows = []
    for k in range(slices.shape[0]):
        slice_mask = mask_slices[k] if mask_slices is not None else None
        if options.skip_empty and (slice_mask is None or not slice_mask.any()):
            continue
        slice_name = f"{name}_{k:03d}"
        if space == HU:
            pixels = apply_window(slices[k], options.window)
        else:
            pixels = np.rint(to_unit(slices[k], space) * 255.0).astype(np.uint8)
        options.put(
            report,
            options.dir("image", out) / f"{slice_name}.png",
            lambda p, a=pixels: write_image(p, a, spacing=spacing),
        )
        if slice_mask is not None:
            options.put(
                report,
                options.dir("mask", out) / f"{slice_name}.png",
                lambda p, m=slice_mask: write_mask(p, m, scale_binary=scale, spacing=spacing),
            )
            if options.derive_edges:
                from covseg.transforms.edges import mask_to_edge

                edge = mask_to_edge(slice_mask)
                options.put(
                    report,
                    options.dir("edge", out) / f"{slice_name}.png",
                    lambda p, e=edge: write_mask(p, e, spacing=spacing),
                )
        report.slices += 1
        rows.append(
            {
                "slice": slice_name,
                "case_id": rec.case_id,
                "volume": str(rec.image),
                "index_superior": k,
                "z_mm": round(float(z_mm[k]), 4),
                "row_mm": spacing[0],
                "col_mm": spacing[1],
                "orientation": options.orientation,
                "window": f"{options.window[0]:g},{options.window[1]:g}"
                if space == HU and options.window
                else f"none ({space})",
            }
        )
    return rows
