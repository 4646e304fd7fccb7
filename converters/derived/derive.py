"""Offline entry points: folders and files in, derived DICOM (and NIfTI) files out.

Each function computes everything in memory first and then writes all its outputs to hidden
temporary files in ``out_dir`` and renames them into place, so on any error nothing new (and
nothing half-written) is left in ``out_dir``. Existing files of the same names are replaced.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from converters.derived._io import Staging, staged
from converters.derived.adc import DEFAULT_B0_MAX, DEFAULT_SIGNAL_FRACTION, compute_adc
from converters.derived.errors import DerivedInputError
from converters.derived.labels import LabelTable, format_dseg_tsv, read_label_table
from converters.derived.nifti import nifti_image, read_nifti_labels
from converters.derived.pm import encode_parametric_map
from converters.derived.seg import MASK_LABEL, SegmentationType, encode_mask_segmentation, encode_segmentation
from converters.derived.series import ImageSeries, read_image_series
from converters.derived.sr import encode_measurement_sr

__all__ = ["derive_adc", "derive_seg", "derive_sr"]

logger = logging.getLogger(__name__)


def _stem(series: ImageSeries) -> str:
    """File-name stem of a series, like dcm2niix's ``%s_%p``: ``10_DWI_dir80_PA``."""
    first = series.datasets[0]
    text = str(first.get("SeriesDescription") or first.get("ProtocolName") or "series")
    number = first.get("SeriesNumber")
    stem = f"{number}_{text}" if number not in (None, "") else text
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "series"


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _save(stage: Staging, ds: Dataset, name: str) -> None:
    ds.save_as(stage.path(name), enforce_file_format=True)


def _read_dicom(path: Path, what: str) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise DerivedInputError(f"cannot read the {what} ({exc})", path) from exc


def derive_adc(
    dwi_dir: Path,
    out_dir: Path,
    *,
    b0_max: float = DEFAULT_B0_MAX,
    signal_fraction: float = DEFAULT_SIGNAL_FRACTION,
    segmentation_type: SegmentationType | str = "BINARY",
) -> list[Path]:
    """ADC of the diffusion series in ``dwi_dir``, written to ``out_dir`` as

    ``<stem>_adc_pm.dcm`` (Parametric Map), ``<stem>_mask_seg.dcm`` (signal mask Segmentation),
    ``<stem>_adc_sr.dcm`` (Measurement Report: mask volume, mean ADC), ``<stem>_adc.nii.gz``
    (float32 µm²/s), ``<stem>_mask.nii.gz`` and ``<stem>_mask.tsv``; ``<stem>`` is
    ``<SeriesNumber>_<SeriesDescription>``. Returns the paths written.

    :raises DiffusionInfoError, MissingB0Error, EmptyMaskError, GeometryError: see
        :func:`converters.derived.adc.compute_adc`.
    """
    result = compute_adc(dwi_dir, b0_max=b0_max, signal_fraction=signal_fraction)
    pm = encode_parametric_map(result)
    mask = encode_mask_segmentation(result, segmentation_type=segmentation_type)
    sr = encode_measurement_sr(mask, result.series, pm)
    stem = _stem(result.series)
    with staged(out_dir) as stage:
        _save(stage, pm, f"{stem}_adc_pm.dcm")
        _save(stage, mask, f"{stem}_mask_seg.dcm")
        _save(stage, sr, f"{stem}_adc_sr.dcm")
        adc_image = nifti_image(result.adc, result.geometry, description="ADC (um2/s)")
        adc_image.to_filename(stage.path(f"{stem}_adc.nii.gz"))
        mask_image = nifti_image(result.mask.astype("uint8"), result.geometry, description="ADC signal mask")
        mask_image.to_filename(stage.path(f"{stem}_mask.nii.gz"))
        stage.path(f"{stem}_mask.tsv").write_text(format_dseg_tsv(LabelTable((MASK_LABEL,))), encoding="utf-8")
        written = stage.commit()
    logger.info("%s: ADC written to %s", result.series.name, out_dir)
    return written


def derive_seg(
    labelmap: Path,
    source_dir: Path,
    out_dir: Path,
    labels: Path | None = None,
    *,
    segmentation_type: SegmentationType | str = "BINARY",
    algorithm: str | None = None,
) -> Path:
    """Encode a NIfTI label map drawn on the series in ``source_dir`` as ``<labelmap stem>_seg.dcm``.

    :param labels: label table (``.json`` or BIDS ``dseg.tsv``); default names ``label <n>``.
    :param algorithm: name of the algorithm that made the labels; None records them as manual.
    :raises GeometryMismatchError: the label map is not on the series' grid.
    :raises LabelTableError, EmptyMaskError, DerivedInputError: bad table, no label, unreadable input.
    """
    source = read_image_series(source_dir, pixels=False)
    volume = read_nifti_labels(labelmap, source.geometry, source_name=source.name)
    table = read_label_table(labels) if labels is not None else None
    seg = encode_segmentation(
        volume,
        source,
        table,
        segmentation_type=segmentation_type,
        algorithm=algorithm,
        what=f"label map {labelmap.name}",
    )
    with staged(out_dir) as stage:
        _save(stage, seg, f"{_nifti_stem(labelmap)}_seg.dcm")
        (written,) = stage.commit()
    return written


def derive_sr(seg: Path, pm: Path | None, source_dir: Path, out_dir: Path) -> Path:
    """Measurement Report of the segments of ``seg`` (volumes; mean ADC when ``pm`` is given).

    Written as ``<seg stem>_sr.dcm``.

    :raises GeometryMismatchError: SEG, map and series are not on one grid / not related.
    :raises DerivedInputError: unreadable or wrong kind of input.
    """
    source = read_image_series(source_dir, pixels=False)
    seg_ds = _read_dicom(seg, "Segmentation")
    pm_ds = _read_dicom(pm, "Parametric Map") if pm is not None else None
    sr = encode_measurement_sr(seg_ds, source, pm_ds)
    name = seg.name[:-4] if seg.name.lower().endswith(".dcm") else seg.name
    with staged(out_dir) as stage:
        _save(stage, sr, f"{name.removesuffix('_seg')}_sr.dcm")
        (written,) = stage.commit()
    return written
