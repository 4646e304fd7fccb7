"""``bidsbridge xnat check`` and ``bidsbridge xnat push``.

``--server`` is an alias of ``BidsBridge.Destinations`` in the Orthanc configuration file given
by ``--config`` (or ``$BIDSBRIDGE_CONFIG``), or an XNAT URL; with a URL the credentials come from
``XNAT_USER`` / ``XNAT_PASS`` (the names XNAT's Container Service sets).

``xnat push`` shows its progress in files and bytes on stderr: a bar on a terminal, else one line
per file (``[12/40 files, 35.2MB/120MB] uploaded S_X scan 5 NIFTI/sub-S_T1w.nii.gz ...``);
``--quiet`` turns it off.

Exit status: 0 when the check passed / everything was delivered and verified; 1 when XNAT or
the delivery failed (the message says whether retrying later can help); 2 for usage and
configuration errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only the standard library and the light configuration modules (which the package imports
# anyway) load here; the handlers import the delivery (xnat-py, requests, pydicom) when they
# run, so that building the parser (`bidsbridge --help`) stays fast (the progress display imports
# tqdm when it runs).
from converters.cli_progress import ProgressDisplay, format_bytes
from xnat_container.destinations import Destination, destination_from_url, parse_destinations
from xnat_container.errors import XnatConfigError, XnatError

if TYPE_CHECKING:
    from xnat_container.push import UploadProgress

__all__ = ["main", "register"]

CONFIG_ENV = "BIDSBRIDGE_CONFIG"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="destination alias (see --config) or XNAT URL")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"Orthanc configuration JSON holding BidsBridge.Destinations (default: ${CONFIG_ENV})",
    )
    parser.add_argument("--ca-bundle", type=Path, default=None, help="with a URL: PEM file of the CAs to trust")
    parser.add_argument(
        "--retries", type=int, default=None, help="retries per request (default: the destination's, 5 for a URL)"
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``xnat`` command (``check``, ``push``); handlers are stored as ``handler``."""
    xnat = subparsers.add_parser("xnat", help="deliver results to XNAT", description=__doc__)
    commands = xnat.add_subparsers(dest="xnat_command", required=True, metavar="ACTION")

    check = commands.add_parser("check", help="diagnose connectivity, TLS, credentials and project access")
    _server_options(check)
    check.add_argument("--project", default=None, help="also check write access to this project")
    check.set_defaults(handler=run_check)

    push = commands.add_parser("push", help="deliver a converted BIDS dataset (or one session) to a project")
    push.add_argument("bids_dir", type=Path, metavar="BIDS_DIR")
    _server_options(push)
    push.add_argument("--project", required=True)
    push.add_argument("--subject", default=None, help="only this BIDS subject (label without sub-)")
    push.add_argument("--session", default=None, help="only this BIDS session (label without ses-; needs --subject)")
    push.add_argument("--report", type=Path, default=None, help="write the delivery reports to this JSON file")
    push.add_argument("-q", "--quiet", action="store_true",
                      help="no progress on stderr (default: a bar on a terminal, else a line per file)")
    push.set_defaults(handler=run_push)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise XnatConfigError(f"cannot read the configuration {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise XnatConfigError(f"the configuration {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise XnatConfigError(f"the configuration {path} must be a JSON object")
    return data


def _destination(args: argparse.Namespace) -> Destination:
    destination = resolve_server(args.server, args.config, args.ca_bundle)
    if args.retries is not None:
        if args.retries < 0:
            raise XnatConfigError(f"--retries must be >= 0, not {args.retries}")
        destination = replace(destination, retries=args.retries)
    return destination


def resolve_server(server: str, config: Path | None, ca_bundle: Path | None = None) -> Destination:
    """The destination ``--server`` names: a URL (credentials from the environment) or an alias."""
    if server.startswith(("http://", "https://")):
        return destination_from_url(server, verify=ca_bundle if ca_bundle is not None else True)
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        raise XnatConfigError(f"--server {server!r} is an alias: give --config (or ${CONFIG_ENV}), or pass a URL")
    section = _read_config(path).get("BidsBridge", {})
    destinations = parse_destinations(section.get("Destinations") if isinstance(section, dict) else None)
    if server not in destinations:
        known = ", ".join(sorted(destinations)) or "none"
        raise XnatConfigError(f"no destination {server!r} in BidsBridge.Destinations of {path} (known: {known})")
    return destinations[server]


def run_check(args: argparse.Namespace) -> int:
    from xnat_container.check import check_destination  # noqa: PLC0415

    try:
        destination = _destination(args)
    except XnatConfigError as exc:
        print(f"bidsbridge xnat check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = check_destination(destination, args.project)
    print(result.message, file=sys.stdout if result.ok else sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def _show_upload(display: ProgressDisplay, event: UploadProgress) -> None:
    """``[12/40 files, 35.2MB/120MB] uploaded S_X scan 5 NIFTI/sub-S_T1w.nii.gz``: the file just handled."""
    files = f"{event.files_done}/{event.files_total} files"
    where = " ".join((event.session_label, *(() if event.scan is None else (f"scan {event.scan}",)), event.resource))
    state = "uploaded" if event.uploaded else "already there"
    counts = f"{files}, {format_bytes(event.bytes_done)}/{format_bytes(event.bytes_total)}"
    display.update(event.bytes_done, event.bytes_total, line=f"[{counts}] {state} {where}/{event.path}", note=files)


def run_push(args: argparse.Namespace) -> int:
    from xnat_container.push import push_dataset  # noqa: PLC0415

    if args.session is not None and args.subject is None:
        print("bidsbridge xnat push: --session needs --subject", file=sys.stderr)
        return EXIT_USAGE
    try:
        destination = _destination(args)
    except XnatConfigError as exc:
        print(f"bidsbridge xnat push: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.bids_dir.is_dir():
        print(f"bidsbridge xnat push: {args.bids_dir} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        with ProgressDisplay(sys.stderr, description="uploading", unit="B", enabled=not args.quiet) as display:
            reports = push_dataset(destination, args.project, args.bids_dir, subject=args.subject,
                                   session=args.session, progress=partial(_show_upload, display))
    except XnatError as exc:
        later = " (temporary: run the same command again later; delivered files are kept)" if exc.retryable else ""
        print(f"bidsbridge xnat push: {exc}{later}", file=sys.stderr)
        return EXIT_FAILED
    for report in reports:
        print(
            f"{report.project}/{report.subject_label}/{report.session_label} ({report.experiment_id}): "
            f"{len(report.scans)} scans, {report.files_uploaded} files uploaded, "
            f"{report.files_skipped_identical} already there, {report.files_verified} verified"
        )
    if args.report is not None:
        args.report.write_text(json.dumps([r.to_dict() for r in reports], indent=2) + "\n", encoding="utf-8")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidsbridge")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m xnat_container.cli xnat ...`` (the same commands ``bidsbridge xnat`` has)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
