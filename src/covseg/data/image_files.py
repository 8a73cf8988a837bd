"""2D image files: reading (Pillow, tifffile, single-frame DICOM, ``.npy``), pixel spacing, writing PNG/JPEG.

The readers behind the built-in 2D entries of :data:`~covseg.registry.FILE_FORMATS` (registered
in :mod:`covseg.data.imageio`, the module callers import these names from) and the 8-bit writers;
every failure is one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.data.formats import FileFormat, format_of
from covseg.data.paths import require_file, suffix_of
from covseg.errors import DataError
from covseg.utils.atomic import write_with

# PNG text key under which covseg stores the pixel spacing "row_mm,col_mm" of 2D slices.
SPACING_KEY = "covseg:spacing"
# EXIF tag of the orientation a viewer applies (1: as stored; 5..8 swap width and height).
EXIF_ORIENTATION = 0x0112


def _format_2d(path: Path) -> FileFormat | None:
    """The format of a 2D file; None for suffixes no format names (Pillow then tries the file, as before)."""
    fmt = format_of(suffix_of(path))
    return None if fmt is None or fmt.pillow or fmt.kind == "volume" else fmt


def _open_pil(path: Path, load: bool = True):
    """Open a single-frame image with Pillow; every failure is one line naming the file."""
    from PIL import Image, UnidentifiedImageError

    require_file(path)
    try:
        im = Image.open(path)
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1:
            raise DataError(
                f"holds {frames} frames or pages; covseg reads single 2D images (split it first)", path
            )
        if load:
            im.load()
            if exif_rotation(im):
                from PIL import ImageOps

                im = ImageOps.exif_transpose(
                    im
                )  # as viewers show it: a phone photo stored sideways is upright
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
            arr = (
                arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
                if arr.shape[-1] >= 3
                else arr[..., 0]
            )
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


def _read_tiff_image(path: Path) -> np.ndarray:
    raw = _read_tiff(path)
    return raw.astype(np.float32) * bit_depth_scale(raw)


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
    arr = arr * float(getattr(ds, "RescaleSlope", 1.0) or 1.0) + float(
        getattr(ds, "RescaleIntercept", 0.0) or 0.0
    )
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


def _png_info(spacing: tuple[float, float] | None):
    if spacing is None:
        return None
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(SPACING_KEY, f"{float(spacing[0]):.6g},{float(spacing[1]):.6g}")
    return info


def write_mask(
    path: str | Path,
    mask: np.ndarray,
    scale_binary: bool = True,
    *,
    spacing: tuple[float, float] | None = None,
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


def write_image(
    path: str | Path, image: np.ndarray, *, spacing: tuple[float, float] | None = None, compress_level: int = 6
) -> Path:
    """Write an 8-bit grey or RGB image atomically (format from the suffix; PNG by default).

    ``spacing`` is stored in PNG files only (see :func:`write_mask`). ``compress_level`` is zlib's
    (PNG only): prediction outputs use 1, which encodes a 512² RGB overlay about 4x faster than
    the default 6 for files of about the same size (overlays and soft maps compress poorly anyway).
    """
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        suffix_of(path), "PNG"
    )
    extra = {"pnginfo": _png_info(spacing), "compress_level": compress_level} if fmt == "PNG" else {}
    return write_with(path, lambda p: Image.fromarray(arr).save(p, format=fmt, **extra))
