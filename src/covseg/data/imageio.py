"""Reading and writing images, masks and volumes, with one-line errors naming the file.

2D: PNG/JPG/TIF/BMP through Pillow (tifffile for multi-page or float TIFF), single-frame
DICOM through pydicom, ``.npy`` arrays. 3D: NIfTI through nibabel, DICOM series through
pydicom; spacing and affine are kept.

Masks are decoded once by :func:`analyse_mask`, which both the loader (:func:`read_mask`)
and ``covseg data check`` use, so a mask is never read one way and checked another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# DICOM sniffing lives in covseg.data.dicom, which imports nothing from this module (no cycle);
# is_dicom_file stays importable from here as before (explicit re-export).
from covseg.data.dicom import is_dicom_file as is_dicom_file
from covseg.data.dicom import is_dicom_series, read_dicom_series
from covseg.data.formats import FileFormat, format_of, register_format, suffixes
from covseg.errors import DataError
from covseg.registry import FILE_FORMATS
from covseg.utils.atomic import write_with


# The built-in file formats (covseg.data.formats), in the order of the suffix lists derived below.
def _read_tiff_image(path: Path) -> np.ndarray:
    raw = _read_tiff(path)
    return raw.astype(np.float32) * bit_depth_scale(raw)


register_format(FileFormat("png", (".png",), "image", lambda p: _read_pil_image(p), pillow=True,
                           write=lambda p, a, **kw: write_image(p, a, **kw), description="PNG (Pillow)"))
register_format(FileFormat("jpeg", (".jpg", ".jpeg"), "image", lambda p: _read_pil_image(p), pillow=True, description="JPEG (Pillow)"))
register_format(FileFormat("tiff", (".tif", ".tiff"), "image", _read_tiff_image, lambda p: _read_tiff(p),
                           description="TIFF, single page (tifffile; deeper than 8 bits scaled to 0..255)"))
register_format(FileFormat("bmp", (".bmp",), "image", lambda p: _read_pil_image(p), pillow=True, description="BMP (Pillow)"))
register_format(FileFormat("dicom", (".dcm",), "either", lambda p: _read_dicom_2d(p)[0], listed=False,
                           description="DICOM: one frame as a 2D image; a folder of them is a series (pydicom)"))
register_format(FileFormat("npy", (".npy",), "either", lambda p: _read_npy(p), description="NumPy array (no pickles)"))
register_format(FileFormat("nifti", (".nii", ".nii.gz"), "volume", lambda p: _read_nifti(p),
                           write=lambda p, v, a, **kw: write_volume(p, v, a, **kw), description="NIfTI volume (nibabel)"))

# Built-in suffix lists, derived from the FILE_FORMATS registry (covseg.data.formats) when this
# module is imported; code that must also see formats registered later calls formats.suffixes().
IMAGE_SUFFIXES = suffixes("image")
VOLUME_SUFFIXES = suffixes("volume") + suffixes("either")
NIFTI_SUFFIXES = FILE_FORMATS.get("nifti").suffixes
# PNG text key under which covseg stores the pixel spacing "row_mm,col_mm" of 2D slices.
SPACING_KEY = "covseg:spacing"
# EXIF tag of the orientation a viewer applies (1: as stored; 5..8 swap width and height).
EXIF_ORIENTATION = 0x0112
# Grey values below this count as class indices (0, 1, 2, ...) rather than intensities.
MAX_CLASS_INDEX = 31


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
    """True for volume files (NIfTI), DICOM series folders and slice stacks (:class:`covseg.data.stack.SliceStack`)."""
    if callable(getattr(path, "read_volume", None)):
        return True
    p = Path(path)
    return suffix_of(p) in suffixes("volume") or is_dicom_series(p)


def _format_2d(path: Path) -> FileFormat | None:
    """The format of a 2D file; None for suffixes no format names (Pillow then tries the file, as before)."""
    fmt = format_of(suffix_of(path))
    return None if fmt is None or fmt.pillow or fmt.kind == "volume" else fmt


def require_file(path: Path) -> None:
    """One line when ``path`` is not a readable file: missing, a broken link or link loop, a folder."""
    if path.is_file():
        return
    if path.is_symlink():
        raise DataError("broken symbolic link (its target is missing, or links form a loop)", path)
    if path.is_dir():
        raise DataError("a folder, not a file", path)
    raise DataError("file not found", path)


def _open_pil(path: Path, load: bool = True):
    """Open a single-frame image with Pillow; every failure is one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    require_file(path)
    try:
        im = Image.open(path)
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            raise DataError(f"holds {frames} frames or pages; covseg reads single 2D images (split it first)", path)
        if load:
            im.load()
            if exif_rotation(im):
                from PIL import ImageOps

                im = ImageOps.exif_transpose(im)  # as viewers show it: a phone photo stored sideways is upright
    except Image.DecompressionBombError as exc:
        raise DataError(f"image too large to decode safely ({str(exc).split(',')[0]})", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"unreadable image ({type(exc).__name__}: {exc})", path) from None
    return im


def exif_rotation(im) -> bool:
    """True when an image's EXIF Orientation tag asks for a rotation or mirror (any value but 1)."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1) or 1) != 1
    except Exception:
        return False


def bit_depth_scale(arr: np.ndarray) -> float:
    """Factor that brings unsigned integer pixels deeper than 8 bits to the 8-bit range (1 otherwise).

    A 16-bit PNG or TIFF spans 0..65535 where an 8-bit one spans 0..255; models normalise by
    ``preprocess.scale`` (255 by default), so deeper images are scaled by their bit depth first.
    Signed images (CT in HU) and floats keep their values.
    """
    if arr.dtype.kind == "u" and arr.dtype.itemsize > 1:
        return 255.0 / float(np.iinfo(arr.dtype).max)
    return 1.0


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of a 2D image from its header, without decoding the pixels."""
    path = Path(path)
    if _format_2d(path) is not None:
        arr = read_image(path)
        return int(arr.shape[0]), int(arr.shape[1])
    im = _open_pil(path, load=False)
    turned = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1) in (5, 6, 7, 8)  # read_image applies it
    return (int(im.size[0]), int(im.size[1])) if turned else (int(im.size[1]), int(im.size[0]))


def read_image(path: str | Path, channels: int | None = None, *, check_finite: bool = True) -> np.ndarray:
    """Read a 2D image as float32, ``(H, W)`` for one channel or ``(H, W, C)``.

    ``channels=1`` converts to grey, ``channels=3`` to RGB; ``None`` keeps grey images grey
    (also RGB files whose three channels are equal) and drops alpha from colour ones.
    DICOM files give rescaled values (HU for CT). With ``check_finite`` (default) float
    images holding NaN or infinity are refused.
    """
    path = Path(path)
    fmt = _format_2d(path)
    arr = _read_pil_image(path) if fmt is None or fmt.read is None else fmt.read(path)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise DataError(f"expected a 2D image, got shape {arr.shape}", path)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 3 and channels is None and _is_grey(arr):
        arr = arr[..., 0]
    if check_finite and not np.isfinite(arr).all():
        raise DataError(f"image contains {int((~np.isfinite(arr)).sum())} NaN or infinite values", path)
    return _to_channels(arr, channels, path)


def _read_pil_image(path: Path) -> np.ndarray:
    """A Pillow image's values as float32: 16-bit scaled to 0..255, grey kept grey, colour as RGB."""
    im = _open_pil(path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.float32) * (255.0 / 65535.0)  # 16-bit: scale by bit depth
    if im.mode == "I" and im.format == "PNG":  # older Pillow opens 16-bit grey PNGs as "I"
        return np.asarray(im).astype(np.float32) * (255.0 / 65535.0)
    if im.mode in ("I", "F"):
        return np.asarray(im).astype(np.float32)
    if im.mode in ("L", "1", "LA"):
        return np.asarray(im.convert("L"), dtype=np.float32)
    return np.asarray(im.convert("RGB"), dtype=np.float32)


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
    require_file(path)
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            pages = len(tif.pages)
            if pages == 1:
                arr = tif.asarray()
    except Exception as exc:  # tifffile raises many types on bad files
        raise DataError(f"unreadable TIFF ({type(exc).__name__}: {exc})", path) from None
    if pages != 1:
        raise DataError(f"holds {pages} pages; covseg reads single 2D images (split it first)", path)
    arr = np.asarray(arr)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_npy(path: Path) -> np.ndarray:
    require_file(path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"unreadable .npy ({type(exc).__name__})", path) from None


def _read_dicom_2d(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """One DICOM frame (e.g. a chest X-ray), rescaled; MONOCHROME1 is inverted to MONOCHROME2."""
    import pydicom

    require_file(path)
    try:
        ds = pydicom.dcmread(str(path), force=True)
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        raise DataError(f"unreadable DICOM ({type(exc).__name__}: {exc})", path) from None
    if arr.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1) or 1) == 1:
        if arr.shape[0] != 1:
            raise DataError(f"DICOM file holds {arr.shape[0]} frames; give a series folder for volumes", path)
        arr = arr[0]
    arr = arr * float(getattr(ds, "RescaleSlope", 1.0) or 1.0) + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    spacing = None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag in ds:
            spacing = (float(ds[tag].value[0]), float(ds[tag].value[1]))
            break
    return arr, spacing


def read_spacing_2d(path: str | Path) -> tuple[float, float] | None:
    """Pixel spacing ``(row_mm, col_mm)`` of a 2D image when its file states one, else None.

    Sources, in order: the PNG text chunk ``covseg:spacing`` (written by ``covseg data
    convert``), DICOM ``PixelSpacing``, TIFF resolution in centimetres (scanner output).
    PNG/JPEG dots-per-inch are screen settings (matplotlib writes 100 dpi) and are ignored.
    """
    path = Path(path)
    suf = suffix_of(path)
    if suf == ".dcm":
        return _read_dicom_2d(path)[1]
    if suf in (".tif", ".tiff"):
        return _tiff_spacing(path)
    if suf != ".png":
        return None
    im = _open_pil(path, load=False)
    text = im.info.get(SPACING_KEY)
    if not text:
        return None
    try:
        row, col = (float(v) for v in str(text).split(","))
    except ValueError:
        raise DataError(f"bad {SPACING_KEY} text chunk {text!r} (expected 'row_mm,col_mm')", path) from None
    return row, col


def _tiff_spacing(path: Path) -> tuple[float, float] | None:
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            tags = tif.pages[0].tags
            unit = tags.get("ResolutionUnit")
            xres, yres = tags.get("XResolution"), tags.get("YResolution")
            if unit is None or xres is None or yres is None or int(unit.value) != 3:
                return None
            xr = xres.value[0] / xres.value[1]
            yr = yres.value[0] / yres.value[1]
    except Exception as exc:
        raise DataError(f"unreadable TIFF ({type(exc).__name__}: {exc})", path) from None
    if xr <= 0 or yr <= 0:
        return None
    return 10.0 / yr, 10.0 / xr  # pixels per cm → mm per pixel


@dataclass
class MaskInfo:
    """A decoded 2D mask: the label map and what the file stored.

    ``kind`` is ``binary`` (two values, one of them 0), ``labels`` (palette indices or small
    integers 0..31: a multi-class map), ``ambiguous`` (grey levels such as anti-aliased or
    JPEG-compressed edges: binarised at half range, which ``data check`` reports) or
    ``colour`` (several RGB colours: read as foreground wherever a colour is present).
    """

    labels: np.ndarray
    kind: str
    stored_values: tuple[int | float, ...]
    mode: str

    @property
    def is_empty(self) -> bool:
        return not bool(self.labels.any())


def analyse_mask(path: str | Path) -> MaskInfo:
    """Decode a 2D mask file into a uint8 label map and classify how it was stored."""
    path = Path(path)
    fmt = _format_2d(path)
    if fmt is not None:
        arr = np.asarray(fmt.stored(path))
        if arr.ndim == 3:
            return _from_colour(arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1], "array", path)
        return _from_grey(arr, "array", path)
    im = _open_pil(path)
    if im.mode == "P":
        idx = np.asarray(im, dtype=np.uint8)
        values = tuple(int(v) for v in np.unique(idx))
        kind = "binary" if len(values) < 2 or (len(values) == 2 and values[0] == 0) else "labels"
        return MaskInfo(idx.copy(), kind, values, "P")
    if im.mode == "1":
        arr = np.asarray(im, dtype=np.uint8)
        return MaskInfo(arr, "binary", tuple(int(v) for v in np.unique(arr)), "1")
    if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        rgba = np.asarray(im.convert("RGBA"))
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        if not rgb.any() and alpha.min() != alpha.max():
            return _from_grey(alpha, im.mode + ":alpha", path)  # foreground painted in alpha only
        return _from_colour(rgb, im.mode, path)
    if im.mode == "LA":
        im = im.convert("L")
    return _from_grey(np.asarray(im), im.mode, path)


def _from_colour(rgb: np.ndarray, mode: str, path: Path) -> MaskInfo:
    if rgb.shape[-1] == 1 or (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        return _from_grey(rgb[..., 0], mode, path)
    rgb = rgb.astype(np.uint32) if rgb.dtype.itemsize <= 4 else rgb
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]  # 0xRRGGBB for 8-bit colour
    colours = np.unique(packed)
    labels = (packed > 0).astype(np.uint8)
    values = tuple(int(c) for c in colours[:64])
    kind = "binary" if colours.size <= 2 and (colours[0] == 0 or colours.size == 1) else "colour"
    return MaskInfo(labels, kind, values, mode)


def _distinct(arr: np.ndarray) -> np.ndarray:
    """Sorted distinct values; a histogram for 8/16-bit data (linear time, masks are large)."""
    if arr.dtype in (np.uint8, np.uint16):
        return np.flatnonzero(np.bincount(arr.ravel(), minlength=1)).astype(arr.dtype)
    return np.unique(arr)


def _from_grey(arr: np.ndarray, mode: str, path: Path) -> MaskInfo:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise DataError("mask contains NaN or infinite values", path)
    values = _distinct(arr)
    stored = tuple(v.item() for v in values[:64])
    if values.size == 1:
        return MaskInfo((arr > 0).astype(np.uint8), "binary", stored, mode)
    if values.size == 2 and values[0] == 0:
        return MaskInfo((arr > 0).astype(np.uint8), "binary", stored, mode)
    integral = bool(np.all(values == np.round(values)))
    if integral and values.min() >= 0 and values.max() <= MAX_CLASS_INDEX:
        return MaskInfo(arr.astype(np.uint8), "labels", stored, mode)
    if arr.dtype == np.uint8:
        labels = (arr >= 128).astype(np.uint8)
    elif arr.dtype.kind in "ui":
        labels = (arr >= (np.iinfo(arr.dtype).max + 1) // 2).astype(np.uint8)
    else:
        labels = (arr >= 0.5 * float(values.max())).astype(np.uint8)
    return MaskInfo(labels, "ambiguous", stored, mode)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as a uint8 label map (0 = background); NIfTI masks give ``(X, Y, Z)``.

    Palette images give their indices; 1-bit, 0/1 and 0/255 images give 0/1; grey images
    whose values are small integers (0..31) are multi-class indices; any other grey image
    (anti-aliased 0..255) is binarised at half range; RGB(A) masks are foreground wherever a
    colour channel is non-zero (or, for black images, wherever alpha is non-zero).
    """
    path = Path(path)
    if is_volume(path):
        return read_label_volume(path)[0]
    return analyse_mask(path).labels


def read_label_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read a 3D label volume as uint8 (values must be whole numbers 0..255)."""
    arr, spacing, affine = read_volume(path)
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.all(arr == np.round(arr))):
        raise DataError(
            f"label volume values must be whole numbers 0..255 (found {arr.min():g}..{arr.max():g})", path
        )
    return arr.astype(np.uint8), spacing, affine


def read_volume(
    path: str | Path, *, check_finite: bool = True
) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Read a NIfTI file or DICOM series: ``(array (X, Y, Z) float32, spacing mm, 4×4 affine)``.

    With ``check_finite`` (default) a volume holding NaN or infinite voxels is refused. A slice
    stack (:class:`covseg.data.stack.SliceStack`) reads its slices.
    """
    stack_reader = getattr(path, "read_volume", None)
    path = Path(path)
    if callable(stack_reader):
        arr, spacing, affine = stack_reader()
    elif path.is_dir():
        arr, spacing, affine = read_dicom_series(path)
    else:
        fmt = format_of(suffix_of(path))
        reader = fmt.read if fmt is not None and fmt.kind == "volume" and fmt.read is not None else _read_nifti
        arr, spacing, affine = reader(path)
    _check_geometry(path, spacing, affine)
    if check_finite and not np.isfinite(arr).all():
        raise DataError(f"volume contains {int((~np.isfinite(arr)).sum())} NaN or infinite voxels", path)
    return arr, spacing, affine


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """A NIfTI file's ``(array (X, Y, Z) float32, spacing mm, affine)``; refuses a non-positive header voxel size."""
    require_file(path)
    try:
        import nibabel as nib

        with _quiet_nibabel():
            img = nib.load(str(path))
            arr = np.asarray(img.dataobj, dtype=np.float32)
            affine = np.asarray(img.affine, dtype=np.float64)
            header_zooms = _raw_pixdim(img, path)
            spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    except Exception as exc:
        raise DataError(f"unreadable NIfTI ({type(exc).__name__}: {exc})", path) from None
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"expected a 3D volume, got shape {arr.shape}", path)
    if header_zooms is not None and not (np.all(np.isfinite(header_zooms)) and np.all(header_zooms > 0)):
        raise DataError(
            f"voxel size {[float(z) for z in header_zooms]} in the header (pixdim) is not positive: "
            "volumes in ml and distances in mm would be wrong",
            path,
        )
    return arr, spacing, affine


def _check_geometry(path: Path, spacing: tuple[float, ...], affine: np.ndarray) -> None:
    """Refuse a volume whose voxel size or voxel-to-world matrix cannot place it in space."""
    if len(spacing) < 3 or not all(np.isfinite(s) and s > 0 for s in spacing[:3]):
        raise DataError(f"voxel size {list(spacing)} is not positive: volumes and distances would be wrong", path)
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise DataError("the affine (voxel-to-world matrix) holds NaN or infinite values", path)
    if abs(float(np.linalg.det(a[:3, :3]))) < 1e-12 * max(1.0, float(np.abs(a[:3, :3]).max()) ** 3):
        raise DataError("the affine (voxel-to-world matrix) is singular: the volume's axes cannot be placed", path)


def _raw_pixdim(img, path: Path) -> np.ndarray | None:
    """The voxel size as stored in a NIfTI file's header (nibabel silently replaces zeros by 1 when loading)."""
    import nibabel as nib

    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) or suffix_of(path) not in NIFTI_SUFFIXES:
        return None
    with nib.openers.ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


class _quiet_nibabel:
    """Silence nibabel's log lines while reading (a damaged header is reported by covseg in one line)."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("nibabel")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def _png_info(spacing: tuple[float, float] | None):
    if spacing is None:
        return None
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(SPACING_KEY, f"{float(spacing[0]):.6g},{float(spacing[1]):.6g}")
    return info


def write_mask(
    path: str | Path, mask: np.ndarray, scale_binary: bool = True, *, spacing: tuple[float, float] | None = None
) -> Path:
    """Write a 2D label map as PNG atomically; binary masks as 0/255 when ``scale_binary``.

    ``spacing`` (row_mm, col_mm) is stored in a PNG text chunk that :func:`read_spacing_2d` reads.
    """
    from PIL import Image

    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"a 2D mask is needed, got shape {m.shape}", path)
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if m.size and (m.min() < 0 or m.max() > 255):
        raise DataError(f"mask values {m.min()}..{m.max()} do not fit an 8-bit PNG", path)
    if scale_binary and m.max(initial=0) <= 1:
        m = (m * 255).astype(np.uint8)
    m = m.astype(np.uint8)
    info = _png_info(spacing)
    return write_with(path, lambda p: Image.fromarray(m).save(p, format="PNG", pnginfo=info))


def write_image(path: str | Path, image: np.ndarray, *, spacing: tuple[float, float] | None = None) -> Path:
    """Write an 8-bit grey or RGB image atomically (format from the suffix; PNG by default).

    ``spacing`` is stored in PNG files only (see :func:`write_mask`).
    """
    from PIL import Image

    arr = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix_of(path), "PNG")
    extra = {"pnginfo": _png_info(spacing)} if fmt == "PNG" else {}
    return write_with(path, lambda p: Image.fromarray(arr).save(p, format=fmt, **extra))


def write_volume(
    path: str | Path, volume: np.ndarray, affine: np.ndarray, dtype: str | None = None, *, descrip: bytes | None = None
) -> Path:
    """Write a NIfTI volume atomically with the given affine.

    ``dtype="scaled-uint8"`` stores a float map (probabilities) as uint8 with the NIfTI slope and
    intercept that nibabel picks, a quarter of float32's size; readers get floats back.
    ``descrip`` goes into the header (covseg's intensity marker, :func:`covseg.data.intensity.nifti_marker`).
    """
    import nibabel as nib

    arr = np.asarray(volume)
    scaled = dtype == "scaled-uint8"
    if scaled:
        arr = arr.astype(np.float32)
    elif dtype is not None:
        arr = arr.astype(dtype)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    if scaled:
        img.set_data_dtype(np.uint8)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if descrip is not None:
        img.header["descrip"] = descrip
    return write_with(path, lambda p: nib.save(img, str(p)))
