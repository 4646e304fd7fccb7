"""How many instances a series will have, when one instance's header says so.

A series is known complete before Orthanc calls it stable when the count of its instances
reaches the count one of them announces. This module reads that announcement from one header
(any instance's: the values used are the series' own); :func:`expected_instances` returns None
when the header proves nothing, and then the plugin waits for ``StableAge`` as before.

The evidence, in order (the first that applies decides):

1. **A concatenation** (``InConcatenationTotalNumber``): that many instances.
2. **Enhanced multi-frame** (``PerFrameFunctionalGroupsSequence``) with
   ``NumberOfTemporalPositions``: the instance holds some temporal positions
   (``FrameContentSequence.TemporalPositionIndex`` of its frames); the series holds
   ``NumberOfTemporalPositions`` of them, so ``NumberOfTemporalPositions / positions held``
   instances (one instance of a whole 3D or 4D acquisition: 1; Siemens XA, one instance per
   volume: the volume count), unless the Siemens protocol has several contrasts (echoes: one
   instance each, or one for them all, as a phase difference has). Derived maps that keep the
   acquisition's count but hold one volume are never called complete early (the count is
   never reached), which is safe.
3. **ImagesInAcquisition** (0020,1002) on a single-frame image: times
   ``NumberOfTemporalPositions`` when that is above 1 (Orthanc's own
   ``ExpectedNumberOfInstances`` rule; GE EPI: 15 slices x 10 volumes), else itself (GE
   structural and field-map series: every image of the series).
4. **A Siemens mosaic** (``ImageType`` MOSAIC; one instance per volume): the protocol's
   ``lRepetitions + 1`` volumes, only for a protocol without diffusion weighting, averages,
   contrasts or sets (those multiply the volume count in ways the protocol does not total).

A wrong claim costs a conversion: the plugin converts at the claimed count, and an instance
arriving later makes Orthanc's ``STABLE_SERIES`` convert the series again, replacing the
first file set (see the README, "Early completion").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from converters.asl import siemens_protocol

__all__ = ["Expectation", "expected_instances"]

logger = logging.getLogger(__name__)

#: Protocol parameters that multiply a mosaic series' volume count beyond ``lRepetitions + 1``.
_MULTIPLIERS = ("lAverages", "lContrasts", "lSets")
_NO_DIFFUSION = ("1", "0x1")


@dataclass(frozen=True)
class Expectation:
    """The instance count a header announces, and which evidence announced it."""

    instances: int
    evidence: str


def _int(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number


def _temporal_positions(ds: Dataset) -> set[int]:
    positions: set[int] = set()
    for frame in ds.get("PerFrameFunctionalGroupsSequence", ()):
        for content in frame.get("FrameContentSequence", ()):
            position = _int(content.get("TemporalPositionIndex"))
            if position is not None:
                positions.add(position)
    return positions


def _mosaic(ds: Dataset) -> Expectation | None:
    protocol = siemens_protocol(ds)
    repetitions = _int(protocol.get("lRepetitions", "0"))
    if not protocol or repetitions is None or repetitions < 0:
        return None
    if protocol.get("sDiffusion.ulMode", "0x1") not in _NO_DIFFUSION:
        return None
    if any((_int(protocol.get(name, "1")) or 1) > 1 for name in _MULTIPLIERS):
        return None
    return Expectation(repetitions + 1, f"Siemens mosaic protocol: lRepetitions {repetitions} + 1 volumes")


def expected_instances(ds: Dataset) -> Expectation | None:
    """The number of instances the series of ``ds`` (one instance's header) will hold, or None
    when its header does not say (see the module docstring for the evidence)."""
    total = _int(ds.get("InConcatenationTotalNumber"))
    if total is not None and total > 0:
        return Expectation(total, f"InConcatenationTotalNumber {total}")
    temporal = _int(ds.get("NumberOfTemporalPositions"))
    if "PerFrameFunctionalGroupsSequence" in ds:
        held = len(_temporal_positions(ds)) or 1
        contrasts = _int(siemens_protocol(ds).get("lContrasts", "1")) or 1
        if contrasts > 1:  # Siemens XA: one instance per echo, or one for all (a phase difference)
            return None
        if temporal is not None and temporal > 0 and temporal % held == 0:
            return Expectation(temporal // held, f"NumberOfTemporalPositions {temporal}, {held} per instance")
        return None
    images = _int(ds.get("ImagesInAcquisition"))
    if images is not None and images > 0 and (_int(ds.get("NumberOfFrames")) or 1) == 1:
        if temporal is not None and temporal > 1:
            return Expectation(images * temporal,
                               f"ImagesInAcquisition {images} x NumberOfTemporalPositions {temporal}")
        return Expectation(images, f"ImagesInAcquisition {images}")
    if "MOSAIC" in (str(value).upper() for value in ds.get("ImageType", ())):
        return _mosaic(ds)
    return None
