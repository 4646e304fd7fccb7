"""The ``convert`` subcommand: convert a DICOM folder offline into a BIDS dataset.

``bidsbridge convert DICOM_DIR BIDS_DIR [--subject S] [--session X] [--report REPORT.json]
[--subject-template T] [--session-template T] [--pseudonym-key-file KEY | --subject-map TABLE.tsv] [--no-qc]``

Prints one line per series (state, series number and description, then outputs or the reason)
and exits 0 only when every series was converted or skipped with a reason. ``--report`` writes
the results as a JSON list of :meth:`SeriesResult.to_dict` records. The same files come out as
when the Orthanc plugin converts those series, QC pictures included (``derivatives/bidsbridge-qc/``;
``--no-qc`` skips them).

While it runs, progress goes to stderr: a bar with the time left on a terminal, else one line
per finished series (``[3/21] converted #7 func-bold (0:42 elapsed, about 2:10 left)``);
``--quiet`` turns it off.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# Errors and records need only the standard library (the package imports them anyway); the
# pipeline (pydicom, numpy, nibabel, ...) is imported by the handler, so that building the
# parser (`bidsbridge --help`) stays fast. The progress display imports tqdm when it runs.
from converters.cli_progress import ProgressDisplay
from converters.errors import BidsBridgeError, LabelError
from converters.records import SeriesResult

if TYPE_CHECKING:
    from converters.pipeline import ConvertProgress

__all__ = ["main", "register", "run_convert", "summarize"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``convert`` subcommand; its handler is stored as ``handler`` (``args.handler(args)``)."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a folder of DICOM files into a BIDS dataset (offline)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dicom_dir", type=Path, metavar="DICOM_DIR", help="folder of DICOM files, any layout")
    parser.add_argument("bids_dir", type=Path, metavar="BIDS_DIR", help="BIDS dataset to create or add to")
    parser.add_argument("--subject", help="subject label (default: the PatientID, letters and digits only)")
    parser.add_argument("--session", help="session label (default: the StudyDate, YYYYMMDD)")
    parser.add_argument(
        "--subject-template", default="{PatientID}", help="subject label template over {PatientID}, {StudyDate}, ..."
    )
    parser.add_argument(
        "--session-template",
        default="{StudyDate}",
        help="session label template; {StudyIndex} numbers each subject's studies 1, 2, ... (no dates)",
    )
    pseudonyms = parser.add_mutually_exclusive_group()
    pseudonyms.add_argument(
        "--pseudonym-key-file", type=Path, metavar="KEY", help="site secret: subject labels become keyed hashes"
    )
    pseudonyms.add_argument(
        "--subject-map", type=Path, metavar="TABLE.tsv", help="two-column table: templated subject -> label"
    )
    parser.add_argument("--no-demographics", action="store_true", help="leave age and sex out of participants.tsv")
    parser.add_argument("--report", type=Path, metavar="REPORT.json", help="write the per-series results as JSON")
    parser.add_argument("--no-qc", action="store_true",
                        help="draw no QC pictures (default: derivatives/bidsbridge-qc/, one set per image)")
    parser.add_argument("-j", "--jobs", type=_jobs, default=os.cpu_count() or 1, metavar="N",
                        help="series converted at a time (default: every core, here %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr (default: a bar on a terminal, else a line per finished series)")
    parser.set_defaults(handler=run_convert)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"-j/--jobs takes a whole number of at least 1, not {text!r}")
    return value


def _what(result: SeriesResult) -> str:
    number = "" if result.series_number is None else f"#{result.series_number} "
    return f"{number}{result.series_description or result.series_uid}"


def _line(result: SeriesResult) -> str:
    what = _what(result)
    notes = "".join(f"           note: {note}\n" for note in result.notes)
    if result.state == "converted":
        shown = (*result.outputs, *result.qc)
        return f"{result.state:<9}  {what}\n" + "".join(f"           -> {path}\n" for path in shown) + notes
    code = f" [{result.reason_code}]" if result.reason_code else ""
    return f"{result.state:<9}  {what}{code}: {result.reason or '(no reason given)'}\n" + notes


def summarize(results: Sequence[SeriesResult], out: TextIO) -> bool:
    """Print the per-series summary; return True when nothing failed and every skip has a reason."""
    for result in results:
        out.write(_line(result))
    counts = {state: sum(1 for r in results if r.state == state) for state in ("converted", "skipped", "failed")}
    out.write(", ".join(f"{count} {state}" for state, count in counts.items()) + "\n")
    return bool(results) and all(r.state == "converted" or (r.state == "skipped" and bool(r.reason)) for r in results)


def _show_progress(display: ProgressDisplay, event: ConvertProgress) -> None:
    """``[3/21] converted #7 func-bold``: the series just finished."""
    done = f"{event.result.state} {_what(event.result)}"
    display.update(event.done, event.total, line=f"[{event.done}/{event.total}] {done}", note=done)


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise LabelError(f"cannot read the pseudonym key file {path}: {exc}") from exc


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``convert``: returns the process exit code."""
    from converters.labels import Labels, read_subject_map  # noqa: PLC0415
    from converters.pipeline import convert_tree  # noqa: PLC0415

    try:
        labels = Labels(
            subject=args.subject_template,
            session=args.session_template,
            pseudonym_key=None if args.pseudonym_key_file is None else _read_key(args.pseudonym_key_file),
            subject_map=None if args.subject_map is None else read_subject_map(args.subject_map),
            demographics=not args.no_demographics,
        )
        with ProgressDisplay(sys.stderr, description="converting", unit="series", enabled=not args.quiet) as display:
            results = convert_tree(args.dicom_dir, args.bids_dir, subject=args.subject, session=args.session,
                                   labels=labels, jobs=args.jobs, progress=partial(_show_progress, display),
                                   qc=not args.no_qc)
    except BidsBridgeError as exc:
        print(f"bidsbridge convert: {exc}", file=sys.stderr)
        return 1
    if not results:
        print(f"bidsbridge convert: no DICOM series found in {args.dicom_dir}", file=sys.stderr)
    ok = summarize(results, sys.stdout)
    if args.report is not None:
        report = json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False) + "\n"
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report, encoding="utf-8")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m converters.cli convert ...`` — the subcommand without the plugin's CLI."""
    parser = argparse.ArgumentParser(prog="python -m converters.cli")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
