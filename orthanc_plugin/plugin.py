"""The Orthanc side of bidsbridge: change events in, jobs out, REST routes.

Loaded by orthanc-python through :mod:`orthanc_plugin.orthanc_entry`.  Uses only the
orthanc-python 4.0 API (``RegisterOnChangeCallback``, ``RegisterRestCallback``, ``RestApiGet``,
``GetConfiguration``, ``GenerateRestApiAuthorizationToken``, ``Log*``), feature-detected where
newer releases differ, so it also runs on orthanc-python 5.x-7.x.

Event handler contract (pynetdicom's notification rule): the change callback *observes*; it
records work and returns within milliseconds, logs every error and never raises into Orthanc.
Conversion happens in worker processes (:mod:`orthanc_plugin.supervisor`).
REST handlers *decide*: they answer with a JSON error and an HTTP status.
"""

from __future__ import annotations

import calendar
import json
import logging
import threading
import time
from typing import Any

import orthanc

from .config import ConfigError, PluginConfig, parse_config
from .jobs import ConvertJob
from .routes import Response, Routes
from .rules import SNAPSHOT_NAME, CheckContext, RulesError, RulesHolder
from .sqlite_queue import SqliteJobQueue
from .supervisor import Supervisor
from .worker_settings import WorkerSettings

__all__ = ["BidsBridgePlugin", "install"]

logger = logging.getLogger("orthanc_plugin")

CURSOR_KEY = "changes_cursor"


class _OrthancLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"bidsbridge: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                orthanc.LogWarning(message)
            else:
                orthanc.LogInfo(message)
        except Exception:  # logging must never break the caller
            pass


def _change_date_to_epoch(date: str) -> float | None:
    """Orthanc's change dates look like ``20240131T235959`` (UTC)."""
    try:
        return float(calendar.timegm(time.strptime(date[:15], "%Y%m%dT%H%M%S")))
    except ValueError:
        return None


def _rest_get_json(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


def _rules_context(orthanc_config: dict[str, Any]) -> dict[str, Any]:
    """The names the rule checks verify (no settings values, so no secret can travel)."""
    section = orthanc_config.get("BidsBridge") or {}
    names: dict[str, dict[str, Any]] = {
        key: {name: {} for name in (section.get(key) or {})} for key in ("Destinations", "Datasets")
    }
    return {
        "BidsBridge": names,
        "DicomModalities": {name: {} for name in (orthanc_config.get("DicomModalities") or {})},
        "OrthancPeers": {name: {} for name in (orthanc_config.get("OrthancPeers") or {})},
    }


class BidsBridgePlugin:
    def __init__(self, config: PluginConfig, orthanc_config: dict[str, Any] | None = None) -> None:
        self.config = config
        context = _rules_context(orthanc_config or {})
        # Checked now: a rules file that fails its checks stops Orthanc's start-up with the message.
        # ... and every accepted version is handed to the workers at once (the snapshot they read).
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.rules = RulesHolder(config.rules_path, context=CheckContext.from_orthanc_config(context),
                                 snapshot=config.state_dir / SNAPSHOT_NAME)
        self.queue = SqliteJobQueue(config.state_dir, max_attempts=config.max_attempts)
        authorization = None
        if config.rest_username is None and hasattr(orthanc, "GenerateRestApiAuthorizationToken"):
            authorization = orthanc.GenerateRestApiAuthorizationToken()
        self.supervisor = Supervisor(
            python=config.python,
            settings=WorkerSettings(
                state_dir=str(config.state_dir),
                bids_root=str(config.bids_root),
                orthanc_url=config.orthanc_url,
                max_attempts=config.max_attempts,
                subject=config.subject,
                session=config.session,
                rest_username=config.rest_username,
                rest_password_file=None if config.rest_password_file is None else str(config.rest_password_file),
                rules_path=None if config.rules_path is None else str(config.rules_path),
                datasets={name: str(root) for name, root in config.dataset_roots().items()},
                rules_context=context,
                destinations=config.destinations,
            ),
            queue=self.queue,
            workers=config.workers,
            job_timeout=config.job_timeout,
            authorization=authorization,
            log=lambda message: logger.warning("%s", message.removeprefix("bidsbridge: ")),
        )
        self.routes = Routes(self.queue, config.bids_root, self._series_exists, self._status,
                             uploads_dir=config.state_dir / "uploads",
                             rules_status=lambda: self.rules.status().to_dict())
        self._started = False

    # -- events ----------------------------------------------------------------------------

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Orthanc change callback. Never raises."""
        try:
            if change_type == orthanc.ChangeType.STABLE_SERIES:
                job_id = self.queue.enqueue(resource_id, "stable", ConvertJob())
                logger.info("series %s is stable: job %d queued", resource_id, job_id)
            elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
                self.start()
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                self.stop()
        except Exception:
            logger.exception("change callback failed (change %s on %s)", change_type, resource_id)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        resumed = self.queue.requeue_worker(None, "Orthanc restarted during the job", count_attempt=False)
        if resumed:
            logger.warning("resuming %d job(s) left running when Orthanc stopped: %s", len(resumed), resumed)
        self.supervisor.start()
        self.rules.start()
        threading.Thread(target=self._catch_up, name="bidsbridge-catch-up", daemon=True).start()
        logger.warning("started %d worker(s); BIDS dataset at %s", self.config.workers, self.config.bids_root)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.rules.stop()
        self.supervisor.stop()

    def _catch_up(self) -> None:
        """Queue the series that became stable while the plugin was not listening."""
        try:
            mode = self.config.catch_up
            if mode == "none":
                return
            cursor = self.queue.get_meta(CURSOR_KEY)
            if cursor is None and mode == "since-last-run":
                last = int(_rest_get_json("/changes?last")["Last"])
                self.queue.set_meta(CURSOR_KEY, str(last))
                logger.warning("first start: series already stable in Orthanc are not converted "
                               "(set CatchUp to \"all\" or POST /bidsbridge/series/{id}/convert)")
                return
            since = int(cursor or 0)
            queued = 0
            while True:
                page = _rest_get_json(f"/changes?since={since}&limit=1000")
                for change in page["Changes"]:
                    if change["ChangeType"] == "StableSeries" and self._missed(change):
                        self.queue.enqueue(change["ID"], "catch-up", ConvertJob())
                        queued += 1
                since = int(page["Last"])
                self.queue.set_meta(CURSOR_KEY, str(since))
                if page["Done"]:
                    break
            if queued:
                logger.warning("catch-up: %d series that became stable while the plugin was down queued", queued)
        except Exception:
            logger.exception("catch-up from Orthanc's /changes failed")

    def _missed(self, change: dict[str, Any]) -> bool:
        when = _change_date_to_epoch(str(change.get("Date", "")))
        newest = self.queue.newest_job_time(change["ID"])
        if newest is not None and (when is None or newest >= when - 1):
            return False  # a job was created at or after this change
        return self._series_exists(change["ID"])

    # -- REST ------------------------------------------------------------------------------

    def _series_exists(self, series_id: str) -> bool:
        try:
            orthanc.RestApiGet(f"/series/{series_id}")
        except Exception:
            return False
        return True

    def _status(self) -> dict[str, Any]:
        return {
            "enabled": self.config.enabled,
            "jobs": self.queue.counts(),
            "workers": self.supervisor.pids(),
            "bids_root": str(self.config.bids_root),
        }

    def rest(self, output: Any, uri: str, **request: Any) -> None:
        try:
            response = self._dispatch(uri, request)
        except Exception as exc:
            logger.exception("REST %s failed", uri)
            response = Response.error(500, f"{exc.__class__.__name__}: {exc}")
        _answer(output, response)

    def _dispatch(self, uri: str, request: dict[str, Any]) -> Response:
        method = str(request.get("method", "GET"))
        get = dict(request.get("get") or {})
        parts = [part for part in uri.split("/") if part][1:]  # drop "bidsbridge"
        match parts:
            case ["jobs"]:
                return self.routes.jobs(method, get)
            case ["jobs", job_id]:
                return self.routes.job(method, job_id, None)
            case ["jobs", job_id, action]:
                return self.routes.job(method, job_id, action)
            case ["series", series_id, action]:
                headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
                body = request.get("body") or b""
                # orthanc-python 4.0 passes no query arguments with a POST: accept them as headers too.
                options = {key: headers[f"x-bidsbridge-{key.replace('_', '-')}"]
                           for key in ("labels", "desc", "segmentation_type")
                           if f"x-bidsbridge-{key.replace('_', '-')}" in headers}
                return self.routes.series(method, series_id, action, body=body if isinstance(body, bytes) else b"",
                                          content_type=headers.get("content-type", ""), get={**options, **get})
            case ["status"]:
                return self.routes.status_route(method)
            case ["rules"]:
                return self.routes.rules_route(method)
        return Response.error(404, f"no bidsbridge route {uri}")


def _answer(output: Any, response: Response) -> None:
    if response.status == 405:
        output.SendMethodNotAllowed(response.allow or "GET")
    elif response.status == 200:
        if response.content_type == "application/zip":
            output.SetHttpHeader("Content-Disposition", 'attachment; filename="nifti.zip"')
        output.AnswerBuffer(response.body, response.content_type)
    else:
        _send_status(output, response.status, response.body)


def _send_status(output: Any, status: int, body: bytes) -> None:
    """orthanc-python 4.0 takes (status, str body, size); later releases may take bytes."""
    try:
        output.SendHttpStatus(status, body.decode("ascii", errors="replace"), len(body))
    except TypeError:
        output.SendHttpStatus(status, body)


def install() -> BidsBridgePlugin | None:
    """Read the configuration, register callbacks. Called once by the entry script."""
    handler = _OrthancLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    orthanc_config = json.loads(orthanc.GetConfiguration())
    try:
        config = parse_config(orthanc_config)
    except ConfigError as exc:
        orthanc.LogError(f"bidsbridge: invalid configuration: {exc}")
        raise SystemExit(f"bidsbridge: invalid configuration: {exc}") from exc
    if not config.enabled:
        logger.warning("BidsBridge.Enabled is false: the plugin is loaded but does nothing")
        return None
    try:
        plugin = BidsBridgePlugin(config, orthanc_config)
    except RulesError as exc:
        orthanc.LogError(f"bidsbridge: BidsBridge.Rules refused: {exc}")
        raise SystemExit(f"bidsbridge: BidsBridge.Rules refused: {exc}") from exc
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    orthanc.RegisterRestCallback("/bidsbridge/(.*)", plugin.rest)
    return plugin
