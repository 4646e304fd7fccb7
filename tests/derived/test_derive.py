"""The offline entry points: complete outputs on success, nothing left behind on failure."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from converters.derived import (
    AdcResult,
    DiffusionInfoError,
    MissingB0Error,
    derive_adc,
    derive_sr,
    read_label_table,
    read_parametric_map,
    read_segmentation,
)
from tests.derived.helpers import DWI, T1W, dciodvfy


@pytest.fixture(scope="module")
def adc_outputs(xa30: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return derive_adc(xa30 / DWI["AP"], tmp_path_factory.mktemp("derive") / "out")


def test_derive_adc_writes_all_outputs(adc_outputs: list[Path], adc_ap: AdcResult) -> None:
    out = adc_outputs[0].parent
    stem = "17_DWI_dir80_AP"
    expected = {
        f"{stem}_adc_pm.dcm",
        f"{stem}_mask_seg.dcm",
        f"{stem}_adc_sr.dcm",
        f"{stem}_adc.nii.gz",
        f"{stem}_mask.nii.gz",
        f"{stem}_mask.tsv",
    }
    assert {p.name for p in adc_outputs} == expected
    assert {p.name for p in out.iterdir()} == expected  # no temporary file left
    pm = read_parametric_map(out / f"{stem}_adc_pm.dcm")
    assert np.array_equal(pm.values, adc_ap.adc)
    image = nib.load(out / f"{stem}_adc.nii.gz")
    assert np.array_equal(adc_ap.geometry.from_nifti(np.asanyarray(image.dataobj)), adc_ap.adc)
    mask = nib.load(out / f"{stem}_mask.nii.gz")
    assert np.array_equal(adc_ap.geometry.from_nifti(np.asanyarray(mask.dataobj)).astype(bool), adc_ap.mask)
    assert read_label_table(out / f"{stem}_mask.tsv")[1].name == "ADC signal mask"


@pytest.mark.parametrize("kind", ["pm", "seg", "sr"])
def test_derive_adc_outputs_validate(adc_outputs: list[Path], kind: str) -> None:
    path = next(p for p in adc_outputs if p.name.endswith(f"_{kind}.dcm"))
    assert dciodvfy(path).errors == []


def test_derive_sr_from_files(adc_outputs: list[Path], xa30: Path, tmp_path: Path) -> None:
    out = adc_outputs[0].parent
    seg = out / "17_DWI_dir80_AP_mask_seg.dcm"
    written = derive_sr(seg, out / "17_DWI_dir80_AP_adc_pm.dcm", xa30 / DWI["AP"], tmp_path)
    assert written == tmp_path / "17_DWI_dir80_AP_mask_sr.dcm"
    assert dciodvfy(written).errors == []
    without_map = derive_sr(seg, None, xa30 / DWI["AP"], tmp_path / "volumes-only")
    assert pydicom.dcmread(without_map).SOPInstanceUID != pydicom.dcmread(written).SOPInstanceUID
    assert len(read_segmentation(seg).table) == 1


def _link_dir(files: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for path in files:
        os.symlink(path, folder / path.name)
    return folder


@pytest.mark.parametrize(
    ("inputs", "error"),
    [
        pytest.param("t1w", DiffusionInfoError, id="no-diffusion"),
        pytest.param("no-b0", MissingB0Error, id="no-b0"),
    ],
)
def test_failures_leave_nothing(xa30: Path, tmp_path: Path, inputs: str, error: type[Exception]) -> None:
    dwi_without_b0 = sorted((xa30 / DWI["PA"]).iterdir())[1:]
    source = xa30 / T1W if inputs == "t1w" else _link_dir(dwi_without_b0, tmp_path / "dwi")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("unrelated")
    with pytest.raises(error):
        derive_adc(source, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
