"""Keeps the worker processes alive, from a thread inside Orthanc.

Workers are started with an explicit interpreter (``fork`` + immediate ``exec``: nothing of
Orthanc's threads runs in the child).  Every ``POLL`` seconds the supervisor:

* restarts a worker that exited and puts the job it left ``running`` back in the queue (the
  attempt counts: a job that kills its worker N times is failed with that reason);
* kills a worker whose job ran longer than ``JobTimeout`` (the job is retried).

:meth:`Supervisor.stop` asks workers to finish (SIGTERM), waits ``stop_timeout`` seconds, kills
the rest, and gives their jobs back to the queue without counting the attempt.

:attr:`Supervisor.restarts` counts the workers it replaced since it started (the
``bidsbridge_worker_restarts_total`` metric); its lines about one job carry the job's tag
(:mod:`.job_log`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .job_log import job_context
from .job_queue import JobQueue
from .jobs import Job
from .worker_settings import AUTH_ENV, PARENT_ENV, WorkerSettings

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

POLL = 0.5


@dataclass
class _Slot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    log: object | None = None


class Supervisor:
    def __init__(
        self,
        *,
        python: Path,
        settings: WorkerSettings,
        queue: JobQueue,
        workers: int,
        job_timeout: float,
        authorization: str | None,
        log: Callable[[str], None] = logger.warning,
        stop_timeout: float = 10.0,
    ) -> None:
        self.python = python
        self.settings = settings
        self.queue = queue
        self.job_timeout = job_timeout
        self.stop_timeout = stop_timeout
        self._authorization = authorization
        self._log = log
        self._slots = [_Slot(i) for i in range(workers)]
        self._restarts = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._settings_path = Path(settings.state_dir) / "worker-settings.json"
        self._log_dir = Path(settings.state_dir) / "logs"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.settings.write(self._settings_path)
        for slot in self._slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._run, name="bidsbridge-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        live = [slot.process for slot in self._slots if slot.process is not None and slot.process.poll() is None]
        for process in live:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                self.queue.requeue_worker(process.pid, "Orthanc stopped during the job", count_attempt=False)
        for slot in self._slots:
            self._close_log(slot)
        self._log(f"bidsbridge: {len(live)} worker(s) stopped")

    @property
    def restarts(self) -> int:
        """Workers replaced (died, or killed over ``JobTimeout``) since :meth:`start`."""
        return self._restarts

    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None and slot.process.poll() is None]

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)
        env.pop("PYTHONPATH", None)
        if self._authorization:
            env[AUTH_ENV] = self._authorization
        env[PARENT_ENV] = str(os.getpid())
        self._close_log(slot)
        log = open(self._log_dir / f"worker-{slot.index}.log", "ab")  # noqa: SIM115 - lives with the process
        slot.log = log
        slot.process = subprocess.Popen(
            [str(self.python), "-m", "orthanc_plugin.worker", str(self._settings_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.settings.state_dir,
            close_fds=True,
        )

    @staticmethod
    def _close_log(slot: _Slot) -> None:
        if slot.log is not None:
            slot.log.close()  # type: ignore[attr-defined]
            slot.log = None

    def _run(self) -> None:
        while not self._stopping.wait(POLL):
            try:
                self._check()
            except Exception as exc:  # the supervisor must outlive any single failure
                self._log(f"bidsbridge: supervisor error: {exc.__class__.__name__}: {exc}")

    def _check(self) -> None:
        now = time.time()
        held = {job.id: job for job in self.queue.list(state="running", limit=1000)}
        for job_id in self.queue.requeue_expired("the worker stopped renewing its lease (hung or gone)"):
            with self._about(held.pop(job_id, None)):
                self._log(f"bidsbridge: job {job_id} put back: its lease expired (worker hung or gone)")
        running = {job.worker_pid: job for job in held.values()}
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            code = process.poll()
            if code is None:
                job = running.get(process.pid)
                if job is not None and job.started_at is not None and now - job.started_at > self.job_timeout:
                    with self._about(job):
                        self._log(f"bidsbridge: job {job.id} exceeded JobTimeout; killing worker {process.pid}")
                    process.kill()
                    process.wait()
                    self.queue.requeue_worker(process.pid, f"job exceeded JobTimeout ({self.job_timeout:.0f} s)")
                    self._restart(slot, now)
                continue
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            ids = self.queue.requeue_worker(process.pid, f"worker process {process.pid} died ({how}) during the job")
            with self._about(running.get(process.pid)):
                self._log(f"bidsbridge: worker {process.pid} ended ({how}); jobs put back: {ids or 'none'}")
            self._restart(slot, now)

    @staticmethod
    def _about(job: Job | None) -> AbstractContextManager[None]:
        """The log tag of ``job`` (none when the line is about no known job)."""
        return nullcontext() if job is None else job_context(job.id, job.series)

    def _restart(self, slot: _Slot, now: float) -> None:
        slot.restarts = [t for t in slot.restarts if now - t < 60] + [now]
        # Crash loop (e.g. a broken venv): back off instead of spinning.
        if len(slot.restarts) > 5 and self._stopping.wait(10):
            return
        if not self._stopping.is_set():
            self._restarts += 1
            self._spawn(slot)
