"""Entrypoint of the XNAT Container Service image (see ``command.json`` beside this file).

XNAT mounts the session's files (its ``SCANS/<id>/DICOM/`` folders) read-only at ``/input`` and a
writable folder at ``/output``, and sets ``XNAT_HOST``, ``XNAT_USER`` and ``XNAT_PASS`` (a
short-lived alias token) in the environment. The entrypoint:

1. looks up the subject's label (the Container Service passes the subject's ID) and converts every
   DICOM series under ``/input`` with :func:`converters.convert_tree` into the BIDS dataset
   ``/output/bids`` (BIDS subject/session labels from the XNAT labels, sanitized), with the QC
   pictures of every image (``derivatives/bidsbridge-qc/``);
2. delivers each converted session back into the XNAT session it came from with
   :func:`xnat_container.push.push_session` (NIFTI, BIDS and QC resources per scan, session BIDS
   resource; idempotent and verified), unless ``--no-push``;
3. writes ``/output/reports/conversion.json`` and ``delivery.json``.

Exit status 0 only when no series failed and everything was delivered and verified.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from converters import BidsBridgeError, convert_tree
from xnat_container.client import XnatClient
from xnat_container.destinations import Destination, destination_from_url
from xnat_container.errors import XnatError
from xnat_container.layout import dataset_sessions
from xnat_container.push import push_session

__all__ = ["build_parser", "main"]

logger = logging.getLogger("xnat_container.entrypoint")

HOST_ENV = "XNAT_HOST"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidsbridge-xnat-container", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=Path("/input"), help="mounted DICOM (default /input)")
    parser.add_argument("--output", type=Path, default=Path("/output"), help="writable output (default /output)")
    parser.add_argument("--project", required=True, help="XNAT project ID of the session")
    parser.add_argument("--subject", required=True, help="XNAT subject of the session: its ID or label")
    parser.add_argument("--session", required=True, help="XNAT session label")
    parser.add_argument(
        "--push",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="deliver the results into the session over REST (default: yes)",
    )
    return parser


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _subject_label(destination: Destination, project: str, subject: str) -> str:
    with XnatClient(destination) as client:
        return client.subject_label(project, subject)


def run(args: argparse.Namespace) -> int:
    bids = args.output / "bids"
    reports = args.output / "reports"
    subject = args.subject
    destination: Destination | None = None
    if args.push:
        host = os.environ.get(HOST_ENV, "")
        if not host:
            logger.error("%s is not set: run inside XNAT's Container Service, or pass --no-push", HOST_ENV)
            return 1
        try:
            destination = destination_from_url(host)
            subject = _subject_label(destination, args.project, args.subject)
        except XnatError as exc:
            logger.error("cannot read subject %s of project %s: %s", args.subject, args.project, exc)
            return 1
    try:
        results = convert_tree(args.input, bids, subject=subject, session=args.session, qc=True)
    except BidsBridgeError as exc:
        logger.error("conversion failed: %s", exc)
        _write(reports / "conversion.json", {"error": str(exc)})
        return 1
    _write(reports / "conversion.json", [result.to_dict() for result in results])
    failed = [r for r in results if r.state == "failed"]
    converted = sum(r.state == "converted" for r in results)
    logger.info(
        "%d series converted, %d skipped, %d failed", converted, len(results) - converted - len(failed), len(failed)
    )
    if destination is None:
        return 1 if failed else 0

    delivered: list[dict[str, Any]] = []
    try:
        for bids_subject, bids_session in dataset_sessions(bids):
            report = push_session(
                destination,
                args.project,
                bids,
                bids_subject,
                bids_session,
                subject_label=subject,
                session_label=args.session,
            )
            delivered.append(report.to_dict())
    except XnatError as exc:
        logger.error("delivery to XNAT failed%s: %s", " (temporary; run again)" if exc.retryable else "", exc)
        _write(reports / "delivery.json", {"delivered": delivered, "error": str(exc), "retryable": exc.retryable})
        return 1
    _write(reports / "delivery.json", {"delivered": delivered})
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
