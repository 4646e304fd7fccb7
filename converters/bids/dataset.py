"""Dataset-level BIDS files and their formats: dataset_description.json, README, participants,
scans tables and sidecars. Everything here is a pure function of its arguments (no clock, no
paths of the machine), so that the same series gives byte-identical files wherever converted."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from converters.errors import DatasetError
from converters.records import BidsTarget

__all__ = [
    "BIDS_VERSION",
    "IDENTIFYING_KEYS",
    "MAX_AGE",
    "Table",
    "bidsbridge_version",
    "changes_text",
    "dataset_description",
    "dump_json",
    "participant_facts",
    "participants_sidecar",
    "read_tsv",
    "readme_text",
    "render_tsv",
    "sidecar",
]

#: BIDS version written to dataset_description.json: the one of the schema bundled with
#: bids-validator-deno 3.0.2 (schema 1.2.7).
BIDS_VERSION = "1.11.1"

#: Sidecar keys never published (the README lists them and why). dcm2niix ``-ba y`` already leaves
#: out most direct identifiers; this is the second line of defence, plus what ``-ba y`` keeps:
#: the site (institution, address, department, station, device serial number — with a scan date
#: they narrow a person down), free-text study descriptions and comments typed at the scanner
#: (they often carry names or clinical detail), dates, UIDs, and dcm2niix's non-BIDS naming hint.
#: SeriesDescription and ProtocolName stay: they name the acquisition and BIDS apps use them.
IDENTIFYING_KEYS = frozenset({
    # people
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "PatientSex", "PatientAge", "PatientWeight", "PatientSize", "PatientComments",
    "AccessionNumber", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "NameOfPhysiciansReadingStudy",
    # the site
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber",
    # free text typed at the scanner
    "StudyDescription", "ProcedureStepDescription", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ImageComments",
    # dates and UIDs
    "AcquisitionDateTime", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    # not BIDS
    "BidsGuess",
})  # fmt: skip

#: A TSV file: column names, then rows keyed by column name.
Table = tuple[list[str], list[dict[str, str]]]


def dump_json(obj: Any) -> str:
    """The one JSON formatting of this package: 2-space indent, UTF-8, trailing newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def bidsbridge_version() -> str | None:
    try:
        return importlib_metadata.version("bidsbridge")
    except importlib_metadata.PackageNotFoundError:
        return None


def dataset_description(dcm2niix_version: str) -> dict[str, Any]:
    bridge: dict[str, Any] = {"Name": "bidsbridge"}
    version = bidsbridge_version()
    if version is not None:
        bridge["Version"] = version
    bridge["Description"] = "DICOM series converted on arrival and filed into BIDS"
    return {
        "Name": "bidsbridge BIDS dataset",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": [
            bridge,
            {"Name": "dcm2niix", "Version": dcm2niix_version, "CodeURL": "https://github.com/rordenlab/dcm2niix"},
        ],
    }


def readme_text() -> str:
    return (
        "# bidsbridge BIDS dataset\n"
        "\n"
        "Raw BIDS dataset written by bidsbridge: each DICOM series is converted with dcm2niix\n"
        "and filed under `sub-<label>/ses-<label>/<datatype>/`. Series that have no valid place in\n"
        "raw BIDS yet are not written; bidsbridge reports each of them with its reason.\n"
        "\n"
        "`.bidsbridge/` holds bidsbridge's bookkeeping (which files belong to which series);\n"
        "do not edit it by hand.\n"
    )


def changes_text() -> str:
    """The CHANGES file (CPAN Changes form) started with the dataset; curators add entries."""
    return (
        "1.0.0\n"
        "  - Dataset started by bidsbridge: DICOM series converted with dcm2niix and filed into BIDS\n"
        "    as they arrive; series added later are listed in each session's scans.tsv.\n"
    )


def participants_sidecar() -> dict[str, Any]:
    return {
        "participant_id": {
            "Description": "Participant label: the DICOM PatientID reduced to letters and digits, "
            "unless the converting user gave one"
        },
        "age": {
            "Description": "Age at the earliest study that records one (DICOM PatientAge), in years, "
            "capped at 89 for privacy",
            "Units": "year",
        },
        "sex": {
            "Description": "DICOM PatientSex",
            "Levels": {"M": "male", "F": "female", "O": "other"},
        },
    }


#: Largest age written (BIDS: cap ages for privacy).
MAX_AGE = 89
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def participant_facts(sex: str, age: str) -> dict[str, str]:
    """``sex`` and ``age`` columns from DICOM PatientSex / PatientAge (``034Y``, ``006M``): only
    values a header really records. ``000Y`` is what anonymisers write (a real infant's age comes
    in days, weeks or months), so it counts as absent; ages are capped at :data:`MAX_AGE`."""
    facts: dict[str, str] = {}
    if sex.strip().upper() in ("M", "F", "O"):
        facts["sex"] = sex.strip().upper()
    found = _AGE.match(age.strip().upper())
    if found and int(found.group(1)) > 0:
        years = int(found.group(1)) * _AGE_UNIT_DAYS[found.group(2)] / 365.25
        capped = min(years, MAX_AGE)
        facts["age"] = str(int(capped)) if found.group(2) == "Y" or capped == MAX_AGE else f"{capped:.2f}"
    return facts


def sidecar(metadata: Mapping[str, Any], target: BidsTarget) -> dict[str, Any]:
    """The published sidecar: dcm2niix's, minus :data:`IDENTIFYING_KEYS`, plus the target's fields."""
    published = {key: value for key, value in metadata.items() if key not in IDENTIFYING_KEYS}
    published.update(target.metadata)
    return published


def read_tsv(path: Path) -> Table | None:
    """Read a BIDS TSV file, or None if it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    lines = text.splitlines()
    if not lines:
        return [], []
    columns = lines[0].split("\t")
    rows: list[dict[str, str]] = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        values = line.split("\t")
        if len(values) != len(columns):
            raise DatasetError(
                f"{path} line {number} has {len(values)} columns, the header {len(columns)}; fix the file by hand"
            )
        rows.append(dict(zip(columns, values, strict=True)))
    return columns, rows


def render_tsv(columns: Iterable[str], rows: Iterable[Mapping[str, str]]) -> str:
    names = list(columns)
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
    writer.writerow(names)
    for row in rows:
        writer.writerow([row.get(name, "n/a") for name in names])
    return buffer.getvalue()
