"""The classifier's evidence rules one by one, on real corpus series where the corpus has such
a series (named in each test) and on synthetic :class:`SeriesFacts` holding only the header facts
the rule reads otherwise; plus the stages around them: split (partition, deduplicate) and regroup.

Every Skip is checked for its code (:data:`converters.records.SKIP_CODES`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from converters import convert_tree
from converters.bids.timing import bold_timing, rewrite_header
from converters.classify import (
    SeriesFacts,
    classify,
    rule_anatomical,
    rule_bids_guess,
    rule_localizer,
    rule_pepolar,
    rule_postfix,
    rule_sbref,
    rule_unrecognised,
)
from converters.conversion import run_dcm2niix
from converters.discover import discover
from converters.records import SKIP_CODES, BidsTarget, ConvertedImage, DicomSeries, SeriesPart, Skip, SkipCode
from converters.regroup import acquisition_uid, regroup
from converters.split import ImageSet, deduplicate, partition
from tests.converters.helpers import make_series

Affine = tuple[tuple[float, ...], ...]

#: Voxel-to-world affines whose slice axis (voxel axis k) is z, x and y: axial, sagittal, coronal.
AXIAL: Affine = ((1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 1.0, 0), (0, 0, 0, 1.0))
SAGITTAL: Affine = ((0, 0, 1.0, 0), (1.0, 0, 0, 0), (0, 1.0, 0, 0), (0, 0, 0, 1.0))
CORONAL: Affine = ((1.0, 0, 0, 0), (0, 0, 1.0, 0), (0, 1.0, 0, 0), (0, 0, 0, 1.0))


_series = make_series


def _converted(
    shape: tuple[int, ...],
    meta: Mapping[str, object],
    affine: Affine = AXIAL,
    *,
    postfix: str = "",
    nifti: Path | None = None,
) -> ConvertedImage:
    return ConvertedImage(
        nifti or Path(f"series{postfix}.nii.gz"), Path(f"series{postfix}.json"), None, None, dict(meta),
        postfix=postfix, shape=shape, affine=affine,
    )  # fmt: skip


def _image(shape: tuple[int, ...], affine: Affine = AXIAL, **meta: object) -> ConvertedImage:
    """A dcm2niix image without postfix whose sidecar holds ``meta``."""
    return _converted(shape, meta, affine)


def _facts(
    *images: ConvertedImage, siblings: tuple[tuple[ConvertedImage, ...], ...] = (), **series: object
) -> SeriesFacts:
    return SeriesFacts(_series(**series), images, siblings=siblings)


def _skip(decision: object, code: SkipCode, *words: str) -> Skip:
    """``decision`` as a Skip with ``code``, its reason holding ``words``."""
    assert isinstance(decision, Skip), decision
    assert code in SKIP_CODES and decision.code == code, decision
    for word in words:
        assert word in decision.reason, (word, decision.reason)
    return decision


def _real_facts(folder: Path, work: Path) -> list[SeriesFacts]:
    """The facts the pipeline classifies for the one series in ``folder``: dcm2niix's images
    grouped into acquisitions, each with its siblings (as :mod:`converters.pipeline` does)."""
    (series,) = discover(folder).series
    run = run_dcm2niix(series.files, work)
    sets, _duplicates = deduplicate(partition(run.images))
    return [
        SeriesFacts(series, s.images, siblings=tuple(o.images for o in sets if o is not s), residue=s.residue)
        for s in sets
    ]


def _without(facts: SeriesFacts, *keys: str) -> SeriesFacts:
    """``facts`` with sidecar fields ``keys`` removed from its images and its siblings'."""

    def strip(images: tuple[ConvertedImage, ...]) -> tuple[ConvertedImage, ...]:
        return tuple(replace(i, metadata={k: v for k, v in i.metadata.items() if k not in keys}) for i in images)

    return replace(facts, images=strip(facts.images), siblings=tuple(strip(images) for images in facts.siblings))


# --- pepolar: spin-echo EPI field maps ------------------------------------------------------

#: The sidecar fields of which fmap/epi needs one.
READOUT = ("TotalReadoutTime", "EffectiveEchoSpacing")


def test_pepolar_both_polarities_in_one_series(corpus: Path, tmp_path: Path) -> None:
    """Real: dcm_qa_polar series 6, GE ``epi_pepolar`` with both polarities (dcm2niix splits it
    into two images, SeriesNumber 6 and 1006)."""
    facts = _real_facts(corpus / "dcm_qa_polar" / "In" / "6_FM_cv12_2_3mm", tmp_path)
    assert len(facts) == 2
    decisions = [classify(f) for f in facts]
    assert all(isinstance(d, BidsTarget) and (d.datatype, d.suffix, d.rule) == ("fmap", "epi", "pepolar")
               for d in decisions), decisions  # fmt: skip
    assert sorted(d.entities["dir"] for d in decisions if isinstance(d, BidsTarget)) == ["AP", "PA"]
    for one in facts:
        # The evidence, seen in the reason given when the readout time is missing: the sequence ...
        bare = rule_pepolar(_without(one, *READOUT))
        _skip(bare, "missing-metadata", "sequence 'research/ABCD/epi_pepolar'", "TotalReadoutTime")
        # ... and without sequence name and dcm2niix's guess, the two polarities alone.
        nameless = _without(one, "SequenceName", "BidsGuess")
        assert nameless.opposite_polarity_in_series
        assert rule_pepolar(nameless) == classify(one)
        _skip(rule_pepolar(_without(nameless, *READOUT)), "missing-metadata", "both phase-encoding polarities")


def test_pepolar_reverse_polarity_only(corpus: Path, tmp_path: Path) -> None:
    """Real: dcm_qa_polar series 7, the reverse-polarity-only mode (4 volumes, j-)."""
    (facts,) = _real_facts(corpus / "dcm_qa_polar" / "In" / "7_FM_cv12_1_3mm", tmp_path)
    assert facts.volumes == 4 and not facts.siblings and not facts.opposite_polarity_in_series
    assert classify(facts) == BidsTarget("fmap", "epi", {"dir": "AP"}, rule="pepolar")
    # Without its sequence name, dcm2niix's fmap/epi guess is the evidence left.
    guessed = _without(facts, "SequenceName")
    assert rule_pepolar(guessed) == BidsTarget("fmap", "epi", {"dir": "AP"}, rule="pepolar")
    _skip(rule_pepolar(_without(guessed, *READOUT)), "missing-metadata", "dcm2niix guessed fmap/epi")


def _se_epi(volumes: int, **meta: object) -> ConvertedImage:
    shape = (64, 64, 30) if volumes == 1 else (64, 64, 30, volumes)
    fields = {"ScanningSequence": "SE\\EP", "SequenceName": "*epse2d1_90", "PhaseEncodingDirection": "j-", **meta}
    return _converted(shape, fields)


def test_pepolar_spin_echo_epi_without_a_name() -> None:
    """Synthetic (the corpus has no unnamed Siemens SE-EPI field map)."""
    one = _facts(_se_epi(1, TotalReadoutTime=0.05))
    assert one.spin_echo and one.epi
    assert classify(one) == BidsTarget("fmap", "epi", {"dir": "AP"}, rule="pepolar")
    spacing = _facts(_se_epi(1, EffectiveEchoSpacing=0.0005))
    assert classify(spacing) == BidsTarget("fmap", "epi", {"dir": "AP"}, rule="pepolar")
    # BIDS requires the readout time of an EPI field map: without it, skipped naming it.
    _skip(classify(_facts(_se_epi(1))), "missing-metadata", "spin-echo EPI of 1 volume(s)", "TotalReadoutTime")
    # Three volumes is the most a spin-echo readout alone makes a field map of.
    three = classify(_facts(_se_epi(3, TotalReadoutTime=0.05)))
    assert isinstance(three, BidsTarget) and three.rule == "pepolar"
    four = _facts(_se_epi(4, TotalReadoutTime=0.05))
    assert rule_pepolar(four) is None and classify(four).rule == "bold"


def test_a_long_spin_echo_epi_run_is_not_a_field_map() -> None:
    long_run = _facts(_se_epi(200, TotalReadoutTime=0.05), series_description="se_bold_rest")
    assert rule_pepolar(long_run) is None
    decision = classify(long_run)
    assert isinstance(decision, BidsTarget) and (decision.datatype, decision.suffix) == ("func", "bold")


def test_a_single_gradient_echo_epi_volume_is_bold_not_a_field_map() -> None:
    image = _image((64, 64, 33), ScanningSequence="EP", SequenceName="*epfid2d1_64", PhaseEncodingDirection="j-",
                   TotalReadoutTime=0.03)  # fmt: skip
    facts = _facts(image)
    assert facts.epi and not facts.spin_echo
    assert rule_pepolar(facts) is None
    decision = classify(facts)
    assert isinstance(decision, BidsTarget), decision
    assert (decision.datatype, decision.suffix, decision.rule) == ("func", "bold", "bold")
    assert decision.entities == {"task": "unnamed"}


# --- bold: EPI time series, header timing --------------------------------------------------


@pytest.mark.parametrize("suite", ["dcm_qa_ts", "dcm_qa_12bit"])
def test_a_single_volume_epi_is_a_4d_bold_run_timed_like_its_sidecar(suite: str, corpus: Path, tmp_path: Path) -> None:
    """Real: dcm_qa_ts (one volume in nine transfer syntaxes) and dcm_qa_12bit (three single
    volumes): dcm2niix writes each as a 3D image."""
    references = [np.asanyarray(nib.load(p).dataobj) for p in sorted((corpus / suite / "expected").glob("*.nii.gz"))]
    assert references and all(data.ndim == 3 for data in references)  # what dcm2niix wrote
    root = tmp_path / "bids"
    results = [r for r in convert_tree(corpus / suite / "In", root) if r.series_uid]
    assert results and all(r.state == "converted" for r in results), results
    runs = sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz"))
    assert runs and sorted(str(p.relative_to(root)) for p in runs) == sorted(
        path for r in results for path in r.outputs if path.endswith(".nii.gz")
    )
    for run in runs:
        image = nib.load(run)
        sidecar = json.loads(run.with_name(run.name.replace(".nii.gz", ".json")).read_text())
        assert len(image.shape) == 4 and image.shape[3] == 1, image.shape
        assert abs(float(image.header["pixdim"][4]) - sidecar["RepetitionTime"]) < 0.001
        assert image.header.get_xyzt_units()[1] == "sec"
        volume = np.asanyarray(image.dataobj)[..., 0]
        assert any(np.array_equal(volume, data) for data in references), run  # voxels untouched


def _write_nifti(path: Path, data: np.ndarray, *, tr: float | None, unit: str = "sec") -> None:
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    if tr is not None:
        image.header.set_zooms((2.0, 2.0, 3.0, tr))
    image.header.set_xyzt_units("mm", unit)
    nib.save(image, path)


@pytest.mark.parametrize(
    ("shape", "header_tr", "unit", "sidecar", "expected_tr"),
    [
        ((8, 8, 4, 3), 1.95, "sec", {"RepetitionTime": 2.0}, 2.0),  # GE: the header's TR differs
        ((8, 8, 4, 3), 2000.0, "msec", {"RepetitionTime": 2.0}, 2.0),  # right TR, other unit
        ((8, 8, 4), None, "sec", {"RepetitionTime": 0.8}, 0.8),  # 3D: made 4D of one volume
        ((8, 8, 4, 3), 1.5, "sec", {}, 1.5),  # no sidecar TR: the header's is added to it
    ],
)
def test_bold_header_timing_is_made_to_agree_with_the_sidecar(
    tmp_path: Path,
    shape: tuple[int, ...],
    header_tr: float | None,
    unit: str,
    sidecar: Mapping[str, float],
    expected_tr: float,
) -> None:
    """Synthetic (a GE-like header whose TR is not the sidecar's is not in the corpus)."""
    data = np.random.default_rng(7).integers(-300, 3000, size=shape, dtype=np.int16)
    source, fixed = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    _write_nifti(source, data, tr=header_tr, unit=unit)
    change = bold_timing(source, sidecar)
    if not sidecar:
        assert change.sidecar == {"RepetitionTime": pytest.approx(expected_tr)}
        assert not change.header_changes  # already consistent: nothing to rewrite
        return
    assert change.header_changes
    rewrite_header(source, fixed, change)
    image = nib.load(fixed)
    assert len(image.shape) == 4 and image.shape[:3] == shape[:3]
    assert abs(float(image.header["pixdim"][4]) - expected_tr) < 0.001
    assert image.header.get_xyzt_units() == ("mm", "sec")
    assert np.array_equal(np.asanyarray(image.dataobj).reshape(shape), data)
    assert np.array_equal(image.affine, nib.load(source).affine)
    assert not bold_timing(fixed, sidecar).header_changes  # now consistent


# --- localizer ---------------------------------------------------------------------------------
# The corpus has no localizer series: all synthetic.


def test_a_tri_plane_localizer_split_by_orientation_is_skipped() -> None:
    stacks = [(_image((256, 256, 5), affine),) for affine in (AXIAL, SAGITTAL, CORONAL)]
    for index, images in enumerate(stacks):
        siblings = tuple(other for j, other in enumerate(stacks) if j != index)
        _skip(classify(_facts(*images, siblings=siblings)), "localizer", "3 stacks", "ax, cor, sag")
    # One stack of five slices alone is no localizer; two stacks in one plane neither.
    assert rule_localizer(_facts(*stacks[0])) is None
    assert rule_localizer(_facts(*stacks[0], siblings=((_image((256, 256, 5), AXIAL),),))) is None


def test_a_single_volume_of_few_slices_is_a_localizer() -> None:
    _skip(classify(_facts(_image((256, 256, 3), ScanningSequence="GR"))), "localizer", "3 slice(s)")
    assert rule_localizer(_facts(_image((256, 256, 4), ScanningSequence="GR"))) is None
    assert rule_localizer(_facts(_image((64, 64, 3), ScanningSequence="EP", PhaseEncodingDirection="j"))) is None


def test_a_2d_t2_tse_stack_is_not_a_localizer() -> None:
    tse = _image((512, 512, 40), ScanningSequence="SE", SequenceName="*tse2d1_15", RepetitionTime=4.0,
                 EchoTime=0.09, MRAcquisitionType="2D")  # fmt: skip
    assert rule_localizer(_facts(tse)) is None
    assert classify(_facts(tse)) == BidsTarget("anat", "T2w", {"acq": "ax2d"}, rule="contrast")


# --- anatomical contrast from sequence type and timing ------------------------------------------


@pytest.mark.parametrize(
    ("meta", "affine", "name", "suffix", "entities"),
    [
        ({"ScanningSequence": "SE", "RepetitionTime": 4.0, "EchoTime": 0.09, "MRAcquisitionType": "2D"},
         AXIAL, "", "T2w", {"acq": "ax2d"}),
        ({"ScanningSequence": "SE\\IR", "RepetitionTime": 9.0, "EchoTime": 0.1, "InversionTime": 2.5,
          "MRAcquisitionType": "2D"}, SAGITTAL, "", "FLAIR", {"acq": "sag2d"}),
        ({"ScanningSequence": "GR\\IR", "RepetitionTime": 0.007, "EchoTime": 0.003, "InversionTime": 0.45,
          "MRAcquisitionType": "3D", "FlipAngle": 12}, AXIAL, "", "T1w", {}),
        ({"ScanningSequence": "SE", "RepetitionTime": 3.0, "EchoTime": 0.02, "MRAcquisitionType": "2D"},
         CORONAL, "", "PDw", {"acq": "cor2d"}),
        ({"ScanningSequence": "GR", "RepetitionTime": 0.02, "EchoTime": 0.004, "FlipAngle": 5,
          "MRAcquisitionType": "3D"}, AXIAL, "", "PDw", {}),
        ({"ScanningSequence": "SE", "RepetitionTime": 0.5, "EchoTime": 0.012, "MRAcquisitionType": "2D"},
         AXIAL, "", "T1w", {"acq": "ax2d"}),
        ({"ScanningSequence": "GR", "RepetitionTime": 0.6, "EchoTime": 0.02, "FlipAngle": 20,
          "MRAcquisitionType": "2D"}, AXIAL, "", "T2starw", {"acq": "ax2d"}),
        # By name: the timing alone would say spoiled gradient echo (T1w).
        ({"ScanningSequence": "GR", "RepetitionTime": 0.022, "EchoTime": 0.0036, "FlipAngle": 18,
          "MRAcquisitionType": "3D"}, AXIAL, "TOF_3D_multi-slab", "angio", {}),
    ],
    ids=["T2w-TSE", "FLAIR", "T1w-IR-SPGR", "PDw-SE", "PDw-GRE", "T1w-SE", "T2starw", "TOF"],
)  # fmt: skip
def test_the_contrast_rule(
    meta: dict[str, object], affine: Affine, name: str, suffix: str, entities: dict[str, str]
) -> None:
    """Synthetic: none of these is in the corpus without a ReproIn name or dcm2niix guess."""
    facts = _facts(_converted((256, 256, 40), meta, affine), series_description=name)
    expected = BidsTarget("anat", suffix, entities, rule="contrast")
    assert rule_anatomical(facts) == expected
    assert classify(facts) == expected


@pytest.mark.parametrize(
    "folder", ["dcm_qa_xa30/In/5_anat-T1w_acq-tfl", "dcm_qa_deident/In"], ids=["XA30-MPRAGE", "GE-IR-SPGR"]
)
def test_the_contrast_rule_on_real_t1w_series(folder: str, corpus: Path, tmp_path: Path) -> None:
    """Real: the XA30 MPRAGE (ScanningSequence GR\\IR, TI 0.9 s) and the de-identified GE
    IR-SPGR (GR, TI 0.4 s). In the pipeline their ReproIn name or dcm2niix's guess decides
    first; the contrast rule alone agrees."""
    (facts,) = _real_facts(corpus / folder, tmp_path)
    assert rule_anatomical(facts) == BidsTarget("anat", "T1w", {}, rule="contrast")
    decision = classify(facts)
    assert isinstance(decision, BidsTarget) and decision.suffix == "T1w" and decision.rule in ("reproin", "bids-guess")


def test_a_b1_map_dcm2niix_recognised_stays_unrecognised() -> None:
    b1 = _image((64, 64, 40), ScanningSequence="GR", SequenceName="*tfl2d1_16", RepetitionTime=0.005,
                EchoTime=0.002, FlipAngle=8, MRAcquisitionType="2D",
                BidsGuess=["fmap", "_acq-tflb1map_TB1TFL"])  # fmt: skip
    facts = _facts(b1, series_description="tfl_b1map")
    # The timing alone would say spoiled gradient echo (T1w): the contrast rule defers to dcm2niix.
    assert rule_anatomical(facts) is None
    # Left to the anatomical rules, it stays unrecognised, the reason naming dcm2niix's guess ...
    anatomical = (rule_bids_guess, rule_anatomical, rule_unrecognised)
    skipped = classify(facts, rules=anatomical)
    _skip(skipped, "unrecognised", "not recognised", "dcm2niix guessed fmap/_acq-tflb1map_TB1TFL")
    # ... and whatever the other rules make of it, never an anatomical image.
    decision = classify(facts)
    assert not (isinstance(decision, BidsTarget) and decision.datatype == "anat"), decision


def test_the_unrecognised_reason_names_the_evidence() -> None:
    gre = _image((256, 256, 40), ScanningSequence="GR", SequenceName="*fl2d1", RepetitionTime=0.05, EchoTime=0.012)
    _skip(
        classify(_facts(gre)), "unrecognised",
        "ImageType ORIGINAL\\PRIMARY\\M", "not EPI (ScanningSequence GR, SequenceName *fl2d1)",
        "1 volume(s) of 40 slice(s)", "0.05 s", "0.012 s", "fit no contrast rule",
    )  # fmt: skip
    # A time series of EPI marked DIFFUSION without b-values: neither dwi nor bold.
    epi = _image((64, 64, 30, 40), ScanningSequence="EP", PhaseEncodingDirection="j")
    facts = _facts(epi, image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"))
    reason = _skip(classify(facts), "unrecognised", "; EPI;", "40 volume(s) of 30 slice(s)", "no TR/TE").reason
    assert "not EPI" not in reason


# --- sbref -------------------------------------------------------------------------------------
# The corpus has no single-band reference: synthetic.


def test_single_band_references_by_dcm2niix_guess_without_the_name() -> None:
    volume = _image((64, 64, 30), ScanningSequence="EP", PhaseEncodingDirection="j-",
                    BidsGuess=["func", "_task-rest_sbref"])  # fmt: skip
    facts = _facts(volume, series_description="rest_mb8")
    expected = BidsTarget("func", "sbref", {"task": "restmb8"}, {"TaskName": "restmb8"}, rule="sbref")
    assert rule_sbref(facts) == expected and classify(facts) == expected
    # Without the guess (and no SBRef in the name), the same volume is a one-volume run.
    plain = _facts(_without(facts, "BidsGuess").images[0], series_description="rest_mb8")
    assert rule_sbref(plain) is None and classify(plain).rule == "bold"
    # Beside diffusion: dwi/…_sbref with dir.
    dwi = _image((64, 64, 30), ScanningSequence="EP", PhaseEncodingDirection="j-", BidsGuess=["dwi", "_dir-AP_sbref"])
    assert classify(_facts(dwi, series_description="ep2d_diff_mb3")) == BidsTarget(
        "dwi", "sbref", {"dir": "AP"}, rule="sbref"
    )
    # No name at all (a de-identified export): still a reference, under the task its run gets.
    nameless = classify(_facts(volume))
    assert isinstance(nameless, BidsTarget), nameless
    assert (nameless.datatype, nameless.suffix, nameless.rule) == ("func", "sbref", "sbref")
    assert nameless.entities == {"task": "unnamed"} and "no SeriesDescription" in nameless.notes[0]


# --- postfix: images dcm2niix marks as no acquisition of their own ------------------------------
# The corpus has no such image: synthetic.


@pytest.mark.parametrize(
    ("residue", "code"),
    [("_ADC", "scanner-derived"), ("_MoCo", "scanner-derived"), ("_ROI1", "not-an-image"),
     ("_PS", "not-an-image"), ("_c2", "no-bids-datatype")],
)  # fmt: skip
def test_the_postfix_rule(residue: str, code: SkipCode) -> None:
    bold = _converted((64, 64, 30, 100), {"ScanningSequence": "EP", "PhaseEncodingDirection": "j"}, postfix=residue)
    facts = replace(_facts(bold, series_description="rest"), residue=residue)
    assert _skip(classify(facts), code, repr(residue)).rule == "postfix"
    assert classify(replace(facts, residue="")).rule == "bold"


@pytest.mark.parametrize("residue", ["", "a", "_i00002", "_t1500"])
def test_other_postfixes_are_left_to_the_other_rules(residue: str) -> None:
    assert rule_postfix(replace(_facts(_image((64, 64, 30))), residue=residue)) is None


# --- split: acquisitions of one series, duplicates --------------------------------------------


def test_partition_groups_echoes_and_parts_into_one_acquisition() -> None:
    postfixes = ["_i00002", "_ph", "a", "", "_fieldmaphz", "_e1a", "_e2"]
    sets = partition([_converted((8, 8, 4), {}, postfix=p) for p in postfixes])
    assert [(s.index, s.residue, [i.postfix for i in s.images]) for s in sets] == [
        (0, "", ["", "_e2", "_fieldmaphz", "_ph"]),
        (1, "_i00002", ["_i00002"]),
        (2, "a", ["_e1a", "a"]),
    ]
    assert sets[1].tokens == ("i00002",) and sets[0].tokens == ()
    # Sets are ordered by SeriesNumber first: the conflict-letter set of a lower series leads.
    numbered = partition([
        _converted((8, 8, 4), {"SeriesNumber": number}, postfix=postfix)
        for postfix, number in (("", 1006), ("_e2", 1006), ("a", 6), ("_e1a", 6))
    ])  # fmt: skip
    assert [(s.residue, s.series_number) for s in numbered] == [("a", 6), ("", 1006)]
    assert numbered[0].describe() == "images '_e1a', 'a' (SeriesNumber 6)"


def _nifti_image(
    path: Path, data: np.ndarray, postfix: str, *, slope: float | None = None, **meta: object
) -> ConvertedImage:
    image = nib.Nifti1Image(data, np.eye(4))
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)
    affine = tuple(tuple(float(v) for v in row) for row in image.affine)
    return _converted(data.shape, meta, affine, postfix=postfix, nifti=path)


def test_deduplicate_keeps_one_of_voxel_identical_sets(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    voxels = rng.integers(0, 1000, size=(6, 6, 4), dtype=np.int16)
    other = voxels.copy()
    other[0, 0, 0] += 1
    images = [
        # The enhanced copy: the fullest sidecar, kept although its SeriesNumber is higher.
        _nifti_image(tmp_path / "a.nii.gz", voxels, "", SeriesNumber=2, EchoTime=0.03, SliceTiming=[0.0, 0.5]),
        _nifti_image(tmp_path / "b.nii.gz", voxels, "a", SeriesNumber=1),
        _nifti_image(tmp_path / "c.nii.gz", other, "b", SeriesNumber=3),  # one voxel differs
        _nifti_image(tmp_path / "d.nii.gz", voxels, "c", slope=2.0, SeriesNumber=4),  # other scaling
    ]
    sets = partition(images)
    kept, duplicates = deduplicate(sets)
    assert [s.residue for s in kept] == ["", "b", "c"]
    (duplicate,) = duplicates
    assert duplicate.dropped.residue == "a" and duplicate.kept.residue == ""
    assert duplicate.reason.startswith(f"{duplicate.dropped.describe()} left out: voxel-identical to ")
    assert f"{duplicate.kept.describe()}, which is kept" in duplicate.reason
    assert "sidecar records more" in duplicate.reason
    # Equal sidecars: the lower SeriesNumber is kept, whatever the order of the sets.
    twins = [
        ImageSet(0, (_nifti_image(tmp_path / "e.nii.gz", voxels, "", SeriesNumber=9),), ""),
        ImageSet(1, (_nifti_image(tmp_path / "f.nii.gz", voxels, "a", SeriesNumber=8),), "a"),
    ]
    for order in (twins, twins[::-1]):
        kept, duplicates = deduplicate(order)
        assert [s.series_number for s in kept] == [8] and "lower SeriesNumber" in duplicates[0].reason
    # Same shape, different voxels: both kept.
    assert deduplicate(partition(images[1:3]))[1] == ()


# --- regroup: classic exports of one acquisition, one series per volume --------------------------


#: The acquisition key discovery gives the classic parts of one enhanced series (Alternate SOP
#: Class references to series 1.2.3.7000 of study 1.2).
KEY = "alternate:1.2:1.2.3.7000"


def _part(number: int, key: str, *, study: str = "1.2", patient: str = "P", time: str = "") -> DicomSeries:
    return _series(
        series_uid=f"1.2.3.{number}", series_number=number, study_uid=study, patient_id=patient,
        series_description="func-bold_task-fa_run-1", acquisition_key=key, acquisition_time=time,
        files=(Path(f"in/{number}/1.dcm"),),
    )  # fmt: skip


def test_regroup_merges_the_parts_of_one_acquisition() -> None:
    parts = [_part(7002, KEY, time="2022-07-11T12:09:07"), _part(7001, KEY, time="2022-07-11T12:09:05"),
             _part(7003, KEY, time="2022-07-11T12:09:09")]  # fmt: skip
    alone, single = _series(series_uid="9.9", series_number=5), _part(8001, "alternate:1.2:1.2.3.8000")
    merged = regroup([parts[0], alone, parts[1], single, parts[2]])
    assert merged[1:] == (alone, single)  # the merged unit at the place of its first part; a one-part key as it is
    unit = merged[0]
    assert unit.series_uid == acquisition_uid(KEY)
    assert unit.series_number == 7001 and unit.acquisition_time == "2022-07-11T12:09:05"
    assert unit.files == tuple(sorted(Path(f"in/{n}/1.dcm") for n in (7001, 7002, 7003)))
    assert unit.parts == tuple(SeriesPart(f"1.2.3.{n}", n, "func-bold_task-fa_run-1", 1) for n in (7001, 7002, 7003))
    # One name whatever the order the parts come in.
    assert {regroup(list(order))[0] for order in itertools.permutations(parts)} == {unit}
    assert acquisition_uid(KEY) != acquisition_uid("alternate:1.2:1.2.3.8000")
    assert len(unit.series_uid) <= 64 and unit.series_uid.startswith("2.25.") and unit.series_uid[5:].isdigit()


def test_regroup_keeps_other_keys_studies_and_patients_apart() -> None:
    keys = [_part(7001, KEY), _part(7002, "alternate:1.2:1.2.3.8000")]
    studies = [_part(7001, KEY, study="1.2"), _part(7002, KEY, study="1.3")]
    patients = [_part(7001, KEY, patient="P"), _part(7002, KEY, patient="Q")]
    unkeyed = [_part(7001, ""), _part(7002, "")]
    for series in (keys, studies, patients, unkeyed):
        assert regroup(series) == tuple(series)
