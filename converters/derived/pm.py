"""ADC maps as DICOM Parametric Maps (highdicom ``pm.ParametricMap``) and back.

What the Parametric Map records:

* float32 pixels (Float Pixel Data) on the source's grid and Frame of Reference, one frame per
  slice; 0 means "no value" (outside the signal mask);
* a Real World Value Mapping (identity) in UCUM ``um2/s`` whose Quantity Definition Sequence
  holds the content items Quantity = DCM 113041 "Apparent Diffusion Coefficient", Measurement
  Method = DCM 113250 "Mono-exponential diffusion model", Model fitting method = DCM 113260 "Log of
  ratio of two samples" (two shells) or DCM 113261 "Least squares fit of multiple samples", and
  one DCM 113240 "Source image diffusion b-value" (NUM, ``s/mm2``) per shell used;
* Frame Anatomy copied from the source (SRT codes translated to SCT);
* per frame, a Derivation Image item with Derivation Code DCM 129105 "Diffusion image analysis",
  a Derivation Description of the computation and the source DWI frames it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr import _snomed_dict
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, ParametricMapStorage

from converters.derived import _provenance
from converters.derived._spatial import highdicom_spatial, quiet_highdicom
from converters.derived.adc import AdcResult
from converters.derived.errors import DerivedInputError
from converters.derived.geometry import SeriesGeometry
from converters.derived.series import functional_item, series_from_datasets, series_name

__all__ = [
    "ADC_QUANTITY",
    "ADC_UNIT",
    "ParametricMapData",
    "encode_parametric_map",
    "read_parametric_map",
]

ADC_UNIT = Code("um2/s", "UCUM", "um2/s")
ADC_QUANTITY: Code = codes.DCM.ApparentDiffusionCoefficient
_BVALUE_UNIT = Code("s/mm2", "UCUM", "s/mm2")
_FITTING = {
    "two-point": codes.DCM.LogOfRatioOfTwoSamples,
    "least-squares": codes.DCM.LeastSquaresFitOfMultipleSamples,
}
_BODY_PART_REGION = {"BRAIN": codes.SCT.Brain, "HEAD": codes.SCT.Head}
_ENTIRE_BODY = Code("38266002", "SCT", "Entire body")


def _sct(code: Dataset) -> Code:
    """A Code from a code item, translating retired SNOMED-RT (SRT) codes to SNOMED CT."""
    value, scheme, meaning = str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.CodeMeaning)
    if scheme == "SRT" and value in _snomed_dict.mapping["SRT"]:
        return Code(_snomed_dict.mapping["SRT"][value], "SCT", meaning)
    return Code(value, scheme, meaning)


def _frame_anatomy(source: Dataset, groups: tuple[Dataset, ...]) -> Dataset:
    anatomy = functional_item(groups, "FrameAnatomySequence")
    region: Code | None = None
    laterality = "U"
    if anatomy is not None and anatomy.get("AnatomicRegionSequence"):
        region = _sct(anatomy.AnatomicRegionSequence[0])
        laterality = str(anatomy.get("FrameLaterality") or "U")
    elif source.get("AnatomicRegionSequence"):
        region = _sct(source.AnatomicRegionSequence[0])
    else:
        region = _BODY_PART_REGION.get(str(source.get("BodyPartExamined", "")).upper(), _ENTIRE_BODY)
    item = Dataset()
    item.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(region)]
    item.FrameLaterality = laterality
    return item


def _numeric_item(name: Code, value: float, unit: Code) -> Dataset:
    """A NUMERIC item of the Content Item Macro (PS3.3 Table 10-2), as Quantity Definition takes it.

    Not an SR ``NUM`` item: the macro's value type is ``NUMERIC`` and the value and unit sit
    directly in the item, without a Measured Value Sequence.
    """
    item = Dataset()
    item.ValueType = "NUMERIC"
    item.ConceptNameCodeSequence = [hd.sr.CodedConcept.from_code(name)]
    item.NumericValue = f"{float(value):.10g}"
    item.MeasurementUnitsCodeSequence = [hd.sr.CodedConcept.from_code(unit)]
    return item


def _window(values: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_]) -> hd.VOILUTTransformation:
    inside = values[mask]
    low, high = (np.percentile(inside, [0.5, 99.5]) if inside.size else (0.0, 1.0))
    width = max(float(high - low), 1.0)
    return hd.VOILUTTransformation(window_center=float(low + high) / 2, window_width=width)


def encode_parametric_map(
    result: AdcResult,
    *,
    series_number: int | None = None,
    series_description: str | None = None,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> hd.pm.ParametricMap:
    """Encode an ADC map as a Parametric Map in its source's study and Frame of Reference.

    UIDs are derived from the source series and the map's content, so encoding the same result
    twice gives the same instance. ``series_number`` defaults to 1000 + the source's.
    ``transfer_syntax_uid``: Explicit (default) or Implicit VR Little Endian (float pixels cannot
    be compressed).
    """
    series = result.series
    first = series.datasets[0]
    sources, further = series.highdicom_sources()
    content = _provenance.digest(result.adc.tobytes(), repr(result.bvalues).encode())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ADC",
        lut_explanation="Apparent diffusion coefficient in um2/s (0 = no signal)",
        unit=ADC_UNIT,
        value_range=(float(result.adc.min()), float(result.adc.max())),
        slope=1.0,
        intercept=0.0,
        quantity_definition=ADC_QUANTITY,
    )
    quantity_items: list[Dataset] = [
        hd.sr.CodeContentItem(name=codes.SCT.MeasurementMethod, value=codes.DCM.MonoExponentialDiffusionModel),
        hd.sr.CodeContentItem(name=codes.DCM.ModelFittingMethod, value=_FITTING[result.method]),
        *(_numeric_item(codes.DCM.SourceImageDiffusionBValue, b, _BVALUE_UNIT) for b in result.bvalues),
    ]
    mapping["QuantityDefinitionSequence"].value.extend(quantity_items)
    description = series_description or _provenance.long_string(
        f"ADC (um2/s) of {first.get('SeriesDescription') or series.name!s}"
    )
    with quiet_highdicom():
        pm = hd.pm.ParametricMap(
            source_images=sources,
            further_source_images=further,
            pixel_array=result.adc,
            series_instance_uid=_provenance.derived_uid("pm-series", series.series_instance_uid, content),
            series_number=series_number if series_number is not None else _provenance.series_number("pm", first),
            sop_instance_uid=_provenance.derived_uid("pm-instance", series.series_instance_uid, content),
            instance_number=1,
            transfer_syntax_uid=transfer_syntax_uid,
            manufacturer=_provenance.MANUFACTURER,
            manufacturer_model_name=_provenance.MODEL_NAME,
            software_versions=_provenance.software_version(),
            device_serial_number=_provenance.DEVICE_SERIAL_NUMBER,
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[_window(result.adc, result.mask)],
            content_label="ADC",
            content_description=_provenance.long_string("Apparent diffusion coefficient, mono-exponential"),
            image_flavor=hd.pm.ImageFlavorValues.VOLUME,
            derived_pixel_contrast=hd.pm.DerivedPixelContrastValues.QUANTITY,
            derivation=codes.DCM.DiffusionImageAnalysis,
            series_description=description,
            **highdicom_spatial(result.geometry),
        )
    shared = pm.SharedFunctionalGroupsSequence[0]
    shared.FrameAnatomySequence = [_frame_anatomy(first, series.frames[0].groups)]
    derivation = result.derivation_description()[:1024]
    for frame_item in pm.PerFrameFunctionalGroupsSequence:
        for derivation_item in frame_item.get("DerivationImageSequence", []):
            derivation_item.DerivationDescription = derivation
    return pm


@dataclass(frozen=True, eq=False, repr=False)
class ParametricMapData:
    """A Parametric Map read back: real-world values on their grid."""

    #: Real-world values (the Real World Value Mapping applied), float32, (slice, row, column).
    values: npt.NDArray[np.float32]
    geometry: SeriesGeometry
    unit: Code
    quantity: Code | None
    #: Source image diffusion b-values recorded in the Quantity Definition Sequence (s/mm²).
    bvalues: tuple[float, ...]
    dataset: Dataset

    def __repr__(self) -> str:
        quantity = self.quantity.meaning if self.quantity else "?"
        return f"ParametricMapData({quantity} in {self.unit.value}, {self.geometry.describe()})"

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> ParametricMapData:
        """Read a Parametric Map dataset; :func:`read_parametric_map` also takes a path."""
        return read_parametric_map(dataset)


def _code_of(item: Dataset) -> Code:
    return Code(str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning))


def read_parametric_map(source: Path | Dataset) -> ParametricMapData:
    """Read a single-channel Parametric Map (e.g. one written by :func:`encode_parametric_map`).

    :raises DerivedInputError: not a Parametric Map, several channels or mappings per frame, or a
        non-linear mapping.
    """
    path = source if isinstance(source, Path) else None
    ds = pydicom.dcmread(source) if isinstance(source, Path) else source
    if ds.get("SOPClassUID") != ParametricMapStorage:
        raise DerivedInputError(f"not a Parametric Map (SOP Class {ds.get('SOPClassUID', '?')})", path)
    series = series_from_datasets([ds], [path] if path else None)
    if series.frames_per_slice != 1:
        raise DerivedInputError(
            f"{series_name(ds)}: {series.frames_per_slice} frames per slice (several channels) are not supported",
            path,
        )
    first_mapping = functional_item(series.frames[0].groups, "RealWorldValueMappingSequence")
    if first_mapping is None or "RealWorldValueLUTData" in first_mapping:
        raise DerivedInputError(f"{series_name(ds)}: needs a linear Real World Value Mapping", path)
    stored = series.pixels()
    volume = np.zeros(series.geometry.shape, dtype=np.float32)
    for frame, plane in zip(series.frames, stored, strict=True):
        item = functional_item(frame.groups, "RealWorldValueMappingSequence")
        slope = float(item.get("RealWorldValueSlope", 1.0)) if item is not None else 1.0
        intercept = float(item.get("RealWorldValueIntercept", 0.0)) if item is not None else 0.0
        volume[frame.slice_index] = plane if (slope, intercept) == (1.0, 0.0) else plane * slope + intercept
    quantity: Code | None = None
    bvalues: list[float] = []
    for item in first_mapping.get("QuantityDefinitionSequence", []):
        name = _code_of(item.ConceptNameCodeSequence[0])
        if name == codes.SCT.Quantity and item.get("ConceptCodeSequence"):
            quantity = _code_of(item.ConceptCodeSequence[0])
        elif name == codes.DCM.SourceImageDiffusionBValue and "NumericValue" in item:
            bvalues.append(float(item.NumericValue))
    return ParametricMapData(
        values=volume,
        geometry=series.geometry,
        unit=_code_of(first_mapping.MeasurementUnitsCodeSequence[0]),
        quantity=quantity,
        bvalues=tuple(bvalues),
        dataset=ds,
    )
