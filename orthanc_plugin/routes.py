"""REST routes under ``/bidsbridge/``; they decide, so errors become clear HTTP answers.

Orthanc's own authentication applies (routes are registered through the plugin SDK): every
route answers only callers Orthanc authenticated. On top of it, the ``POST`` routes that change
state (retry, convert, segmentations) answer 403 unless :class:`WritePolicy` lets the :class:`Caller` write
(``BidsBridge.Writers``; absent = every authenticated caller may). Reads stay open.

========================================  ==========================================================
``GET  /bidsbridge/jobs``                 jobs, newest first (``?state=``, ``?series=``, ``?limit=``)
``GET  /bidsbridge/jobs/{id}``            one job
``POST /bidsbridge/jobs/{id}/retry``      put a finished job back in the queue
``POST /bidsbridge/series/{id}/convert``  queue a conversion by hand (JSON body
                                          ``{"derive": ["adc"]}`` adds derivations)
``GET  /bidsbridge/series/{id}/nifti``    zip of the series' NIfTI files and sidecars
``POST /bidsbridge/series/{id}/segmentations``  a NIfTI label map of the series → queued SEG job.
                                          Raw body (``?labels=<JSON>&desc=&segmentation_type=``,
                                          or headers ``X-Bidsbridge-Labels``/``-Desc``/
                                          ``-Segmentation-Type``: orthanc-python 4.0 drops
                                          the query string of a POST)
                                          or ``multipart/related``/``mixed`` with parts named
                                          ``labelmap``, ``labels`` (JSON or dseg.tsv), ``desc``,
                                          ``segmentation_type`` (Orthanc itself consumes
                                          ``multipart/form-data`` bodies, so that one is refused).
``GET  /bidsbridge/status``               queue counts and worker pids
``GET  /bidsbridge/rules``                the active routing rules: file, version, digest,
                                          loaded at, last error (a refused edit)
``POST /bidsbridge/rules/test``           dry run (what ``bidsbridge rules test`` prints) of the
                                          active rules, or of a candidate text, for a series: JSON
                                          body ``{"series": id, "rules": optional YAML}``; writes
                                          nothing, so readers may; 422 with the diagnostics of a
                                          candidate that fails its checks
``GET  /bidsbridge/series/{id}/qc``       the QC pictures of the series' latest done conversion:
                                          ``[{"path": ..., "url": ...}]``
``GET  /bidsbridge/series/{id}/qc/{i}``   one of them (``image/png``; only files under the
                                          dataset's ``derivatives/bidsbridge-qc/``)
``GET  /bidsbridge/whoami``               ``{"user", "source", "can_write"}`` of the caller
``GET  /bidsbridge/ui/``                  the status page (:mod:`orthanc_plugin.status_page`)
========================================  ==========================================================

The handlers are plain functions of the request returning a :class:`Response`, so they are
tested without Orthanc; :mod:`orthanc_plugin.plugin` adapts them to the SDK.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import uuid
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .derivations import DERIVATION_NAMES
from .job_queue import JobQueue
from .jobs import JOB_STATES, TERMINAL_STATES, ConvertJob, Job, JobState, SegmentationType, SegmentJob
from .rules import RulesError

if TYPE_CHECKING:
    from .rules.dry_run import DryRunner

__all__ = ["QC_FOLDER", "UNIDENTIFIED", "Caller", "Response", "Routes", "WritePolicy"]

#: Where a dataset keeps the QC pictures of its conversions; the QC routes serve nothing else.
QC_FOLDER = "derivatives/bidsbridge-qc"
#: The first bytes of every PNG file.
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

#: How the caller was identified: an HTTP Basic user Orthanc checked, the authorization plugin's
#: token header (``BidsBridge.UserHeader``), the token the plugin minted for its own workers, or not.
CallerSource = Literal["basic", "header", "plugin", "unidentified"]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    allow: str | None = None  # for 405 answers

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, indent=2).encode() + b"\n")

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message, "status": status}, status)


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as far as Orthanc vouches for it. Holds a user name, never a secret."""

    name: str | None = None
    source: CallerSource = "unidentified"

    @classmethod
    def plugin(cls) -> Caller:
        """The plugin's own workers (the token ``GenerateRestApiAuthorizationToken`` minted)."""
        return cls(None, "plugin")

    def describe(self) -> str:
        if self.source == "plugin":
            return "the plugin's own workers"
        if self.name is None:
            return "a caller Orthanc authenticated but who is not identified (no HTTP Basic user)"
        if self.source == "header":  # the value is the authorization plugin's token: never repeated
            return "the caller named by the BidsBridge.UserHeader token"
        return f"user {self.name!r}"


UNIDENTIFIED = Caller()


@dataclass(frozen=True)
class WritePolicy:
    """Who may change state: ``writers`` None lets every authenticated caller (Orthanc checked them).

    The plugin's own workers always may: their token already opens all of Orthanc's REST API.
    """

    writers: frozenset[str] | None = None

    def allows(self, caller: Caller) -> bool:
        if self.writers is None or caller.source == "plugin":
            return True
        return caller.name is not None and caller.name in self.writers

    def refusal(self, caller: Caller, action: str) -> Response | None:
        """None when ``caller`` may do ``action``, else the 403 answer that says why."""
        if self.allows(caller):
            return None
        return Response.error(403, f"{caller.describe()} may not {action}: changing state is reserved to "
                                   "BidsBridge.Writers (reading stays open)")


class Routes:
    def __init__(
        self,
        queue: JobQueue,
        bids_root: Path,
        series_exists: Callable[[str], bool],
        status: Callable[[], dict[str, Any]],
        *,
        uploads_dir: Path | None = None,
        rules_status: Callable[[], dict[str, Any]] | None = None,
        write_policy: WritePolicy | None = None,
        dry_runner: DryRunner | None = None,
    ) -> None:
        self.rules_status = rules_status
        self.dry_runner = dry_runner
        self.write_policy = write_policy or WritePolicy()
        self.queue = queue
        self.bids_root = bids_root
        self.uploads_dir = uploads_dir
        self.series_exists = series_exists
        self.status = status

    def jobs(self, method: str, get: Mapping[str, str]) -> Response:
        if method != "GET":
            return Response(405, b"", allow="GET")
        try:
            limit = int(get.get("limit", "100"))
            offset = int(get.get("offset", "0"))
        except ValueError:
            return Response.error(400, "limit and offset must be integers")
        state = get.get("state")
        known: dict[str, JobState] = {name: name for name in JOB_STATES}
        if state is not None and state not in known:
            return Response.error(400, f"unknown state {state!r}")
        jobs = self.queue.list(state=None if state is None else known[state], series=get.get("series"),
                               limit=max(1, min(limit, 10000)), offset=max(0, offset))
        return Response.json([job.to_dict() for job in jobs])

    def job(self, method: str, job_id: str, action: str | None, caller: Caller = UNIDENTIFIED) -> Response:
        if not job_id.isdigit():
            return Response.error(400, f"job id must be a number, not {job_id!r}")
        if action is None:
            if method != "GET":
                return Response(405, b"", allow="GET")
            job = self.queue.get(int(job_id))
            return Response.error(404, f"no job {job_id}") if job is None else Response.json(job.to_dict())
        if action == "retry":
            if method != "POST":
                return Response(405, b"", allow="POST")
            refused = self.write_policy.refusal(caller, f"retry job {job_id}")
            if refused is not None:
                return refused
            job = self.queue.get(int(job_id))
            if job is None:
                return Response.error(404, f"no job {job_id}")
            if job.state not in TERMINAL_STATES:
                return Response.error(409, f"job {job_id} is {job.state}; only finished jobs can be retried")
            retried = self.queue.retry(int(job_id))
            return Response.json(retried.to_dict() if retried else None, 202)
        return Response.error(404, f"unknown job action {action!r}")

    def series(self, method: str, series_id: str, action: str, *, body: bytes = b"", content_type: str = "",
               get: Mapping[str, str] | None = None, caller: Caller = UNIDENTIFIED) -> Response:
        # action: (the one method it answers, whether Orthanc must hold the series, the answer)
        actions: dict[str, tuple[str, bool, Callable[[], Response]]] = {
            "segmentations": ("POST", True, lambda: self._segmentation(series_id, body, content_type, get or {})),
            "convert": ("POST", True, lambda: self._convert(series_id, body)),
            "nifti": ("GET", False, lambda: self._nifti(series_id)),
        }
        if action not in actions:
            return Response.error(404, f"unknown series action {action!r}")
        allowed, must_exist, answer = actions[action]
        if method != allowed:
            return Response(405, b"", allow=allowed)
        if method == "POST":  # checked before the series is looked up: a reader learns nothing more
            what = {"convert": "queue a conversion", "segmentations": "upload a segmentation"}.get(action, action)
            refused = self.write_policy.refusal(caller, f"{what} of series {series_id}")
            if refused is not None:
                return refused
        if must_exist and not self.series_exists(series_id):
            return Response.error(404, f"Orthanc has no series {series_id}")
        return answer()

    def _convert(self, series_id: str, body: bytes) -> Response:
        """Queue a manual conversion; the optional JSON body names derivations to add."""
        asked: object = []
        if body.strip():
            try:
                request = json.loads(body)
            except ValueError:
                return Response.error(400, 'body must be JSON, e.g. {"derive": ["adc"]}')
            asked = request.get("derive", []) if isinstance(request, dict) else None
        if not isinstance(asked, list) or not all(d in DERIVATION_NAMES for d in asked):
            return Response.error(400, f"derive must be a list of {', '.join(DERIVATION_NAMES)}")
        runs = tuple(sorted({DERIVATION_NAMES[name][0] for name in asked}))
        job_id = self.queue.enqueue(series_id, "manual", ConvertJob(derive=runs))
        job = self.queue.get(job_id)
        return Response.json(job.to_dict() if job else {"id": job_id}, 202)

    def _nifti(self, series_id: str) -> Response:
        """A zip of the NIfTI files and sidecars of the series' latest finished conversion."""
        job = self.queue.latest_for_series(series_id)
        if job is None:
            return Response.error(404, f"series {series_id} has no finished conversion")
        result = job.convert_result()
        root = Path(result.dataset_root or self.bids_root) if result is not None else self.bids_root
        # A part of an acquisition spread over several series is filed under the acquisition.
        filed_as = result.filed_as if result is not None else ""
        outputs = _current_outputs(root, filed_as) or list(job.outputs)
        images = [p for p in outputs if not p.startswith("sourcedata/")]
        if not images:
            return Response.error(404, f"series {series_id} was converted to no NIfTI file")
        return Response(200, self._zip(images, root), "application/zip")

    def _segmentation(self, series_id: str, body: bytes, content_type: str, get: Mapping[str, str]) -> Response:
        if self.uploads_dir is None:
            return Response.error(503, "uploads are not configured")
        parts: dict[str, bytes] = {key: value.encode("utf-8") for key, value in get.items()
                                   if key in ("labels", "desc", "segmentation_type")}
        if content_type.startswith("multipart/form-data"):
            return Response.error(415, "Orthanc consumes multipart/form-data itself: send multipart/related, or the "
                                       "NIfTI as the body with ?labels=<JSON>")
        if content_type.startswith("multipart/"):
            message = BytesParser(policy=default_policy).parsebytes(
                b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(name, str) and isinstance(payload, bytes):
                    parts[name] = payload
            if "labelmap" not in parts:
                return Response.error(400, "multipart body needs a 'labelmap' part (the NIfTI label map)")
        else:
            parts["labelmap"] = body
        labelmap = parts["labelmap"]
        problem = _nifti_problem(labelmap)
        if problem:
            return Response.error(400, f"labelmap: {problem}")
        chosen: dict[str, str] = {}
        for key, allowed in (("segmentation_type", r"BINARY|LABELMAP"), ("desc", r"[A-Za-z0-9]{1,32}")):
            if key in parts:
                value = parts[key].decode("utf-8", errors="replace").strip()
                if not re.fullmatch(allowed, value):
                    return Response.error(400, f"{key} must match {allowed}, not {value[:40]!r}")
                chosen[key] = value
        folder = self.uploads_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        suffix = ".nii.gz" if labelmap[:2] == b"\x1f\x8b" else ".nii"
        (folder / f"labelmap{suffix}").write_bytes(labelmap)
        labels: str | None = None
        if "labels" in parts:
            table = parts["labels"]
            name = "labels.json" if table.lstrip()[:1] in (b"{", b"[") else "labels.tsv"
            (folder / name).write_bytes(table)
            labels = str(folder / name)
        kind: SegmentationType = "LABELMAP" if chosen.get("segmentation_type") == "LABELMAP" else "BINARY"
        params = SegmentJob(labelmap=str(folder / f"labelmap{suffix}"), labels=labels, segmentation_type=kind,
                            desc=chosen.get("desc", "user"))
        job_id = self.queue.enqueue(series_id, "manual", params)
        job = self.queue.get(job_id)
        return Response.json(job.to_dict() if job else {"id": job_id}, 202)

    def rules_route(self, method: str) -> Response:
        if method != "GET":
            return Response(405, b"", allow="GET")
        if self.rules_status is None:
            return Response.error(404, "no routing rules are loaded")
        return Response.json(self.rules_status())

    def rules_test(self, method: str, body: bytes) -> Response:
        """Dry run of the active rules, or of the candidate text ``rules``, for ``series``."""
        if method != "POST":
            return Response(405, b"", allow="POST")
        if self.dry_runner is None:
            return Response.error(404, "no routing rules are loaded")
        usage = 'body must be JSON: {"series": "<Orthanc series id>", "rules": "<optional candidate YAML>"}'
        try:
            request = json.loads(body or b"null")
        except ValueError:
            return Response.error(400, usage)
        series = request.get("series") if isinstance(request, dict) else None
        candidate = request.get("rules") if isinstance(request, dict) else None
        if not isinstance(series, str) or not series or not (candidate is None or isinstance(candidate, str)):
            return Response.error(400, usage)
        if not self.series_exists(series):
            return Response.error(404, f"Orthanc has no series {series}")
        try:
            result = self.dry_runner.run(series, None if candidate is None else candidate.encode("utf-8"))
        except RulesError as exc:
            return Response.json({"error": str(exc), "status": 422,
                                  "diagnostics": [d.to_dict() for d in exc.diagnostics]}, 422)
        decision = result.decision
        return Response.json({
            "series": series,
            "rules": {"source": decision.rules_source, "digest": decision.rules_digest,
                      "candidate": candidate is not None},
            "notes": [d.to_dict() for d in result.notes],
            "text": result.text(),
            "decision": result.to_dict(),
        })

    def whoami(self, method: str, caller: Caller) -> Response:
        """Who the caller is to the plugin and whether it may change state (the page hides Retry)."""
        if method != "GET":
            return Response(405, b"", allow="GET")
        # A UserHeader value is the authorization plugin's token: never repeated (Caller.describe).
        user = caller.name if caller.source == "basic" else None
        return Response.json({"user": user, "source": caller.source,
                              "can_write": self.write_policy.allows(caller)})

    def qc(self, method: str, series_id: str, index: str | None = None) -> Response:
        """The QC pictures of the series' latest done conversion (``index`` None: their list)."""
        if method != "GET":
            return Response(405, b"", allow="GET")
        job = self._latest_conversion(series_id)
        if job is None:
            return Response.error(404, f"series {series_id} has no finished conversion")
        pictures = _qc_paths(job)
        if index is None:
            return Response.json([{"path": path, "url": f"/bidsbridge/series/{series_id}/qc/{number}"}
                                  for number, path in enumerate(pictures)])
        if not index.isdigit() or int(index) >= len(pictures):
            return Response.error(404, f"series {series_id} has no QC picture {index!r} ({len(pictures)} pictures)")
        relative = pictures[int(index)]
        root = Path(str((job.result or {}).get("dataset_root") or self.bids_root)).resolve()
        path = (root / relative).resolve()
        if (root / QC_FOLDER) not in path.parents:
            return Response.error(403, f"QC picture {relative!r} resolves outside the dataset's {QC_FOLDER}/")
        try:
            data = path.read_bytes()
        except OSError:
            return Response.error(404, f"QC picture {relative!r} is not in the dataset (any more)")
        if not data.startswith(_PNG_MAGIC):
            return Response.error(404, f"QC picture {relative!r} is not a PNG file")
        return Response(200, data, "image/png")

    def _latest_conversion(self, series_id: str) -> Job | None:
        for job in self.queue.list(state="done", series=series_id, limit=100):  # newest first
            if job.kind == "convert":
                return job
        return None

    def status_route(self, method: str) -> Response:
        if method != "GET":
            return Response(405, b"", allow="GET")
        return Response.json(self.status())

    def _zip(self, relative_paths: list[str], dataset_root: Path) -> bytes:
        buffer = io.BytesIO()
        root = dataset_root.resolve()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for relative in sorted(relative_paths):
                path = (root / relative).resolve()
                if root not in path.parents or not path.is_file():
                    continue
                archive.write(path, relative)
        return buffer.getvalue()


def _qc_paths(job: Job) -> list[str]:
    """The ``qc`` key of a conversion's result: PNG paths relative to its ``dataset_root``."""
    listed = (job.result or {}).get("qc")
    if not isinstance(listed, list):
        return []
    return [path for path in listed if isinstance(path, str) and path]


def _nifti_problem(data: bytes) -> str | None:
    """Why ``data`` is not a NIfTI-1/2 file, or None."""
    if not data:
        return "empty body: send the NIfTI label map (.nii or .nii.gz)"
    try:
        head = gzip.GzipFile(fileobj=io.BytesIO(data)).read(544) if data[:2] == b"\x1f\x8b" else data[:544]
    except (OSError, EOFError):
        return "corrupt gzip data"
    if len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
        return None
    if len(head) >= 544 and head[4:8] in (b"n+2\0", b"ni2\0"):
        return None
    return "not a NIfTI file (no NIfTI magic in the header)"


def _current_outputs(dataset_root: Path, series_uid: str) -> list[str] | None:
    """The files the series owns *now* (a later repeat may have renamed them since its job ran).

    Read from the converter's per-series manifest (``converters.bids.manifests``:
    ``.bidsbridge/series/<sha256 of the SeriesInstanceUID>.json``, key ``outputs``), directly,
    so that Orthanc's process does not import the conversion stack.
    """
    if not series_uid:
        return None
    digest = hashlib.sha256(series_uid.encode("utf-8")).hexdigest()
    try:
        manifest = json.loads((dataset_root / ".bidsbridge" / "series" / f"{digest}.json").read_text("utf-8"))
        return [str(p) for p in manifest["outputs"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
