"""The Orthanc side of bidsbridge: change events in, jobs out, REST routes.

Loaded by orthanc-python through :mod:`orthanc_plugin.orthanc_entry`.  Uses only the
orthanc-python 4.0 API (``RegisterOnChangeCallback``, ``RegisterRestCallback``, ``RestApiGet``,
``GetConfiguration``, ``GenerateRestApiAuthorizationToken``, ``SetMetricsValue``,
``ExtendOrthancExplorer``, ``Log*``), feature-detected where newer releases differ, so it also
runs on orthanc-python 5.x-7.x.

Metrics (:mod:`.metrics`) are set from a thread of their own every few seconds, never from a
callback; lines about one job carry ``job=<id> series=<id>`` (:mod:`.job_log`).

Event handler contract (pynetdicom's notification rule): the change callback *observes*; it
records work and returns within milliseconds, logs every error and never raises into Orthanc.
Conversion happens in worker processes (:mod:`orthanc_plugin.supervisor`).
REST handlers *decide*: they answer with a JSON error and an HTTP status.

Who is calling (:func:`identify_caller`) is read from the headers orthanc-python passes to the
REST callback (lower-cased names): ``authorization`` holds either the token the plugin minted
for its workers (``Bearer ...``, always a writer), or HTTP Basic credentials whose user name is
trusted only when Orthanc checks passwords (``AuthenticationEnabled``); with Orthanc's
authorization plugin, ``BidsBridge.UserHeader`` may name its token header. Only the user name is
kept; a password or token is never stored, logged or answered.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orthanc

from .catch_up import Change, missed_series, orthanc_time
from .config import ConfigError, PluginConfig, parse_config
from .job_log import JobTagFilter, job_context
from .job_queue import RetryPolicy
from .jobs import ConvertJob
from .metrics import MetricsCollector, MetricsPublisher, Sample
from .routes import UNIDENTIFIED, Caller, Response, Routes, WritePolicy
from .rules import SNAPSHOT_NAME, CheckContext, RulesError, RulesHolder
from .sqlite_queue import SqliteJobQueue
from .status_page import explorer_extension, ui_asset
from .supervisor import Supervisor
from .worker_settings import WorkerSettings

if TYPE_CHECKING:
    from .rules.dry_run import DryRunner

__all__ = ["BidsBridgePlugin", "identify_caller", "install"]

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


def _metrics_sink(orthanc_config: Mapping[str, Any]) -> Callable[[Sample], None] | None:
    """``orthanc.SetMetricsValue`` for one sample (a gauge), or None when Orthanc keeps no metrics."""
    if not hasattr(orthanc, "SetMetricsValue") or orthanc_config.get("MetricsEnabled", True) is False:
        return None
    gauge = getattr(getattr(orthanc, "MetricsType", None), "DEFAULT", 0)

    def publish(sample: Sample) -> None:
        orthanc.SetMetricsValue(sample.name, float(sample.value), gauge)

    return publish


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


def _basic_user(authorization: str) -> str | None:
    """The user name of an HTTP Basic ``Authorization`` value (the password is dropped at once)."""
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, colon, _ = decoded.partition(":")
    return user if colon and user else None


def identify_caller(headers: Mapping[str, str], *, plugin_token: str | None, basic_auth: bool,
                    user_header: str | None) -> Caller:
    """Who sent a request, from its (lower-cased) headers; see the module docstring.

    ``basic_auth``: Orthanc checks Basic passwords, so the user name is true (else anyone could
    claim one). ``user_header``: the authorization plugin's token header, once that plugin is
    known to be loaded (it checks the header). The HTTP Basic user comes first.
    """
    authorization = headers.get("authorization", "")
    if plugin_token and hmac.compare_digest(authorization.encode("utf-8"), plugin_token.encode("utf-8")):
        return Caller.plugin()
    if basic_auth:
        user = _basic_user(authorization)
        if user is not None:
            return Caller(user, "basic")
    if user_header:
        value = headers.get(user_header, "").strip()
        if value:
            return Caller(value, "header")
    return UNIDENTIFIED


class BidsBridgePlugin:
    def __init__(self, config: PluginConfig, orthanc_config: dict[str, Any] | None = None) -> None:
        self.config = config
        context = _rules_context(orthanc_config or {})
        # Checked now: a rules file that fails its checks stops Orthanc's start-up with the message.
        # ... and every accepted version is handed to the workers at once (the snapshot they read).
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.rules = RulesHolder(config.rules_path, context=CheckContext.from_orthanc_config(context),
                                 snapshot=config.state_dir / SNAPSHOT_NAME)
        self.queue = SqliteJobQueue(config.state_dir, max_attempts=config.max_attempts,
                                    retry_policy=RetryPolicy(config.retry_base, config.retry_cap))
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
                retry_base=config.retry_base,
                retry_cap=config.retry_cap,
                memory_mb=config.worker_memory_mb,
                nice=config.worker_nice,
            ),
            queue=self.queue,
            workers=config.workers,
            job_timeout=config.job_timeout,
            authorization=authorization,
            log=lambda message: logger.warning("%s", message.removeprefix("bidsbridge: ")),
        )
        sink = _metrics_sink(orthanc_config or {})
        self.metrics = None if sink is None else MetricsPublisher(MetricsCollector(self.queue), self.supervisor, sink)
        self._plugin_token = authorization
        #: ``UserHeader`` once the authorization plugin is seen loaded (at start); until then, ignored.
        self._user_header: str | None = None
        writers = None if config.writers is None else frozenset(config.writers)
        self.routes = Routes(self.queue, config.bids_root, self._series_exists, self._status,
                             uploads_dir=config.state_dir / "uploads",
                             rules_status=lambda: self.rules.status().to_dict(),
                             write_policy=WritePolicy(writers), dry_runner=self._dry_runner())
        self._started = False

    def _dry_runner(self) -> DryRunner:
        """``POST /bidsbridge/rules/test``: the active rules' holder, its check context, and the
        series' facts read through Orthanc's own REST API (as ``rules test --orthanc`` reads them)."""
        from .rules.dry_run import DryRunner  # noqa: PLC0415 - the rules engine, loaded with the holder
        from .rules.facts import read_orthanc_facts  # noqa: PLC0415

        holder = self.rules
        return DryRunner(active=lambda: holder.rules, context=holder.context,
                         facts=lambda series_id: read_orthanc_facts(_rest_get_json, series_id))

    # -- events ----------------------------------------------------------------------------

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """Orthanc change callback. Never raises."""
        try:
            if change_type == orthanc.ChangeType.STABLE_SERIES:
                job_id = self.queue.enqueue(resource_id, "stable", ConvertJob())
                with job_context(job_id, resource_id):
                    logger.info("queued: the series is stable")
            elif change_type == orthanc.ChangeType.NEW_SERIES and self.config.early_completion:
                # Converted once its headers prove it complete (:mod:`.completeness_stage`); a
                # STABLE_SERIES while this job still waits joins it.
                job_id = self.queue.enqueue(resource_id, "early", ConvertJob())
                with job_context(job_id, resource_id):
                    logger.info("queued: the series is arriving; the job waits for it to be complete")
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
        self._user_header = self._authorization_plugin_header()
        self.supervisor.start()
        self.rules.start()
        if self.metrics is not None:
            self.metrics.start()
        threading.Thread(target=self._catch_up, name="bidsbridge-catch-up", daemon=True).start()
        logger.warning("started %d worker(s); BIDS dataset at %s", self.config.workers, self.config.bids_root)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.metrics is not None:
            self.metrics.stop()
        self.rules.stop()
        self.supervisor.stop()

    def _authorization_plugin_header(self) -> str | None:
        """``UserHeader``, if Orthanc's authorization plugin (which checks that header) is loaded."""
        header = self.config.user_header
        if header is None:
            return None
        try:
            loaded = _rest_get_json("/plugins")
        except Exception:
            loaded = []
        if "authorization" in loaded:
            return header
        logger.error("BidsBridge.UserHeader %r is ignored: Orthanc's authorization plugin is not loaded "
                     "(GET /plugins), so nothing checks that header; only BidsBridge.Writers that log in "
                     "with HTTP Basic can change state", header)
        return None

    def _catch_up(self) -> None:
        """Queue the series nobody converted while the plugin was not listening (:mod:`.catch_up`)."""
        try:
            mode = self.config.catch_up
            if mode == "none":
                return
            cursor = self.queue.get_meta(CURSOR_KEY)
            end = int(_rest_get_json("/changes?last")["Last"])  # later changes: the live callbacks
            if cursor is None and mode == "since-last-run":
                self.queue.set_meta(CURSOR_KEY, str(end))
                logger.warning("first start: series already stable in Orthanc are not converted "
                               "(set CatchUp to \"all\" or POST /bidsbridge/series/{id}/convert)")
                return
            missed = missed_series(self._changes(int(cursor or 0), end), last_update=self._last_update,
                                   newest_job=self.queue.newest_job_time, stable_age=self.config.stable_age)
            for item in missed:
                job_id = self.queue.enqueue(item.series, "catch-up", ConvertJob(), delay=item.delay)
                with job_context(job_id, item.series):
                    logger.warning("catch-up: the series %s; queued", item.why)
            self.queue.set_meta(CURSOR_KEY, str(end))
        except Exception:
            logger.exception("catch-up from Orthanc's /changes failed")

    @staticmethod
    def _changes(since: int, end: int) -> Iterator[Change]:
        while since < end:
            page = _rest_get_json(f"/changes?since={since}&limit=1000")
            for entry in page["Changes"]:
                if int(entry["Seq"]) > end:
                    return
                change = Change.from_orthanc(entry)
                if change is not None:
                    yield change
            if page["Done"] or int(page["Last"]) <= since:
                return
            since = int(page["Last"])

    @staticmethod
    def _last_update(series_id: str) -> float | None:
        try:
            series = _rest_get_json(f"/series/{series_id}")
        except Exception:
            return None  # deleted since
        return orthanc_time(str(series.get("LastUpdate", ""))) or 0.0

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
        if response.status == 403:
            logger.warning("refused %s %s: %s", request.get("method", "GET"), uri,
                           json.loads(response.body).get("error"))
        _answer(output, response)

    def _dispatch(self, uri: str, request: dict[str, Any]) -> Response:
        method = str(request.get("method", "GET"))
        get = dict(request.get("get") or {})
        headers = {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()}
        caller = identify_caller(headers, plugin_token=self._plugin_token, basic_auth=self.config.basic_auth,
                                 user_header=self._user_header)
        parts = [part for part in uri.split("/") if part][1:]  # drop "bidsbridge"
        raw_body = request.get("body") or b""
        body = raw_body if isinstance(raw_body, bytes) else b""
        match parts:
            case ["ui"]:
                return ui_asset(method, None)
            case ["ui", name]:
                return ui_asset(method, name)
            case ["whoami"]:
                return self.routes.whoami(method, caller)
            case ["rules", "test"]:
                return self.routes.rules_test(method, body)
            case ["series", series_id, "qc"]:
                return self.routes.qc(method, series_id)
            case ["series", series_id, "qc", index]:
                return self.routes.qc(method, series_id, index)
            case ["jobs"]:
                return self.routes.jobs(method, get)
            case ["jobs", job_id]:
                return self.routes.job(method, job_id, None, caller)
            case ["jobs", job_id, action]:
                return self.routes.job(method, job_id, action, caller)
            case ["series", series_id, action]:
                # orthanc-python 4.0 passes no query arguments with a POST: accept them as headers too.
                options = {key: headers[f"x-bidsbridge-{key.replace('_', '-')}"]
                           for key in ("labels", "desc", "segmentation_type")
                           if f"x-bidsbridge-{key.replace('_', '-')}" in headers}
                return self.routes.series(method, series_id, action, body=body,
                                          content_type=headers.get("content-type", ""), get={**options, **get},
                                          caller=caller)
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
        if response.body:  # SendHttpStatus names no content type itself: the JSON error says what it is
            output.SetHttpHeader("Content-Type", response.content_type)
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
    handler.addFilter(JobTagFilter())  # job=<id> series=<id> on the lines about one job
    handler.setFormatter(logging.Formatter("%(job_tag)s%(message)s"))
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
    if hasattr(orthanc, "ExtendOrthancExplorer"):  # a button to the status page (/bidsbridge/ui/)
        orthanc.ExtendOrthancExplorer(explorer_extension())
    return plugin
