"""Arterial spin labelling: the facts BIDS requires of ``perf/*_asl``, dug out of the DICOM headers.

dcm2niix writes ArterialSpinLabelingType, PostLabelingDelay and LabelingDuration for Siemens
XA, but not M0Type, TotalAcquiredPairs, BackgroundSuppression or RepetitionTimePreparation, and
no ``aslcontext.tsv``. They are recorded here:

- the per-volume role (M0, label, control) in the standard *MR Arterial Spin Labeling* functional
  group, ``ASLContext`` (0018,9257) of each frame, volumes ordered by TemporalPositionIndex (then
  InstanceNumber). The order is trusted only when it has a plausible shape: M0 volumes first, then
  label/control alternating in equal numbers; anything else is refused (some scanners shift it);
- the labelling technique in ArterialSpinLabelingContrast (0018,9250), vascular crushing in
  ASLCrusherFlag (0018,9259);
- the Siemens protocol (``MrPhoenixProtocol``: the ASCCONV text in the XA private element
  (0021,1019) or in the CSA series header (0029,1020) of older software): ``alTR[0]`` (µs) is the
  preparation repetition time; ``sAsl.ulSuppressionMode`` is 1 when background suppression is off
  (the value every non-ASL Siemens protocol carries), anything else means it is on;
  ``sAsl.ulLabelingDuration`` and ``sAsl.sPostLabelingDelay[0]`` (µs) the labelling timing.

Reading is :func:`read_asl_headers` (I/O); :func:`asl_fields` is the pure policy on top.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

__all__ = ["AslHeaders", "AslPlan", "asl_fields", "parse_ascconv", "read_asl_headers", "siemens_protocol"]

logger = logging.getLogger(__name__)

_XA_PROTOCOL = 0x00211019
_CSA_SERIES = 0x00291020
_CONTEXTS = {"M_ZERO_SCAN": "m0scan", "LABEL": "label", "CONTROL": "control"}
_LABELLING = {"PSEUDOCONTINUOUS": "PCASL", "CONTINUOUS": "CASL", "PULSED": "PASL"}
_ASCCONV = re.compile(r"### ASCCONV BEGIN[^\n]*\n(.*?)### ASCCONV END", re.DOTALL)
_LINE = re.compile(r"^\s*([A-Za-z_][\w.\[\]]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class AslHeaders:
    """What the DICOM headers of an ASL series say, before any interpretation."""

    #: ASLContext of each volume in acquisition order (``M_ZERO_SCAN``, ``LABEL``, ``CONTROL``),
    #: or () when a file has none or its frames disagree.
    contexts: tuple[str, ...] = ()
    #: ArterialSpinLabelingContrast (``PSEUDOCONTINUOUS``, ``CONTINUOUS``, ``PULSED``) or "".
    labelling: str = ""
    #: Siemens protocol parameters (ASCCONV ``name = value``), empty when there is none.
    protocol: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: ASLCrusherFlag (0018,9259) of the frames (``YES``/``NO``) or "".
    crusher: str = ""


@dataclass(frozen=True)
class AslPlan:
    """The sidecar fields and the ``aslcontext.tsv`` volume types of an ASL series."""

    metadata: Mapping[str, Any] = field(hash=False)
    volume_types: tuple[str, ...]


def parse_ascconv(text: str) -> dict[str, str]:
    """``name = value`` pairs of the ASCCONV block of a Siemens protocol (values as written)."""
    found = _ASCCONV.search(text)
    pairs: dict[str, str] = {}
    for line in (found.group(1) if found else "").splitlines():
        match = _LINE.match(line)
        if match:
            pairs[match.group(1)] = match.group(2).strip('"')
    return pairs


def _find(ds: Dataset, tag: int) -> Any:
    if tag in ds:
        return ds[tag].value
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                value = _find(item, tag)
                if value is not None:
                    return value
    return None


def siemens_protocol(ds: Dataset) -> dict[str, str]:
    """The Siemens protocol's ASCCONV parameters: the XA private element (0021,1019) anywhere in
    the header, else the CSA series header (0029,1020); {} when there is none."""
    raw = _find(ds, _XA_PROTOCOL)
    if isinstance(raw, bytes | str):
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        if "ASCCONV" in text:
            return parse_ascconv(text)
    if _CSA_SERIES in ds:
        try:
            from nibabel.nicom import csareader  # noqa: PLC0415 - only Siemens classic needs it

            csa: Mapping[str, Any] | None = csareader.get_csa_header(ds, "series")  # type: ignore[no-untyped-call]
        except Exception as exc:  # nibabel raises several types on odd CSA headers
            logger.info("unreadable Siemens CSA series header: %s", exc)
            return {}
        items = (csa or {}).get("tags", {}).get("MrPhoenixProtocol", {}).get("items", [])
        if items:
            return parse_ascconv(str(items[0]))
    return {}


def _frame_values(ds: Dataset, keyword: str) -> set[str]:
    found: set[str] = set()
    for frame in ds.get("PerFrameFunctionalGroupsSequence", ()):
        for group in frame.get("MRArterialSpinLabelingSequence", ()):
            if keyword in group:
                found.add(str(group.get(keyword)).upper())
    return found


def _order(ds: Dataset) -> tuple[int, int]:
    temporal = 0
    for frame in ds.get("PerFrameFunctionalGroupsSequence", ())[:1]:
        for content in frame.get("FrameContentSequence", ()):
            temporal = int(content.get("TemporalPositionIndex") or 0)
    return temporal, int(ds.get("InstanceNumber") or 0)


def read_asl_headers(files: Iterable[Path]) -> AslHeaders:
    """Read the ASL facts of one series' DICOM files (headers only)."""
    volumes: list[tuple[tuple[int, int], str]] = []
    consistent = True
    labelling = ""
    crushers: set[str] = set()
    protocol: dict[str, str] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types on damaged input
            logger.info("cannot read ASL header of %s: %s", path, exc)
            return AslHeaders()
        labelling = labelling or str(ds.get("ArterialSpinLabelingContrast", "") or "").upper()
        protocol = protocol or siemens_protocol(ds)
        crushers |= _frame_values(ds, "ASLCrusherFlag")
        contexts = _frame_values(ds, "ASLContext")
        if len(contexts) != 1:
            consistent = False
        else:
            volumes.append((_order(ds), contexts.pop()))
    volumes.sort()
    return AslHeaders(
        contexts=tuple(c for _order_key, c in volumes) if consistent else (),
        labelling=labelling,
        protocol=protocol,
        crusher=crushers.pop() if len(crushers) == 1 else "",
    )


def _seconds(protocol: Mapping[str, str], key: str) -> float | None:
    try:
        return round(float(protocol[key]) / 1e6, 6)
    except (KeyError, ValueError):
        return None


def _volume_types(contexts: Sequence[str], volumes: int) -> tuple[str, ...] | str:
    types = tuple(_CONTEXTS.get(c, "") for c in contexts)
    if not types:
        return "no per-volume ASLContext"
    if "" in types or len(types) != volumes:
        return f"ASLContext {list(contexts)} does not describe the {volumes} volumes"
    m0 = 0
    while m0 < len(types) and types[m0] == "m0scan":
        m0 += 1
    rest = types[m0:]
    pairs = [rest[i : i + 2] for i in range(0, len(rest), 2)]
    if not rest or any(sorted(pair) != ["control", "label"] for pair in pairs):
        return f"ASLContext {list(contexts)} is not M0 volumes then label/control pairs"
    return types


def asl_fields(headers: AslHeaders, sidecar: Mapping[str, Any], volumes: int) -> AslPlan | list[str]:
    """The fields BIDS requires, or the names of those no header records."""
    missing: list[str] = []
    metadata: dict[str, Any] = {}
    types = _volume_types(headers.contexts, volumes)
    if isinstance(types, str):
        logger.info("ASL volume order unusable: %s", types)
        missing += ["aslcontext (volume order)", "M0Type", "TotalAcquiredPairs"]
        types = ()
    else:
        if "m0scan" in types:
            metadata["M0Type"] = "Included"
        else:
            missing.append("M0Type")  # "Separate", "Estimate" or "Absent": no header says which
        metadata["TotalAcquiredPairs"] = types.count("label")
    labelling = _LABELLING.get(headers.labelling) or sidecar.get("ArterialSpinLabelingType")
    if labelling is None:
        missing.append("ArterialSpinLabelingType")
    else:
        metadata["ArterialSpinLabelingType"] = labelling
    protocol = headers.protocol
    delay = _seconds(protocol, "sAsl.sPostLabelingDelay[0]") or sidecar.get("PostLabelingDelay")
    if protocol.get("sAsl.ulDelayArraySize", "1").strip() not in ("", "0", "1"):
        missing.append("PostLabelingDelay (one per volume: a multi-delay protocol is not decoded)")
    elif delay is None:
        missing.append("PostLabelingDelay")
    else:
        metadata["PostLabelingDelay"] = delay
    if labelling in ("PCASL", "CASL"):
        duration = _seconds(protocol, "sAsl.ulLabelingDuration") or sidecar.get("LabelingDuration")
        if duration is None:
            missing.append("LabelingDuration")
        else:
            metadata["LabelingDuration"] = duration
    elif labelling == "PASL":
        missing.append("BolusCutOffFlag")  # not decoded from Siemens protocols yet
    suppression = protocol.get("sAsl.ulSuppressionMode")
    if suppression is None:
        missing.append("BackgroundSuppression")
    else:
        metadata["BackgroundSuppression"] = suppression.strip() != "1"
        if metadata["BackgroundSuppression"]:
            missing.append("BackgroundSuppressionNumberPulses")  # timing not decoded yet
    preparation = _seconds(protocol, "alTR[0]")
    if preparation is None:
        missing.append("RepetitionTimePreparation")
    else:
        metadata["RepetitionTimePreparation"] = preparation
    if headers.crusher in ("YES", "NO"):
        metadata["VascularCrushing"] = headers.crusher == "YES"
    for key in ("MagneticFieldStrength", "MRAcquisitionType", "EchoTime", "FlipAngle"):
        if key not in sidecar:
            missing.append(key)
    return missing if missing else AslPlan(metadata=metadata, volume_types=types)
