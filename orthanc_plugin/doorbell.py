"""Wake idle workers when work is queued, instead of letting them find it at their next poll.

Each waiting process of a state directory listens on a Linux abstract UNIX datagram socket
(no file to clean up; the name is derived from the directory and the pid) and leaves its pid in
``<state>/doorbell/``; :meth:`Doorbell.ring` sends one byte to each of them. Ringing never
blocks and never fails: a full socket has been rung already, a dead listener's pid file is
removed, and on a system without abstract sockets everyone falls back to polling. Waiters
still wake at their timeout, so a lost ring costs one poll interval, never a job.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import threading
import time
from pathlib import Path

__all__ = ["Doorbell"]

logger = logging.getLogger(__name__)


class Doorbell:
    """The doorbell of one state directory (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = Path(state_dir) / "doorbell"
        self._key = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:20]
        self._listener: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._lock = threading.Lock()

    def _address(self, pid: int) -> str:
        return f"\0bidsbridge-{self._key}-{pid}"

    def listen(self) -> bool:
        """Start listening (once per process); False when this system cannot (then poll)."""
        if self._listener is not None:
            return True
        try:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(self._address(os.getpid()))
            listener.setblocking(False)
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / str(os.getpid())).touch()
        except OSError as exc:
            logger.info("no doorbell in %s (%s): polling only", self.folder, exc)
            return False
        self._listener = listener
        return True

    def wait(self, timeout: float) -> bool:
        """Sleep until rung or ``timeout`` seconds passed; True when rung."""
        if self._listener is None and not self.listen():
            time.sleep(timeout)
            return False
        assert self._listener is not None
        readable, _, _ = select.select([self._listener], [], [], max(0.0, timeout))
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):
            while self._listener.recv(16):  # several rings while busy: one wake-up
                pass
        return True

    def ring(self) -> None:
        """Wake every listener of the directory (never blocks, never raises)."""
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return
        with self._lock:
            try:
                if self._sender is None:
                    self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sender.setblocking(False)
                sender = self._sender
            except OSError:
                return
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                try:
                    sender.sendto(b"!", self._address(int(entry.name)))
                except BlockingIOError:
                    continue  # its socket is full: it has been rung already
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)  # a listener that is gone
                except OSError:
                    continue

    def close(self) -> None:
        with self._lock:
            if self._listener is not None:
                with contextlib.suppress(OSError):
                    (self.folder / str(os.getpid())).unlink()
                self._listener.close()
                self._listener = None
            if self._sender is not None:
                self._sender.close()
                self._sender = None
