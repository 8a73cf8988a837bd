"""Reading and writing images, masks and volumes, with one-line errors naming the file.

2D: PNG/JPG/TIF/BMP through Pillow (tifffile for multi-page or float TIFF).
3D: NIfTI through nibabel, DICOM series through pydicom; spacing and affine are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.errors import DataError
from covseg.utils.atomic import write_with

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".npy")


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem_of(path: str | Path) -> str:
    """File name without its (possibly double) suffix."""
    name = Path(path).name
    suf = suffix_of(path)
    return name[: -len(suf)] if suf and name.lower().endswith(suf) else name


def is_volume(path: str | Path) -> bool:
    """True for NIfTI files and DICOM series folders."""
    p = Path(path)
    return suffix_of(p) in (".nii", ".nii.gz") or (p.is_dir() and any(p.glob("*.dcm")))


def _open_pil(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise DataError("file not found", path)
    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"unreadable image ({type(exc).__name__}: {exc})", path) from None
    return im


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read a 2D image as float32, ``(H, W)`` for one channel or ``(H, W, C)``.

    ``channels=1`` converts to grey, ``channels=3`` to RGB; ``None`` keeps grey images grey
    and drops alpha from colour ones.
    """
    path = Path(path)
    suf = suffix_of(path)
    if suf in (".tif", ".tiff"):
        arr = _read_tiff(path)
    elif suf == ".npy":
        arr = _read_npy(path)
    else:
        im = _open_pil(path)
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im).astype(np.float32)
        elif im.mode in ("L", "1"):
            arr = np.asarray(im.convert("L"), dtype=np.float32)
        elif im.mode == "LA":
            arr = np.asarray(im.convert("L"), dtype=np.float32)
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 3 and channels is None and _is_grey(arr):
        arr = arr[..., 0]
    if not np.isfinite(arr).all():
        raise DataError("image contains NaN or infinite values", path)
    return _to_channels(arr, channels, path)


def _is_grey(arr: np.ndarray) -> bool:
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))


def _to_channels(arr: np.ndarray, channels: int | None, path: Path) -> np.ndarray:
    if channels is None:
        return arr
    if channels == 1:
        if arr.ndim == 3:
            arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if arr.shape[-1] >= 3 else arr[..., 0]
        return arr.astype(np.float32)
    if channels == 3:
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        return arr[..., :3].astype(np.float32)
    raise DataError(f"cannot give {channels} channels", path)


def _read_tiff(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError("file not found", path)
    try:
        import tifffile

        arr = tifffile.imread(str(path))
    except Exception as exc:  # tifffile raises many types on bad files
        raise DataError(f"unreadable TIFF ({type(exc).__name__}: {exc})", path) from None
    arr = np.asarray(arr)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise DataError("file not found", path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"unreadable .npy ({type(exc).__name__})", path) from None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a 2D mask as a uint8 label map (0 = background).

    Palette images give their indices; 1-bit, 0/1 and 0/255 images give 0/1; grey images
    whose values are small integers (< 32) are multi-class indices; any other grey image
    (anti-aliased 0..255) is binarised at 128; RGB(A) masks are foreground wherever a colour
    channel is non-zero.
    """
    path = Path(path)
    suf = suffix_of(path)
    if suf in (".nii", ".nii.gz"):
        return read_volume(path)[0].astype(np.uint8)
    if suf in (".tif", ".tiff", ".npy"):
        arr = _read_tiff(path) if suf != ".npy" else _read_npy(path)
        return _labels_from_grey(np.asarray(arr) if arr.ndim == 2 else np.asarray(arr).max(axis=-1))
    im = _open_pil(path)
    if im.mode == "P":
        return np.asarray(im, dtype=np.uint8).copy()
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB"))
        return (rgb.max(axis=-1) > 0).astype(np.uint8)
    if im.mode == "LA":
        im = im.convert("L")
    return _labels_from_grey(np.asarray(im))


def _labels_from_grey(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    values = np.unique(arr)
    if values.size <= 2 and set(values.tolist()) <= {0, 1, 255, 65535}:
        return (arr > 0).astype(np.uint8)
    if values.max(initial=0) < 32 and np.all(values == np.round(values)):
        return arr.astype(np.uint8)
    return (arr >= 128).astype(np.uint8) if arr.dtype == np.uint8 else (arr > 0).astype(np.uint8)


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read a NIfTI file or DICOM series: ``(array (X, Y, Z) float32, spacing mm, 4×4 affine)``."""
    path = Path(path)
    if path.is_dir():
        from covseg.data.dicom import read_dicom_series

        return read_dicom_series(path)
    if not path.exists():
        raise DataError("file not found", path)
    try:
        import nibabel as nib

        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"unreadable NIfTI ({type(exc).__name__}: {exc})", path) from None
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {arr.shape}", path)
    if not np.isfinite(arr).all():
        raise DataError(f"volume contains {int((~np.isfinite(arr)).sum())} NaN or infinite voxels", path)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    return arr, spacing, np.asarray(img.affine, dtype=np.float64)


def write_mask(path: str | Path, mask: np.ndarray, scale_binary: bool = True) -> Path:
    """Write a 2D label map as PNG atomically; binary masks as 0/255 when ``scale_binary``."""
    from PIL import Image

    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if scale_binary and m.max(initial=0) <= 1:
        m = (m * 255).astype(np.uint8)
    m = m.astype(np.uint8)
    return write_with(path, lambda p: Image.fromarray(m).save(p, format="PNG"))


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write an 8-bit grey or RGB image atomically (format from the suffix)."""
    from PIL import Image

    arr = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix_of(path), "PNG")
    return write_with(path, lambda p: Image.fromarray(arr).save(p, format=fmt))


def write_volume(path: str | Path, volume: np.ndarray, affine: np.ndarray, dtype: str | None = None) -> Path:
    """Write a NIfTI volume atomically with the given affine."""
    import nibabel as nib

    arr = np.asarray(volume)
    if dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return write_with(path, lambda p: nib.save(img, str(p)))
