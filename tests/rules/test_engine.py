"""Operators, combinators, templates and sanitizing, the fact adapters, and decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from converters import Override
from orthanc_plugin.rules import (
    RuleSet,
    SeriesFacts,
    SourceFacts,
    evaluate,
    facts_from_dataset,
    facts_from_orthanc,
    load_default_rules,
    load_rules,
    parse_rules,
)
from orthanc_plugin.rules.templates import parse_template, render, sanitize

RULES = Path(__file__).resolve().parents[2] / "orthanc_plugin" / "rules"


def _rules(body: str) -> RuleSet:
    return parse_rules(("version: 1\nrules:\n" + body).encode(), "t.yaml")[0]


def _one(match: str) -> RuleSet:
    return _rules(f"  - name: r\n    match: {match}\n    actions: [{{convert: }}]\n")


def _facts(**attributes: str) -> SeriesFacts:
    return SeriesFacts("1.2.3", attributes, SourceFacts("SCANNER_A", "BIDSBRIDGE", "10.1.2.3"), 3)


@pytest.mark.parametrize(
    ("match", "matches", "fails"),
    [
        ("{Modality: MR}", _facts(Modality="MR"), _facts(Modality="CT")),
        ("{Modality: {equals: mr, ignore_case: true}}", _facts(Modality="MR"), _facts(Modality="MRI")),
        ("{Modality: {in: [MR, PT]}}", _facts(Modality="PT"), _facts(Modality="CT")),
        ("{SeriesDescription: {regex: 't1.*'}}", _facts(SeriesDescription="t1_mprage"),
         _facts(SeriesDescription="xt1")),
        ("{SeriesDescription: {regex: 'T1.*', ignore_case: true}}", _facts(SeriesDescription="t1w"),
         _facts(SeriesDescription="T2")),
        ("{ProtocolName: {startswith: func-}}", _facts(ProtocolName="func-bold"), _facts(ProtocolName="anat-func-")),
        ("{ImageType: {contains: DERIVED}}", _facts(ImageType="DERIVED\\PRIMARY"), _facts(ImageType="ORIGINAL")),
        ("{EchoTime: {lt: 10}}", _facts(EchoTime="2.46"), _facts(EchoTime="10")),
        ("{EchoTime: {le: 10}}", _facts(EchoTime="10"), _facts(EchoTime="10.5")),
        ("{EchoTime: {gt: 10}}", _facts(EchoTime="30"), _facts(EchoTime="abc")),
        ("{EchoTime: {ge: 10, lt: 40}}", _facts(EchoTime="10"), _facts(EchoTime="40")),
        ("{Rows: {exists: true}}", _facts(Rows="256"), _facts()),
        ("{Rows: {missing: true}}", _facts(), _facts(Rows="256")),
        ("{Rows: {exists: false}}", _facts(), _facts(Rows="1")),
        ("{'0008,0060': MR}", _facts(Modality="MR"), _facts(Modality="CT")),
        ("{'(0019,100C)': '1000'}", _facts(**{"0019,100C": "1000"}), _facts(**{"0019,100C": "0"})),
        ("{source.calling_aet: SCANNER_A}", _facts(), SeriesFacts("1", {}, SourceFacts("OTHER"))),
        ("{source.remote_ip: {startswith: '10.'}}", _facts(), SeriesFacts("1", {}, SourceFacts())),
        ("{series.instance_count: {ge: 2}}", _facts(), SeriesFacts("1", {}, instance_count=1)),
        ("{all: [{Modality: MR}, {any: [{Rows: {missing: true}}, {not: {Columns: {lt: 100}}}]}]}",
         _facts(Modality="MR", Rows="64", Columns="128"), _facts(Modality="MR", Rows="64", Columns="64")),
        ("{Modality: MR, BodyPartExamined: HEAD}", _facts(Modality="MR", BodyPartExamined="HEAD"),
         _facts(Modality="MR")),
        ("{}", _facts(), None),
    ],
)
def test_operators_and_combinators(match: str, matches: SeriesFacts, fails: SeriesFacts | None) -> None:
    rules = _one(match)
    assert evaluate(rules, matches).matched == ("r",)
    if fails is not None:
        decision = evaluate(rules, fails)
        assert decision.matched == ()
        assert decision.trace[0].status == "no-match"
        assert decision.trace[0].reason and decision.trace[0].reason.startswith("line ")


def test_first_failing_condition_is_explained() -> None:
    rules = _one("{all: [{Modality: MR}, {not: {SeriesDescription: {contains: ADC}}}, {EchoTime: {gt: 1}}]}")
    decision = evaluate(rules, _facts(Modality="MR", SeriesDescription="DWI_ADC", EchoTime="5"))
    assert decision.trace[0].reason == "line 4:36: not: 'SeriesDescription contains 'ADC'' matched"
    decision = evaluate(rules, _facts(Modality="MR", SeriesDescription="T1"))
    assert decision.trace[0].reason == "line 4:92: EchoTime is missing, so 'EchoTime gt 1.0' does not match"
    assert decision.outcome == "skip"
    assert decision.skip is not None and decision.skip.reason == "no rule matched" and decision.skip.rule == ""


def test_regex_is_not_applied_to_very_long_values() -> None:
    rules = _one("{SeriesDescription: {regex: '.*a.*b.*c'}}")
    started = __import__("time").monotonic()
    decision = evaluate(rules, _facts(SeriesDescription="a" * 257 + "bc"))
    assert decision.matched == ()
    assert "longer than 256 characters" in (decision.trace[0].reason or "")
    assert evaluate(rules, _facts(SeriesDescription="a" * 250 + "bc")).matched == ("r",)
    worst = "a" * 255 + "!"
    assert evaluate(rules, _facts(SeriesDescription=worst)).matched == ()
    assert __import__("time").monotonic() - started < 2


def test_every_matching_rule_applies_in_order_and_stop_ends() -> None:
    rules = _rules(
        "  - {name: a, match: {}, actions: [{forward: {modality: PACS}}]}\n"
        "  - {name: b, match: {Modality: MR}, actions: [{convert: {dataset: d1}}, {derive: adc}]}\n"
        "  - {name: c, match: {}, actions: [{push_xnat: {server: x, project: P}}], stop: true}\n"
        "  - {name: d, match: {}, actions: [{convert: {dataset: d2}}]}\n"
    )
    decision = evaluate(rules, _facts(Modality="MR", PatientID="p1", StudyDate="20240101"))
    assert decision.matched == ("a", "b", "c")
    assert [type(a).__name__ for a in decision.actions] == [
        "PlannedForward", "PlannedConvert", "PlannedDerive", "PlannedPush",
    ]
    assert decision.trace[3].status == "not-evaluated" and decision.trace[3].reason == "stopped by rule 'c'"
    assert decision.pushes[0].uri == "xnat://x/data/projects/P/subjects/p1/experiments/p1_20240101"
    assert decision.outcome == "convert"


def test_skip_cancels_research_actions_but_keeps_forwards() -> None:
    rules = _rules(
        "  - {name: a, match: {}, actions: [{convert: }, {forward: {peer: twin}}]}\n"
        "  - {name: b, match: {Modality: SR}, actions: [{skip: 'report {SeriesDescription}'}]}\n"
        "  - {name: c, match: {}, actions: [{derive: adc}]}\n"
    )
    decision = evaluate(rules, _facts(Modality="SR"))
    assert decision.outcome == "skip"
    assert [a.action for a in decision.actions] == ["forward", "skip"]
    assert decision.skip is not None and decision.skip.reason == "report ?"
    assert decision.trace[2].status == "not-evaluated"


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("../../etc/passwd", "label", "etcpasswd"),
        ("/abs/../x", "xnat", "abs_x"),
        ("Müller\u202e\x00-2", "label", "Muller2"),
        ("Müller \u202e\x00-2", "xnat", "Muller_-2"),
        ("..", "xnat", ""),
        ("日本", "label", ""),
        ("0042", "index", "0042"),
        ("line\nbreak\x07", "text", "linebreak"),
    ],
)
def test_sanitize(value: str, kind: str, expected: str) -> None:
    assert sanitize(value, kind) == expected  # type: ignore[arg-type]


def test_runtime_values_cannot_escape_their_folder() -> None:
    rules = _rules(
        "  - name: r\n    match: {}\n    actions:\n"
        "      - convert: {subject: '{PatientID}', session: 's{StudyDate|digits}', entities: {acq: '{ProtocolName}'}}\n"
        "      - push_xnat: {server: x, project: 'P{InstitutionName|upper}', subject: '{PatientID|hash}'}\n"
    )
    facts = _facts(PatientID="../../root", StudyDate="2024/01/01", ProtocolName="/etc/passwd",
                   InstitutionName="a/../b")
    decision = evaluate(rules, facts)
    convert, push = decision.converts[0], decision.pushes[0]
    assert (convert.subject, convert.session) == ("root", "s20240101")
    assert convert.override == Override(series_uid="1.2.3", entities={"acq": "etcpasswd"})
    assert push.project == "PA_B"
    assert len(push.subject) == 12 and push.subject.isalnum()
    for text in (convert.subject, convert.session, push.project, push.subject, push.session, push.uri[7:]):
        assert ".." not in text and "\\" not in text
    assert decision.problems == ()


def test_a_label_template_with_nothing_usable_is_a_note_not_a_refusal() -> None:
    # A series is never refused for its labels: the converter's fallback label is used instead.
    rules = _rules("  - {name: r, match: {}, actions: [{convert: {subject: '{PatientID}'}}]}\n")
    decision = evaluate(rules, _facts(PatientID="日本"))
    assert decision.converts[0].subject is None and decision.problems == ()
    assert decision.notes == ("rule 'r' subject: template '{PatientID}' gives nothing usable for label after "
                              "sanitizing; the converter's fallback label is used",)
    decision = evaluate(rules, _facts())
    assert decision.problems == () and "the series has no PatientID" in decision.notes[0]
    # An entity template that gives nothing is still a problem: the BIDS name would be wrong.
    entity = _rules("  - {name: r, match: {}, actions: [{convert: {entities: {acq: '{ProtocolName}'}}}]}\n")
    assert evaluate(entity, _facts()).problems == (
        "rule 'r' entity acq: template '{ProtocolName}': the series has no ProtocolName",
    )


def test_template_parsing() -> None:
    from orthanc_plugin.rules.model import Position  # noqa: PLC0415

    template = parse_template("P_{source.calling_aet|lower}-{0010,0020|hash}", "xnat", Position(1, 1))
    rendered = render(template, _facts(PatientID="x"), "xnat")
    assert rendered.value == "P_scanner_a-" + __import__("hashlib").sha256(b"x").hexdigest()[:12]


def test_evaluation_never_raises_on_odd_series() -> None:
    rule_sets = [load_default_rules(), *(load_rules(p) for p in sorted((RULES / "examples").glob("*.yaml")))]
    odd = [
        SeriesFacts(""),
        _facts(Modality="", Rows="", EchoTime="nan", SeriesDescription="\x00" * 2000),
        _facts(Modality="MR\\CT", ImageType="", PatientID="\u202e", StudyDate="../.."),
        SeriesFacts("x", {"ProtocolName": "anat-T1w" * 200}, SourceFacts(None, None, None), -1),
    ]
    for rules in rule_sets:
        for facts in odd:
            decision = evaluate(rules, facts)
            assert decision.outcome in ("convert", "skip", "forward", "none")
            json.dumps(decision.to_dict())


def test_decision_to_dict_shape() -> None:
    decision = evaluate(load_default_rules(), _facts(Modality="MR", Rows="64", SeriesDescription="t1",
                                                     SeriesNumber="3"))
    record = json.loads(json.dumps(decision.to_dict()))
    assert record == {
        "series_uid": "1.2.3",
        "series_description": "t1",
        "series_number": "3",
        "orthanc_id": None,
        "rules": {"source": "<defaults>", "digest": load_default_rules().digest},
        "outcome": "convert",
        "matched": ["mr-pet-ct-images"],
        "skip": None,
        "actions": [{"action": "convert", "rule": "mr-pet-ct-images", "dataset": "default", "override": None,
                     "subject": None, "session": None}],
        "problems": [],
        "notes": [],
        "trace": [
            {"rule": "non-image-objects", "line": 8, "status": "no-match",
             "reason": record["trace"][0]["reason"]},
            {"rule": "mr-pet-ct-images", "line": 19, "status": "matched", "reason": None},
            {"rule": "other-modalities", "line": 27, "status": "not-evaluated",
             "reason": "stopped by rule 'mr-pet-ct-images'"},
        ],
    }
    assert record["trace"][0]["reason"].startswith("line 13:7: none of 2 alternatives matched")


def test_facts_from_orthanc_json() -> None:
    facts = facts_from_orthanc(
        {"Modality": "MR", "ImageType": "ORIGINAL\\PRIMARY", "0019,100c": "1000", "0008,0060": "MR",
         "ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "1.2"}], "SeriesInstanceUID": "9.8",
         "PatientName": None, "PixelData": {"Type": "Binary"}},
        {"RemoteAET": "SCANNER", "CalledAET": "ME", "RemoteIP": "10.0.0.1", "Origin": "DicomProtocol"},
        instance_count=176, orthanc_id="abc",
    )
    assert facts.series_uid == "9.8"
    assert facts.attributes == {"Modality": "MR", "ImageType": "ORIGINAL\\PRIMARY", "0019,100C": "1000",
                                "SeriesInstanceUID": "9.8"}
    assert facts.source == SourceFacts("SCANNER", "ME", "10.0.0.1")
    assert (facts.instance_count, facts.orthanc_id) == (176, "abc")
    uploaded = facts_from_orthanc({}, {"Origin": "RestApi", "RemoteIP": "127.0.0.1"}, instance_count=1)
    assert uploaded.source == SourceFacts(None, None, "127.0.0.1")


def test_facts_from_dataset_match_facts_from_orthanc_for_common_attributes(corpus: Path) -> None:
    path = sorted((corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl").iterdir())[0]
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    facts = facts_from_dataset(dataset)
    assert facts.attributes["Modality"] == "MR"
    assert facts.attributes["ImageType"] == "ORIGINAL\\PRIMARY\\M\\NONE"
    assert facts.attributes["SeriesDescription"] == "anat-T1w_acq-tfl"
    assert "PerFrameFunctionalGroupsSequence" not in facts.attributes
    assert "PixelData" not in facts.attributes
    assert facts.series_uid == str(dataset.SeriesInstanceUID)


def test_decision_round_trips_through_its_record() -> None:
    rules = load_rules(RULES / "examples" / "route-by-calling-aet.yaml")
    facts = _facts(Modality="MR", Rows="64", PatientID="p", StudyDate="20240101")
    for source in (SourceFacts("PRISMA_NEURO"), SourceFacts("SKYRA_CARDIO"), SourceFacts("X")):
        decision = evaluate(rules, SeriesFacts("1.2.3", facts.attributes, source, 3))
        record = json.loads(json.dumps(decision.to_dict()))
        again = type(decision).from_dict(record)
        assert again == decision
        assert again.outcome == decision.outcome
    protocol = load_rules(RULES / "examples" / "protocol-overrides.yaml")
    decision = evaluate(protocol, _facts(ProtocolName="DWI_dir80_PA", Rows="1", PatientID="p", Modality="MR"))
    again = type(decision).from_dict(json.loads(json.dumps(decision.to_dict())))
    assert again.converts[0].override == Override(series_uid="1.2.3", datatype="dwi", suffix="dwi",
                                                  entities={"acq": "dir80", "dir": "PA"})
    assert again == decision
    with pytest.raises(ValueError, match="not a decision record"):
        type(decision).from_dict({"series_uid": "x"})
    with pytest.raises(ValueError, match="action 'explode'"):
        type(decision).from_dict({**decision.to_dict(), "actions": [{"action": "explode", "rule": "r"}]})


def test_rules_cannot_bypass_a_site_pseudonym_policy() -> None:
    from orthanc_plugin.rules import CheckContext, RulesError  # noqa: PLC0415

    text = b"version: 1\nrules:\n  - {name: r, match: {}, actions: [{convert: {subject: '{PatientID}'}}]}\n"
    assert parse_rules(text, "t.yaml")[0].rules[0].name == "r"
    with pytest.raises(RulesError, match=r"t.yaml:3:47: this site pseudonymises subjects"):
        parse_rules(text, "t.yaml", CheckContext(pseudonymised_subjects=True))
