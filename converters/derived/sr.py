"""Per-segment measurements as a TID 1500 Measurement Report (highdicom ``Comprehensive3DSR``).

For each segment of a Segmentation, one TID 1411 "Volumetric ROI Measurements" group that
references the segment (and through it the segmented series) and holds:

* Volume (SCT 118565006) in ``ml``: number of voxels x voxel volume;
* when a Parametric Map of ADC is given: the Mean (SCT 373098007) Apparent Diffusion Coefficient
  (DCM 113041) in ``um2/s`` over the segment's voxels that have an ADC value (the map holds 0
  where it has none), citing the Parametric Map as its source image.

The document's evidence lists the Segmentation, the Parametric Map and the source instances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from converters.derived import _provenance
from converters.derived._spatial import quiet_highdicom
from converters.derived.errors import EmptyMaskError, GeometryMismatchError
from converters.derived.labels import Label
from converters.derived.pm import ADC_QUANTITY, ADC_UNIT, ParametricMapData, read_parametric_map
from converters.derived.seg import SegmentationData, read_segmentation, segment_volumes_ml
from converters.derived.series import ImageSeries

__all__ = ["SegmentMeasurement", "encode_measurement_sr", "measure_segments"]

_MILLILITER = Code("ml", "UCUM", "milliliter")


@dataclass(frozen=True)
class SegmentMeasurement:
    """What the report says about one segment."""

    segment_number: int
    label: Label
    voxels: int
    volume_ml: float
    #: Mean ADC (µm²/s) over the segment's voxels with an ADC value; None without a map or values.
    mean_adc: float | None = None
    #: Number of voxels that entered :attr:`mean_adc`.
    adc_voxels: int = 0


def measure_segments(seg: SegmentationData, pm: ParametricMapData | None = None) -> list[SegmentMeasurement]:
    """Volume and (with an ADC map on the same grid) mean ADC of each segment.

    :raises GeometryMismatchError: the map is not on the segmentation's grid.
    """
    if pm is not None and not pm.geometry.same_grid(seg.geometry):
        raise GeometryMismatchError(
            f"the Parametric Map ({pm.geometry.describe()}) is not on the grid of the Segmentation "
            f"({seg.geometry.describe()}); both must come from the same series"
        )
    volumes = segment_volumes_ml(seg)
    numbers = {value: number for number, value in seg.segment_values.items()}
    out = []
    for label in seg.table.labels:
        inside = seg.labels == label.value
        mean: float | None = None
        used = 0
        if pm is not None:
            values = pm.values[inside]
            values = values[values != 0]
            used = int(values.size)
            mean = float(np.mean(values, dtype=np.float64)) if used else None
        out.append(
            SegmentMeasurement(
                segment_number=numbers[label.value],
                label=label,
                voxels=int(inside.sum()),
                volume_ml=volumes[label.value],
                mean_adc=mean,
                adc_voxels=used,
            )
        )
    return out


def _group(
    measurement: SegmentMeasurement, seg: Dataset, source_series_uid: str, pm: Dataset | None
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    items = [hd.sr.Measurement(name=codes.SCT.Volume, value=measurement.volume_ml, unit=_MILLILITER)]
    if measurement.mean_adc is not None and pm is not None:
        items.append(
            hd.sr.Measurement(
                name=ADC_QUANTITY,
                value=measurement.mean_adc,
                unit=ADC_UNIT,
                derivation=codes.SCT.Mean,
                referenced_images=[
                    hd.sr.SourceImageForMeasurement(
                        referenced_sop_class_uid=str(pm.SOPClassUID),
                        referenced_sop_instance_uid=str(pm.SOPInstanceUID),
                    )
                ],
            )
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_provenance.derived_uid("sr-tracking", str(seg.SOPInstanceUID), str(measurement.segment_number)),
            identifier=_provenance.long_string(f"Segment {measurement.segment_number}: {measurement.label.name}"),
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=measurement.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        ),
        finding_category=measurement.label.category,
        finding_type=measurement.label.type,
        measurements=items,
    )


def encode_measurement_sr(
    seg: Dataset,
    source: ImageSeries | Sequence[Dataset],
    pm: Dataset | None = None,
    *,
    series_number: int | None = None,
    series_description: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """A Measurement Report of each segment of ``seg`` (volume, and mean ADC from ``pm``).

    :param source: the series the segmentation was drawn on (its instances, headers suffice).
    :raises GeometryMismatchError: the map and the segmentation are not on one grid, or the
        segmentation does not reference ``source``.
    :raises EmptyMaskError: the segmentation has no segment.
    """
    datasets = list(source.datasets if isinstance(source, ImageSeries) else source)
    source_uid = str(datasets[0].SeriesInstanceUID)
    geometry = source.geometry if isinstance(source, ImageSeries) else None
    seg_data = read_segmentation(seg, geometry=geometry)
    if seg_data.source_series_uid is not None and seg_data.source_series_uid != source_uid:
        raise GeometryMismatchError(
            f"the Segmentation references series {seg_data.source_series_uid}, not the given source {source_uid}"
        )
    pm_data = read_parametric_map(pm) if pm is not None else None
    measurements = measure_segments(seg_data, pm_data)
    if not measurements:
        raise EmptyMaskError("the Segmentation has no segment to measure")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_provenance.derived_uid("device", _provenance.MANUFACTURER),
            name=_provenance.MANUFACTURER,
            manufacturer_name=_provenance.MANUFACTURER,
            model_name=_provenance.MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[_group(m, seg, source_uid, pm) for m in measurements],
    )
    instances = [seg] + ([pm] if pm is not None else [])
    key = [str(ds.SOPInstanceUID) for ds in instances]
    first = datasets[0]
    description = series_description or _provenance.long_string(
        f"Measurements of {seg.get('SeriesDescription') or 'segmentation'!s}"
    )
    evidence = [_header(ds) for ds in datasets] + [_header(ds) for ds in instances]
    with quiet_highdicom():
        return hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=_provenance.derived_uid("sr-series", source_uid, *key),
            series_number=series_number if series_number is not None else _provenance.series_number("sr", first),
            sop_instance_uid=_provenance.derived_uid("sr-instance", source_uid, *key),
            instance_number=1,
            manufacturer=_provenance.MANUFACTURER,
            is_complete=True,
            series_description=description,
            manufacturer_model_name=_provenance.MODEL_NAME,
            software_versions=_provenance.software_version(),
            device_serial_number=_provenance.DEVICE_SERIAL_NUMBER,
        )


def _header(ds: Dataset) -> Dataset:
    """The attributes highdicom needs from an evidence instance (not its pixels)."""
    copy = Dataset()
    for element in ds:
        if element.tag < 0x7FE00000:
            copy.add(element)
    return copy
