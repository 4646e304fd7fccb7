"""Classifier building blocks: ReproIn parsing, phase-encoding direction, overrides, rule order."""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.asl import AslHeaders, AslPlan, asl_fields, parse_ascconv
from converters.classify import (
    Override,
    ReproInName,
    SeriesFacts,
    classify,
    parse_reproin,
    phase_encoding_label,
    place,
)
from converters.records import BidsTarget, ConvertedImage, Skip
from tests.converters.helpers import make_series


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("anat-T1w_acq-tfl", ReproInName("anat", "T1w", {"acq": "tfl"})),
        ("func-bold_task-fa_run-1", ReproInName("func", "bold", {"task": "fa", "run": "1"})),
        ("dwi_dir-AP", ReproInName("dwi", None, {"dir": "AP"})),
        ("fmap-epi_dir-PA__anything goes", ReproInName("fmap", "epi", {"dir": "PA"})),
        ("anat-scout", ReproInName("anat", "scout", {})),
    ],
)
def test_parse_reproin(text: str, parsed: ReproInName) -> None:
    assert parse_reproin(text) == parsed


@pytest.mark.parametrize(
    "text", ["DWI_dir80_PA", "gre_field_mapping", "anat-T1w_ND", "anat-T1w_acq-a_acq-b", "t1_mprage", ""]
)
def test_free_text_is_not_reproin(text: str) -> None:
    assert parse_reproin(text) is None


_series = make_series


def _image(
    direction: str | None = None, affine: tuple[tuple[float, ...], ...] | None = None, **meta: object
) -> ConvertedImage:
    metadata: dict[str, object] = dict(meta)
    if direction is not None:
        metadata["PhaseEncodingDirection"] = direction
    identity = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
    return ConvertedImage(Path("series.nii.gz"), Path("series.json"), None, None, metadata, affine=affine or identity)


@pytest.mark.parametrize(
    ("direction", "label"), [("j", "PA"), ("j-", "AP"), ("i", "LR"), ("i-", "RL"), ("k", "IS"), ("k-", "SI")]
)
def test_phase_encoding_label_in_ras(direction: str, label: str) -> None:
    assert phase_encoding_label(_image(direction)) == label


def test_phase_encoding_label_follows_the_affine() -> None:
    # Voxel axis j runs towards the patient's left (-x in RAS), slightly tilted.
    affine = ((0.1, -2.9, 0.0, 0.0), (3.0, 0.2, 0.0, 0.0), (0.0, 0.0, 3.0, 0.0), (0.0, 0.0, 0.0, 1.0))
    assert phase_encoding_label(_image("j", affine)) == "RL"
    assert phase_encoding_label(_image("j-", affine)) == "LR"
    assert phase_encoding_label(_image("y")) is None
    assert phase_encoding_label(_image()) is None


def test_reproin_wins_and_normalised_images_get_rec_norm() -> None:
    facts = SeriesFacts(
        _series(series_description="anat-T1w_acq-mprage"),
        (_image(ImageTypeText=["ORIGINAL", "PRIMARY", "M", "NORM"], BidsGuess=["anat", "_T2w"]),),
    )
    decision = classify(facts)
    assert decision == BidsTarget("anat", "T1w", {"acq": "mprage", "rec": "norm"}, rule="reproin")


def test_reproin_bold_without_task_is_skipped_not_invented() -> None:
    decision = classify(SeriesFacts(_series(series_description="func-bold_run-1"), (_image("j"),)))
    assert isinstance(decision, Skip) and "task" in decision.reason


def test_scanner_diffusion_maps_get_raw_dwi_suffixes_even_with_a_reproin_name() -> None:
    series = _series(series_description="dwi_dir-AP", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"))
    decision = classify(SeriesFacts(series, (_image("j-"),)))
    assert decision == BidsTarget("dwi", "ADC", {"dir": "AP"}, rule="scanner-derived")
    colour = _series(series_description="DWI_ColFA", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "FA"))
    assert classify(SeriesFacts(colour, (_image("j"),))) == BidsTarget(
        "dwi", "colFA", {"dir": "PA"}, rule="scanner-derived"
    )
    perfusion = _series(image_type=("DERIVED", "PRIMARY", "ASL", "RCBF"))
    decision = classify(SeriesFacts(perfusion, (_image("j"),)))
    assert isinstance(decision, Skip) and "scanner-derived" in decision.reason and "policy" in decision.reason


def test_bids_guess_is_only_a_last_hint() -> None:
    guess = _image(BidsGuess=["anat", "_acq-tfl3p2_run-5_T1w"])
    assert classify(SeriesFacts(_series(), (guess,))) == BidsTarget("anat", "T1w", {}, rule="bids-guess")
    wrong = _image(BidsGuess=["dwi", "_FA"])
    decision = classify(SeriesFacts(_series(), (wrong,)))
    assert isinstance(decision, Skip) and "not recognised" in decision.reason


def test_overrides_replace_fields() -> None:
    series = _series(series_uid="9.9", series_description="t1_mprage")
    facts = SeriesFacts(series, (_image(),))
    assert isinstance(classify(facts), Skip)
    place_it = Override(series_uid="9.9", datatype="anat", suffix="T1w", entities={"acq": "mp-rage"})
    assert classify(facts, overrides=[place_it]) == BidsTarget("anat", "T1w", {"acq": "mprage"}, rule="override")
    drop_acq = Override(description="t1_*", entities={"acq": None, "run": "2"})
    assert classify(facts, overrides=[place_it, drop_acq]) == BidsTarget("anat", "T1w", {"run": "2"}, rule="override")
    other = Override(series_uid="1.1", skip="not this one")
    assert classify(facts, overrides=[place_it, other]).rule == "override"
    assert classify(facts, overrides=[Override(description="t1*", skip="site says no")]) == Skip(
        "site says no", "override", "rule"
    )


def test_place_names_echoes_and_refuses_unknown_splits() -> None:
    target = BidsTarget("func", "bold", {"task": "rest"})
    echoes = (
        ConvertedImage(Path("a"), Path("a.json"), None, None, {"EchoNumber": 1}, postfix="_e1"),
        ConvertedImage(Path("b"), Path("b.json"), None, None, {"EchoNumber": 2}, postfix="_e2"),
    )
    placed = place(SeriesFacts(_series(), echoes), target)
    assert not isinstance(placed, Skip)
    assert [p.target.entities for p in placed] == [{"task": "rest", "echo": "1"}, {"task": "rest", "echo": "2"}]
    tilted = (
        ConvertedImage(Path("a"), Path("a.json"), None, None, {}, postfix=""),
        ConvertedImage(Path("b"), Path("b.json"), None, None, {}, postfix="_i00002"),
    )
    refused = place(SeriesFacts(_series(), tilted), target)
    assert isinstance(refused, Skip) and "_i00002" in refused.reason
    dwi_echoes = place(SeriesFacts(_series(), echoes), BidsTarget("dwi", "dwi"))
    assert isinstance(dwi_echoes, Skip) and "echoes" in dwi_echoes.reason


def test_fmri_without_a_task_takes_it_from_the_series_name() -> None:
    four_d = ConvertedImage(
        Path("s.nii.gz"), Path("s.json"), None, None, {"ScanningSequence": "EP", "PhaseEncodingDirection": "j-"},
        shape=(64, 64, 30, 10),
    )  # fmt: skip
    facts = SeriesFacts(
        _series(series_description="ep2d_bold (rest)", image_type=("ORIGINAL", "PRIMARY", "M", "MOSAIC")), (four_d,)
    )
    decision = classify(facts)
    assert decision == BidsTarget("func", "bold", {"task": "ep2dboldrest"}, {"TaskName": "ep2dboldrest"}, rule="bold")
    # No name at all (a de-identified export): still fMRI, under a task label that says so.
    nameless = classify(SeriesFacts(_series(series_description="--", protocol_name=""), (four_d,)))
    assert isinstance(nameless, BidsTarget) and nameless.entities == {"task": "unnamed"}
    assert nameless.metadata == {"TaskName": "unnamed"} and "no SeriesDescription" in nameless.notes[0]


def test_asl_fields_trust_only_a_plausible_volume_order() -> None:
    protocol = {
        "sAsl.ulSuppressionMode": "1", "alTR[0]": "4800000", "sAsl.ulLabelingDuration": "1800000",
        "sAsl.sPostLabelingDelay[0]": "1800000",
    }  # fmt: skip
    sidecar = {"MagneticFieldStrength": 3, "MRAcquisitionType": "2D", "EchoTime": 0.011, "FlipAngle": 90}
    contexts = ("M_ZERO_SCAN", "LABEL", "CONTROL", "CONTROL", "LABEL")
    plan = asl_fields(AslHeaders(contexts, "PSEUDOCONTINUOUS", protocol, "NO"), sidecar, 5)
    assert isinstance(plan, AslPlan)
    assert plan.volume_types == ("m0scan", "label", "control", "control", "label")
    assert plan.metadata["TotalAcquiredPairs"] == 2 and plan.metadata["BackgroundSuppression"] is False
    # Shifted (an M0 in the middle), unpaired, or too few volumes: refused, never guessed.
    for bad, volumes in [(("LABEL", "M_ZERO_SCAN", "CONTROL"), 3), (("LABEL", "LABEL"), 2), (contexts, 6)]:
        missing = asl_fields(AslHeaders(bad, "PSEUDOCONTINUOUS", protocol), sidecar, volumes)
        assert isinstance(missing, list) and "M0Type" in missing
    multi_delay = asl_fields(
        AslHeaders(contexts, "PSEUDOCONTINUOUS", {**protocol, "sAsl.ulDelayArraySize": "4"}, "NO"), sidecar, 5
    )
    assert isinstance(multi_delay, list) and "multi-delay" in multi_delay[0]
    # No Siemens protocol: the fields only it records are named as missing.
    missing = asl_fields(AslHeaders(contexts, "PSEUDOCONTINUOUS"), sidecar, 5)
    assert missing == ["PostLabelingDelay", "LabelingDuration", "BackgroundSuppression", "RepetitionTimePreparation"]


def test_parse_ascconv() -> None:
    text = (
        'x\n### ASCCONV BEGIN object=MrProtDataImpl ###\nalTR[0]\t = \t4800000\ntProtocolName = "a b"\n'
        "### ASCCONV END ###"
    )
    assert parse_ascconv(text) == {"alTR[0]": "4800000", "tProtocolName": "a b"}


def test_an_override_can_supply_what_no_header_records() -> None:
    series = _series(series_uid="7.7", image_type=("ORIGINAL", "PRIMARY", "ASL"))
    asl = ConvertedImage(Path("a.nii.gz"), Path("a.json"), None, None, {}, shape=(64, 64, 12, 2))
    facts = SeriesFacts(series, (asl,))
    refused = classify(facts)
    assert isinstance(refused, Skip) and "missing: " in refused.reason
    supplied = Override(
        series_uid="7.7", datatype="perf", suffix="asl",
        metadata={"M0Type": "Absent", "TotalAcquiredPairs": 1},
        companions={"_aslcontext.tsv": "volume_type\ncontrol\nlabel\n"},
    )  # fmt: skip
    decision = classify(facts, overrides=[supplied])
    assert isinstance(decision, BidsTarget)
    assert (decision.datatype, decision.suffix, decision.metadata["M0Type"]) == ("perf", "asl", "Absent")
    assert decision.companions == {"_aslcontext.tsv": "volume_type\ncontrol\nlabel\n"}


@pytest.mark.parametrize(("modality", "word"), [("CT", "no raw datatype for CT"), ("PT", "TracerName")])
def test_other_modalities_are_skipped_with_the_reason(modality: str, word: str) -> None:
    decision = classify(SeriesFacts(_series(modality=modality)))
    assert isinstance(decision, Skip) and word in decision.reason


def _epi(shape: tuple[int, ...], bvalues: tuple[float, ...] = (), **meta: object) -> ConvertedImage:
    bval = Path("s.bval") if bvalues else None
    metadata: dict[str, object] = {"ScanningSequence": "EP", "PhaseEncodingDirection": "j-", **meta}
    identity = tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
    return ConvertedImage(
        Path("s.nii.gz"), Path("s.json"), bval, bval, metadata, shape=shape, affine=identity, bvalues=bvalues
    )


def test_non_zero_b_values_mean_diffusion_even_without_the_image_type() -> None:
    series = _series(series_description="DTI 30dir", image_type=("ORIGINAL", "PRIMARY", "OTHER"))
    decision = classify(SeriesFacts(series, (_epi((64, 64, 30, 31), (0.0, *[1000.0] * 30)),)))
    assert decision == BidsTarget("dwi", "dwi", {"dir": "AP"}, rule="diffusion")
    zeros = classify(SeriesFacts(series, (_epi((64, 64, 30, 31), (0.0,) * 31),)))
    assert isinstance(zeros, BidsTarget) and (zeros.datatype, zeros.suffix) == ("func", "bold")


def test_single_band_references_and_localizers() -> None:
    sbref = SeriesFacts(_series(series_description="rest_mb8_SBRef"), (_epi((64, 64, 30)),))
    assert classify(sbref) == BidsTarget("func", "sbref", {"task": "restmb8"}, {"TaskName": "restmb8"}, rule="sbref")
    dwi_sbref = SeriesFacts(_series(series_description="DWI_AP_SBRef"), (_epi((64, 64, 30)),))
    assert classify(dwi_sbref) == BidsTarget("dwi", "sbref", {"dir": "AP"}, rule="sbref")
    scout = classify(SeriesFacts(_series(series_description="AAHead_Scout_32ch"), (_epi((64, 64, 3)),)))
    assert isinstance(scout, Skip) and "localizer" in scout.reason


def test_contrast_agent_phase_and_mp2rage_parts() -> None:
    t1 = _image(BidsGuess=["anat", "_acq-tfl3p2_run-5_T1w"])
    enhanced = classify(SeriesFacts(_series(contrast_agent="Gadovist 1.0"), (t1,)))
    assert enhanced == BidsTarget("anat", "T1w", {"ce": "Gadovist10"}, rule="bids-guess")
    plain = classify(SeriesFacts(_series(contrast_agent="NONE"), (t1,)))
    assert isinstance(plain, BidsTarget) and "ce" not in plain.entities
    phase = _image(BidsGuess=["anat", "_T2starw"], ImageType=["ORIGINAL", "PRIMARY", "P", "PHASE"])
    assert classify(SeriesFacts(_series(), (phase,))) == BidsTarget(
        "anat", "T2starw", {"part": "phase"}, rule="bids-guess"
    )
    inv2 = _image(BidsGuess=["anat", "_acq-tfl_inv-2_run-3_MP2RAGE"])
    assert classify(SeriesFacts(_series(), (inv2,))) == BidsTarget("anat", "MP2RAGE", {"inv": "2"}, rule="bids-guess")


def test_spin_echo_field_maps_by_name() -> None:
    image = _epi((64, 64, 30, 3), TotalReadoutTime=0.05)
    facts = SeriesFacts(_series(series_description="SpinEchoFieldMap_PA"), (image,))
    assert classify(facts) == BidsTarget("fmap", "epi", {"dir": "AP"}, rule="pepolar")
    long_run = SeriesFacts(_series(series_description="topup_rest"), (_epi((64, 64, 30, 200)),))
    assert classify(long_run).rule == "bold"  # a time series, whatever its name
    # BIDS requires the readout time of an EPI field map: without it, skipped naming it.
    bare = classify(SeriesFacts(_series(series_description="SpinEchoFieldMap_PA"), (_epi((64, 64, 30, 3)),)))
    assert isinstance(bare, Skip) and bare.code == "missing-metadata" and "TotalReadoutTime" in bare.reason


def test_b1_maps_are_tb1tfl_not_gre_field_maps() -> None:
    b1 = _image(BidsGuess=["fmap", "_acq-tflb1map_TB1TFL"], SequenceName="*tfl2d1_16")
    decision = classify(SeriesFacts(_series(series_description="tfl_b1map"), (b1,)))
    assert decision == BidsTarget("fmap", "TB1TFL", {"acq": "anat"}, rule="b1-map")
    flip = _image(BidsGuess=["fmap", "_TB1TFL"], ImageType=["DERIVED", "PRIMARY", "FLIP ANGLE MAP", "ND"])
    derived = _series(series_description="tfl_b1map", image_type=("DERIVED", "PRIMARY", "FLIP ANGLE MAP", "ND"))
    assert classify(SeriesFacts(derived, (flip,))) == BidsTarget("fmap", "TB1TFL", {"acq": "famp"}, rule="b1-map")


def test_scanner_computed_anatomical_maps_are_raw_anat() -> None:
    uni = _series(series_description="mp2rage_UNI_Images", image_type=("DERIVED", "PRIMARY", "M", "ND", "UNI"))
    assert classify(SeriesFacts(uni, (_image(),))) == BidsTarget("anat", "UNIT1", rule="scanner-derived")
    t1map = _series(image_type=("DERIVED", "PRIMARY", "T1 MAP", "ND"))
    assert classify(SeriesFacts(t1map, (_image(),))) == BidsTarget("anat", "T1map", rule="scanner-derived")
    mpr = _series(image_type=("DERIVED", "PRIMARY", "MPR", "ND"))
    skipped = classify(SeriesFacts(mpr, (_image(),)))
    assert isinstance(skipped, Skip) and skipped.code == "scanner-derived"
