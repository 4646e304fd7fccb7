"""The active rule set, reloaded when its file changes (within :data:`DEFAULT_INTERVAL` seconds).

:class:`RulesHolder` loads the rules once when created — an invalid file then raises
:class:`~.errors.RulesError`, so the plugin can refuse to start with the message — and afterwards
polls the file's modification time, size and inode. A changed file is read and checked; if it
fails the checks (or vanishes) it is refused: the previous rules stay active, the error is
logged once and kept in :meth:`RulesHolder.status` until a good file replaces it. Polling never
raises. Without a path the shipped default rules are active and nothing is polled.

Hand-off to the workers in one hop: with a ``snapshot`` path the holder writes the bytes of every
file it accepts there (atomically) the moment it accepts them; the workers read only that
snapshot (:class:`orthanc_plugin.routing_stage.RulesSnapshot`), so a worker never runs rules the
holder refused.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..periodic import Periodic
from .check import CheckContext, load_default_rules, parse_rules
from .errors import Diagnostic, RulesError
from .loader import MAX_FILE_BYTES
from .model import RuleSet

__all__ = ["DEFAULT_INTERVAL", "SNAPSHOT_NAME", "RulesHolder", "RulesStatus"]

logger = logging.getLogger(__name__)

#: Seconds between two looks at the rule file (a change is active at most this long after it).
DEFAULT_INTERVAL = 2.0
#: File name of the accepted rules the workers read (in the plugin's state directory).
SNAPSHOT_NAME = "rules-active.yaml"

_Signature = tuple[int, int, int]


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


@dataclass(frozen=True)
class RulesStatus:
    """What ``GET /bidsbridge/rules`` shows."""

    path: str | None
    version: int
    digest: str
    rules: tuple[str, ...]
    #: When the active rules were loaded (epoch seconds).
    loaded_at: float
    #: Why the latest change was refused (None when the file on disk is the active one).
    last_error: str | None = None
    last_error_at: float | None = None
    diagnostics: tuple[Diagnostic, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "digest": self.digest,
            "rules": list(self.rules),
            "loaded_at": _iso(self.loaded_at),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "diagnostics": [d.to_dict() for d in self.diagnostics],
        }


class RulesHolder:
    """Thread-safe holder of the active :class:`~.model.RuleSet` with live reload."""

    def __init__(
        self,
        path: Path | str | None,
        *,
        context: CheckContext | None = None,
        interval: float = DEFAULT_INTERVAL,
        snapshot: Path | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.snapshot = snapshot
        self.context = context or CheckContext()
        self.interval = interval
        self._lock = threading.Lock()
        self._periodic = Periodic("bidsbridge-rules-reload", self.poll, interval)
        self._signature: _Signature | None = None
        self._error: tuple[str, float, tuple[Diagnostic, ...]] | None = None
        if self.path is None:
            self._rules = load_default_rules()
        else:
            self._signature = self._stat()
            self._rules, data = self._load()
            self._hand_off(data)
        self._loaded_at = time.time()

    # -- reading ---------------------------------------------------------------------------
    @property
    def rules(self) -> RuleSet:
        """The active rules (an immutable object: safe to keep for one evaluation)."""
        with self._lock:
            return self._rules

    def status(self) -> RulesStatus:
        with self._lock:
            error = self._error
            return RulesStatus(
                path=None if self.path is None else str(self.path),
                version=self._rules.version,
                digest=self._rules.digest,
                rules=tuple(rule.name for rule in self._rules.rules),
                loaded_at=self._loaded_at,
                last_error=None if error is None else error[0],
                last_error_at=None if error is None else error[1],
                diagnostics=() if error is None else error[2],
            )

    # -- reloading -------------------------------------------------------------------------
    def _stat(self) -> _Signature | None:
        assert self.path is not None
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _load(self) -> tuple[RuleSet, bytes]:
        assert self.path is not None
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise RulesError([Diagnostic(str(self.path), 1, 1, f"cannot read the rule file: {exc.strerror or exc}",
                                         "check the path and that the Orthanc user may read it")]) from None
        return parse_rules(data, str(self.path), self.context)[0], data

    def _hand_off(self, data: bytes) -> None:
        """Write the accepted file's bytes where the workers read them (temp file, then rename)."""
        if self.snapshot is None:
            return
        temporary = self.snapshot.with_name(f".{self.snapshot.name}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, self.snapshot)

    def _refuse(self, error: RulesError) -> None:
        # Logged before it shows in status(): whoever sees the error can find it in the log.
        logger.error("rule file refused, previous rules stay active: %s", error)
        with self._lock:
            self._error = (str(error), time.time(), error.diagnostics)

    def poll(self) -> bool:
        """Look at the file once; return True when changed rules became active. Never raises."""
        if self.path is None:
            return False
        try:
            signature = self._stat()
            if signature == self._signature:
                return False
            self._signature = signature
            if signature is None:
                self._refuse(RulesError([Diagnostic(str(self.path), 1, 1, "the rule file is missing",
                                                    "restore it; the previous rules stay active")]))
                return False
            try:
                rules, data = self._load()
            except RulesError as exc:
                self._refuse(exc)
                return False
            self._hand_off(data)
            with self._lock:
                changed = rules.digest != self._rules.digest
                self._error = None
                if changed:
                    self._rules = rules
                    self._loaded_at = time.time()
            if changed:
                logger.info("rules reloaded from %s (%s, %d rules)", self.path, rules.digest[:19], len(rules.rules))
            return changed
        except Exception:  # polling must never take the plugin down
            logger.exception("unexpected error while checking the rule file %s", self.path)
            return False

    def start(self) -> None:
        """Poll in a daemon thread every ``interval`` seconds (no-op without a path)."""
        if self.path is not None:
            self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
