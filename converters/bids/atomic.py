"""Atomic file writes, and what a killed writer leaves behind.

Every file of a dataset is written to a temporary file beside it, then renamed over it
(:func:`os.replace`): readers never see half a file. A write that fails (disk full) removes its
temporary file; one whose process is killed (SIGKILL, OOM, power) cannot, so temporary files
carry their owner — ``.<name>.<host>-<pid>-<random>.tmp`` — and :func:`sweep_temporaries`
removes those of processes that no longer run on this host (or older than a day: other hosts'
on a shared dataset). Staging folders carry the same owner tag (:func:`owner_tag`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "STALE_SECONDS",
    "copy_file_atomic",
    "owner_is_gone",
    "owner_tag",
    "sweep_temporaries",
    "write_bytes_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

#: This machine's name as owner tags carry it (letters and digits: ``-`` and ``.`` separate parts).
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"
#: Leftovers older than this (seconds) are removed whoever made them.
STALE_SECONDS = 24 * 3600
_TEMPORARY = re.compile(r"^\..+\.(?P<tag>[^.]+)\.tmp$")


def owner_tag() -> str:
    """``<host>-<pid>-<random>``: unique, and says which process made it."""
    return f"{HOST}-{os.getpid()}-{uuid.uuid4().hex}"


def owner_is_gone(tag: str) -> bool:
    """``tag`` (see :func:`owner_tag`) names a process of this host that no longer runs."""
    host, _, pid = tag.rpartition("-")[0].rpartition("-")
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{owner_tag()}.tmp")


def _atomic(path: Path, fill: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary(path)
    try:
        fill(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic(path, lambda temporary: temporary.write_bytes(data))


def copy_file_atomic(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path`` atomically."""
    _atomic(path, lambda temporary: shutil.copyfile(source, temporary))


def _temporary_candidates(root: Path) -> Iterator[Path]:
    """Paths named like temporaries under ``root``. Folders that vanish during the walk (other
    processes' staging and working folders come and go) are passed over, never an error; the
    staging folders themselves (``.bidsbridge/tmp``) belong to :func:`sweep_staging`."""
    for folder, subfolders, files in os.walk(root):
        if os.path.basename(folder) == ".bidsbridge" and "tmp" in subfolders:
            subfolders.remove("tmp")
        for name in files:
            if name.startswith(".") and name.endswith(".tmp"):
                yield Path(folder, name)


def sweep_temporaries(root: Path) -> list[Path]:
    """Remove the temporary files under ``root`` whose writer is gone (or that are stale);
    return them."""
    removed: list[Path] = []
    limit = time.time() - STALE_SECONDS
    for path in _temporary_candidates(root):
        found = _TEMPORARY.match(path.name)
        if found is None:
            continue
        try:
            if owner_is_gone(found.group("tag")) or path.lstat().st_mtime < limit:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    if removed:
        logger.warning("removed %d temporary file(s) left by killed writers in %s", len(removed), root)
    return removed
