"""Log lines that name their job: ``job=<id> series=<Orthanc id>`` on every line a worker writes
while it runs a job, and on the plugin's lines about one job.

:func:`job_context` sets the job for the code it wraps, in a :mod:`contextvars` variable (each
thread has its own, so two threads never lend each other their job); :class:`JobTagFilter`, put
on a handler by the entry point that configures logging (the worker's ``main``, the plugin's
``install``), copies it onto every record the handler writes as the attribute ``job_tag``
(``"job=12 series=5b0c... "``, or ``""`` outside a job), which that handler's format places before
the message: ``%(job_tag)s%(message)s``. A thread started for the job inherits nothing: start it
with :func:`in_this_context` (the worker's heartbeat and the REST client's download threads do).
The tag holds ids only (never a patient's name or a label from the DICOM).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

__all__ = ["TAG_FIELD", "JobTagFilter", "in_this_context", "job_context"]

#: The record attribute :class:`JobTagFilter` sets (use ``%(job_tag)s`` in a format).
TAG_FIELD = "job_tag"

_P = ParamSpec("_P")
_R = TypeVar("_R")

_TAG: contextvars.ContextVar[str] = contextvars.ContextVar("bidsbridge_job_tag", default="")


@contextmanager
def job_context(job_id: int, series: str) -> Iterator[None]:
    """Tag the log lines written inside the block (in this thread) with the job and its series."""
    token = _TAG.set(f"job={job_id} series={series} ")
    try:
        yield
    finally:
        _TAG.reset(token)


def in_this_context(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """``function`` bound to a copy of the current context (its job tag): for another thread.
    Each call runs in its own copy, so a thread pool may run it in several threads at once."""
    context = contextvars.copy_context()

    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return context.copy().run(function, *args, **kwargs)

    return run


class JobTagFilter(logging.Filter):
    """Gives each record ``job_tag``: the job of the context that logged it (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, TAG_FIELD, _TAG.get())
        return True
