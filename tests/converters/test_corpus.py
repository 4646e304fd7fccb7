"""Every suite of the corpus converted with convert_tree: the expected place of EVERY series
(a clean validator is not enough), a report that accounts for every input, 0 validator errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converters import convert_tree
from converters.bids.dataset import IDENTIFYING_KEYS
from tests.converters.helpers import Converted
from tests.validator import validate

GE = "sub-DEV/ses-20180918/func/sub-DEV_ses-20180918"
POLAR = "sub-210813petest/ses-20210813/fmap/sub-210813petest_ses-20210813"
TWELVE = "sub-ResearchCRlab/ses-20070203/func/sub-ResearchCRlab_ses-20070203"

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
    "dcm_qa_polar": {
        # GE epi_pepolar: series 6 and 8 hold both polarities (dcm2niix splits them into two
        # images each, the second under SeriesNumber 1006/1008); 7 and 9 one polarity each. All
        # spin-echo EPI field maps, runs per direction in acquisition order.
        (6, "FM_cv12_2_3mm"): [f"{POLAR}_dir-AP_run-1_epi", f"{POLAR}_dir-PA_run-1_epi"],
        (7, "FM_cv12_1_3mm"): [f"{POLAR}_dir-AP_run-2_epi"],
        (8, "FM_cv12_3_3mm"): [f"{POLAR}_dir-AP_run-3_epi", f"{POLAR}_dir-PA_run-2_epi"],
        (9, "FM_cv12_0_3mm"): [f"{POLAR}_dir-PA_run-3_epi"],
    },
    "dcm_qa_xa30i_bold": {
        # Six single-volume series of one BOLD run (classic export, MFSPLIT): one 4D run.
        (number, "func-bold_task-fa_run-1"): ["sub-999/ses-20230113/func/sub-999_ses-20230113_task-fa_run-1_bold"]
        for number in range(7001, 7007)
    },
    "dcm_qa_12bit": {
        # One series holding three single-volume mosaics (SeriesNumbers 2-4, one SOP Instance
        # UID, different pixel data): three runs of a single-volume EPI run, 4D each.
        (4, "FMRI_AX_ASC"): [f"{TWELVE}_task-FMRIAXASC_run-{n}_bold" for n in (1, 2, 3)],
    },
    "dcm_qa_ts": {
        # One image in nine transfer syntaxes (nine SeriesNumbers of one series): voxel-identical,
        # written once.
        (1, "ax_asc_35sl"): ["sub-crlab/ses-20140310/func/sub-crlab_ses-20140310_task-axasc35sl_bold"],
    },
    "dcm_qa_deident": {
        (10, "Accelerated SAG IR-SPGR"): ["sub-FRUIT/ses-20240425/anat/sub-FRUIT_ses-20240425_T1w"],
    },
    "dcm_qa_frag": {
        (5001, "anat-T1w_acq-tfl"): ["sub-999/ses-20230113/anat/sub-999_ses-20230113_acq-tfl_T1w"],
        (6001, "anat-T1w_acq-tfl"): ["sub-999/ses-20230113/anat/sub-999_ses-20230113_acq-tfl_rec-norm_T1w"],
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


def _voxels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:  # a 3D image published as 4D of one volume
        data = data[..., 0]
    return data, image.affine


#: The whole corpus, including the suites checked by other modules, for the coverage test below.
ALL_SUITES = sorted({*EXPECTED, "dcm_qa_xa30"})


@pytest.mark.parametrize("suite", ALL_SUITES, indirect=True)
def test_every_primary_image_dcm2niix_makes_lands_in_raw_bids(
    suite: Converted, corpus: Path, request: pytest.FixtureRequest
) -> None:
    """Every ORIGINAL image of the pinned dcm2niix's own conversion of the suite (``expected/``)
    is in the raw dataset with the same voxels and affine, or voxel-identical to one that is
    (a duplicate, reported); every image with b > 0 is in ``dwi/``."""
    name = request.node.callspec.params["suite"]
    published = sorted(suite.root.glob("sub-*/**/*.nii.gz"))
    loaded = {p: _voxels(p) for p in published}
    for sidecar in sorted((corpus / name / "expected").glob("**/*.json")):
        meta = json.loads(sidecar.read_text())
        if str(meta.get("ImageType", ["?"])[0]).upper() != "ORIGINAL":
            continue
        data, affine = _voxels(sidecar.parent / (sidecar.name[: -len(".json")] + ".nii.gz"))
        homes = [
            p for p, (voxels, where) in loaded.items()
            if voxels.shape == data.shape and np.allclose(where, affine, atol=1e-4) and np.array_equal(voxels, data)
        ]  # fmt: skip
        assert homes, f"{name}: {sidecar.name} (ImageType ORIGINAL) is not in the raw dataset"
        bval = sidecar.parent / (sidecar.name[: -len(".json")] + ".bval")
        if bval.is_file() and any(float(b) > 0 for b in bval.read_text().split()):
            assert all("/dwi/" in str(p) for p in homes), (sidecar.name, homes)


@pytest.mark.parametrize("suite", ["dcm_qa_xa30i_bold"], indirect=True)
def test_a_run_exported_one_volume_per_series_is_one_4d_run(suite: Converted, corpus: Path) -> None:
    (expected,) = (corpus / "dcm_qa_xa30i_bold" / "expected").glob("*.nii.gz")
    (run,) = suite.root.glob("sub-*/ses-*/func/*_bold.nii.gz")
    ours, reference = nib.load(run), nib.load(expected)
    assert ours.shape == reference.shape == (64, 64, 33, 6)
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(reference.dataobj))
    assert np.allclose(ours.affine, reference.affine)
    results = [r for r in suite.results if r.series_uid]
    assert len(results) == 6 and len({r.acquisition for r in results}) == 1
    assert all(r.members == results[0].members and len(r.members) == 6 for r in results)
    assert "as one acquisition" in results[0].notes[0]


@pytest.mark.parametrize("suite", ["dcm_qa_ts"], indirect=True)
def test_duplicates_are_written_once_and_reported(suite: Converted) -> None:
    (result,) = [r for r in suite.results if r.series_uid]
    duplicates = [note for note in result.notes if "voxel-identical" in note]
    assert len(duplicates) == 8, result.notes
    assert all("(SeriesNumber 1), which is kept" in note for note in duplicates), duplicates
