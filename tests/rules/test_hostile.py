"""Hostile and broken rule files: each is refused with the right FILE:LINE:COL diagnostic and exit 1.

Nothing here may crash, hang, run code or write anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from converters.classify import SUPPORTED
from orthanc_plugin.rules import RulesError, load_rules
from orthanc_plugin.rules.cli import main

_RULE = "version: 1\nrules:\n  - name: x\n"

#: id -> (file content, line, column, message start)
CASES: dict[str, tuple[str | bytes, int, int, str]] = {
    "anchor": ("version: 1\na: &a [lol, lol]\nrules: []\n", 2, 4, "anchor &a is not allowed"),
    "alias": (_RULE + "    match: {Modality: MR}\n    actions: *acts\n", 5, 14, "alias *acts is not allowed"),
    "billion-laughs": (
        "version: 1\nrules: []\n" + 'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)),
        3, 5, "anchor &a0 is not allowed",
    ),
    "python-object-tag": (
        _RULE + '    match: !!python/object/apply:os.system ["touch PWNED"]\n    actions: [{skip: x}]\n',
        4, 12, "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
    ),
    "python-name-tag": (_RULE + "    match: {Modality: !!python/name:os.system ''}\n    actions: [{skip: x}]\n",
                        4, 23, "YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed"),
    "local-tag": (_RULE + "    match: !include other.yaml\n    actions: [{skip: x}]\n", 4, 12, "YAML tag '!include'"),
    "catastrophic-regex": (
        _RULE + "    match:\n      SeriesDescription: {regex: '(a+)+$'}\n    actions: [{skip: x}]\n",
        5, 34, "nested quantifier",
    ),
    "catastrophic-alternation": (
        _RULE + "    match:\n      SeriesDescription: {regex: '(a|ab)*c'}\n    actions: [{skip: x}]\n",
        5, 34, "alternation inside a repeated group",
    ),
    "too-many-stars": (_RULE + "    match:\n      PatientName: {regex: '.*a.*b.*c.*d'}\n    actions: [{skip: x}]\n",
                       5, 28, "4 unbounded quantifiers"),
    "invalid-regex": (_RULE + "    match:\n      PatientName: {regex: '(unclosed'}\n    actions: [{skip: x}]\n",
                      5, 28, "invalid regex: missing ), unterminated subpattern"),
    "huge-file": ("version: 1\nrules: []\n" + "# padding padding padding\n" * 45000, 1, 1,
                  "the rule file is larger than 1048576 bytes"),
    "deep-nesting": ("version: 1\nrules: " + "[" * 60 + "]" * 60 + "\n", 2, 55, "nesting deeper than 48 levels"),
    "too-many-rules": (
        "version: 1\nrules:\n"
        + "".join(f"  - {{name: r{i}, match: {{}}, actions: [{{skip: s}}]}}\n" for i in range(501)),
        503, 5, "more than 500 rules",
    ),
    "wrong-type-number": (_RULE + "    match:\n      EchoTime: {gt: \"ten\"}\n    actions: [{skip: x}]\n",
                          5, 22, "gt needs a number, not text"),
    "huge-number": (_RULE + "    match: {EchoTime: {gt: " + "9" * 5000 + "}}\n    actions: [{skip: x}]\n", 4, 28,
                    "number 99999999999999999999... cannot be read"),
    "not-a-finite-number": (_RULE + "    match: {EchoTime: {gt: .nan}}\n    actions: [{skip: x}]\n", 4, 28,
                            "gt needs a finite number, not .nan"),
    "yaml-boolean-as-reason": (_RULE + "    match: {}\n    actions: [{skip: no}]\n", 5, 22,
                               "skip reason must be text, not true/false"),
    "wrong-type-stop": (_RULE + "    match: {}\n    actions: [{skip: x}]\n    stop: yes please\n",
                        6, 11, "stop must be true or false, not text"),
    "wrong-type-rules": ("version: 1\nrules: {name: x}\n", 2, 8, "rules must be a list, not a mapping"),
    "wrong-type-in": (_RULE + "    match: {Modality: {in: MR}}\n    actions: [{skip: x}]\n",
                      4, 28, "in needs a list of values, not text"),
    "wrong-version": ("version: '1'\nrules: []\n", 1, 10, "version must be 1, not 1"),
    "unicode-lookalike-keyword": (
        _RULE + "    match:\n      PatientN\u0430me: {equals: x}\n    actions: [{skip: x}]\n",
        5, 7, "unknown DICOM keyword 'PatientN\u0430me'",
    ),
    "unicode-bidi-override": (_RULE.replace("x\n", '"ok\u202e"\n') + "    match: {}\n    actions: [{skip: x}]\n",
                              3, 14, "invisible character U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    "unicode-zero-width": (_RULE + "    match: {Modality: M\u200bR}\n    actions: [{skip: x}]\n",
                           4, 24, "invisible character U+200B (ZERO WIDTH SPACE)"),
    "not-utf8": (b"version: 1\nrules:\n  - name: caf\xe9\n", 3, 14, "byte 0xE9 is not UTF-8"),
    "template-dotdot": (_RULE + '    match: {}\n    actions:\n      - convert:\n          subject: "../{PatientID}"\n',
                        7, 21, "subject: template text '../' looks like a path"),
    "template-absolute": (
        _RULE + '    match: {}\n    actions:\n      - push_xnat: {server: main, project: "/etc/{PatientID}"}\n',
        6, 45, "push_xnat project: template text '/etc/' looks like a path",
    ),
    "template-backslash": (_RULE + "    match: {}\n    actions:\n      - convert: {session: '{StudyDate}\\x'}\n",
                           6, 40, "session: template text '\\\\x' looks like a path"),
    "template-non-ascii": (_RULE + '    match: {}\n    actions:\n      - convert: {subject: "s\u00fcb{PatientID}"}\n',
                           6, 29, "subject: template text 's\u00fcb' has characters '\u00fc'"),
    "template-unknown-attribute": (_RULE + '    match: {}\n    actions:\n      - convert: {session: "s{StudyDat}"}\n',
                                   6, 31, "session: template 's{StudyDat}': unknown DICOM keyword 'StudyDat'"),
    "template-unknown-filter": (_RULE + '    match: {}\n    actions:\n      - convert: {session: "{StudyDate|exec}"}\n',
                                6, 30, "session: unknown template filter 'exec'"),
    "template-unbalanced": (_RULE + '    match: {}\n    actions:\n      - convert: {session: "{StudyDate"}\n',
                            6, 29, "session: unbalanced brace"),
    "duplicate-names": (_RULE.replace("name: x", "name: same") + "    match: {}\n    actions: [{skip: a}]\n"
                        "  - name: same\n    match: {}\n    actions: [{skip: b}]\n",
                        6, 11, "duplicate rule name 'same' (first at line 3)"),
    "duplicate-keys": (_RULE + "    match: {}\n    match: {Modality: MR}\n    actions: [{skip: a}]\n",
                       5, 5, "duplicate key 'match' (first at line 4)"),
    "unknown-keyword": (_RULE + "    match:\n      SeriesDescriptoin: {equals: T1}\n    actions: [{skip: x}]\n",
                        5, 7, "unknown DICOM keyword 'SeriesDescriptoin'"),
    "malformed-tag": (_RULE + "    match:\n      (0018,00ZZ): {equals: T1}\n    actions: [{skip: x}]\n",
                      5, 7, "malformed tag '(0018,00ZZ)'"),
    "unknown-operator": (_RULE + "    match:\n      Modality: {equal: MR}\n    actions: [{skip: x}]\n",
                         5, 18, "unknown operator 'equal'"),
    "unknown-action": (_RULE + "    match: {Modality: MR}\n    actions:\n      - push: {server: a}\n",
                       6, 9, "unknown action 'push'"),
    "unknown-key": (_RULE + "    matches: {Modality: MR}\n    actions: [{skip: x}]\n", 4, 5,
                    "unknown key 'matches' in a rule"),
    "unknown-derivation": (_RULE + "    match: {}\n    actions: [{derive: [adc, fa]}]\n", 5, 30,
                           "unknown derivation 'fa'"),
    "unknown-datatype": (_RULE + "    match: {}\n    actions: [{convert: {datatype: anatomy, suffix: T1w}}]\n", 5, 36,
                         "unknown BIDS datatype 'anatomy'"),
    "datatype-without-suffix": (_RULE + "    match: {}\n    actions: [{convert: {datatype: anat}}]\n", 5, 26,
                                "datatype and suffix go together"),
    "bad-sidecar-key": (_RULE + "    match: {}\n    actions: [{convert: {metadata: {echo_time: 1}}}]\n", 5, 37,
                        "sidecar field 'echo_time' is not a BIDS key"),
    "sidecar-value-mapping": (_RULE + "    match: {}\n    actions: [{convert: {metadata: {EchoTime1: {a: 1}}}}]\n",
                              5, 48, "metadata EchoTime1 must be a value or a list of values, not a mapping"),
    "companion-path": (_RULE + "    match: {}\n    actions: [{convert: {companions: {../x.tsv: a}}}]\n", 5, 39,
                       "companion '../x.tsv' must be named _<suffix>.tsv, .json or .txt"),
    "companion-nul": (_RULE + '    match: {}\n    actions: [{convert: {companions: {_aslcontext.tsv: "a\\0b"}}}]\n',
                      5, 56, "companion _aslcontext.tsv is longer than 65536 characters or holds NUL"),
    "unknown-entity": (_RULE + "    match: {}\n    actions: [{convert: {entities: {sub: x}}}]\n", 5, 37,
                       "unknown key 'sub' in entities"),
    "run-not-digits": (_RULE + "    match: {}\n    actions: [{convert: {entities: {run: one}}}]\n", 5, 42,
                       "entity run: template text 'one' has characters"),
    "skip-without-reason": (_RULE + "    match: {}\n    actions: [{skip: ''}]\n", 5, 22, "skip needs a reason"),
    "skip-and-convert": (_RULE + "    match: {}\n    actions: [{convert: }, {skip: why}]\n", 5, 29,
                         "a rule cannot both skip and convert/derive/push_xnat"),
    "forward-both": (_RULE + "    match: {}\n    actions: [{forward: {modality: A, peer: B}}]\n", 5, 25,
                     "forward needs exactly one of modality or peer"),
    "two-documents": ("version: 1\nrules: []\n---\nversion: 1\n", 3, 1,
                      "a rule file holds one YAML document; '---' starts a second one"),
    "syntax-error": ("version: 1\nrules:\n  - name: [unclosed\n", 4, 1, "YAML syntax:"),
    "empty-file": ("", 1, 1, "the rule file is empty"),
    "no-version": ("rules: []\n", 1, 1, "the rule file has no version"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_rule_file_is_refused(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    content, line, column, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "rules.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    started = time.monotonic()
    assert main(["rules", "check", str(path)]) == 1
    assert time.monotonic() - started < 5
    out = capsys.readouterr().out
    expected = f"{path}:{line}:{column}: {message}"
    assert expected in out, out
    errors = [line for line in out.splitlines() if line.startswith(f"{path}:") and ": note: " not in line]
    assert len(errors) == (2 if case == "unknown-key" else 1), out
    assert "\n    hint: " in out or case in ("wrong-type-stop",), out
    with pytest.raises(RulesError) as raised:
        load_rules(path)
    assert raised.value.errors, "load_rules must refuse what check refuses"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rules.yaml"]  # nothing written (no PWNED)


@pytest.mark.parametrize("depth", [1000, 200_000])
def test_absurd_nesting_is_a_diagnostic(depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules: " + "[" * depth + "]" * depth + "\n", encoding="utf-8")
    started = time.monotonic()
    assert main(["rules", "check", str(path)]) == 1
    assert time.monotonic() - started < 5
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:2:"), out
    assert "nesting" in out, out


def test_a_file_just_under_the_size_cap_is_checked_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules: [" + "a, " * 349_000 + "]\n", encoding="utf-8")
    assert path.stat().st_size < 1 << 20
    started = time.monotonic()
    assert main(["rules", "check", str(path)]) == 1
    assert time.monotonic() - started < 5
    assert f"{path}:2:1509: more than 500 rules" in capsys.readouterr().out


def test_unknown_destination_only_with_a_known_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(_RULE + "    match: {}\n    actions:\n      - push_xnat: {server: xnat-mian, project: P}\n",
                    encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:6:29: note: XNAT destination 'xnat-mian' not verified" in out
    assert "hint: pass --destinations or --orthanc-config" in out
    known = tmp_path / "destinations.json"
    known.write_text(json.dumps({"xnat-main": {"Url": "https://x"}}), encoding="utf-8")
    assert main(["rules", "check", str(path), "--destinations", str(known)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:6:29: unknown XNAT destination 'xnat-mian'" in out
    assert "did you mean 'xnat-main'?" in out


def test_unknown_modality_and_peer_from_orthanc_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(_RULE + "    match: {}\n    actions:\n      - forward: {modality: PACS2}\n"
                    "      - forward: {peer: other}\n", encoding="utf-8")
    config = tmp_path / "orthanc.json"
    config.write_text('{"DicomModalities": {"PACS": ["PACS", "h", 104]}, "OrthancPeers": {}}', encoding="utf-8")
    assert main(["rules", "check", str(path), "--orthanc-config", str(config)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:6:29: unknown Orthanc modality 'PACS2'" in out
    assert f"{path}:7:25: unknown Orthanc peer 'other'" in out
    assert "known: (none configured)" in out


def test_every_error_is_reported_not_just_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        "  - name: a\n    match: {Modalty: MR}\n    actions: [{skip: x}]\n"
        "  - name: b\n    match: {Modality: {regex: '(x*)*'}}\n    actions: [{sikp: x}]\n",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(path)]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if not line.startswith("    hint:")]
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:4:13", f"{path}:7:31", f"{path}:8:16"]
    assert "3 errors" in captured.err


def test_missing_rule_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "No such file" in capsys.readouterr().err
    assert main(["rules", "test", str(tmp_path / "nope.yaml"), "--dicom", str(tmp_path)]) == 1
    assert f"{tmp_path / 'nope.yaml'}:1:1: cannot read the rule file" in capsys.readouterr().err


def test_mutated_rule_files_never_raise_anything_but_rules_error() -> None:
    """Seeded byte-level mutations of every shipped rule file: RulesError or a usable rule set, nothing else."""
    import random  # noqa: PLC0415

    from orthanc_plugin.rules import SeriesFacts, SourceFacts, evaluate, parse_rules  # noqa: PLC0415

    rules_dir = Path(__file__).resolve().parents[2] / "orthanc_plugin" / "rules"
    sources = [rules_dir / "defaults.yaml", *sorted((rules_dir / "examples").glob("*.yaml"))]
    alphabet = [*":{}[]-'\"&*!|>\n #%@`,?~\\\t\u202e\u00e9", "\x00", "9" * 30, "(a+)+", "../", "{Patient"]
    facts = SeriesFacts("1.2", {"Modality": "MR", "Rows": "64", "PatientID": "p", "StudyDate": "20240101"},
                        SourceFacts("A", "B", "1.2.3.4"), 2)
    generator = random.Random(20261125)
    usable = refused = 0
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for _ in range(150):
            position = generator.randrange(len(text))
            if generator.random() < 0.5:
                mutated = text[:position] + generator.choice(alphabet) + text[position:]
            else:
                mutated = text[:position] + text[position + generator.randrange(1, 12):]
            try:
                ruleset, _ = parse_rules(mutated.encode("utf-8", "surrogatepass"), "m.yaml")
            except RulesError as exc:
                assert exc.diagnostics and all(d.line >= 1 and d.column >= 1 for d in exc.diagnostics)
                refused += 1
                continue
            usable += 1
            evaluate(ruleset, facts).to_dict()
    assert usable > 50 and refused > 50, (usable, refused)


def test_target_unknown_to_the_converter_is_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    # MESE (multi-echo spin echo, qMRI) is a valid BIDS anat suffix the converter does not produce.
    assert ("anat", "MESE") not in SUPPORTED
    path.write_text(_RULE + "    match: {}\n    actions: [{convert: {datatype: anat, suffix: MESE}}]\n",
                    encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:5:50: note: anat/MESE is not a target the converter knows" in out
    known = ", ".join(sorted(s for d, s in SUPPORTED if d == "anat"))
    assert f"known anat suffixes: {known}" in out
