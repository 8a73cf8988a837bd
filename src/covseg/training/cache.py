"""Preprocessed training cases cached on disk, read lazily (what the patch sampler reads).

Each case is stored once as ``<i>_image.npy`` (float32 ``(C, *spatial)``, intensity-normalised at
its own size) and ``<i>_label.npy`` (uint8 ``(1, *spatial)``), plus up to 10,000 foreground
coordinates for oversampling; ``manifest.json``, written last, lists them. The folder name is a
hash of the inputs (files, sizes, modification times) and the preprocessing, so a changed
dataset or setting builds a new cache and a second run (or a second epoch) reads no image file.
Arrays are opened as memory maps: a patch reads only its own bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covseg.data.sample import CaseRecord
from covseg.errors import DataError
from covseg.utils.atomic import write_json, write_with
from covseg.utils.paths import expand

MAX_FOREGROUND_LOCATIONS = 10_000
CACHE_ENV = "COVSEG_CACHE"


def default_cache_root() -> Path:
    """``$COVSEG_CACHE`` or ``~/.cache/covseg`` (never inside a dataset: inputs stay untouched)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "covseg"


def _fingerprint(records: Sequence[CaseRecord], settings: dict[str, Any]) -> str:
    h = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode())
    for rec in records:
        for path in (rec.image, rec.mask, *rec.masks.values()):
            if path is None:
                continue
            p = Path(path)
            try:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(str(p).encode())
        h.update(str(rec.case_id).encode())
    return h.hexdigest()[:20]


class CaseCache:
    """The cached cases of one (dataset, preprocessing) pair."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.cases: list[dict[str, Any]] = manifest["cases"]
        self.num_classes = int(manifest["num_classes"])

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def ids(self) -> list[str]:
        return [c["case_id"] for c in self.cases]

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and label of case ``i`` as read-only memory maps."""
        entry = self.cases[i]
        image = np.load(self.folder / entry["image"], mmap_mode="r")
        label = np.load(self.folder / entry["label"], mmap_mode="r") if entry.get("label") else None
        return image, label

    def foreground_locations(self, i: int) -> np.ndarray:
        """Coordinates ``(N, ndim)`` of foreground voxels of case ``i`` (a random subset when many)."""
        name = self.cases[i].get("foreground")
        return np.load(self.folder / name) if name else np.zeros((0, 0), dtype=np.int64)

    @classmethod
    def build(
        cls,
        records: Sequence[CaseRecord],
        read_case: Callable[[CaseRecord], tuple[np.ndarray, np.ndarray | None]],
        settings: dict[str, Any],
        num_classes: int,
        root: str | Path | None = None,
        progress: Callable[[], None] | None = None,
    ) -> CaseCache:
        """The cache of ``records`` (reused when complete, else written): ``read_case`` gives the
        normalised image ``(C, *spatial)`` and the label map ``(*spatial)`` of one record."""
        base = expand(root) if root else default_cache_root()
        key = _fingerprint(records, {**settings, "num_classes": num_classes})
        folder = base / key
        manifest_path = folder / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                if len(manifest.get("cases", [])) == len(records):
                    return cls(folder, manifest)
            except (OSError, json.JSONDecodeError):
                pass  # an unreadable manifest is rebuilt
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create the case cache ({exc.strerror})", folder) from None
        rng = np.random.default_rng(0)
        cases = []
        for i, rec in enumerate(records):
            image, label = read_case(rec)
            entry: dict[str, Any] = {"case_id": str(rec.case_id), "image": f"{i:05d}_image.npy", "shape": list(image.shape)}
            write_with(folder / entry["image"], lambda p, a=image: np.save(p, np.ascontiguousarray(a, np.float32), allow_pickle=False))
            if label is not None:
                entry["label"] = f"{i:05d}_label.npy"
                lab = np.ascontiguousarray(label, dtype=np.uint8)[None]
                write_with(folder / entry["label"], lambda p, a=lab: np.save(p, a, allow_pickle=False))
                fg = np.argwhere(label > 0)
                if len(fg) > MAX_FOREGROUND_LOCATIONS:
                    fg = fg[np.sort(rng.choice(len(fg), MAX_FOREGROUND_LOCATIONS, replace=False))]
                entry["foreground_voxels"] = int((label > 0).sum())
                if len(fg):
                    entry["foreground"] = f"{i:05d}_fg.npy"
                    write_with(folder / entry["foreground"], lambda p, a=fg: np.save(p, a.astype(np.int64), allow_pickle=False))
            cases.append(entry)
            if progress is not None:
                progress()
        manifest = {"settings": settings, "num_classes": num_classes, "cases": cases}
        write_json(manifest_path, manifest)
        return cls(folder, manifest)
