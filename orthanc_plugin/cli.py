"""The ``bidsbridge`` command: ``convert`` and ``derive`` (offline), ``serve`` (embedded Orthanc), ``demo``."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["main"]

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"


def _add_server_options(parser: argparse.ArgumentParser, default_workdir: str) -> None:
    parser.add_argument("--workdir", type=Path, default=Path(default_workdir),
                        help=f"work directory (default: {default_workdir})")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: cores)")
    parser.add_argument("--stable-age", type=int, default=3, help="Orthanc StableAge in seconds (default 3)")


def _embedded(args: argparse.Namespace) -> Any:
    from .embedded import EmbeddedOrthanc  # noqa: PLC0415 - keeps `convert` free of server imports

    return EmbeddedOrthanc(
        workdir=args.workdir, http_port=args.http_port, dicom_port=args.dicom_port,
        stable_age=args.stable_age, workers=args.workers,
    )


def _serve(args: argparse.Namespace) -> int:
    from .embedded import OrthancSetupError  # noqa: PLC0415

    server = _embedded(args)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start(foreground_log=True)
    except OrthancSetupError as exc:
        print(f"bidsbridge serve: {exc}", file=sys.stderr)
        return 1
    print(f"Orthanc with bidsbridge: {server.url} (DICOM: AET {_aet()} on 127.0.0.1:{server.dicom_port})")
    print(f"BIDS dataset: {server.bids_root}   job queue: {server.state_dir}")
    print("Ctrl-C stops.", flush=True)
    while not stop and server.process is not None and server.process.poll() is None:
        time.sleep(0.2)
    code = server.stop()
    return 0 if code in (0, None) else 1


def _aet() -> str:
    from .embedded import ORTHANC_AET  # noqa: PLC0415

    return ORTHANC_AET


def _wait_for_jobs(url: str, series_count: int, timeout: float) -> list[dict[str, Any]]:
    import requests  # noqa: PLC0415 - only the demo talks HTTP; `--help` stays light

    deadline = time.monotonic() + timeout
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = requests.get(f"{url}/bidsbridge/jobs", params={"limit": 1000}, timeout=10).json()
        latest: dict[str, dict[str, Any]] = {}
        for job in jobs:
            latest.setdefault(job["series"], job)
        if len(latest) >= series_count and all(
            job["state"] in ("done", "skipped", "failed") for job in latest.values()
        ):
            return list(latest.values())
        time.sleep(0.5)
    return jobs


def _demo_files(data: Path) -> tuple[list[Path], set[str]]:
    """The DICOM files under ``data`` (other files are passed over) and their SeriesInstanceUIDs."""
    from pydicom import dcmread  # noqa: PLC0415
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    files: list[Path] = []
    series: set[str] = set()
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        try:
            series.add(str(dcmread(path, stop_before_pixels=True).SeriesInstanceUID))
        except (InvalidDicomError, AttributeError, OSError):
            continue  # README, LICENSE, ...
        files.append(path)
    return files, series


def _use_free_ports(args: argparse.Namespace) -> None:
    """Swap a busy ``--http-port`` or ``--dicom-port`` for a free one, so the demo starts anywhere."""
    from .embedded import free_port  # noqa: PLC0415

    for attr in ("http_port", "dicom_port"):
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", getattr(args, attr)))
        except OSError:
            setattr(args, attr, free_port())


def _print_results(jobs: list[dict[str, Any]], series_count: int, started: float) -> dict[str, int]:
    """Print one line per conversion and the totals; return how many jobs ended in each state."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    print(f"\nConversions finished in {time.monotonic() - started:.1f} s:")
    for job in sorted(jobs, key=lambda j: (j.get("result") or {}).get("series_number") or 0):
        result = job.get("result") or {}
        label = f"{result.get('series_number', '?')} {result.get('series_description', job['series'])}"
        detail = ", ".join(job["outputs"][:2]) if job["state"] == "done" else (job.get("error") or "")
        print(f"  {job['state']:8} {label:35} {detail}")
    print(f"\nSeries converted: {counts.get('done', 0)} of {series_count}"
          f" (skipped {counts.get('skipped', 0)}, failed {counts.get('failed', 0)})")
    return counts


def _run_until_interrupted(server: Any) -> None:
    """Leave Orthanc running until it exits or Ctrl-C."""
    print("Orthanc keeps running; Ctrl-C stops it.", flush=True)
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _demo(args: argparse.Namespace) -> int:
    from .dicom_send import send_files  # noqa: PLC0415
    from .embedded import ORTHANC_AET, OrthancSetupError  # noqa: PLC0415

    files, series = _demo_files(args.data)
    _use_free_ports(args)
    # SIGTERM (a service manager, `timeout`, CI) ends the demo like Ctrl-C: Orthanc is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    server = _embedded(args)
    print(f"Starting Orthanc with the bidsbridge plugin in {args.workdir.resolve()} ...", flush=True)
    try:  # Orthanc is stopped however the demo ends, a signal during its start-up included
        try:
            server.start()
        except OrthancSetupError as exc:
            print(f"bidsbridge demo: {exc}", file=sys.stderr)
            return 1
        started = time.monotonic()
        report = send_files(files, "127.0.0.1", server.dicom_port, called_aet=ORTHANC_AET)
        print(f"Sent {report.sent} DICOM files ({len(series)} series) over C-STORE in "
              f"{time.monotonic() - started:.1f} s", flush=True)
        for path, why in report.failed:
            print(f"  not sent: {path}: {why}")
        jobs = _wait_for_jobs(server.url, len(series), args.timeout)
        counts = _print_results(jobs, len(series), started)
        print(f"BIDS dataset:     {server.bids_root}")
        print(f"Orthanc:          {server.url}   (jobs: {server.url}/bidsbridge/jobs)")
        keep = args.keep if args.keep is not None else sys.stdin.isatty()
        if keep:
            _run_until_interrupted(server)
        ok = counts.get("failed", 0) == 0 and sum(counts.values()) == len(series)
        return 0 if ok else 1
    finally:
        server.stop()


def build_parser() -> argparse.ArgumentParser:
    from converters.cli import register as register_convert  # noqa: PLC0415
    from converters.derived.cli import register as register_derive  # noqa: PLC0415
    from xnat_container.cli import register as register_xnat  # noqa: PLC0415

    from .rules.cli import register as register_rules  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="bidsbridge", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_convert(commands)
    register_derive(commands)
    register_rules(commands)
    register_xnat(commands)

    serve = commands.add_parser("serve", help="run Orthanc with the plugin on loopback (embedded default)")
    _add_server_options(serve, "bidsbridge-work")
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="serve, send the bundled sample session, print the result")
    _add_server_options(demo, "demo-work")
    demo.add_argument("--data", type=Path, default=DEMO_DATA, help="DICOM folder to send (default: bundled)")
    demo.add_argument("--timeout", type=float, default=600.0)
    demo.add_argument("--keep", action=argparse.BooleanOptionalAction, default=None,
                      help="keep Orthanc running after the demo (default: when run from a terminal)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
