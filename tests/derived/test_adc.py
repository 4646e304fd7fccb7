"""ADC computation: agreement with the scanner's own ADC, the method, and the input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from converters.derived import (
    AdcResult,
    DiffusionInfoError,
    EmptyMaskError,
    MissingB0Error,
    compute_adc,
    read_image_series,
)
from converters.derived.adc import diffusion_encoding
from converters.derived.series import SeriesFrame
from tests.derived.helpers import DWI, SCANNER_ADC, T1W, series_volume, synthetic_adc, write_classic_dwi


@pytest.mark.parametrize("direction", ["PA", "AP"])
def test_agrees_with_scanner_adc(direction: str, xa30: Path, request: pytest.FixtureRequest) -> None:
    """Inside the head our ADC matches the scanner's ADC series of the same acquisition.

    "Inside the head": voxels whose b = 0 signal exceeds 10 % of its 99th percentile (well above
    the background noise), where the scanner's map has a value (> 0) and ours too (mask).
    The scanner stores ADC as integers in 10⁻⁶ mm²/s (Rescale Slope 1), i.e. µm²/s like ours.
    """
    result: AdcResult = request.getfixturevalue(f"adc_{direction.lower()}")
    scanner = read_image_series(xa30 / SCANNER_ADC[direction])
    assert scanner.geometry.same_grid(result.geometry)
    reference = series_volume(scanner)
    b0 = result.dwi[0]
    head = (b0 > 0.1 * np.percentile(b0, 99)) & (reference > 0) & result.mask
    assert head.sum() > 50_000  # most of a 72x72x39 head volume
    ours, theirs = result.adc[head].astype(np.float64), reference[head]
    pearson = float(np.corrcoef(ours, theirs)[0, 1])
    median_relative = float(np.median(np.abs(ours - theirs) / theirs))
    print(f"{direction}: {int(head.sum())} voxels, r = {pearson:.6f}, median |rel diff| = {median_relative:.4%}")
    assert pearson >= 0.99
    assert median_relative <= 0.01


def test_result_is_float32_um2_per_s_with_mask(adc_pa: AdcResult) -> None:
    assert adc_pa.adc.dtype == np.float32
    assert adc_pa.adc.shape == adc_pa.mask.shape == adc_pa.geometry.shape == (39, 72, 72)
    assert np.all(adc_pa.adc[~adc_pa.mask] == 0)
    inside = adc_pa.adc[adc_pa.mask]
    assert 500 < float(np.median(inside)) < 1200  # brain tissue, µm²/s
    assert adc_pa.bvalues == (0.0, 2500.0)
    assert adc_pa.volumes_per_shell == (1, 20)
    assert adc_pa.method == "two-point"
    assert adc_pa.dwi.shape == (21, 39, 72, 72)
    assert adc_pa.encodings[0].bvalue == 0 and adc_pa.encodings[0].origin == "MR Diffusion functional group"
    assert all(e.direction is not None for e in adc_pa.encodings[1:])


def test_two_point_formula_on_geometric_mean_trace(adc_pa: AdcResult) -> None:
    """Independent re-computation of the documented method on the 4D volume."""
    dwi = adc_pa.dwi.astype(np.float64)
    trace = np.exp(np.log(np.where(dwi[1:] > 0, dwi[1:], 1)).mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.log(dwi[0] / trace) / 2500.0 * 1e6
    mask = adc_pa.mask
    np.testing.assert_allclose(adc_pa.adc[mask], expected[mask], rtol=1e-5, atol=1e-2)
    threshold = 0.05 * np.percentile(dwi[0], 99)
    assert np.array_equal(mask, (dwi[0] > threshold) & np.all(dwi > 0, axis=0))


@pytest.mark.parametrize("vendor_fields", [False, True], ids=["standard", "siemens-private"])
def test_classic_series_least_squares(tmp_path: Path, vendor_fields: bool) -> None:
    """Classic single-frame DWI, three shells: log-linear least squares recovers the known ADC."""
    write_classic_dwi(tmp_path / "dwi", vendor_fields=vendor_fields)
    result = compute_adc(tmp_path / "dwi")
    expected = synthetic_adc(result.geometry.shape)
    assert result.method == "least-squares"
    assert result.bvalues == (0.0, 500.0, 1000.0)
    assert result.volumes_per_shell == (1, 3, 3)
    assert np.array_equal(result.mask, expected > 0)
    np.testing.assert_allclose(result.adc[result.mask], expected[expected > 0], atol=0.2)  # uint16 rounding
    origin = "Siemens private (0019,xx0C)" if vendor_fields else "Diffusion b-value (0018,9087)"
    assert result.encodings[-1].origin == origin


def test_no_diffusion_information(xa30: Path) -> None:
    with pytest.raises(DiffusionInfoError, match=r'series 5 "anat-T1w_acq-tfl" has no diffusion information'):
        compute_adc(xa30 / T1W)


def test_no_b0(xa30: Path) -> None:
    files = sorted((xa30 / DWI["PA"]).iterdir())[1:]  # the first file is the b = 0 volume
    with pytest.raises(MissingB0Error, match=r"series 10 .* has no b = 0 volume \(lowest b-value 2500"):
        compute_adc(files)


def test_no_diffusion_weighting(xa30: Path) -> None:
    files = sorted((xa30 / DWI["PA"]).iterdir())[:1]
    with pytest.raises(MissingB0Error, match="no diffusion-weighted volume"):
        compute_adc(files)


def test_empty_mask(tmp_path: Path) -> None:
    write_classic_dwi(tmp_path / "dwi", s0=0.0)
    with pytest.raises(EmptyMaskError, match="no voxel has signal"):
        compute_adc(tmp_path / "dwi")


def test_errors_are_value_errors(xa30: Path) -> None:
    """Callers may catch the built-in too."""
    with pytest.raises(ValueError):
        compute_adc(xa30 / T1W)


@pytest.mark.parametrize(
    ("creator", "group", "b_element", "b_value", "direction_elements"),
    [
        ("SIEMENS MR HEADER", 0x0019, 0x0C, b"1000", [(0x0019, "SIEMENS MR HEADER", 0x0E, np.array([0, 0.6, 0.8]))]),
        (
            "GEMS_PARM_01",
            0x0043,
            0x39,
            b"1000001000\\8\\0\\0",  # GE adds 1e9 to some b-values
            [(0x0019, "GEMS_ACQU_01", e, np.array([v])) for e, v in ((0xBB, 0.0), (0xBC, 0.6), (0xBD, 0.8))],
        ),
        (
            "Philips Imaging DD 001",
            0x2001,
            0x03,
            np.array([1000.0], "<f4").tobytes(),
            [
                (0x2005, "Philips MR Imaging DD 001", e, np.array([v], "<f4"))
                for e, v in ((0xB0, 0.0), (0xB1, 0.6), (0xB2, 0.8))
            ],
        ),
    ],
    ids=["siemens", "ge", "philips"],
)
def test_vendor_fields_as_unknown_vr(creator, group, b_element, b_value, direction_elements) -> None:
    """Private diffusion fields read as raw bytes (VR UN, e.g. implicit VR files) still parse."""
    ds = Dataset()
    ds.private_block(group, creator, create=True).add_new(b_element, "UN", b_value)
    for g, c, element, values in direction_elements:
        ds.private_block(g, c, create=True).add_new(element, "UN", values.tobytes())
    encoding = diffusion_encoding(SeriesFrame(0, None, 0, (ds,), (0, 0, 0, 0)))
    assert encoding is not None
    assert encoding.bvalue == pytest.approx(1000.0)
    assert encoding.direction == pytest.approx((0.0, 0.6, 0.8), abs=1e-6)
