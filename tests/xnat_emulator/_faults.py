"""Fault injection: which request fails, and how.

A :class:`FaultPlan` holds rates (fractions of the matching requests) for each kind of fault; the
:class:`FaultInjector` draws one pseudo-random number per matching request from a seeded generator, so a
sequential client sees the same faults on every run. Faults listed with :meth:`FaultInjector.queue` hit the
next matching requests in order, whatever the rates.

Every fault except the ``*_AFTER_WRITE`` kinds is applied *before* the request is processed, so nothing is
written. The ``*_AFTER_WRITE`` kinds process the request (the write is committed) and then fail the answer,
as a real XNAT sometimes commits and then times out.
"""

from __future__ import annotations

import enum
import logging
import random
import re
import threading
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class FaultKind(enum.StrEnum):
    """How a request fails."""

    #: Answered with a 5xx status (one of :attr:`FaultPlan.error_statuses`); nothing processed.
    ERROR = "error"
    #: No answer for :attr:`FaultPlan.timeout_seconds`, then the connection is closed; nothing processed.
    TIMEOUT = "timeout"
    #: The connection is closed without an answer; nothing processed.
    DROP = "drop"
    #: Answered 401 as if the session had expired; nothing processed.
    UNAUTHORIZED = "unauthorized"
    #: Processed (writes committed), then answered with a 5xx status.
    ERROR_AFTER_WRITE = "error_after_write"
    #: Processed (writes committed), then no answer until the client gives up.
    TIMEOUT_AFTER_WRITE = "timeout_after_write"
    #: Processed (writes committed), then the connection is closed without an answer.
    DROP_AFTER_WRITE = "drop_after_write"

    @property
    def after_write(self) -> bool:
        return self in _AFTER_WRITE

    @property
    def base(self) -> FaultKind:
        """The failure itself, without the "after write" timing."""
        return _BASE_OF.get(self, self)


_AFTER_WRITE = frozenset({FaultKind.ERROR_AFTER_WRITE, FaultKind.TIMEOUT_AFTER_WRITE, FaultKind.DROP_AFTER_WRITE})
_BASE_OF = {
    FaultKind.ERROR_AFTER_WRITE: FaultKind.ERROR,
    FaultKind.TIMEOUT_AFTER_WRITE: FaultKind.TIMEOUT,
    FaultKind.DROP_AFTER_WRITE: FaultKind.DROP,
}
_WRITE_METHODS = frozenset({"PUT", "POST", "DELETE"})


@dataclass(frozen=True)
class FaultPlan:
    """Fault rates and shapes. All rates are fractions of matching requests and must sum to at most 1."""

    #: Fraction of requests answered with a 5xx status before processing.
    error_rate: float = 0.0
    #: Statuses an ERROR fault picks from (uniformly, with the seeded generator).
    error_statuses: tuple[int, ...] = (500, 502, 503)
    #: Fraction of requests that get no answer for ``timeout_seconds`` (set it above the client's timeout).
    timeout_rate: float = 0.0
    #: How long a TIMEOUT fault holds the connection before closing it.
    timeout_seconds: float = 30.0
    #: Fraction of requests whose connection is closed without an answer.
    drop_rate: float = 0.0
    #: Fraction of requests answered 401 (1.0: every request, as after a lost session).
    unauthorized_rate: float = 0.0
    #: Fixed delay before every matching request is handled (slow server), in seconds.
    delay_seconds: float = 0.0
    #: Fraction of *write* requests (PUT/POST/DELETE) that are processed and then fail.
    fail_after_write_rate: float = 0.0
    #: How a fail-after-write fault fails: ``ERROR_AFTER_WRITE``, ``TIMEOUT_AFTER_WRITE`` or ``DROP_AFTER_WRITE``.
    fail_after_write_as: FaultKind = FaultKind.TIMEOUT_AFTER_WRITE
    #: Only requests with these HTTP methods are subject to faults (``None``: all methods).
    methods: frozenset[str] | None = None
    #: Only requests whose path matches this regular expression (``re.search``) are subject to faults.
    path_pattern: str | None = None

    def __post_init__(self) -> None:
        rates = (
            self.error_rate,
            self.timeout_rate,
            self.drop_rate,
            self.unauthorized_rate,
            self.fail_after_write_rate,
        )
        if any(rate < 0 or rate > 1 for rate in rates):
            raise ValueError(f"fault rates must be between 0 and 1, got {rates}")
        if sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates must sum to at most 1, got {sum(rates)}")
        if not self.fail_after_write_as.after_write:
            raise ValueError(f"fail_after_write_as must be an *_AFTER_WRITE kind, got {self.fail_after_write_as}")
        if not self.error_statuses or any(status < 500 or status > 599 for status in self.error_statuses):
            raise ValueError(f"error_statuses must be 5xx statuses, got {self.error_statuses}")
        if self.delay_seconds < 0 or self.timeout_seconds < 0:
            raise ValueError("delay_seconds and timeout_seconds must not be negative")
        if self.path_pattern is not None:
            re.compile(self.path_pattern)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method.upper() not in {m.upper() for m in self.methods}:
            return False
        return self.path_pattern is None or re.search(self.path_pattern, path) is not None


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one request: a delay, and possibly a fault."""

    delay_seconds: float
    kind: FaultKind | None
    status: int | None
    timeout_seconds: float


class FaultInjector:
    """Decides, request by request and deterministically for a seed, which fault applies."""

    def __init__(self, plan: FaultPlan | None = None, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._plan = plan or FaultPlan()
        self._random = random.Random(seed)
        self._queued: deque[FaultKind] = deque()

    @property
    def plan(self) -> FaultPlan:
        with self._lock:
            return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan
        logger.info("fault plan set to %s", plan)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._random = random.Random(seed)

    def queue(self, *kinds: FaultKind | str) -> None:
        """Make the next matching requests fail with these faults, in order (before any rate applies)."""
        with self._lock:
            self._queued.extend(FaultKind(kind) for kind in kinds)

    def clear(self) -> None:
        """No more faults: an empty plan and an empty queue."""
        with self._lock:
            self._plan = FaultPlan()
            self._queued.clear()

    def decide(self, method: str, path: str) -> FaultDecision | None:
        with self._lock:
            plan = self._plan
            if not plan.matches(method, path):
                return None
            kind = self._queued.popleft() if self._queued else self._draw(plan, method)
            status: int | None = None
            if kind is not None and kind.base is FaultKind.ERROR:
                status = self._random.choice(plan.error_statuses)
            elif kind is FaultKind.UNAUTHORIZED:
                status = 401
            return FaultDecision(plan.delay_seconds, kind, status, plan.timeout_seconds)

    def _draw(self, plan: FaultPlan, method: str) -> FaultKind | None:
        draw = self._random.random()
        for rate, kind in (
            (plan.error_rate, FaultKind.ERROR),
            (plan.timeout_rate, FaultKind.TIMEOUT),
            (plan.drop_rate, FaultKind.DROP),
            (plan.unauthorized_rate, FaultKind.UNAUTHORIZED),
            (plan.fail_after_write_rate, plan.fail_after_write_as),
        ):
            if draw < rate:
                if kind.after_write and method.upper() not in _WRITE_METHODS:
                    return None
                return kind
            draw -= rate
        return None
