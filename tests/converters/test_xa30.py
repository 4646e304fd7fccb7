"""The XA30 enhanced-MR session converted with convert_tree, checked against dcm2niix's own
reference output (``expected/``) and the BIDS validator."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converters import series_outputs
from converters.bids.dataset import BIDS_VERSION, IDENTIFYING_KEYS
from tests.converters.helpers import Converted
from tests.validator import validate

SUB = "sub-12343hucheng"
SES = "ses-20220711"
PREFIX = f"{SUB}/{SES}"

#: Series number -> (expected stem in the dataset, reference name in expected/).
PLACED = {
    5: (f"{PREFIX}/anat/{SUB}_{SES}_acq-tfl_T1w", "5_anat-T1w_acq-tfl"),
    6: (f"{PREFIX}/anat/{SUB}_{SES}_acq-tfl_rec-norm_T1w", "6_anat-T1w_acq-tfl"),
    7: (f"{PREFIX}/func/{SUB}_{SES}_task-fa_run-1_bold", "7_func-bold_task-fa_run-1"),
    10: (f"{PREFIX}/dwi/{SUB}_{SES}_dir-PA_dwi", "10_DWI_dir80_PA"),
    17: (f"{PREFIX}/dwi/{SUB}_{SES}_dir-AP_dwi", "17_DWI_dir80_AP"),
}

#: The other placed series: number -> expected stems (one per image dcm2niix writes).
DWI = f"{PREFIX}/dwi/{SUB}_{SES}"
FMAP = f"{PREFIX}/fmap/{SUB}_{SES}"
ALSO_PLACED = {
    8: [f"{FMAP}_magnitude1", f"{FMAP}_magnitude2"], 9: [f"{FMAP}_phasediff"],
    11: [f"{DWI}_dir-PA_ADC"], 12: [f"{DWI}_dir-PA_trace"], 13: [f"{DWI}_dir-PA_FA"],
    14: [f"{DWI}_dir-PA_colFA"], 16: [f"{DWI}_dir-PA_S0map"],
    19: [f"{DWI}_dir-AP_ADC"], 20: [f"{DWI}_dir-AP_trace"], 21: [f"{DWI}_dir-AP_FA"],
    22: [f"{DWI}_dir-AP_colFA"], 24: [f"{DWI}_dir-AP_S0map"],
    25: [f"{PREFIX}/perf/{SUB}_{SES}_rec-norm_asl"],
}  # fmt: skip
ASL_CONTEXT = f"{PREFIX}/perf/{SUB}_{SES}_rec-norm_aslcontext.tsv"

#: Series that must be skipped, with a word their reason must contain.
SKIPPED = {27: "scanner-derived", 28: "scanner-derived", 99: "not an image"}


def test_every_series_is_accounted_for(xa30: Path, xa30_dataset: Converted) -> None:
    numbers = sorted(int(p.name.split("_")[0]) for p in (xa30 / "In").iterdir())
    assert sorted(r.series_number for r in xa30_dataset.results) == numbers
    assert all(r.series_uid for r in xa30_dataset.results)  # no stray non-DICOM files in the suite
    for result in xa30_dataset.results:
        assert result.series_number is not None
        if result.series_number in PLACED:
            assert result.state == "converted", result
            assert result.reason is None
        elif result.series_number in ALSO_PLACED:
            stems = ALSO_PLACED[result.series_number]
            extra = [ASL_CONTEXT] if result.series_number == 25 else []
            expected = [f"{stem}{ext}" for stem in stems for ext in (".json", ".nii.gz")] + extra
            assert result.outputs == tuple(sorted(expected)), result
        else:
            assert result.state == "skipped", result
            assert result.reason and SKIPPED[result.series_number] in result.reason, result
            assert result.outputs == ()


@pytest.mark.parametrize("number", sorted(PLACED))
def test_placed_series_match_dcm2niix_reference(number: int, xa30: Path, xa30_dataset: Converted) -> None:
    stem, reference = PLACED[number]
    root, expected = xa30_dataset.root, xa30 / "expected"
    result = xa30_dataset.by_number(number)
    extensions = [".json", ".nii.gz"] + ([".bval", ".bvec"] if "_dwi" in stem else [])
    assert result.outputs == tuple(sorted(f"{stem}{ext}" for ext in extensions))
    assert result.subject == "12343hucheng" and result.session == "20220711"
    assert series_outputs(root, result.series_uid) == list(result.outputs)

    ours = nib.load(root / f"{stem}.nii.gz")
    theirs = nib.load(expected / f"{reference}.nii.gz")
    assert ours.shape == theirs.shape
    assert np.array_equal(ours.affine, theirs.affine)
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    for ext in extensions[2:]:
        assert (root / f"{stem}{ext}").read_bytes() == (expected / f"{reference}{ext}").read_bytes()

    sidecar = json.loads((root / f"{stem}.json").read_text())
    reference_sidecar = json.loads((expected / f"{reference}.json").read_text())
    for key in ("RepetitionTime", "EchoTime", "PhaseEncodingDirection", "SliceTiming", "ImageTypeText"):
        assert sidecar.get(key) == reference_sidecar.get(key), key
    assert not IDENTIFYING_KEYS & set(sidecar)


def test_bold_sidecar_names_its_task(xa30_dataset: Converted) -> None:
    sidecar = json.loads((xa30_dataset.root / f"{PLACED[7][0]}.json").read_text())
    assert sidecar["TaskName"] == "fa"


def test_sidecars_carry_no_patient_identifiers(xa30: Path, xa30_dataset: Converted) -> None:
    sidecars = sorted(xa30_dataset.root.glob("sub-*/ses-*/*/*.json"))
    assert len(sidecars) == len(PLACED) + sum(len(stems) for stems in ALSO_PLACED.values())
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        sidecar.pop("IntendedFor", None)  # BIDS URIs of files, which carry the subject label
        text = json.dumps(sidecar)
        # The PatientID is "12343@hucheng"; only the subject label (in file names) may derive from it.
        assert "hucheng" not in text and "12343@" not in text, path
        assert "2022-07-11" not in text and '"20220711' not in text, f"a date leaked into {path}"


def test_dataset_level_files(xa30_dataset: Converted) -> None:
    root = xa30_dataset.root
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == BIDS_VERSION
    assert description["DatasetType"] == "raw"
    names = [g["Name"] for g in description["GeneratedBy"]]
    assert names == ["bidsbridge", "dcm2niix"]
    assert description["GeneratedBy"][1]["Version"] == "v1.0.20260724"
    assert (root / "participants.tsv").read_text() == f"participant_id\tage\tsex\n{SUB}\t31\tM\n"
    assert "participant_id" in json.loads((root / "participants.json").read_text())
    assert (root / "README.md").is_file()
    assert (root / "CHANGES").read_text().startswith("1.0.0\n")
    assert not (root / ".bidsignore").exists()  # nothing needs hiding from the validator
    scans = (root / PREFIX / f"{SUB}_{SES}_scans.tsv").read_text().splitlines()
    assert scans[0] == "filename\tacq_time"
    rows = dict(line.split("\t") for line in scans[1:])
    assert {
        name: rows[name] for name in list(rows) if "/anat/" in f"/{name}" or "_dwi." in name or "_bold" in name
    } == {
        f"{stem.split('/', 2)[2]}.nii.gz": time
        for stem, time in [
            (PLACED[5][0], "2022-07-11T12:05:17.042500"),
            (PLACED[6][0], "2022-07-11T12:05:17.042500"),
            (PLACED[7][0], "2022-07-11T12:09:05.225000"),
            (PLACED[10][0], "2022-07-11T12:11:19.757500"),
            (PLACED[17][0], "2022-07-11T12:12:51.665000"),
        ]
    }
    assert len(rows) == len(PLACED) + sum(len(stems) for stems in ALSO_PLACED.values())
    assert list(rows) == sorted(rows)
    # Only the placed series' files exist outside the bookkeeping folder.
    published = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".bidsbridge" not in p.parts}
    owned = {path for r in xa30_dataset.results for path in r.outputs}
    assert published - owned == {
        "CHANGES", "README.md", "dataset_description.json", "participants.json", "participants.tsv",
        f"{PREFIX}/{SUB}_{SES}_scans.tsv",
    }  # fmt: skip
    assert ASL_CONTEXT in owned


def test_bids_validator_reports_no_error(xa30_dataset: Converted) -> None:
    assert validate(xa30_dataset.root) == []


def test_bids_version_is_the_validators() -> None:
    """BIDS_VERSION must follow the schema bundled with the pinned bids-validator-deno."""
    spec = importlib.util.find_spec("bids_validator_deno")
    assert spec is not None and spec.origin is not None
    bundle = (Path(spec.origin).parent / "bids-validator.js").read_text(encoding="utf-8")
    versions = set(re.findall(r'\bbids_version: "([0-9.]+)"', bundle))
    assert versions == {BIDS_VERSION}


def _sidecar(root: Path, stem: str) -> dict[str, object]:
    data = json.loads((root / f"{stem}.json").read_text())
    assert isinstance(data, dict)
    return data


def test_field_map_set_is_linked_to_the_scans_it_corrects(xa30_dataset: Converted) -> None:
    root = xa30_dataset.root
    phasediff = _sidecar(root, f"{FMAP}_phasediff")
    assert (phasediff["EchoTime1"], phasediff["EchoTime2"]) == (0.01, 0.01246)
    magnitudes = [_sidecar(root, f"{FMAP}_magnitude{n}") for n in (1, 2)]
    assert [m["EchoTime"] for m in magnitudes] == [0.01, 0.01246]
    identifier = phasediff["B0FieldIdentifier"]
    assert identifier == "ses-20220711_fmap1"
    corrected = [PLACED[7][0], PLACED[10][0], PLACED[17][0], ALSO_PLACED[25][0]]
    for sidecar in (phasediff, *magnitudes):
        assert sidecar["B0FieldIdentifier"] == identifier
        assert sidecar["IntendedFor"] == sorted(f"bids::{stem}.nii.gz" for stem in corrected)
    for stem in corrected:
        assert _sidecar(root, stem)["B0FieldSource"] == identifier, stem
    # Derived maps and anatomy are not corrected by it.
    for stem in (PLACED[5][0], f"{DWI}_dir-PA_ADC"):
        assert "B0FieldSource" not in _sidecar(root, stem)


def test_asl_carries_what_bids_requires(xa30_dataset: Converted) -> None:
    root = xa30_dataset.root
    sidecar = _sidecar(root, ALSO_PLACED[25][0])
    assert {key: sidecar[key] for key in (
        "ArterialSpinLabelingType", "PostLabelingDelay", "LabelingDuration", "M0Type", "TotalAcquiredPairs",
        "BackgroundSuppression", "RepetitionTimePreparation", "VascularCrushing",
    )} == {
        "ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.8, "LabelingDuration": 1.8,
        "M0Type": "Included", "TotalAcquiredPairs": 3, "BackgroundSuppression": False,
        "RepetitionTimePreparation": 4.8, "VascularCrushing": False,
    }  # fmt: skip
    context = (root / ASL_CONTEXT).read_text().splitlines()
    assert context == ["volume_type", "m0scan", "label", "control", "label", "control", "label", "control"]
    assert nib.load(root / f"{ALSO_PLACED[25][0]}.nii.gz").shape[3] == len(context) - 1


def test_every_b_valued_series_is_in_dwi_and_every_task_series_in_func(xa30_dataset: Converted) -> None:
    root = xa30_dataset.root
    for bval in root.rglob("*.bval"):
        assert bval.parent.name == "dwi", bval
    for sidecar in root.glob("sub-*/ses-*/*/*.json"):
        if "TaskName" in json.loads(sidecar.read_text()):
            assert sidecar.parent.name == "func", sidecar
