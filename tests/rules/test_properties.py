"""Properties, checked with hypothesis: a template renders without raising and a path template
gives one safe path segment; a checked condition evaluates without raising over any facts, and
``not`` inverts it."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from orthanc_plugin.rules.fields import parse_field
from orthanc_plugin.rules.match import OPERATORS, RegexError, compile_regex, describe, evaluate
from orthanc_plugin.rules.model import All, AnyOf, Condition, Not, Position, SeriesFacts, SourceFacts
from orthanc_plugin.rules.model import Test as Comparison
from orthanc_plugin.rules.templates import FILTERS, MAX_SEGMENT, TemplateError, TemplateKind, parse_template, render

SETTINGS = settings(max_examples=200, deadline=None)
AT = Position(3, 7)

#: Any text, lone surrogates (JSON "\\ud800" decodes to one) and control characters included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()) | st.characters(categories=["Cs"]), max_size=30)
HOSTILE_TEXT = st.one_of(
    ANY_TEXT,
    st.sampled_from(["", "..", ".", "../..", "/etc/passwd", "..\\..\\x", "\x00", "~", "-_-", "  ", "12.5", "-3",
                     "nan", "inf", "1e400", "MR", "a" * 300]),
)  # fmt: skip
FIELD_NAMES = ("PatientID", "SeriesDescription", "Modality", "EchoTime", "StudyDate", "0019,100C",
               "source.calling_aet", "source.remote_ip", "series.instance_count")  # fmt: skip
FIELDS = [parse_field(name) for name in FIELD_NAMES]

FACTS = st.builds(
    SeriesFacts,
    series_uid=HOSTILE_TEXT,
    attributes=st.dictionaries(st.sampled_from([f.key for f in FIELDS if f.kind == "dicom"]), HOSTILE_TEXT),
    source=st.builds(SourceFacts, *(st.none() | HOSTILE_TEXT for _ in range(3))),
    instance_count=st.integers(min_value=0, max_value=10**9),
)

#: Segments a path template may make, by kind (one folder or file name).
SEGMENT = {"label": re.compile(r"[A-Za-z0-9]+"), "index": re.compile(r"[0-9]+"),
           "xnat": re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?")}  # fmt: skip
LITERALS = {"label": "abcXYZ019", "index": "0123456789", "xnat": "aZ09_-", "text": None}


@st.composite
def templates(draw: st.DrawFn, kind: TemplateKind) -> str:
    """A valid template source of ``kind``: literal text and ``{Field|filter...}``."""
    pieces = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if draw(st.booleans()):
            alphabet = LITERALS[kind]
            literal = draw(st.text(alphabet, min_size=1, max_size=6) if alphabet else ANY_TEXT)
            pieces.append(literal.replace("{", "").replace("}", "") or "x")
        else:
            filters = draw(st.lists(st.sampled_from(sorted(FILTERS)), max_size=3))
            pieces.append("{" + "|".join([draw(st.sampled_from(FIELD_NAMES)), *filters]) + "}")
    return "".join(pieces)


def _check_rendered(value: str | None, kind: TemplateKind) -> None:
    if value is None:
        return
    if kind == "text":
        assert len(value) <= 500 and not any(ch in value for ch in "\x00\n\r\x1b")
        return
    assert SEGMENT[kind].fullmatch(value) and len(value) <= MAX_SEGMENT, value
    root = Path("/dataset")
    assert (root / value).parent == root and value not in (".", "..")


KINDS = st.sampled_from(["label", "index", "xnat", "text"])


@SETTINGS
@given(data=st.data(), kind=KINDS, facts=FACTS)
def test_render_never_raises_and_makes_one_safe_segment(data: st.DataObject, kind: TemplateKind,
                                                        facts: SeriesFacts) -> None:
    template = parse_template(data.draw(templates(kind)), kind, AT)
    rendered = render(template, facts, kind)
    assert (rendered.value is None) != (rendered.problem is None)
    _check_rendered(rendered.value, kind)


def test_hash_of_a_lone_surrogate() -> None:
    """Found by the property above: ``hash`` raised UnicodeEncodeError for "\\ud800"."""
    template = parse_template("P{source.calling_aet|hash}", "xnat", AT)
    value = render(template, SeriesFacts("1", source=SourceFacts("\ud800")), "xnat").value
    assert value is not None and re.fullmatch(r"P[0-9a-f]{12}", value)


@SETTINGS
@given(source=HOSTILE_TEXT, kind=KINDS, facts=FACTS)
def test_any_template_text_is_refused_or_safe(source: str, kind: TemplateKind, facts: SeriesFacts) -> None:
    try:
        template = parse_template(source, kind, AT)
    except TemplateError as exc:
        assert str(exc) and exc.hint
        return
    _check_rendered(render(template, facts, kind).value, kind)


# --- conditions ------------------------------------------------------------------------------


@st.composite
def patterns(draw: st.DrawFn) -> tuple[str, re.Pattern[str]]:
    source = draw(st.one_of(st.sampled_from(["t1.*", "T1w|T2w", "[0-9]+", "(a|b)", ".*", "x{2,5}", "(?i)mr",
                                             "(a+)+", "^$", "\\d+\\.\\d+"]), st.text(max_size=12)))
    try:
        return source, compile_regex(source, ignore_case=draw(st.booleans()))
    except RegexError:  # refused when the rule file is checked: nothing to evaluate
        return "MR", compile_regex("MR")


@st.composite
def leaf(draw: st.DrawFn) -> Comparison:
    op = draw(st.sampled_from(sorted(OPERATORS)))
    field = draw(st.sampled_from(FIELDS))
    ignore_case = draw(st.booleans())
    if op == "in":
        return Comparison(field, op, AT, texts=tuple(draw(st.lists(HOSTILE_TEXT, max_size=8))), ignore_case=ignore_case)
    if op in ("lt", "le", "gt", "ge"):
        return Comparison(field, op, AT, number=draw(st.floats(allow_nan=False, allow_infinity=False)))
    if op == "regex":
        text, pattern = draw(patterns())
        return Comparison(field, op, AT, text=text, pattern=pattern, ignore_case=ignore_case)
    if op in ("exists", "missing"):
        return Comparison(field, op, AT)
    return Comparison(field, op, AT, text=draw(HOSTILE_TEXT), ignore_case=ignore_case)


CONDITIONS: st.SearchStrategy[Condition] = st.recursive(
    leaf(),
    lambda children: st.one_of(
        st.builds(All, st.lists(children, max_size=4).map(tuple), st.just(AT)),
        st.builds(AnyOf, st.lists(children, max_size=4).map(tuple), st.just(AT)),
        st.builds(Not, children, st.just(AT)),
    ),
    max_leaves=12,
)


@SETTINGS
@given(condition=CONDITIONS, facts=FACTS)
def test_evaluation_never_raises_and_not_inverts(condition: Condition, facts: SeriesFacts) -> None:
    outcome = evaluate(condition, facts)
    assert isinstance(outcome.matched, bool)
    assert outcome.matched or outcome.failure is not None
    assert evaluate(Not(condition, AT), facts).matched is not outcome.matched
    assert evaluate(Not(Not(condition, AT), AT), facts).matched is outcome.matched
    assert evaluate(All((condition,), AT), facts).matched is outcome.matched
    assert evaluate(AnyOf((condition,), AT), facts).matched is outcome.matched
    assert isinstance(describe(condition), str)


@SETTINGS
@given(facts=FACTS)
def test_empty_combinators(facts: SeriesFacts) -> None:
    assert evaluate(All((), AT), facts).matched
    assert not evaluate(AnyOf((), AT), facts).matched
