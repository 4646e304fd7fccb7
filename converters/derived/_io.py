"""Writing several output files so that either all of them appear, complete, or none does."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


class Staging:
    """Temporary files beside their final names, renamed into place on :meth:`commit`.

    Temporary names are hidden (``.tmp-<token>-<name>``) and keep the final suffixes, so tools
    that choose a format by extension (nibabel) write the right one.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._token = secrets.token_hex(4)
        self._pending: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        """A temporary path to write; it becomes ``out_dir / name`` on commit."""
        final = self.out_dir / name
        if any(final == f for _, f in self._pending):
            raise ValueError(f"{final} is staged twice")
        temporary = self.out_dir / f".tmp-{self._token}-{name}"
        self._pending.append((temporary, final))
        return temporary

    def commit(self) -> list[Path]:
        """Rename every staged file into place; if one rename fails, undo the others."""
        done: list[Path] = []
        try:
            for temporary, final in self._pending:
                os.replace(temporary, final)
                done.append(final)
        except OSError:
            for final in done:
                final.unlink(missing_ok=True)
            self.discard()
            raise
        self._pending = []
        return done

    def discard(self) -> None:
        for temporary, _ in self._pending:
            try:
                temporary.unlink(missing_ok=True)
            except OSError as exc:  # pragma: no cover - best effort cleanup
                logger.warning("cannot remove temporary file %s: %s", temporary, exc)
        self._pending = []


@contextmanager
def staged(out_dir: Path) -> Iterator[Staging]:
    """Stage outputs in ``out_dir`` (created if needed); nothing is left behind on error.

    The caller writes every file to :meth:`Staging.path` inside the block and calls
    :meth:`Staging.commit` at its end.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Staging(out_dir)
    try:
        yield staging
    finally:
        staging.discard()
