"""A daemon thread that calls one function every few seconds until stopped (the plugin's
rules reload and metrics). The function must not raise: it is the caller's to log."""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Periodic"]


class Periodic:
    """Calls ``step`` every ``interval`` seconds (first at once when ``at_start``) in a daemon
    thread named ``name``, from :meth:`start` until :meth:`stop`."""

    def __init__(self, name: str, step: Callable[[], object], interval: float, *, at_start: bool = False) -> None:
        self.name = name
        self.interval = interval
        self._step = step
        self._at_start = at_start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None

    def _run(self) -> None:
        if self._at_start:
            self._step()
        while not self._stop.wait(self.interval):
            self._step()
