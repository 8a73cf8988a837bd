"""How much a file decodes to, read from its header before a single pixel is allocated.

A 1 MB gzip-compressed NIfTI can declare gigabytes of voxels, and a small PNG or TIFF millions of
pixels. Code that takes files from someone else (``covseg app``'s uploads) checks the declared
size here first and refuses over a limit with one line naming the file, and inflates a ``.nii.gz``
only as far as its header's shape says (:func:`inflate_nifti`), so the decompressed byte count is
bounded as well.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

from covseg.errors import DataError

NIFTI1_HEADER_BYTES, NIFTI2_HEADER_BYTES = 348, 540
_CHUNK = 1 << 20


def _nifti_header(first: bytes, path: Path):
    """The NIfTI-1 or NIfTI-2 header at the start of ``first`` (raw bytes, at least the header)."""
    import nibabel as nib

    for cls, size in ((nib.Nifti2Header, NIFTI2_HEADER_BYTES), (nib.Nifti1Header, NIFTI1_HEADER_BYTES)):
        if len(first) >= size and cls.may_contain_header(first[:size]):
            try:
                return cls.from_fileobj(io.BytesIO(first[:size] + b"\0" * 4), check=False)
            except Exception as exc:
                raise DataError(f"unreadable NIfTI header ({type(exc).__name__}: {exc})", path) from None
    raise DataError("not a NIfTI file (no NIfTI-1 or NIfTI-2 header at its start)", path)


def nifti_declared(first: bytes, path: Path) -> tuple[tuple[int, ...], int, int]:
    """``(shape, bytes per voxel, data offset)`` that a NIfTI header (``first``: the file's first bytes) declares."""
    header = _nifti_header(first, path)
    try:
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = int(header.get_data_dtype().itemsize)
        offset = int(header.get_data_offset())
    except Exception as exc:
        raise DataError(f"unreadable NIfTI header ({type(exc).__name__}: {exc})", path) from None
    if any(n < 0 for n in shape):
        raise DataError(f"NIfTI header declares a negative dimension {shape}", path)
    minimum = NIFTI2_HEADER_BYTES if len(header.binaryblock) == NIFTI2_HEADER_BYTES else NIFTI1_HEADER_BYTES
    return shape, itemsize, max(offset, minimum + 4)


def _refuse_over(count: int, shape: tuple[int, ...], limit: int, what: str, path: Path) -> None:
    if count > limit:
        dims = "×".join(str(n) for n in shape)
        raise DataError(f"{what} of {dims} = {count:,} values is over this limit of {limit:,} (refused before decoding it)", path)


def check_nifti(path: str | Path, max_voxels: int) -> None:
    """Refuse an uncompressed ``.nii`` whose header declares more than ``max_voxels`` voxels."""
    path = Path(path)
    with open(path, "rb") as f:
        first = f.read(NIFTI2_HEADER_BYTES)
    shape, _, _ = nifti_declared(first, path)
    _refuse_over(math.prod(shape), shape, max_voxels, "volume", path)


def inflate_nifti(src: str | Path, dst: str | Path, max_voxels: int, name: str | Path | None = None) -> Path:
    """Decompress the ``.nii.gz`` ``src`` to the ``.nii`` ``dst``, reading its header first.

    Refuses (one line naming ``name``, default ``src``) a header declaring more than ``max_voxels``
    voxels before anything else is decompressed, and stops after the bytes the header accounts for
    (offset + shape × voxel size), so trailing data cannot inflate without bound either.
    """
    src, dst = Path(src), Path(dst)
    shown = Path(name) if name is not None else src
    try:
        with gzip.open(src, "rb") as gz, open(dst, "wb") as out:
            first = gz.read(NIFTI2_HEADER_BYTES)
            shape, itemsize, offset = nifti_declared(first, shown)
            _refuse_over(math.prod(shape), shape, max_voxels, "volume", shown)
            budget = offset + math.prod(shape) * itemsize - len(first)
            out.write(first)
            while budget > 0:
                chunk = gz.read(min(_CHUNK, budget))
                if not chunk:
                    break
                out.write(chunk)
                budget -= len(chunk)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"unreadable gzip-compressed NIfTI ({type(exc).__name__}: {exc})", shown) from None
    return dst


def check_image_pixels(path: str | Path, max_pixels: int, name: str | Path | None = None) -> None:
    """Refuse a 2D image (PNG/JPEG/BMP/TIFF/DICOM/.npy) whose header declares more than ``max_pixels`` values."""
    path = Path(path)
    shown = Path(name) if name is not None else path
    shape, count = _image_size(path, shown)
    _refuse_over(count, shape, max_pixels, "image", shown)


def _image_size(path: Path, shown: Path) -> tuple[tuple[int, ...], int]:
    """The declared shape of an image file and its number of values (every page or frame counted)."""
    from covseg.data.imageio import suffix_of

    suffix = suffix_of(path)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(str(path)) as tif:
                shapes = [tuple(int(n) for n in page.shape) for page in tif.pages]
            return (len(shapes), *(shapes[0] if shapes else ())), sum(math.prod(s) for s in shapes)
        if suffix == ".dcm":
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
            dims = (ds.get("NumberOfFrames", 1) or 1, ds.get("Rows", 0) or 0, ds.get("Columns", 0) or 0, ds.get("SamplesPerPixel", 1) or 1)
            shape = tuple(int(n) for n in dims)
        elif suffix == ".npy":
            import numpy as np

            with open(path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape = tuple(int(n) for n in reader(f)[0])  # the header only, no data
        else:
            import warnings

            from PIL import Image

            with warnings.catch_warnings():  # our limit speaks for itself; Pillow's own (larger) one still raises
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:  # reads the header; pixels are decoded only by load()
                    shape = (int(im.size[1]), int(im.size[0]), len(im.getbands()))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"unreadable image ({type(exc).__name__}: {exc})", shown) from None
    return shape, math.prod(shape)
