"""Every suite of the corpus converted with convert_tree: the expected place of EVERY series
(a clean validator is not enough), a report that accounts for every input, 0 validator errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converters import convert_tree
from converters.bids.dataset import IDENTIFYING_KEYS
from tests.converters.helpers import Converted
from tests.validator import validate

GE = "sub-DEV/ses-20180918/func/sub-DEV_ses-20180918"

#: suite -> (SeriesNumber, SeriesDescription) -> stems (folder/stem, no extension) of its images.
EXPECTED: dict[str, dict[tuple[int, str], list[str]]] = {
    "dcm_qa_nih": {
        # GE: four slice orders of one EPI; the task comes from the series name.
        (4, "Axial EPI-FMRI (Interleaved I to S)"): [f"{GE}_task-AxialEPIFMRIInterleavedItoS_bold"],
        (5, "Axial EPI-FMRI (Sequential I to S)"): [f"{GE}_task-AxialEPIFMRISequentialItoS_bold"],
        (6, "Axial EPI-FMRI (Interleaved S to I)"): [f"{GE}_task-AxialEPIFMRIInterleavedStoI_bold"],
        (7, "Axial EPI-FMRI (Sequential S to I)"): [f"{GE}_task-AxialEPIFMRISequentialStoI_bold"],
        # Siemens, same patient and day, later study: the session label adds the StudyTime.
        (3, "EPI PE=AP"): ["sub-DEV/ses-20180918T121229/func/sub-DEV_ses-20180918T121229_task-EPIPEAP_bold"],
        (4, "EPI PE=PA"): ["sub-DEV/ses-20180918T121229/func/sub-DEV_ses-20180918T121229_task-EPIPEPA_bold"],
        (5, "EPI PE=RL"): ["sub-DEV/ses-20180918T121229/func/sub-DEV_ses-20180918T121229_task-EPIPERL_bold"],
        (6, "EPI PE=LR"): ["sub-DEV/ses-20180918T121229/func/sub-DEV_ses-20180918T121229_task-EPIPELR_bold"],
    },
    "dcm_qa_fmap": {
        # GE: field map in Hz + magnitude in one series (BIDS case 3).
        (6, "B0map"): [
            "sub-ANON2339/ses-19700101/fmap/sub-ANON2339_ses-19700101_fieldmap",
            "sub-ANON2339/ses-19700101/fmap/sub-ANON2339_ses-19700101_magnitude",
        ],
        # Two different B0-map sequences (2D and 3D) of one session: told apart by acq, not run.
        (2, "B0Map (GRE)"): [
            "sub-geservice/ses-20201008/fmap/sub-geservice_ses-20201008_acq-2d_fieldmap",
            "sub-geservice/ses-20201008/fmap/sub-geservice_ses-20201008_acq-2d_magnitude",
        ],
        (3, "3DB0Map"): [
            "sub-geservice/ses-20201008/fmap/sub-geservice_ses-20201008_acq-3d_fieldmap",
            "sub-geservice/ses-20201008/fmap/sub-geservice_ses-20201008_acq-3d_magnitude",
        ],
        # Philips: the same in one enhanced file.
        (801, "B0 NS"): [
            "sub-ROGERS20180526/ses-20180526/fmap/sub-ROGERS20180526_ses-20180526_fieldmap",
            "sub-ROGERS20180526/ses-20180526/fmap/sub-ROGERS20180526_ses-20180526_magnitude",
        ],
        # Siemens: magnitude and phase-difference series paired into two sets of one protocol
        # (same sequence): true repeats, numbered in acquisition order.
        (2, "gre_field_magph"): [
            "sub-crlab/ses-20210715/fmap/sub-crlab_ses-20210715_run-1_magnitude1",
            "sub-crlab/ses-20210715/fmap/sub-crlab_ses-20210715_run-1_magnitude2",
        ],
        (3, "gre_field_magph"): ["sub-crlab/ses-20210715/fmap/sub-crlab_ses-20210715_run-1_phasediff"],
        (4, "gre_field_ph"): ["sub-crlab/ses-20210715/fmap/sub-crlab_ses-20210715_run-2_phasediff"],
        (5, "gre_field_mag"): [
            "sub-crlab/ses-20210715/fmap/sub-crlab_ses-20210715_run-2_magnitude1",
            "sub-crlab/ses-20210715/fmap/sub-crlab_ses-20210715_run-2_magnitude2",
        ],
    },
    "dcm_qa_mosaic": {
        (number, name): [f"sub-crlab/ses-20171021/func/sub-crlab_ses-20171021_task-{name.replace('_', '')}_bold"]
        for number, name in [
            (2, "ep2d_Asc"), (4, "ep2d_Int"), (5, "ep2d_Int_HF"), (6, "cmrr_Asc"), (7, "cmrr_Asc_HF"),
            (8, "cmrr_Int"), (9, "cmrr_Int_HF"), (10, "ep2d_Asc_HF"),
        ]
    },
    "dcm_qa_enh": {
        (6, "REST1 w SMS PF7-8"): [
            "sub-IRCSliceTiming/ses-20181022/func/sub-IRCSliceTiming_ses-20181022_task-REST1wSMSPF78_bold"
        ],
        (801, "B0 NS"): [
            "sub-ROGERS20180526/ses-20180526/fmap/sub-ROGERS20180526_ses-20180526_fieldmap",
            "sub-ROGERS20180526/ses-20180526/fmap/sub-ROGERS20180526_ses-20180526_magnitude",
        ],
    },
}  # fmt: skip

_converted: dict[str, Converted] = {}


@pytest.fixture
def suite(request: pytest.FixtureRequest, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """One conversion per suite, shared by the tests of this module."""
    name = str(request.param)
    if name not in _converted:
        root = tmp_path_factory.mktemp(name) / "bids"
        _converted[name] = Converted(root, convert_tree(corpus / name / "In", root))
    return _converted[name]


SUITES = sorted(EXPECTED)


@pytest.mark.parametrize("suite", SUITES, indirect=True)
def test_every_series_lands_where_a_curator_would_put_it(suite: Converted, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.params["suite"]
    expected = EXPECTED[name]
    series = [r for r in suite.results if r.series_uid]
    assert sorted((r.series_number or 0, r.series_description) for r in series) == sorted(expected)
    for result in series:
        stems = expected[(result.series_number or 0, result.series_description)]
        assert result.state == "converted", result
        extensions = [".json", ".nii.gz"]
        assert result.outputs == tuple(sorted(f"{stem}{ext}" for stem in stems for ext in extensions)), result
        assert all((suite.root / path).is_file() for path in result.outputs)
    # The rest of the report: the suites' own non-DICOM files, each skipped with its reason.
    for result in suite.results:
        if not result.series_uid:
            assert result.state == "skipped" and result.reason and "not a DICOM file" in result.reason, result


@pytest.mark.parametrize("suite", SUITES, indirect=True)
def test_suite_is_bids_valid(suite: Converted) -> None:
    assert validate(suite.root) == []


@pytest.mark.parametrize("suite", ["dcm_qa_fmap"], indirect=True)
def test_field_map_sets_carry_what_bids_requires(suite: Converted) -> None:
    for path in sorted(suite.root.glob("sub-*/ses-*/fmap/*_phasediff.json")):
        sidecar = json.loads(path.read_text())
        assert 0 < sidecar["EchoTime1"] < sidecar["EchoTime2"], path
    for path in sorted(suite.root.glob("sub-*/ses-*/fmap/*_fieldmap.json")):
        assert json.loads(path.read_text())["Units"] == "Hz", path


@pytest.mark.parametrize("suite", SUITES, indirect=True)
def test_sidecars_carry_no_identifiers(suite: Converted) -> None:
    for path in sorted(suite.root.glob("sub-*/ses-*/*/*.json")):
        sidecar = json.loads(path.read_text())
        assert not IDENTIFYING_KEYS & set(sidecar), path
        assert not {"InstitutionName", "StationName", "DeviceSerialNumber"} & set(sidecar), path
