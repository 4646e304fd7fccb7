"""Segmentations: the ADC mask, NIfTI label maps (BINARY and LABELMAP), exact round trips, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from converters.derived import (
    AdcResult,
    EmptyMaskError,
    GeometryMismatchError,
    LabelTableError,
    derive_seg,
    encode_segmentation,
    read_label_table,
    read_segmentation,
    write_nifti_labels,
)
from tests.derived.helpers import DWI, dciodvfy


def _label_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """Non-contiguous labels 2, 5 and 300 (> 255) in three boxes."""
    labels = np.zeros(shape, dtype=np.int16)
    labels[10:20, 20:40, 20:40] = 5
    labels[20:25, 30:50, 30:50] = 2
    labels[30, 10, 10:14] = 300
    return labels


@pytest.fixture
def label_nifti(adc_pa: AdcResult, tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A label map on series 10's grid, written like dcm2niix orders it, with a JSON table."""
    labels = _label_volume(adc_pa.geometry.shape)
    path = tmp_path / "lesions.nii.gz"
    nib.save(nib.Nifti1Image(adc_pa.geometry.to_nifti(labels), adc_pa.geometry.nifti_affine), path)
    table = tmp_path / "lesions.json"
    table.write_text(json.dumps({"2": "edema", "5": {"name": "tumor", "type": "SCT:108369006:Neoplasm"}, "300": "x"}))
    return path, table, labels


def test_mask_seg_is_valid_and_exact(pa_outputs: dict[str, Path], adc_pa: AdcResult) -> None:
    result = dciodvfy(pa_outputs["seg"])
    print("\n".join(["SEG warnings:", *result.warnings]))
    assert result.errors == []
    seg = hd.seg.segread(pa_outputs["seg"])
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == adc_pa.series.datasets[0].FrameOfReferenceUID
    assert seg.get_segment_description(1).segment_label == "ADC signal mask"
    data = read_segmentation(pa_outputs["seg"])
    assert np.array_equal(data.labels.astype(bool), adc_pa.mask)
    assert data.geometry.same_grid(adc_pa.geometry)


def test_nifti_to_seg_to_nifti_is_voxel_exact(
    label_nifti: tuple[Path, Path, np.ndarray], adc_pa: AdcResult, xa30: Path, tmp_path: Path
) -> None:
    path, table, labels = label_nifti
    seg_path = derive_seg(path, xa30 / DWI["PA"], tmp_path / "out", table)
    assert seg_path == tmp_path / "out" / "lesions_seg.dcm"
    validation = dciodvfy(seg_path)
    assert validation.errors == []
    seg = hd.seg.segread(seg_path)
    assert [d.segment_number for d in seg.SegmentSequence] == [1, 2, 3]  # renumbered from 2, 5, 300
    assert seg.SegmentSequence[0].SegmentDescription.startswith("Label value 2 in the source label map")
    data = read_segmentation(seg_path)
    assert data.segment_values == {1: 2, 2: 5, 3: 300}
    assert np.array_equal(data.labels, labels)
    nifti, tsv = write_nifti_labels(data, tmp_path / "back_dseg.nii.gz")
    image = nib.load(nifti)
    assert np.array_equal(np.asanyarray(image.dataobj), np.asanyarray(nib.load(path).dataobj))
    np.testing.assert_allclose(image.affine, nib.load(path).affine, atol=1e-4)
    assert tsv.name == "back_dseg.tsv"
    back = read_label_table(tsv)
    assert [(label.value, label.name) for label in back.labels] == [(2, "edema"), (5, "tumor"), (300, "x")]
    assert data.table[5].type.value == "108369006"


def test_labelmap_type(label_nifti: tuple[Path, Path, np.ndarray], xa30: Path, tmp_path: Path) -> None:
    path, table, labels = label_nifti
    seg_path = derive_seg(path, xa30 / DWI["PA"], tmp_path, table, segmentation_type="LABELMAP")
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "LABELMAP"
    assert np.array_equal(read_segmentation(seg_path).labels, labels)


def test_label_map_from_dcm2niix_conversion(adc_pa: AdcResult, xa30: Path, xa30_expected: Path, tmp_path: Path) -> None:
    """Labels drawn on the BIDS (dcm2niix) image of the series fit its DICOM grid as they are."""
    reference = nib.load(xa30_expected / f"{DWI['PA']}.nii.gz")
    labels = np.zeros(reference.shape[:3], dtype=np.uint8)
    labels[30:40, 20:30, 15:20] = 1
    path = tmp_path / "drawn.nii"
    nib.save(nib.Nifti1Image(labels, reference.affine), path)
    data = read_segmentation(derive_seg(path, xa30 / DWI["PA"], tmp_path))
    assert np.array_equal(adc_pa.geometry.to_nifti(data.labels), labels)
    assert data.table[1].name == "label 1"  # default table


def test_reoriented_label_map_is_accepted(adc_pa: AdcResult, xa30: Path, tmp_path: Path) -> None:
    labels = _label_volume(adc_pa.geometry.shape)
    data = adc_pa.geometry.to_nifti(labels)
    flip = np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    path = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(np.flip(data, 0).copy(), adc_pa.geometry.nifti_affine @ flip), path)
    assert np.array_equal(read_segmentation(derive_seg(path, xa30 / DWI["PA"], tmp_path / "o")).labels, labels)


def test_wrong_size_is_refused_and_nothing_written(adc_pa: AdcResult, xa30: Path, tmp_path: Path) -> None:
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 30), np.uint8), adc_pa.geometry.nifti_affine), path)
    out = tmp_path / "out"
    with pytest.raises(GeometryMismatchError, match=r"label map small\.nii\.gz .* shape 64x64x30 ≠ source 72x72x39"):
        derive_seg(path, xa30 / DWI["PA"], out)
    assert not out.exists() or list(out.iterdir()) == []


def test_wrong_orientation_is_refused(adc_pa: AdcResult, xa30: Path, tmp_path: Path) -> None:
    data = np.ones((72, 72, 39), np.uint8)
    oblique = np.eye(4)
    oblique[1:3, 1:3] = [[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]
    nib.save(nib.Nifti1Image(data, oblique @ adc_pa.geometry.nifti_affine), tmp_path / "oblique.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"orientation .* \(axes not parallel to the source's\) ≠ "):
        derive_seg(tmp_path / "oblique.nii.gz", xa30 / DWI["PA"], tmp_path / "out")
    # Sagittal slices of the same box: the axes are the source's, but 72x72x39 does not fit them.
    swap = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(data, swap @ adc_pa.geometry.nifti_affine), tmp_path / "sagittal.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"shape 72x72x39 \(39x72x72 in the source's axis order\)"):
        derive_seg(tmp_path / "sagittal.nii.gz", xa30 / DWI["PA"], tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_value_missing_from_table(label_nifti: tuple[Path, Path, np.ndarray], xa30: Path, tmp_path: Path) -> None:
    path, table, _ = label_nifti
    table.write_text(json.dumps({"2": "edema", "5": "tumor"}))
    with pytest.raises(LabelTableError, match=r"holds label value\(s\) 300 that the label table does not name"):
        derive_seg(path, xa30 / DWI["PA"], tmp_path / "out", table)


def test_empty_label_map(adc_pa: AdcResult) -> None:
    with pytest.raises(EmptyMaskError, match="no labelled voxel"):
        encode_segmentation(np.zeros(adc_pa.geometry.shape, np.uint8), adc_pa.series)


def test_non_integer_label_map(adc_pa: AdcResult, xa30: Path, tmp_path: Path) -> None:
    path = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(np.full((72, 72, 39), 0.5, np.float32), adc_pa.geometry.nifti_affine), path)
    with pytest.raises(ValueError, match="non-integer values"):
        derive_seg(path, xa30 / DWI["PA"], tmp_path / "out")


def test_sparse_seg_reads_with_source_geometry(adc_pa: AdcResult, tmp_path: Path) -> None:
    """A SEG that omits empty frames (as other tools write them) reads back given the source grid."""
    labels = _label_volume(adc_pa.geometry.shape)
    full = tmp_path / "full.dcm"
    encode_segmentation(labels, adc_pa.series).save_as(full, enforce_file_format=True)
    ds = pydicom.dcmread(full)
    frames = ds.pixel_array
    keep = [i for i in range(len(frames)) if frames[i].any()]
    ds.PerFrameFunctionalGroupsSequence = [ds.PerFrameFunctionalGroupsSequence[i] for i in keep]
    ds.NumberOfFrames = len(keep)
    ds.PixelData = pydicom.pixels.pack_bits(frames[keep])
    sparse = tmp_path / "sparse.dcm"
    ds.save_as(sparse)
    assert len(keep) < len(frames)
    with pytest.raises(ValueError, match=r"not evenly spaced|unequal numbers of frames"):
        read_segmentation(sparse)  # without the grid its frames do not span one
    assert np.array_equal(read_segmentation(sparse, geometry=adc_pa.geometry).labels, labels)


@pytest.mark.parametrize(
    ("segmentation_type", "transfer_syntax"),
    [
        ("BINARY", ExplicitVRLittleEndian),
        ("BINARY", ImplicitVRLittleEndian),
        ("LABELMAP", ExplicitVRLittleEndian),
        ("LABELMAP", RLELossless),
    ],
)
def test_round_trip_per_type_and_transfer_syntax(
    adc_pa: AdcResult, tmp_path: Path, segmentation_type: str, transfer_syntax: str
) -> None:
    labels = _label_volume(adc_pa.geometry.shape)
    path = tmp_path / "seg.dcm"
    seg = encode_segmentation(
        labels, adc_pa.series, segmentation_type=segmentation_type, transfer_syntax_uid=transfer_syntax
    )
    seg.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == transfer_syntax
    if segmentation_type == "BINARY":  # this dicom3tools does not know the Label Map SEG IOD yet
        assert dciodvfy(path).errors == []
    assert hd.seg.segread(path).SegmentationType == segmentation_type
    assert np.array_equal(read_segmentation(path).labels, labels)
