"""Parsing XNAT archive URLs into what they point at.

XNAT addresses the same object through several paths: ``/data/projects/P/subjects/S/experiments/E``,
``/data/projects/P/experiments/E``, ``/data/experiments/E`` (accession IDs, or labels once a project is
given), with ``/data/archive/...`` and ``/REST/...`` as aliases. :func:`parse_archive_path` reduces all of
them to an :class:`ArchivePath`; resolving the keys against the archive is the REST layer's job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import unquote

logger = logging.getLogger(__name__)

#: Which child collections each level of the archive has, in URL terms.
_CHILDREN: dict[str, frozenset[str]] = {
    "root": frozenset({"projects", "subjects", "experiments"}),
    "projects": frozenset({"subjects", "experiments", "resources", "files", "users"}),
    "subjects": frozenset({"experiments", "resources", "files"}),
    "experiments": frozenset({"scans", "resources", "files"}),
    "scans": frozenset({"resources", "files"}),
    "resources": frozenset({"files"}),
}


def normalise_path(path: str) -> str:
    """``/REST/x`` and ``/data/archive/x`` are aliases of ``/data/x``; trailing slashes do not matter."""
    if path.startswith("/REST/") or path == "/REST":
        path = "/data" + path[len("/REST") :]
    if path.startswith("/data/archive/") or path == "/data/archive":
        path = "/data" + path[len("/data/archive") :]
    if len(path) > 1:
        path = path.rstrip("/")
    return path


@dataclass(frozen=True)
class ArchivePath:
    """Keys as given in the URL (IDs or labels); ``collection`` is set when the URL names a listing."""

    project: str | None = None
    subject: str | None = None
    experiment: str | None = None
    scan: str | None = None
    resource: str | None = None
    file_path: str | None = None
    collection: str | None = None
    #: Segments after ``/projects/P/users`` (``(group, login)`` for an access change).
    users_tail: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        """The level addressed: a collection name, or the singular level of the last key given."""
        if self.collection is not None:
            return self.collection
        for name, value in (
            ("file", self.file_path),
            ("resource", self.resource),
            ("scan", self.scan),
            ("experiment", self.experiment),
            ("subject", self.subject),
            ("project", self.project),
        ):
            if value is not None:
                return name
        return "root"


def parse_archive_path(path: str) -> ArchivePath | None:
    """Parse a normalised ``/data/...`` archive path; ``None`` when it is not an archive URL."""
    segments = path.split("/")[2:] if path.startswith("/data/") else []
    if not segments or segments[0] not in _CHILDREN["root"]:
        return None
    keys: dict[str, str] = {}
    level = "root"
    index = 0
    while index < len(segments):
        collection = segments[index]
        if collection not in _CHILDREN.get(level, frozenset()):
            return None
        if collection == "files":
            rest = [unquote(s) for s in segments[index + 1 :] if s]
            if rest:
                return _build(keys, file_path="/".join(rest))
            return _build(keys, collection="files")
        if collection == "users":
            tail = tuple(unquote(s) for s in segments[index + 1 :])
            return _build(keys, collection="users", users_tail=tail)
        if index + 1 >= len(segments):
            return _build(keys, collection=collection)
        keys[collection] = unquote(segments[index + 1])
        level = collection
        index += 2
    return _build(keys)


def _build(
    keys: dict[str, str],
    *,
    file_path: str | None = None,
    collection: str | None = None,
    users_tail: tuple[str, ...] = (),
) -> ArchivePath:
    return ArchivePath(
        project=keys.get("projects"),
        subject=keys.get("subjects"),
        experiment=keys.get("experiments"),
        scan=keys.get("scans"),
        resource=keys.get("resources"),
        file_path=file_path,
        collection=collection,
        users_tail=users_tail,
    )
