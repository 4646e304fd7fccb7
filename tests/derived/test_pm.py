"""ADC Parametric Map: IOD validity, content, references, exact round trips."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from converters.derived import AdcResult, compute_adc, encode_parametric_map, read_parametric_map, write_nifti_map
from tests.derived.helpers import dciodvfy, write_classic_dwi


def test_dciodvfy_reports_no_error(pa_outputs: dict[str, Path]) -> None:
    result = dciodvfy(pa_outputs["pm"])
    print("\n".join(["PM warnings:", *result.warnings]))
    assert result.errors == []


def test_highdicom_reads_it_back(pa_outputs: dict[str, Path], adc_pa: AdcResult) -> None:
    image = hd.imread(pa_outputs["pm"])
    assert image.SOPClassUID == pydicom.uid.ParametricMapStorage
    assert int(image.NumberOfFrames) == 39
    volume = image.get_volume()
    assert volume.spatial_shape == adc_pa.geometry.shape
    for k in range(volume.spatial_shape[0]):  # highdicom may stack the slices the other way round
        position = (volume.affine @ np.array([k, 0, 0, 1.0]))[:3]
        ours = int(np.argmin(np.linalg.norm(np.asarray(adc_pa.geometry.positions) - position, axis=1)))
        np.testing.assert_allclose(position, adc_pa.geometry.positions[ours], atol=1e-3)
        assert np.array_equal(volume.array[k], adc_pa.adc[ours])


def test_round_trip_is_exact(pa_outputs: dict[str, Path], adc_pa: AdcResult, tmp_path: Path) -> None:
    data = read_parametric_map(pa_outputs["pm"])
    assert data.values.dtype == np.float32
    assert np.array_equal(data.values, adc_pa.adc)
    assert data.geometry.same_grid(adc_pa.geometry)
    nifti = write_nifti_map(data, tmp_path / "adc.nii.gz")
    image = nib.load(nifti)
    assert image.get_data_dtype() == np.float32
    assert np.array_equal(adc_pa.geometry.from_nifti(np.asanyarray(image.dataobj)), adc_pa.adc)
    np.testing.assert_allclose(image.affine, adc_pa.geometry.nifti_affine, atol=1e-4)


def test_quantity_unit_method_and_bvalues(pa_outputs: dict[str, Path]) -> None:
    data = read_parametric_map(pa_outputs["pm"])
    assert data.unit.value == "um2/s" and data.unit.scheme_designator == "UCUM"
    assert data.quantity == codes.DCM.ApparentDiffusionCoefficient
    assert data.bvalues == (0.0, 2500.0)
    mapping = data.dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    items = {item.ConceptNameCodeSequence[0].CodeValue: item for item in mapping.QuantityDefinitionSequence}
    assert items["370129005"].ConceptCodeSequence[0].CodeValue == "113250"  # Mono-exponential diffusion model
    assert items["370129005"].ConceptCodeSequence[0].CodeMeaning == "Mono-exponential diffusion model"
    assert items["113241"].ConceptCodeSequence[0].CodeValue == "113260"  # Log of ratio of two samples
    assert items["113240"].ValueType == "NUMERIC"
    assert items["113240"].MeasurementUnitsCodeSequence[0].CodeValue == "s/mm2"


def test_references_frame_of_reference_anatomy_and_derivation(pa_outputs: dict[str, Path], adc_pa: AdcResult) -> None:
    ds = pydicom.dcmread(pa_outputs["pm"])
    source_uids = {str(s.SOPInstanceUID) for s in adc_pa.series.datasets}
    assert ds.FrameOfReferenceUID == adc_pa.series.datasets[0].FrameOfReferenceUID
    assert ds.StudyInstanceUID == adc_pa.series.datasets[0].StudyInstanceUID
    assert {str(r.ReferencedSOPInstanceUID) for r in ds.SourceImageSequence} == source_uids
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == adc_pa.series.series_instance_uid
    anatomy = ds.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.AnatomicRegionSequence[0].CodeValue == "12738006"  # Brain, translated from SRT T-A0100
    assert ds.SeriesDescription == "ADC (um2/s) of DWI_dir80_PA"
    derivation = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.DerivationCodeSequence[0].CodeValue == "129105"
    assert "mono-exponential" in derivation.DerivationDescription
    assert len(derivation.SourceImageSequence) == 21  # this slice of every DWI volume
    assert {str(s.ReferencedSOPInstanceUID) for s in derivation.SourceImageSequence} == source_uids


def test_encoding_is_deterministic(adc_pa: AdcResult) -> None:
    first, second = encode_parametric_map(adc_pa), encode_parametric_map(adc_pa)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID not in {str(ds.SOPInstanceUID) for ds in adc_pa.series.datasets}


def test_classic_source_least_squares(tmp_path: Path) -> None:
    """Single-frame sources (one instance per slice) and three shells."""
    write_classic_dwi(tmp_path / "dwi")
    result = compute_adc(tmp_path / "dwi")
    path = tmp_path / "pm.dcm"
    encode_parametric_map(result).save_as(path, enforce_file_format=True)
    assert dciodvfy(path).errors == []
    data = read_parametric_map(path)
    assert np.array_equal(data.values, result.adc)
    assert data.bvalues == (0.0, 500.0, 1000.0)
    mapping = data.dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    methods = [i for i in mapping.QuantityDefinitionSequence if i.ConceptNameCodeSequence[0].CodeValue == "113241"]
    assert methods[0].ConceptCodeSequence[0].CodeValue == "113261"  # Least squares fit of multiple samples


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_round_trip_per_transfer_syntax(adc_pa: AdcResult, tmp_path: Path, transfer_syntax: str) -> None:
    path = tmp_path / "pm.dcm"
    encode_parametric_map(adc_pa, transfer_syntax_uid=transfer_syntax).save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == transfer_syntax
    assert dciodvfy(path).errors == []
    assert np.array_equal(read_parametric_map(path).values, adc_pa.adc)
