"""Worker stage: derived DICOM objects made from a series and registered in Orthanc.

* ``adc``: ADC Parametric Map, signal-mask Segmentation and measurement SR from a DWI series,
  stored into Orthanc (same patient and study, new series) and filed as NIfTI into
  ``derivatives/bidsbridge/`` of the BIDS dataset.
* user label maps (``POST /bidsbridge/series/{id}/segmentations``): a Segmentation of the
  series, stored the same way.
* the reverse direction: a SEG or Parametric Map that arrives from another tool is converted to
  NIfTI (+ ``dseg.tsv``) into the derivatives.  Objects bidsbridge made itself are recognised by
  their Manufacturer and not converted twice.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pydicom
from pydicom import uid

from converters import series_outputs
from converters.bids.derivatives import DerivativeImage, publish_derivatives
from converters.derived import SEGMENTATION_SOP_CLASSES, read_parametric_map, read_segmentation
from converters.derived.derive import derive_adc, derive_seg
from converters.derived.errors import DerivedInputError
from converters.derived.nifti import write_nifti_labels, write_nifti_map
from converters.errors import BidsBridgeError

from .derivations import DerivationName
from .jobs import StageOutcome
from .rest_client import OrthancApi

__all__ = [
    "FOREIGN_DERIVED_CLASSES",
    "OUR_MANUFACTURER",
    "SourceNotReady",
    "derive",
    "reverse_convert",
    "segment",
    "sop_class_of",
]

logger = logging.getLogger(__name__)

#: SOP classes of derived objects another tool may send (converted into the derivatives).
FOREIGN_DERIVED_CLASSES = SEGMENTATION_SOP_CLASSES | {uid.ParametricMapStorage}
#: The Manufacturer bidsbridge writes into its own objects (not converted back).
OUR_MANUFACTURER = "bidsbridge"


def sop_class_of(files: list[Path]) -> tuple[str, str, str]:
    """(SOP class UID, Manufacturer, SeriesInstanceUID) of the first file."""
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(ds.get("SOPClassUID", "")), str(ds.get("Manufacturer", "")), str(ds.get("SeriesInstanceUID", ""))


def _store(client: OrthancApi, paths: list[Path]) -> tuple[str, ...]:
    return tuple(client.post_instance(path.read_bytes()) for path in sorted(paths) if path.suffix == ".dcm")


def _fallback(dicom_dir: Path) -> tuple[str, str | None, str]:
    first = next(p for p in sorted(dicom_dir.iterdir()) if p.is_file())
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return (str(ds.get("PatientID") or "unknown"), str(ds.get("StudyDate") or "") or None,
            f"series{ds.get('SeriesNumber') or ''}")


def derive(name: DerivationName, dicom_dir: Path, bids_root: Path, series_uid: str,
           client: OrthancApi) -> StageOutcome:
    """Run one derivation on a downloaded series; raises the library's typed errors (not
    retryable: the derivation does not apply to this series)."""
    with tempfile.TemporaryDirectory(prefix="adc-", dir=bids_root.parent if bids_root.parent.exists() else None) as tmp:
        written = derive_adc(dicom_dir, Path(tmp))
        by_suffix = {path.name.rsplit("_", 1)[-1]: path for path in written}
        instances = _store(client, written)
        outputs = publish_derivatives(
            bids_root, series_uid, "adc",
            [
                DerivativeImage(by_suffix["adc.nii.gz"], "ADC", sidecar={
                    "Units": "um2/s", "Description": "Apparent diffusion coefficient, mono-exponential model",
                }),
                DerivativeImage(by_suffix["mask.nii.gz"], "dseg", desc="adcmask", table=by_suffix["mask.tsv"],
                                sidecar={"Description": "Voxels with diffusion signal used for the ADC"}),
            ],
            fallback=_fallback(dicom_dir),
        )
    return StageOutcome(tuple(outputs), instances)


def segment(labelmap: Path, labels: Path | None, dicom_dir: Path, bids_root: Path, *, series_uid: str,
            client: OrthancApi, segmentation_type: str = "BINARY", desc: str = "user") -> StageOutcome:
    """Encode a user's NIfTI label map of the series as a SEG, store it and file the label map."""
    with tempfile.TemporaryDirectory(prefix="seg-") as tmp:
        try:
            seg_path = derive_seg(labelmap, dicom_dir, Path(tmp), labels, segmentation_type=segmentation_type)
        except ValueError as exc:
            if isinstance(exc, BidsBridgeError):
                raise
            # the SEG encoder's own refusal of this label map (not retryable, like the library's)
            raise DerivedInputError(f"the label map cannot be encoded as a SEG of this series: {exc}") from exc
        instances = _store(client, [seg_path])
        back = read_segmentation(seg_path)
        nifti, tsv = write_nifti_labels(back, Path(tmp) / "labels.nii.gz")
        outputs = publish_derivatives(
            bids_root, series_uid, f"seg-{desc}",
            [DerivativeImage(nifti, "dseg", desc=desc, table=tsv, sidecar={"Description": "user segmentation"})],
            fallback=_fallback(dicom_dir),
        )
    return StageOutcome(tuple(outputs), instances)


class SourceNotReady(BidsBridgeError, RuntimeError):
    """The series a SEG/PM refers to is not in the BIDS dataset (yet): retry later."""

    retryable = True


def reverse_convert(files: list[Path], bids_root: Path, *, wait_for_source: bool = True) -> StageOutcome | None:
    """A SEG or Parametric Map series → NIfTI in the derivatives; None if it is neither.

    Named after the raw BIDS image of the series it refers to.  When that series is not converted
    yet (they often arrive together) :class:`SourceNotReady` is raised so the job is retried;
    with ``wait_for_source=False`` (the last attempt) a name is made from the object's own headers.
    """
    sop_class, manufacturer, _ = sop_class_of(files)
    if sop_class not in FOREIGN_DERIVED_CLASSES:
        return None
    if manufacturer == OUR_MANUFACTURER:
        return StageOutcome(notes=("made by bidsbridge: its NIfTI is already in the derivatives",))
    outputs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="reverse-") as tmp:
        for index, path in enumerate(sorted(files)):
            ds = pydicom.dcmread(path)
            referenced = ds.get("ReferencedSeriesSequence")
            source_uid = str(referenced[0].SeriesInstanceUID) if referenced else str(ds.SeriesInstanceUID)
            if wait_for_source and referenced and not series_outputs(bids_root, source_uid):
                raise SourceNotReady(f"the series {source_uid} that this {ds.get('Modality', 'object')} refers to "
                                     "is not in the BIDS dataset yet")
            fallback = (str(ds.get("PatientID") or "unknown"), str(ds.get("StudyDate") or "") or None,
                        f"series{ds.get('SeriesNumber') or ''}")
            label = f"{ds.get('SeriesNumber') or ''}{index if len(files) > 1 else ''}"
            if sop_class in SEGMENTATION_SOP_CLASSES:
                nifti, tsv = write_nifti_labels(read_segmentation(ds), Path(tmp) / f"{index}.nii.gz")
                image = DerivativeImage(nifti, "dseg", desc=f"seg{label}", table=tsv,
                                        sidecar={"Description": str(ds.get("SeriesDescription", "Segmentation"))})
            else:
                pm = read_parametric_map(ds)
                nifti = write_nifti_map(pm, Path(tmp) / f"{index}.nii.gz")
                image = DerivativeImage(nifti, "map", desc=f"pm{label}", sidecar={
                    "Units": pm.unit.value, "Description": str(ds.get("SeriesDescription", "Parametric Map"))})
            outputs += publish_derivatives(bids_root, source_uid, f"reverse-{ds.SOPInstanceUID}", [image],
                                           fallback=fallback)
    return StageOutcome(tuple(sorted(outputs)))
