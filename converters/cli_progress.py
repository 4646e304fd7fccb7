"""Progress of a long command-line run on stderr: a bar on a terminal, plain lines otherwise.

Used by ``bidsbridge convert`` and ``bidsbridge xnat push`` (CLI code only: the libraries report
progress through typed callbacks and never write to the terminal).

* On a terminal (``stream.isatty()``, ``TERM`` not ``dumb``): one tqdm bar, redrawn in place,
  with the count, the rate and the time left; log records of the command go above the bar
  (``tqdm.contrib.logging``) instead of through it.
* Otherwise (a log file, a pipe, CI): one plain line per step, no ANSI escapes nor carriage
  returns — ``[3/21] converted #7 func-bold (0:42 elapsed, about 2:10 left)``.
* ``enabled=False`` (``--quiet``) shows nothing.

The bar is drawn by tqdm rather than rich: tqdm is one small pure-Python package with no
dependencies that draws a bar with rate and ETA on any text stream; rich brings pygments and
markdown-it for features these two commands do not use. It is imported when a display is
created, never when the parser is built (``bidsbridge --help`` stays light).
"""

from __future__ import annotations

import contextlib
import os
import time
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["ProgressDisplay", "format_bytes", "is_terminal"]


def is_terminal(stream: TextIO) -> bool:
    """Whether a bar that redraws itself can be shown on ``stream``."""
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # a closed or bare stream
        return False
    return interactive and os.environ.get("TERM", "") != "dumb"


def format_bytes(count: int) -> str:
    """``35.2MB``: a byte count with a decimal (SI) prefix, as the bar shows it."""
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm.format_sizeof(count, "B")


def _interval(seconds: float) -> str:
    """``0:42``, ``12:05``, ``1:02:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressDisplay:
    """One progress display on ``stream``; use it as a context manager::

        with ProgressDisplay(sys.stderr, description="converting", unit="series") as display:
            display.update(done, total, line=f"[{done}/{total}] converted #7 func-bold", note="#7 func-bold")

    :param description: the bar's label.
    :param unit: what ``done`` and ``total`` count (``series``; ``B`` for bytes: shown as kB, MB, ...).
    :param enabled: ``False`` shows nothing.
    :param terminal: draw a bar (default: :func:`is_terminal` of ``stream``).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        description: str,
        unit: str,
        enabled: bool = True,
        terminal: bool | None = None,
    ) -> None:
        self._stream = stream
        self._description = description
        self._unit = unit
        self.enabled = enabled
        self.terminal = enabled and (is_terminal(stream) if terminal is None else terminal)
        self._bar: tqdm[NoReturn] | None = None
        self._exits = contextlib.ExitStack()
        self._started = time.monotonic()

    def __enter__(self) -> ProgressDisplay:
        self._started = time.monotonic()
        if self.terminal:
            from tqdm import tqdm  # noqa: PLC0415
            from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: PLC0415

            self._bar = self._exits.enter_context(
                tqdm(
                    total=None,
                    desc=self._description,
                    unit=self._unit,
                    unit_scale=self._unit == "B",
                    file=self._stream,
                    dynamic_ncols=True,
                    leave=True,
                )
            )
            self._exits.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._exits.close()
        self._bar = None

    def update(self, done: int, total: int, *, line: str, note: str = "") -> None:
        """``done`` of ``total`` now. A plain line is ``line`` and the time taken and left; the bar
        shows ``note`` after its counts."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.total = total
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(done - self._bar.n)
            self._bar.refresh()
            return
        self._stream.write(f"{line} ({self._timing(done, total)})\n")
        self._stream.flush()

    def _timing(self, done: int, total: int) -> str:
        elapsed = time.monotonic() - self._started
        shown = f"{_interval(elapsed)} elapsed"
        if 0 < done < total:
            shown += f", about {_interval(elapsed / done * (total - done))} left"
        return shown
