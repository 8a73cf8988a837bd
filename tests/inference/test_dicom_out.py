"""DICOM SEG and RT Structure Set outputs (issue 28): each is read back with pydicom/highdicom and
re-rasterised onto the source series' grid, where it must match the NIfTI mask."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from covseg.errors import CovsegError, DataError
from covseg.inference import dicom_out

from tests.data.test_imageio import write_dicom_series
from tests.inference.test_lungs_only import dense_marker_run

SHAPE = (40, 36, 6)  # X (columns), Y (rows), Z (slices)
AFFINE = np.array([[-0.7, 0, 0, 20.0], [0, -0.8, 0, 15.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def ct_series(folder: Path, volume: np.ndarray | None = None, affine: np.ndarray = AFFINE, frame_of_reference: bool = True) -> Path:
    """A small CT series (HU ``volume``, X × Y × Z) with the patient, study and frame-of-reference
    tags real scanners write."""
    volume = np.full(SHAPE, -800.0, np.float32) if volume is None else volume
    write_dicom_series(folder, np.clip(volume, -1024, 2000).astype(np.int16), affine, seed=3)
    frame, study = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        if frame_of_reference:
            ds.FrameOfReferenceUID = frame
        ds.StudyInstanceUID = study
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Phantom", "P-42", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "", ""
        ds.SeriesNumber = 3
        ds.save_as(f, enforce_file_format=True)
    return folder


def smooth_labels() -> np.ndarray:
    """Ground-glass ellipsoid (1) holding a consolidation ball (2), a ring with a hole on one slice,
    and two pixels touching only at a corner (the tracer's ambiguous case)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in SHAPE), indexing="ij")
    labels = np.zeros(SHAPE, np.uint8)
    labels[((x - 14) / 9) ** 2 + ((y - 17) / 7) ** 2 + ((z - 2.5) / 2.2) ** 2 <= 1] = 1
    labels[((x - 13) / 3.5) ** 2 + ((y - 16) / 3.5) ** 2 + ((z - 2.5) / 1.5) ** 2 <= 1] = 2
    ring = (np.hypot(x[:, :, 0] - 31, y[:, :, 0] - 10) <= 5) & (np.hypot(x[:, :, 0] - 31, y[:, :, 0] - 10) > 2)
    labels[:, :, 5][ring] = 1
    labels[36, 30, 4] = labels[37, 31, 4] = 2
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def sorted_uids(series: Path) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in dicom_out.source_headers(series)]


def seg_labels(path: Path, series: Path) -> np.ndarray:
    """A DICOM SEG re-rasterised onto the series' (X, Y, Z) grid with highdicom."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=sorted_uids(series), combine_segments=True, skip_overlap_checks=True
    )
    return np.transpose(np.asarray(frames), (2, 1, 0)).astype(np.uint8)


def rtstruct_labels(path: Path, series: Path) -> np.ndarray:
    """An RTSTRUCT's contours filled (even-odd, at pixel centres) onto the series' grid, each
    contour on the slice its ContourImageSequence names."""
    from matplotlib.path import Path as Polygon

    ds = pydicom.dcmread(path)
    headers = dicom_out.source_headers(series)
    slice_of = {str(h.SOPInstanceUID): k for k, h in enumerate(headers)}
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    centres = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2).astype(float)
    labels = np.zeros((len(headers), rows, cols), np.uint8)
    for item in ds.ROIContourSequence:
        k = int(item.ReferencedROINumber)
        inside = np.zeros_like(labels, dtype=bool)
        for contour in getattr(item, "ContourSequence", []):
            z = slice_of[str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)]
            h = headers[z]
            points = np.array(contour.ContourData, dtype=float).reshape(-1, 3) - np.array(h.ImagePositionPatient, float)
            orient = np.array(h.ImageOrientationPatient, float)
            assert np.allclose(points @ np.cross(orient[:3], orient[3:]), 0, atol=1e-3)  # on that slice's plane
            col = points @ orient[:3] / float(h.PixelSpacing[1])
            row = points @ orient[3:] / float(h.PixelSpacing[0])
            filled = Polygon(np.stack([row, col], -1)).contains_points(centres).reshape(rows, cols)
            inside[z] ^= filled
        labels[inside] = k
    return np.transpose(labels, (2, 1, 0))


def test_dicom_seg_reads_back_as_the_mask_with_coded_segments(tmp_path):
    """highdicom reads the SEG back: same Frame of Reference and study, every source image
    referenced, one SNOMED-coded segment per class, and exactly the mask on the series' grid."""
    import highdicom as hd

    series = ct_series(tmp_path / "series")
    labels = smooth_labels()
    names = dicom_out.class_names(3)
    out = dicom_out.write_dicom_seg(series, labels, names, tmp_path / "out" / "case.seg.dcm")
    seg = hd.seg.segread(str(out))
    source = dicom_out.source_headers(series)[0]
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == "P-42"
    referenced = {str(ref.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for ref in s.ReferencedInstanceSequence}
    assert referenced == set(sorted_uids(series))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    described = [(d.SegmentLabel, d.SegmentedPropertyTypeCodeSequence[0].CodeValue, d.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) for d in seg.SegmentSequence]
    assert described == [("ground-glass opacity", "112120", "DCM"), ("consolidation", "95436008", "SCT")]
    back = seg_labels(out, series)
    assert back.shape == SHAPE
    for k in (1, 2):
        assert dice(back == k, labels == k) >= 0.99
    assert np.array_equal(back, labels)


def test_rtstruct_contours_rasterise_back_to_the_mask(tmp_path):
    """pydicom reads the RTSTRUCT back; its closed planar contours, filled on the slices they name,
    give the mask (a ring's hole and corner-touching pixels included); ROIs are named and coded."""
    series = ct_series(tmp_path / "series")
    labels = smooth_labels()
    out = dicom_out.write_rtstruct(series, labels, dicom_out.class_names(3), tmp_path / "case.rtstruct.dcm")
    ds = pydicom.dcmread(out)
    source = dicom_out.source_headers(series)[0]
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == pydicom.uid.RTStructureSetStorage
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == source.FrameOfReferenceUID
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == source.StudyInstanceUID
    images = study.RTReferencedSeriesSequence[0].ContourImageSequence
    assert [str(i.ReferencedSOPInstanceUID) for i in images] == sorted_uids(series)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["ground-glass opacity", "consolidation"]
    assert [o.RTROIIdentificationCodeSequence[0].CodeValue for o in ds.RTROIObservationsSequence] == ["112120", "95436008"]
    back = rtstruct_labels(out, series)
    for k in (1, 2):
        assert dice(back == k, labels == k) >= 0.99
    assert np.array_equal(back, labels)


def test_mask_contours_keep_only_corners_and_fill_back_exactly():
    """A 3×2 rectangle is one loop of its 4 corners at half-pixel positions; a ring is two loops."""
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:4] = True
    (loop,) = dicom_out.mask_contours(mask)
    assert sorted(map(tuple, loop)) == [(0.5, 1.5), (0.5, 3.5), (3.5, 1.5), (3.5, 3.5)]
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert len(dicom_out.mask_contours(ring)) == 2
    assert dicom_out.mask_contours(np.zeros((4, 4), bool)) == []


def test_series_without_frame_of_reference_is_refused_in_one_line(tmp_path):
    series = ct_series(tmp_path / "series", frame_of_reference=False)
    with pytest.raises(DataError, match="without FrameOfReferenceUID") as err:
        dicom_out.write_rtstruct(series, smooth_labels(), ["infection"], tmp_path / "x.dcm")
    assert err.value.path and Path(err.value.path).parent == series
    assert not (tmp_path / "x.dcm").exists()


def test_anonymised_series_without_patient_tags_still_gets_both_objects(tmp_path):
    """Anonymisers drop type-2 patient/study tags (highdicom then failed with AttributeError): the
    objects carry them empty, and still hold the mask; the input files are left as they were."""
    series = tmp_path / "bare"
    write_dicom_series(series, np.zeros(SHAPE, np.int16), AFFINE)
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.save_as(f, enforce_file_format=True)
    before = {f.name: f.read_bytes() for f in series.iterdir()}
    labels = smooth_labels()
    seg = dicom_out.write_dicom_seg(series, labels, dicom_out.class_names(3), tmp_path / "a.seg.dcm")
    rt = dicom_out.write_rtstruct(series, labels, dicom_out.class_names(3), tmp_path / "a.rtstruct.dcm")
    assert pydicom.dcmread(seg).PatientID == "" and pydicom.dcmread(rt).PatientID == ""
    assert np.array_equal(seg_labels(seg, series), labels) and np.array_equal(rtstruct_labels(rt, series), labels)
    assert {f.name: f.read_bytes() for f in series.iterdir()} == before


def test_dicom_seg_without_highdicom_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(CovsegError, match=r"covseg\[dicom\]"):
        dicom_out.check_output_types(["dicom-seg"])
    assert dicom_out.check_output_types(["nifti", "rtstruct"]) == ("rtstruct",)  # RTSTRUCT needs pydicom only
    with pytest.raises(CovsegError, match="must be one of nifti, dicom-seg, rtstruct"):
        dicom_out.check_output_types(["dicom"])


def test_predict_cli_writes_dicom_seg_and_rtstruct_matching_the_nifti_mask(tmp_path):
    """``covseg predict --output-type dicom-seg --output-type rtstruct`` (a model marking dense voxels) on a folder holding a DICOM
    series and a NIfTI file: the series gets both objects (each re-rasterising to its NIfTI mask,
    listed in predictions.csv); the NIfTI file, which no DICOM object can reference, and a
    series without a Frame of Reference are listed as failed before anything of theirs is written,
    and the batch goes on."""
    from typer.testing import CliRunner

    from covseg.cli.main import app
    from covseg.data.synthetic3d import make_phantom_volume
    from covseg.utils.outputs import read_csv

    inputs = tmp_path / "in"
    phantom = make_phantom_volume(seed=1, shape=(64, 64, 6), spacing=(5.0, 5.0, 8.0))
    volume = np.asarray(phantom.image, np.float32)
    volume[20:30, 24:34, 2:4] = 300.0  # a dense block: what the marker model segments (no trained model's taste decides)
    affine = np.diag([-5.0, -5.0, 8.0, 1.0])
    series = ct_series(inputs / "series", volume, affine)
    ct_series(inputs / "unreferenced", volume, affine, frame_of_reference=False)
    nib.save(nib.Nifti1Image(volume, affine), inputs / "scan.nii.gz")
    out = tmp_path / "out"
    model = dense_marker_run(tmp_path / "marker")  # marks voxels denser than ~100 HU
    args = ["predict", "-m", str(model), "-i", str(inputs), "-o", str(out), "--no-overlays", "--no-probs", "-q"]
    result = CliRunner().invoke(app, [*args, "--output-type", "dicom-seg", "--output-type", "rtstruct"])
    assert result.exit_code == 1, result.output  # the NIfTI input failed, the series did not
    failed = sorted((out / "failed.txt").read_text().splitlines())
    assert len(failed) == 2, failed
    assert failed[0].startswith(str(inputs / "scan.nii.gz") + ": ") and "needs a DICOM series" in failed[0]
    assert failed[1].startswith(str(inputs / "unreferenced")) and "without FrameOfReferenceUID" in failed[1]
    mask = np.asarray(nib.load(out / "masks" / "series.nii.gz").dataobj).astype(np.uint8)
    assert mask[20:30, 24:34, 2:4].all() and mask.sum() >= 200, "the dense block should be segmented"
    seg, rt = out / "dicom_seg" / "series.seg.dcm", out / "rtstruct" / "series.rtstruct.dcm"
    assert dice(seg_labels(seg, series) > 0, mask > 0) >= 0.99
    assert dice(rtstruct_labels(rt, series) > 0, mask > 0) >= 0.99
    (row,) = read_csv(out / "predictions.csv")
    assert Path(row["dicom_seg"]) == seg and Path(row["rtstruct"]) == rt
    for refused in ("scan", "unreferenced"):  # refused before predicting: no output of theirs
        assert not (out / "masks" / f"{refused}.nii.gz").exists()

