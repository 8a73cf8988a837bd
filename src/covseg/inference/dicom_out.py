"""DICOM outputs for inputs that are DICOM series: a Segmentation object (DICOM SEG) and an RT
Structure Set (RTSTRUCT), so that a PACS viewer, 3D Slicer or a planning system takes a result in
beside the scan it came from.

Both reference the source series: its Study, its Frame of Reference UID and each source image
(SOP Instance UID), with one segment / ROI per class coded in SNOMED CT (:data:`CLASS_CODES`).
DICOM SEG is written with highdicom (the optional ``dicom`` extra, imported only here); the
RTSTRUCT with pydicom, following the RT Structure Set IOD: each slice's mask becomes closed planar
contours along the pixel edges (:func:`mask_contours`), so filling them (even-odd rule) gives the
mask back exactly. The label volume is in :func:`covseg.data.dicom.read_dicom_series`'s grid:
``(X = columns, Y = rows, Z = slices ordered along their normal)``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import numpy as np

from covseg.errors import CovsegError, DataError
from covseg.utils.atomic import write_with

#: the ``--output-type`` values; ``nifti`` (masks/ and probs/) is always written
OUTPUT_TYPES = ("nifti", "dicom-seg", "rtstruct")
#: output folder and file suffix of each DICOM output type
DICOM_OUTPUTS = {"dicom-seg": ("dicom_seg", ".seg.dcm"), "rtstruct": ("rtstruct", ".rtstruct.dcm")}
#: (code, coding scheme, meaning) of each class: SNOMED CT where it has the concept; ground-glass
#: opacity is DICOM's own code (CID 6104, as in pydicom's ``codes.DCM.GroundGlassOpacity``); any
#: other class is coded as a lesion (``codes.SCT.Lesion``)
CLASS_CODES = {
    "infection": ("52988006", "SCT", "Lesion"),
    "ground-glass opacity": ("112120", "DCM", "Ground glass opacity"),
    "consolidation": ("95436008", "SCT", "Lung consolidation"),
}
LESION_CODE = ("52988006", "SCT", "Lesion")
#: segmented property category of every segment (``codes.SCT.MorphologicallyAbnormalStructure``)
CATEGORY_CODE = ("49755003", "SCT", "Morphologically Abnormal Structure")
#: display colours (RGB) per class, as the overlays draw them
COLOURS = [(220, 50, 47), (38, 139, 210), (133, 153, 0), (211, 54, 130), (181, 137, 0)]
#: patient and study attributes a derived object copies from its source (type 2: present, may be empty)
TYPE2_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip
_HIGHDICOM_MISSING = "DICOM SEG output needs highdicom: pip install 'covseg[dicom]'"


def class_names(num_classes: int) -> list[str]:
    """Names of the foreground labels 1..K-1 of a model: ``infection`` for a binary model,
    ground-glass opacity and consolidation for a three-class one (the Inf-Net labelling)."""
    if num_classes <= 2:
        return ["infection"]
    if num_classes == 3:
        return ["ground-glass opacity", "consolidation"]
    return [f"class {k}" for k in range(1, num_classes)]


def check_output_types(types: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The DICOM types among ``--output-type`` values, refusing unknown ones (and ``dicom-seg``
    without highdicom) in one line before anything is predicted."""
    unknown = [t for t in types if t not in OUTPUT_TYPES]
    if unknown:
        raise CovsegError(f"--output-type {unknown[0]!r} must be one of {', '.join(OUTPUT_TYPES)}")
    if "dicom-seg" in types:
        try:
            import highdicom  # noqa: F401
        except ImportError:
            raise CovsegError(_HIGHDICOM_MISSING) from None
    return tuple(dict.fromkeys(t for t in types if t != "nifti"))


def source_headers(series: Path) -> list:
    """The series' headers (no pixels) in the label volume's slice order: along the slice normal,
    as :func:`covseg.data.dicom.read_dicom_series` orders them; each keeps its file in ``.filename``.
    A series without the UIDs a derived object must reference is refused in one line."""
    import pydicom

    from covseg.data.dicom import series_files

    files = series_files(series)
    if not files:
        raise DataError("no DICOM files in folder", series)
    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True, force=True))
        except Exception as exc:
            raise DataError(f"unreadable DICOM ({type(exc).__name__}: {exc})", f) from None
    for f, ds in zip(files, headers):
        for key in ("FrameOfReferenceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):  # fmt: skip
            if not str(getattr(ds, key, "") or "").strip():
                raise DataError(f"DICOM slice without {key}: a DICOM SEG or RTSTRUCT needs it", f)
    if len({str(ds.FrameOfReferenceUID) for ds in headers}) > 1:
        raise DataError("the series' slices name different Frames of Reference (FrameOfReferenceUID)", series)
    orient = np.array(headers[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orient[:3], orient[3:])
    return sorted(headers, key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)))


def slice_masks(labels: np.ndarray, headers: list) -> np.ndarray:
    """``(slices, rows, columns)`` label frames of a ``(X, Y, Z)`` volume, checked against the series."""
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)).astype(np.uint8))
    expected = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    if frames.shape != expected:
        raise DataError(f"mask grid {frames.shape} does not match the series' {expected} (slices, rows, columns)")
    return frames


def write_dicom_seg(series: Path, labels: np.ndarray, names: list[str], target: Path) -> Path:
    """Write ``labels`` (0 = background, k = ``names[k-1]``) as a binary DICOM SEG over ``series``."""
    try:
        import highdicom as hd
    except ImportError:
        raise CovsegError(_HIGHDICOM_MISSING) from None
    import pydicom

    headers = source_headers(series)
    frames = slice_masks(labels, headers)
    sources = [pydicom.dcmread(str(ds.filename), force=True) for ds in headers]
    for source in sources:  # anonymised series often drop these type-2 tags; the copies get them empty
        for key in TYPE2_TAGS:
            if key not in source:
                setattr(source, key, "")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="covseg", version=_version(), family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=name,
            segmented_property_category=hd.sr.CodedConcept(*CATEGORY_CODE),
            segmented_property_type=hd.sr.CodedConcept(*_code(name)),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(names, start=1)
    ]
    frames = np.where(frames <= len(names), frames, 0).astype(np.uint8)
    try:
        seg = _segmentation(hd, sources, frames, segments)
    except (AttributeError, TypeError, ValueError) as exc:  # a header highdicom cannot take
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DataError(f"cannot derive a DICOM SEG from this series ({type(exc).__name__}: {first})", series) from None
    return write_with(target, lambda p: seg.save_as(str(p)))


def _segmentation(hd, sources: list, frames: np.ndarray, segments: list):
    """highdicom's binary Segmentation of ``frames`` (one per source image), empty frames left out."""
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=_series_number(sources[0]),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="covseg",
        manufacturer_model_name="covseg",
        software_versions=_version(),
        device_serial_number="none",
        series_description="covseg segmentation",
    )


def write_rtstruct(series: Path, labels: np.ndarray, names: list[str], target: Path) -> Path:
    """Write ``labels`` as an RT Structure Set over ``series``: one ROI per class, closed planar
    contours per slice in patient coordinates (mm, LPS), each naming the image it lies on."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    headers = source_headers(series)
    frames = slice_masks(labels, headers)
    first = headers[0]
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = RTStructureSetStorage
    ds.SpecificCharacterSet = "ISO_IR 192"
    for key in (*TYPE2_TAGS, "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, key, getattr(first, key, ""))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), _series_number(first)
    ds.SeriesDescription, ds.OperatorsName, ds.Manufacturer = "covseg segmentation", "", "covseg"
    ds.SoftwareVersions = _version()
    ds.StructureSetLabel = "covseg"
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceNumber = 1

    def image_ref(image) -> Dataset:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
        return ref

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = Sequence([image_ref(h) for h in headers])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as the IOD asks)
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])
    ds.StructureSetROISequence, ds.ROIContourSequence, ds.RTROIObservationsSequence = Sequence(), Sequence(), Sequence()
    for k, name in enumerate(names, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = k, first.FrameOfReferenceUID, name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        ds.StructureSetROISequence.append(roi)
        contours = Sequence()
        for header, frame in zip(headers, frames):
            for loop in mask_contours(frame == k):
                contour = Dataset()
                contour.ContourImageSequence = Sequence([image_ref(header)])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                points = pixel_to_patient(loop, header)
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [f"{v:.4f}".rstrip("0").rstrip(".") for v in points.ravel()]
                contours.append(contour)
        item = Dataset()
        item.ROIDisplayColor = list(COLOURS[(k - 1) % len(COLOURS)])
        item.ReferencedROINumber = k
        if len(contours):
            item.ContourSequence = contours
        ds.ROIContourSequence.append(item)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = k, k
        observation.RTROIInterpretedType, observation.ROIInterpreter = "", ""
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _code(name)
        observation.RTROIIdentificationCodeSequence = Sequence([code])
        ds.RTROIObservationsSequence.append(observation)
    return write_with(target, lambda p: ds.save_as(str(p), enforce_file_format=True))


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed loops ``(n, 2)`` of (row, column) corner points along the pixel edges between
    foreground and background of a 2D mask; corners sit at half-pixel positions (pixel centres are
    integers, as DICOM places them). Filled with the even-odd rule they give the mask exactly; holes
    are loops of their own. Straight runs keep only their ends."""
    m = np.pad(mask.astype(bool), 1)
    fg = m[1:-1, 1:-1]
    r, c = np.nonzero(fg)
    edges = []  # (start corner, end corner), foreground on one fixed side
    for dr, dc, start, end in (
        (-1, 0, (0, 1), (0, 0)),  # top side, walked right to left
        (1, 0, (1, 0), (1, 1)),  # bottom side, left to right
        (0, -1, (0, 0), (1, 0)),  # left side, downwards
        (0, 1, (1, 1), (0, 1)),  # right side, upwards
    ):
        open_side = ~m[r + 1 + dr, c + 1 + dc]
        rr, cc = r[open_side], c[open_side]
        edges += zip(zip(rr + start[0], cc + start[1]), zip(rr + end[0], cc + end[1]))
    outgoing: dict[tuple, list[tuple]] = {}
    for a, b in edges:
        outgoing.setdefault((int(a[0]), int(a[1])), []).append((int(b[0]), int(b[1])))
    loops = []
    while outgoing:
        start = next(iter(outgoing))
        loop, here = [start], start
        while True:
            ends = outgoing[here]
            nxt = ends.pop()
            if not ends:
                del outgoing[here]
            if nxt == start:
                break
            loop.append(nxt)
            here = nxt
        loops.append(_corners_only(np.array(loop, dtype=np.float64)) - 0.5)
    return loops


def _corners_only(loop: np.ndarray) -> np.ndarray:
    """The loop without the points inside straight runs (where it does not turn)."""
    before, after = loop - np.roll(loop, 1, axis=0), np.roll(loop, -1, axis=0) - loop
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    return loop[turns]


def pixel_to_patient(points: np.ndarray, header) -> np.ndarray:
    """(row, column) positions on an image → patient coordinates (mm, LPS), ``(n, 3)``."""
    orient = np.array(header.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    origin = np.array(header.ImagePositionPatient, dtype=np.float64)
    return origin + np.outer(points[:, 1] * column_spacing, orient[:3]) + np.outer(points[:, 0] * row_spacing, orient[3:])


def require_dicom_series(path: Path, kinds: tuple[str, ...]) -> None:
    """Refuse, before predicting, an input a DICOM output cannot be derived from (not a series, or
    a series without the UIDs it must reference), so that no output of it is written."""
    from covseg.data.dicom import is_dicom_series

    if not is_dicom_series(path):
        raise DataError(f"--output-type {kinds[0]} needs a DICOM series (a folder of slices) as input", path)
    source_headers(path)


def write_case_outputs(
    series: Path, mask: Path, num_classes: int, kinds: tuple[str, ...], out_dir: Path, check: Callable[[Path], Path]
) -> dict[str, str]:
    """Write one series' DICOM outputs from its NIfTI ``mask`` (so they hold exactly its labels)
    into ``out_dir/dicom_seg/`` and ``out_dir/rtstruct/``; ``check(target)`` vets each
    target (an input is never overwritten). Returns the index columns ``dicom_seg`` / ``rtstruct``."""
    from covseg.data.imageio import read_volume, stem_of

    labels = read_volume(mask, check_finite=False)[0].round().astype(np.uint8)
    names = class_names(num_classes)
    writers = {"dicom-seg": write_dicom_seg, "rtstruct": write_rtstruct}
    row = {}
    for kind in kinds:
        folder, suffix = DICOM_OUTPUTS[kind]
        target = check(out_dir / folder / f"{stem_of(series)}{suffix}")
        row[folder] = str(writers[kind](series, labels, names, target))
    return row


def _code(name: str) -> tuple[str, str, str]:
    return CLASS_CODES.get(name, LESION_CODE)


def _series_number(source) -> int:
    """A series number beside the source's (its number + 1000, capped to the IS range)."""
    try:
        return min(int(source.SeriesNumber) + 1000, 2**31 - 1)
    except (AttributeError, TypeError, ValueError):
        return 1000


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("covseg")
    except PackageNotFoundError:
        return "unknown"
