"""TID 1500 Measurement Report: validity, the measurements, the references."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from converters.derived import (
    AdcResult,
    GeometryMismatchError,
    encode_measurement_sr,
    measure_segments,
    read_parametric_map,
    read_segmentation,
)
from tests.derived.helpers import dciodvfy


def test_dciodvfy_reports_no_error(pa_outputs: dict[str, Path]) -> None:
    result = dciodvfy(pa_outputs["sr"])
    print("\n".join(["SR warnings:", *result.warnings]))
    assert result.errors == []


def test_measurements(pa_outputs: dict[str, Path], adc_pa: AdcResult) -> None:
    sr = hd.sr.srread(pa_outputs["sr"])
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    seg = pydicom.dcmread(pa_outputs["seg"])
    pm = pydicom.dcmread(pa_outputs["pm"])
    assert group.reference_type == codes.DCM.ReferencedSegment
    segment = group.referenced_segment
    assert segment is not None
    assert segment.referenced_segment_numbers == [1]
    assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    volume = group.get_measurements(name=codes.SCT.Volume)[0]
    assert volume.unit.value == "ml"
    voxel_ml = 27.0 / 1000  # 3 mm isotropic
    assert volume.value == pytest.approx(adc_pa.mask.sum() * voxel_ml, rel=1e-6)
    adc = group.get_measurements(name=codes.DCM.ApparentDiffusionCoefficient)[0]
    assert adc.unit.value == "um2/s"
    assert adc.derivation == codes.SCT.Mean
    assert adc.value == pytest.approx(float(adc_pa.adc[adc_pa.mask].astype(np.float64).mean()), rel=1e-6)
    assert adc.referenced_images[0].referenced_sop_instance_uid == pm.SOPInstanceUID


def test_evidence_lists_seg_pm_and_sources(pa_outputs: dict[str, Path], adc_pa: AdcResult) -> None:
    ds = pydicom.dcmread(pa_outputs["sr"])
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    expected = {str(d.SOPInstanceUID) for d in adc_pa.series.datasets}
    expected |= {str(pydicom.dcmread(pa_outputs[k]).SOPInstanceUID) for k in ("seg", "pm")}
    assert evidence == expected
    assert ds.StudyInstanceUID == adc_pa.series.datasets[0].StudyInstanceUID
    assert ds.CompletionFlag == "COMPLETE"


def test_mean_adc_ignores_voxels_without_value(pa_outputs: dict[str, Path]) -> None:
    seg = read_segmentation(pa_outputs["seg"])
    pm = read_parametric_map(pa_outputs["pm"])
    grown = seg.labels.copy()
    grown[:, :2, :] = 1  # image corners: no signal, ADC 0
    measured = measure_segments(replace(seg, labels=grown), pm)[0]
    assert measured.voxels > measured.adc_voxels
    inside = (grown == 1) & (pm.values != 0)
    assert measured.mean_adc == pytest.approx(float(pm.values[inside].astype(np.float64).mean()))


def test_map_of_another_grid_is_refused(pa_outputs: dict[str, Path], adc_ap: AdcResult) -> None:
    """The AP series has its own grid (same here) but its own series: the SEG does not reference it."""
    seg = pydicom.dcmread(pa_outputs["seg"])
    with pytest.raises(GeometryMismatchError, match="references series"):
        encode_measurement_sr(seg, adc_ap.series, pydicom.dcmread(pa_outputs["pm"]))
