"""The ``rules`` subcommand: ``rules check FILE`` and ``rules test [FILE] (--dicom DIR | --orthanc URL --series ID)``.

``check`` prints every problem as ``FILE:LINE:COL: message`` with a hint and exits 1 on any
error (notes, such as destinations that could not be verified, do not fail). Pass
``--orthanc-config`` (Orthanc's JSON configuration: ``BidsBridge.Destinations``/``Datasets``,
``DicomModalities``, ``OrthancPeers``) or ``--destinations`` (a JSON object or list of XNAT
aliases) to check names against the deployment.

``test`` is a dry run: it prints, per series, the rules that matched, the first failing condition
of each rule that did not, and the planned outcome (BIDS paths previewed from headers, XNAT URIs,
forwards, skips). It writes nothing. ``--json`` prints a JSON list, one object per series.
Exit codes: 0 every series has a decision, 1 the rules are invalid or a decision has problems,
2 the series could not be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Only the standard library and the light rule records load here; the engine (YAML, pydicom) is
# imported by the handlers when they run, so that building the parser (`bidsbridge --help`) stays fast.
from .errors import Diagnostic, RulesError
from .model import RuleSet, SeriesFacts, SourceFacts

if TYPE_CHECKING:
    from .check import CheckContext
    from .facts import FolderSeries

__all__ = ["main", "read_orthanc_config", "register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``rules`` with ``check`` and ``test``; each stores its handler as ``handler``."""
    rules = subparsers.add_parser("rules", help="check and dry-run routing rule files", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")

    check = commands.add_parser("check", help="check a rule file (exit 1 on any error)")
    check.add_argument("file", type=Path, metavar="FILE")
    _context_options(check)
    check.set_defaults(handler=run_check)

    test = commands.add_parser("test", help="dry run: what the rules decide for each series (writes nothing)")
    test.add_argument("file", type=Path, nargs="?", metavar="FILE", help="rule file (default: the shipped rules)")
    source = test.add_mutually_exclusive_group(required=True)
    source.add_argument("--dicom", type=Path, metavar="DIR", help="folder of DICOM files (headers are read)")
    source.add_argument("--orthanc", metavar="URL", help="Orthanc's REST API, with --series")
    test.add_argument("--series", metavar="ID", help="Orthanc series identifier (with --orthanc)")
    test.add_argument("--orthanc-user", metavar="USER",
                      help="REST user; the password comes from the ORTHANC_PASSWORD environment variable")
    test.add_argument("--calling-aet", help="with --dicom: pretend the files came from this calling AET")
    test.add_argument("--called-aet", help="with --dicom: pretend the files were sent to this AET")
    test.add_argument("--remote-ip", help="with --dicom: pretend the files came from this address")
    test.add_argument("--json", action="store_true", help="print a JSON list, one object per series")
    _context_options(test)
    test.set_defaults(handler=run_test)


def _context_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orthanc-config", type=Path, metavar="FILE",
                        help="Orthanc configuration JSON: check destinations, datasets, modalities, peers")
    parser.add_argument("--destinations", type=Path, metavar="FILE",
                        help="JSON object or list naming the known XNAT destination aliases")


def _strip_json_comments(text: str) -> str:
    """Orthanc's configuration files may hold // and /* */ comments; drop them outside strings."""
    out: list[str] = []
    index, length = 0, len(text)
    in_string = False
    while index < length:
        char = text[index]
        if in_string:
            out.append(char)
            if char == "\\" and index + 1 < length:
                out.append(text[index + 1])
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif text.startswith("//", index):
            end = text.find("\n", index)
            index = length if end < 0 else end
            continue
        elif text.startswith("/*", index):
            end = text.find("*/", index + 2)
            index = length if end < 0 else end + 2
            continue
        else:
            out.append(char)
        index += 1
    return "".join(out)


def read_orthanc_config(path: Path) -> dict[str, Any]:
    """Read an Orthanc configuration file (JSON with comments); raise ValueError/OSError."""
    value = json.loads(_strip_json_comments(path.read_text(encoding="utf-8")))
    if not isinstance(value, dict):
        raise ValueError(f"{path}: an Orthanc configuration is a JSON object")
    return value


def _context(args: argparse.Namespace) -> CheckContext:
    from .check import CheckContext  # noqa: PLC0415

    context = CheckContext()
    if args.orthanc_config is not None:
        context = CheckContext.from_orthanc_config(read_orthanc_config(args.orthanc_config))
    if args.destinations is not None:
        value = json.loads(args.destinations.read_text(encoding="utf-8"))
        if not isinstance(value, dict | list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{args.destinations}: expected a JSON object or a list of names")
        context = CheckContext(frozenset(value), context.datasets, context.modalities, context.peers)
    return context


def _print_diagnostics(diagnostics: Sequence[Diagnostic], out: TextIO) -> None:
    for diagnostic in diagnostics:
        out.write(diagnostic.format() + "\n")


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``rules check``."""
    from .check import check_rules, parse_rules  # noqa: PLC0415
    from .loader import MAX_FILE_BYTES  # noqa: PLC0415

    try:
        context = _context(args)
        with args.file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:
        print(f"bidsbridge rules check: {exc}", file=sys.stderr)
        return 1
    diagnostics = check_rules(data, str(args.file), context)
    _print_diagnostics(diagnostics, sys.stdout)
    errors = sum(1 for d in diagnostics if d.severity == "error")
    if errors:
        print(f"{args.file}: {errors} error{'s' if errors != 1 else ''}", file=sys.stderr)
        return 1
    count = len(parse_rules(data, str(args.file), context)[0].rules)
    print(f"{args.file}: OK ({count} rules)")
    return 0


def _rules(args: argparse.Namespace, context: CheckContext) -> tuple[RuleSet, tuple[Diagnostic, ...]]:
    from .check import load_default_rules, parse_rules  # noqa: PLC0415
    from .loader import MAX_FILE_BYTES  # noqa: PLC0415

    if args.file is None:
        return load_default_rules(), ()
    try:
        with args.file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise RulesError([Diagnostic(str(args.file), 1, 1, f"cannot read the rule file: {exc.strerror or exc}")]) \
            from None
    return parse_rules(data, str(args.file), context)


def facts_from_folder(folder: Path, *, source: SourceFacts | None = None) -> tuple[list[FolderSeries], list[Path]]:
    """:func:`.facts.facts_from_folder`, imported when first called (it needs pydicom)."""
    from .facts import facts_from_folder as read_folder  # noqa: PLC0415

    return read_folder(folder, source=source)


def _series(args: argparse.Namespace) -> list[SeriesFacts]:
    from .facts import fetch_orthanc_facts  # noqa: PLC0415

    if args.dicom is not None:
        if not args.dicom.is_dir():
            raise ValueError(f"{args.dicom} is not a folder")
        source = SourceFacts(args.calling_aet, args.called_aet, args.remote_ip)
        found, unreadable = facts_from_folder(args.dicom, source=source)
        if unreadable:
            print(f"bidsbridge rules test: {len(unreadable)} files are not DICOM, left out (first: {unreadable[0]})",
                  file=sys.stderr)
        if not found:
            raise ValueError(f"no DICOM series found in {args.dicom}")
        return [item.facts for item in found]
    if not args.series:
        raise ValueError("--orthanc needs --series ID")
    auth = None
    if args.orthanc_user:
        auth = (args.orthanc_user, os.environ.get("ORTHANC_PASSWORD", ""))
    return [fetch_orthanc_facts(args.orthanc, args.series, auth=auth)]


def run_test(args: argparse.Namespace) -> int:
    """Handler of ``rules test``."""
    from .dry_run import dry_run  # noqa: PLC0415

    try:
        context = _context(args)
    except (OSError, ValueError) as exc:
        print(f"bidsbridge rules test: {exc}", file=sys.stderr)
        return 1
    try:
        ruleset, notes = _rules(args, context)
    except RulesError as exc:
        _print_diagnostics(exc.diagnostics, sys.stderr)
        return 1
    _print_diagnostics(notes, sys.stderr)
    try:
        series = _series(args)
    except Exception as exc:
        print(f"bidsbridge rules test: cannot read the series: {exc}", file=sys.stderr)
        return 2
    records: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    problems = False
    for facts in series:
        result = dry_run(ruleset, facts)
        decision = result.decision
        outcomes[decision.outcome] = outcomes.get(decision.outcome, 0) + 1
        problems = problems or bool(decision.problems)
        if args.json:
            records.append(result.to_dict())
        else:
            sys.stdout.write(result.text())
    if args.json:
        json.dump(records, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        summary = ", ".join(f"{count} {name}" for name, count in sorted(outcomes.items()))
        print(f"{len(series)} series ({summary}) by {ruleset.source} [{ruleset.digest[:19]}]; nothing written")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m orthanc_plugin.rules.cli rules ...`` — the subcommand without the plugin's CLI."""
    parser = argparse.ArgumentParser(prog="python -m orthanc_plugin.rules.cli")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
