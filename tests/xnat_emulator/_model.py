"""The emulator's archive: projects, subjects, experiments, scans, resources and files, held in memory.

Entities are plain mutable dataclasses owned by :class:`Archive`; every read or write of them happens under
the archive's lock (the HTTP layer serves each connection on its own thread). The frozen ``*Record`` classes
at the end are what tests get back from :meth:`Archive.inventory`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import logging
import threading
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class StoredFile:
    """One file of a resource catalog; ``path`` is relative to the resource and may contain ``/``."""

    path: str
    data: bytes
    content: str = ""
    format: str = ""
    tags: str = ""
    md5: str = field(init=False)

    def __post_init__(self) -> None:
        self.md5 = hashlib.md5(self.data).hexdigest()

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Resource:
    """A resource catalog (``xnat:resourceCatalog``) attached to a project, subject, experiment or scan."""

    resource_id: int
    label: str
    format: str = ""
    content: str = ""
    description: str = ""
    tags: str = ""
    files: dict[str, StoredFile] = field(default_factory=dict)

    @property
    def file_size(self) -> int:
        return sum(item.size for item in self.files.values())


@dataclass
class Scan:
    scan_id: str
    xsi_type: str
    image_session_id: str
    row_id: int
    fields: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    created: dt.datetime = field(default_factory=_utc_now)


@dataclass
class Experiment:
    experiment_id: str
    label: str
    xsi_type: str
    project: str
    subject_id: str
    fields: dict[str, str] = field(default_factory=dict)
    scans: dict[str, Scan] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    created: dt.datetime = field(default_factory=_utc_now)
    insert_user: str = ""


@dataclass
class Subject:
    subject_id: str
    label: str
    project: str
    fields: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    created: dt.datetime = field(default_factory=_utc_now)
    insert_user: str = ""


@dataclass
class Project:
    project_id: str
    name: str
    secondary_id: str
    description: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    #: login -> "owner" | "member" | "collaborator"
    roles: dict[str, str] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    created: dt.datetime = field(default_factory=_utc_now)
    insert_user: str = ""


class Archive:
    """Everything stored, with XNAT-style accession numbers (``XNAT_S00001``, ``XNAT_E00001``)."""

    def __init__(self, site_id: str = "XNAT") -> None:
        self.site_id = site_id
        self.lock = threading.RLock()
        self.projects: dict[str, Project] = {}
        self.subjects: dict[str, Subject] = {}
        self.experiments: dict[str, Experiment] = {}
        self._subject_numbers = itertools.count(1)
        self._experiment_numbers = itertools.count(1)
        self._resource_numbers = itertools.count(1001)
        self._scan_rows = itertools.count(1)

    # -- identifiers -------------------------------------------------------------------------------
    def new_subject_id(self) -> str:
        return f"{self.site_id}_S{next(self._subject_numbers):05d}"

    def new_experiment_id(self) -> str:
        return f"{self.site_id}_E{next(self._experiment_numbers):05d}"

    def new_resource_id(self) -> int:
        return next(self._resource_numbers)

    def new_scan_row(self) -> int:
        return next(self._scan_rows)

    # -- lookups (by ID, or by label inside a project, as XNAT's URLs allow) ------------------------
    def find_subject(self, project: str | None, key: str) -> Subject | None:
        subject = self.subjects.get(key)
        if subject is not None and (project is None or subject.project == project):
            return subject
        if project is None:
            return None
        return next((s for s in self.subjects.values() if s.project == project and s.label == key), None)

    def find_experiment(self, project: str | None, subject: Subject | None, key: str) -> Experiment | None:
        candidates: list[Experiment] = []
        experiment = self.experiments.get(key)
        if experiment is not None:
            candidates.append(experiment)
        if project is not None:
            candidates.extend(e for e in self.experiments.values() if e.project == project and e.label == key)
        for candidate in candidates:
            if project is not None and candidate.project != project:
                continue
            if subject is not None and candidate.subject_id != subject.subject_id:
                continue
            return candidate
        return None

    def experiments_of(self, project: str | None = None, subject: Subject | None = None) -> list[Experiment]:
        return [
            e
            for e in self.experiments.values()
            if (project is None or e.project == project) and (subject is None or e.subject_id == subject.subject_id)
        ]

    def resources_at(
        self, project_id: str, subject: str | None, experiment: str | None, scan: str | None
    ) -> dict[str, Resource] | None:
        """The resources of the object named by labels (or IDs), ``None`` when it does not exist."""
        project = self.projects.get(project_id)
        if project is None or subject is None:
            return project.resources if project is not None else None
        found_subject = self.find_subject(project_id, subject)
        if found_subject is None or experiment is None:
            return found_subject.resources if found_subject is not None else None
        found_experiment = self.find_experiment(project_id, found_subject, experiment)
        if found_experiment is None or scan is None:
            return found_experiment.resources if found_experiment is not None else None
        found_scan = found_experiment.scans.get(scan)
        return found_scan.resources if found_scan is not None else None

    # -- removal -----------------------------------------------------------------------------------
    def remove_experiment(self, experiment: Experiment) -> None:
        del self.experiments[experiment.experiment_id]

    def remove_subject(self, subject: Subject) -> None:
        for experiment in self.experiments_of(subject=subject):
            self.remove_experiment(experiment)
        del self.subjects[subject.subject_id]

    def remove_project(self, project: Project) -> None:
        for subject in [s for s in self.subjects.values() if s.project == project.project_id]:
            self.remove_subject(subject)
        del self.projects[project.project_id]

    # -- introspection -----------------------------------------------------------------------------
    def inventory(self) -> Inventory:
        """A consistent snapshot of everything stored."""
        with self.lock:
            projects = tuple(ProjectRecord(p.project_id, p.name, dict(p.roles)) for p in self.projects.values())
            subjects = tuple(SubjectRecord(s.project, s.subject_id, s.label) for s in self.subjects.values())
            experiments: list[ExperimentRecord] = []
            scans: list[ScanRecord] = []
            resources: list[ResourceRecord] = []
            files: list[FileRecord] = []

            def add_resources(
                owner: tuple[str, str | None, str | None, str | None], catalogs: dict[str, Resource]
            ) -> None:
                project, subject_label, experiment_label, scan_id = owner
                for resource in catalogs.values():
                    resources.append(
                        ResourceRecord(
                            project,
                            subject_label,
                            experiment_label,
                            scan_id,
                            resource.label,
                            resource.format,
                            len(resource.files),
                            resource.file_size,
                        )
                    )
                    files.extend(
                        FileRecord(
                            project,
                            subject_label,
                            experiment_label,
                            scan_id,
                            resource.label,
                            stored.path,
                            stored.size,
                            stored.md5,
                        )
                        for stored in resource.files.values()
                    )

            for project in self.projects.values():
                add_resources((project.project_id, None, None, None), project.resources)
            for subject in self.subjects.values():
                add_resources((subject.project, subject.label, None, None), subject.resources)
            for experiment in self.experiments.values():
                subject_label = self.subjects[experiment.subject_id].label
                experiments.append(
                    ExperimentRecord(
                        experiment.project,
                        subject_label,
                        experiment.experiment_id,
                        experiment.label,
                        experiment.xsi_type,
                        experiment.fields.get("date", ""),
                        experiment.fields.get("time", ""),
                    )
                )
                add_resources((experiment.project, subject_label, experiment.label, None), experiment.resources)
                for scan in experiment.scans.values():
                    scans.append(
                        ScanRecord(
                            experiment.project,
                            subject_label,
                            experiment.label,
                            scan.scan_id,
                            scan.xsi_type,
                            scan.fields.get("type", ""),
                            scan.fields.get("series_description", ""),
                        )
                    )
                    add_resources((experiment.project, subject_label, experiment.label, scan.scan_id), scan.resources)
            return Inventory(projects, subjects, tuple(experiments), tuple(scans), tuple(resources), tuple(files))


@dataclass(frozen=True)
class ProjectRecord:
    project: str
    name: str
    roles: dict[str, str]


@dataclass(frozen=True)
class SubjectRecord:
    project: str
    subject_id: str
    label: str


@dataclass(frozen=True)
class ExperimentRecord:
    project: str
    subject: str
    experiment_id: str
    label: str
    xsi_type: str
    date: str
    time: str


@dataclass(frozen=True)
class ScanRecord:
    project: str
    subject: str
    experiment: str
    scan_id: str
    xsi_type: str
    type: str
    series_description: str


@dataclass(frozen=True)
class ResourceRecord:
    """A resource; ``subject``/``experiment``/``scan`` are ``None`` above the level it is attached to."""

    project: str
    subject: str | None
    experiment: str | None
    scan: str | None
    label: str
    format: str
    file_count: int
    file_size: int


@dataclass(frozen=True)
class FileRecord:
    project: str
    subject: str | None
    experiment: str | None
    scan: str | None
    resource: str
    path: str
    size: int
    md5: str


@dataclass(frozen=True)
class Inventory:
    """Everything the emulator stores, by level. Labels (not accession IDs) name the parents."""

    projects: tuple[ProjectRecord, ...]
    subjects: tuple[SubjectRecord, ...]
    experiments: tuple[ExperimentRecord, ...]
    scans: tuple[ScanRecord, ...]
    resources: tuple[ResourceRecord, ...]
    files: tuple[FileRecord, ...]

    def file(self, path: str, resource: str | None = None) -> FileRecord:
        """The one stored file with this path (optionally in this resource); ``KeyError`` otherwise."""
        found = [f for f in self.files if f.path == path and (resource is None or f.resource == resource)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} stored files match path {path!r} (resource {resource!r})")
        return found[0]
