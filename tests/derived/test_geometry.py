"""Series grids, their NIfTI form (dcm2niix's), and matching NIfTI images onto them."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converters.derived import (
    AdcResult,
    GeometryError,
    GeometryMismatchError,
    SeriesGeometry,
    conform_to_geometry,
    read_image_series,
)
from converters.derived.geometry import build_geometry
from tests.derived.helpers import DWI, write_classic_dwi


def test_nifti_form_is_dcm2niix(adc_pa: AdcResult, xa30_expected: Path) -> None:
    """Same affine and voxel order as dcm2niix's conversion of the same series."""
    reference = nib.load(xa30_expected / f"{DWI['PA']}.nii.gz")
    np.testing.assert_allclose(adc_pa.geometry.nifti_affine, reference.affine, atol=1e-3)
    data = np.asanyarray(reference.dataobj)
    assert data.shape[:3] == adc_pa.geometry.nifti_shape
    for volume in (0, 1, 20):
        assert np.array_equal(adc_pa.geometry.to_nifti(adc_pa.dwi[volume]), data[..., volume])


def test_nifti_round_trip_of_arrays(adc_pa: AdcResult) -> None:
    geometry = adc_pa.geometry
    assert np.array_equal(geometry.from_nifti(geometry.to_nifti(adc_pa.adc)), adc_pa.adc)


def test_affine_maps_voxels_to_frame_positions(adc_pa: AdcResult) -> None:
    geometry = adc_pa.geometry
    for k in (0, 17, 38):
        corner = geometry.affine @ np.array([k, 0, 0, 1.0])
        np.testing.assert_allclose(corner[:3], geometry.positions[k], atol=1e-6)
    assert geometry.voxel_size == pytest.approx((3.0, 3.0, 3.0))
    assert geometry.describe() == "72x72x39 voxels of 3x3x3 mm, LAS"


def _volume(geometry: SeriesGeometry) -> np.ndarray:
    return np.arange(np.prod(geometry.shape), dtype=np.int32).reshape(geometry.shape)


@pytest.mark.parametrize(
    "reorient",
    [
        pytest.param(lambda a, aff: (a, aff), id="same"),
        pytest.param(
            lambda a, aff: (
                np.flip(a, 0),
                aff @ np.array([[-1, 0, 0, a.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
            ),
            id="flip-i",
        ),
        pytest.param(
            lambda a, aff: (
                np.transpose(a, (2, 0, 1)),
                aff @ np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]]),
            ),
            id="permuted",
        ),
    ],
)
def test_conform_accepts_reordered_grids(adc_pa: AdcResult, reorient) -> None:
    """Any axis order / flip of the same voxel grid is reordered without interpolation."""
    geometry = adc_pa.geometry
    volume = _volume(geometry)
    data, affine = reorient(geometry.to_nifti(volume), geometry.nifti_affine)
    assert np.array_equal(conform_to_geometry(data, affine, geometry, what="labels", source_name="src"), volume)


def test_conform_refuses_wrong_shape(adc_pa: AdcResult) -> None:
    geometry = adc_pa.geometry
    data = np.zeros((64, 64, 30), dtype=np.uint8)
    with pytest.raises(GeometryMismatchError, match=r"shape 64x64x30 ≠ source 72x72x39"):
        conform_to_geometry(data, geometry.nifti_affine, geometry, what="labels", source_name="src")


def test_conform_refuses_wrong_orientation(adc_pa: AdcResult) -> None:
    geometry = adc_pa.geometry
    angle = np.deg2rad(10)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    data = geometry.to_nifti(_volume(geometry))
    with pytest.raises(GeometryMismatchError, match=r"orientation .* ≠ source LAS"):
        conform_to_geometry(data, rotation @ geometry.nifti_affine, geometry, what="labels", source_name="src")


def test_conform_refuses_shift_and_voxel_size(adc_pa: AdcResult) -> None:
    geometry = adc_pa.geometry
    data = geometry.to_nifti(_volume(geometry))
    shifted = geometry.nifti_affine.copy()
    shifted[:3, 3] += [1.5, 0, 0]
    with pytest.raises(GeometryMismatchError, match=r"grid shifted by \(1\.5, 0, 0\) mm"):
        conform_to_geometry(data, shifted, geometry, what="labels", source_name="src")
    scaled = geometry.nifti_affine @ np.diag([0.5, 0.5, 0.5, 1])
    with pytest.raises(GeometryMismatchError, match=r"voxel size 1\.5x1\.5x1\.5 mm ≠ source 3x3x3 mm"):
        conform_to_geometry(data, scaled, geometry, what="labels", source_name="src")


def test_within_tolerance_is_accepted(adc_pa: AdcResult) -> None:
    """float32 affines (as NIfTI stores them) still match."""
    geometry = adc_pa.geometry
    data = geometry.to_nifti(_volume(geometry))
    affine = geometry.nifti_affine.astype(np.float32).astype(np.float64)
    conform_to_geometry(data, affine, geometry, what="labels", source_name="src")


def test_missing_slice_is_a_geometry_error(tmp_path: Path) -> None:
    files = write_classic_dwi(tmp_path / "dwi", shape=(5, 6, 6), bvalues=(0.0,))
    (tmp_path / "dwi" / files[2].name).unlink()  # slice 3 of 5
    with pytest.raises(GeometryError, match="not evenly spaced"):
        read_image_series(tmp_path / "dwi")


def test_incomplete_volume_is_a_geometry_error(tmp_path: Path) -> None:
    files = write_classic_dwi(tmp_path / "dwi", shape=(3, 6, 6), bvalues=(0.0, 1000.0), directions=((1, 0, 0),))
    files[-1].unlink()  # last slice of the second volume
    with pytest.raises(GeometryError, match="unequal numbers of frames"):
        read_image_series(tmp_path / "dwi")


def test_varying_orientation_is_a_geometry_error() -> None:
    with pytest.raises(GeometryError, match="Orientation"):
        build_geometry(
            rows=4,
            columns=4,
            orientations=[[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]],
            positions=[[0, 0, 0], [0, 0, 1]],
            pixel_spacings=[[1, 1], [1, 1]],
            frame_of_reference_uid="1.2.3",
            slice_thickness=1.0,
            what="series 1",
        )
