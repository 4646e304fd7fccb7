"""Archive routes: projects, subjects, experiments, scans, resources and files, with XNAT's semantics.

The rules emulated (XNAT 1.8 as xnat-py and plain REST clients see it):

* Creation is a PUT on the object's URL with ``xsiType=`` and field query parameters (``date=``,
  ``xnat:mrSessionData/date=``, ...). Projects, subjects, experiments and scans answer their ID as a
  plain-text body, **201** when created and **200** when the object already existed (its fields are then
  updated). Unknown ``xsiType`` values and generic base types (``xnat:imageScanData``) are refused with 400.
* A PUT on an existing *resource* answers **409**. A file PUT on a missing resource creates the resource.
* A file PUT on an existing file without ``overwrite=true`` answers **200** ``{"duplicates": [...]}`` and
  writes nothing; with ``overwrite=true`` it replaces the file. Uploads may be a raw body or multipart;
  ``extract=true`` unpacks a zip/tar(.gz) upload into the resource.
* Access follows project roles: collaborators read, members also create and edit, owners also delete;
  site admins do everything. A user without a role gets 403; a missing object is 404.
"""

from __future__ import annotations

import fnmatch
import logging
import mimetypes
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import _representations as rep
from ._accounts import Accounts, User
from ._model import Archive, Experiment, Project, Resource, Scan, StoredFile, Subject
from ._routes import ArchivePath
from ._schema import DataModel
from ._wire import (
    ApiRequest,
    ApiResponse,
    JsonRow,
    error,
    json_response,
    result_set,
    text,
    uploaded_parts,
    xml_response,
)

logger = logging.getLogger(__name__)

#: Which project roles allow which kind of access.
_ROLES_ALLOWED = {
    "read": frozenset({"owner", "member", "collaborator"}),
    "edit": frozenset({"owner", "member"}),
    "delete": frozenset({"owner"}),
}
_ROLE_GROUPS = {"owner": "Owners", "member": "Members", "collaborator": "Collaborators"}

#: Query parameters that steer a request rather than set a field of the object.
_CONTROL_PARAMETERS = frozenset(
    {
        "xsiType",
        "req_format",
        "format",
        "overwrite",
        "extract",
        "inbody",
        "columns",
        "removeFiles",
        "allowDataDeletion",
        "fixScanTypes",
        "sortBy",
        "content",
        "tags",
        "description",
        "activate",
        "quarantine",
    }
)
_LISTING_PARAMETERS = frozenset({"format", "columns", "sortBy", "limit", "offset"})
_FIELD_CASE = {"id": "ID", "uid": "UID", "subject_id": "subject_ID", "secondary_id": "secondary_ID"}


class _Refusal(Exception):
    """Raised inside a handler to answer with an error response."""

    def __init__(self, response: ApiResponse) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class _Found:
    project: Project | None = None
    subject: Subject | None = None
    experiment: Experiment | None = None
    scan: Scan | None = None
    resource: Resource | None = None

    @property
    def owner_resources(self) -> dict[str, Resource]:
        owner = self.scan or self.experiment or self.subject or self.project
        assert owner is not None
        return owner.resources


Handler = Callable[[ApiRequest, ArchivePath], ApiResponse]


class ArchiveApi:
    """Answers ``/data/{projects,subjects,experiments}/...`` requests against an :class:`Archive`."""

    def __init__(self, archive: Archive, model: DataModel, accounts: Accounts) -> None:
        self.archive = archive
        self.model = model
        self.accounts = accounts
        #: Paths of file writes refused because the file existed and ``overwrite=true`` was not given.
        self.duplicate_writes: list[str] = []
        self._handlers: dict[tuple[str, str], Handler] = {
            ("GET", "projects"): self._get_projects,
            ("GET", "project"): self._get_project,
            ("PUT", "project"): self._put_project,
            ("DELETE", "project"): self._delete_project,
            ("GET", "users"): self._get_users,
            ("PUT", "users"): self._put_users,
            ("DELETE", "users"): self._delete_users,
            ("GET", "subjects"): self._get_subjects,
            ("GET", "subject"): self._get_subject,
            ("PUT", "subject"): self._put_subject,
            ("DELETE", "subject"): self._delete_subject,
            ("GET", "experiments"): self._get_experiments,
            ("GET", "experiment"): self._get_experiment,
            ("PUT", "experiment"): self._put_experiment,
            ("DELETE", "experiment"): self._delete_experiment,
            ("GET", "scans"): self._get_scans,
            ("GET", "scan"): self._get_scan,
            ("PUT", "scan"): self._put_scan,
            ("DELETE", "scan"): self._delete_scan,
            ("GET", "resources"): self._get_resources,
            ("GET", "resource"): self._get_resource,
            ("PUT", "resource"): self._put_resource,
            ("DELETE", "resource"): self._delete_resource,
            ("GET", "files"): self._get_files,
            ("PUT", "files"): self._put_files,
            ("GET", "file"): self._get_file,
            ("PUT", "file"): self._put_file,
            ("DELETE", "file"): self._delete_file,
        }

    def handle(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        method = request.method
        if method == "POST" and where.target in ("file", "files"):
            method = "PUT"
        handler = self._handlers.get((method, where.target))
        if handler is None:
            return error(405, f"{request.method} is not supported on {where.target}")
        with self.archive.lock:
            try:
                return handler(request, where)
            except _Refusal as refusal:
                return refusal.response

    # -- access and lookup ------------------------------------------------------------------------------
    @staticmethod
    def _role(user: User | None, project: Project) -> str | None:
        if user is None:
            return None
        if user.admin:
            return "owner"
        return project.roles.get(user.login)

    def _check(self, request: ApiRequest, project: Project, need: str) -> None:
        if self._role(request.user, project) not in _ROLES_ALLOWED[need]:
            login = request.user.login if request.user else "guest"
            raise _Refusal(
                error(
                    403,
                    f"Specified user account ({login}) has insufficient privileges for {need} "
                    f"access to the {project.project_id} project.",
                )
            )

    def _readable(self, request: ApiRequest, project_id: str) -> bool:
        project = self.archive.projects.get(project_id)
        return project is not None and self._role(request.user, project) is not None

    def _resolve(self, request: ApiRequest, where: ArchivePath, need: str, optional: str | None = None) -> _Found:
        """Look up every key of ``where``; the level named ``optional`` may be missing (it is being created)."""
        found = _Found()
        archive = self.archive
        if where.project is not None:
            found.project = archive.projects.get(where.project)
            if found.project is None:
                if optional == "project":
                    return found
                raise _Refusal(error(404, f"Unable to find project {where.project}"))
            self._check(request, found.project, need)
        project_id = found.project.project_id if found.project else None
        if where.subject is not None:
            found.subject = archive.find_subject(project_id, where.subject)
            if found.subject is None:
                if optional == "subject":
                    return found
                raise _Refusal(error(404, f"Unable to find subject {where.subject}"))
            if found.project is None:
                found.project = archive.projects[found.subject.project]
                self._check(request, found.project, need)
        if where.experiment is not None:
            found.experiment = archive.find_experiment(project_id, found.subject, where.experiment)
            if found.experiment is None:
                if optional == "experiment":
                    return found
                raise _Refusal(error(404, f"Unable to find experiment {where.experiment}"))
            if found.project is None:
                found.project = archive.projects[found.experiment.project]
                self._check(request, found.project, need)
            found.subject = found.subject or archive.subjects[found.experiment.subject_id]
        if where.scan is not None:
            assert found.experiment is not None
            found.scan = found.experiment.scans.get(where.scan)
            if found.scan is None:
                if optional == "scan":
                    return found
                raise _Refusal(error(404, f"Unable to find scan {where.scan}"))
        if where.resource is not None:
            found.resource = self._find_resource(found.owner_resources, where.resource)
            if found.resource is None and optional != "resource":
                raise _Refusal(error(404, f"Unable to find resource {where.resource}"))
        return found

    @staticmethod
    def _find_resource(resources: dict[str, Resource], key: str) -> Resource | None:
        if key in resources:
            return resources[key]
        return next((r for r in resources.values() if str(r.resource_id) == key), None)

    # -- request helpers --------------------------------------------------------------------------------
    @staticmethod
    def _fields(request: ApiRequest) -> dict[str, str]:
        """Field values from the query: ``date=``, ``xnat:mrSessionData/date=`` and nested ``a/b=`` paths."""
        fields: dict[str, str] = {}
        for key, values in request.query.items():
            if key in _CONTROL_PARAMETERS or key.startswith("event_") or not values:
                continue
            name = re.sub(r"^[A-Za-z]+:[A-Za-z0-9_]+/", "", key)
            name = _FIELD_CASE.get(name.lower(), name)
            value = values[-1]
            if name == "date":
                value = _normalise_date(value)
            elif name == "time":
                value = _normalise_time(value)
            fields[name] = value
        return fields

    @staticmethod
    def _apply(target: dict[str, str], fields: dict[str, str]) -> None:
        for name, value in fields.items():
            if value == "NULL":
                target.pop(name, None)
            else:
                target[name] = value

    @staticmethod
    def _listing(request: ApiRequest, rows: list[JsonRow], title: str) -> ApiResponse:
        filters = {k: v[-1] for k, v in request.query.items() if k not in _LISTING_PARAMETERS and v}
        if filters:
            rows = [
                row
                for row in rows
                if all(fnmatch.fnmatchcase(row[k], pattern) for k, pattern in filters.items() if k in row)
            ]
        return result_set(rows, request.format, title)

    @staticmethod
    def _columns(request: ApiRequest) -> list[str] | None:
        value = request.param("columns")
        return [c for c in value.split(",") if c] if value else None

    def _item(self, request: ApiRequest, item: dict[str, object], xml: str) -> ApiResponse:
        if request.format == "json":
            return json_response(rep.items(item))
        return xml_response(xml)

    # -- projects ---------------------------------------------------------------------------------------
    def _get_projects(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        columns = self._columns(request)
        rows = [
            rep.project_row(p, columns)
            for p in self.archive.projects.values()
            if self._role(request.user, p) is not None
        ]
        return self._listing(request, rows, "Projects")

    def _get_project(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        project = self._resolve(request, where, "read").project
        assert project is not None
        data = {"name": project.name, "description": project.description, **project.fields}
        xml = rep.item_xml(
            self.model.element_name("xnat:projectData"),
            {"ID": project.project_id, "secondary_ID": project.secondary_id},
            data,
        )
        return self._item(request, rep.project_item(project), xml)

    def _put_project(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        assert where.project is not None and request.user is not None
        project = self._resolve(request, where, "edit", optional="project").project
        fields = self._fields(request)
        name = fields.pop("name", None)
        secondary_id = fields.pop("secondary_ID", None)
        description = request.param("description")
        fields.pop("ID", None)
        if project is None:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", where.project):
                return error(400, f"Invalid project ID {where.project!r}")
            project = Project(
                where.project,
                name or where.project,
                secondary_id or where.project,
                description or "",
                insert_user=request.user.login,
            )
            project.roles[request.user.login] = "owner"
            self._apply(project.fields, fields)
            self.archive.projects[project.project_id] = project
            logger.info("created project %s", project.project_id)
            return text(201, project.project_id)
        project.name = name or project.name
        project.secondary_id = secondary_id or project.secondary_id
        project.description = description if description is not None else project.description
        self._apply(project.fields, fields)
        return text(200, project.project_id)

    def _delete_project(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        project = self._resolve(request, where, "delete").project
        assert project is not None
        self.archive.remove_project(project)
        return text(200)

    def _get_users(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        project = self._resolve(request, where, "read").project
        assert project is not None
        rows = []
        for login, role in project.roles.items():
            user = self.accounts.user(login)
            rows.append(
                {
                    "login": login,
                    "firstname": login,
                    "lastname": "",
                    "email": user.email if user else "",
                    "displayname": _ROLE_GROUPS[role],
                    "GROUP_ID": f"{project.project_id}_{role}",
                    "xdat_user_id": str(user.user_id) if user else "",
                }
            )
        return self._listing(request, rows, "Users")

    def _project_access_change(self, request: ApiRequest, where: ArchivePath) -> tuple[Project, str, str | None]:
        project = self._resolve(request, where, "delete").project
        assert project is not None
        if len(where.users_tail) != 2:
            raise _Refusal(error(400, "Expected /users/{group}/{login}"))
        group, login = where.users_tail
        if self.accounts.user(login) is None:
            raise _Refusal(error(404, f"Unknown user {login}"))
        return project, login, _role_from_group(group)

    def _put_users(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        project, login, role = self._project_access_change(request, where)
        if role is None:
            return error(400, f"Unknown group {where.users_tail[0]}")
        project.roles[login] = role
        return text(200)

    def _delete_users(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        project, login, _role = self._project_access_change(request, where)
        project.roles.pop(login, None)
        return text(200)

    # -- subjects ---------------------------------------------------------------------------------------
    def _get_subjects(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        columns = self._columns(request)
        if where.project is not None:
            project = self._resolve(request, where, "read").project
            assert project is not None
            subjects = [s for s in self.archive.subjects.values() if s.project == project.project_id]
        else:
            subjects = [s for s in self.archive.subjects.values() if self._readable(request, s.project)]
        return self._listing(request, [rep.subject_row(s, columns) for s in subjects], "Subjects")

    def _get_subject(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        subject = self._resolve(request, where, "read").subject
        assert subject is not None
        xml = rep.item_xml(
            self.model.element_name("xnat:subjectData"),
            {"ID": subject.subject_id, "project": subject.project, "label": subject.label},
            subject.fields,
        )
        return self._item(request, rep.subject_item(subject), xml)

    def _put_subject(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        assert where.subject is not None and request.user is not None
        if where.project is None and self.archive.subjects.get(where.subject) is None:
            return error(400, "A new subject must be created inside a project: /data/projects/{ID}/subjects/{label}")
        found = self._resolve(request, where, "edit", optional="subject")
        assert found.project is not None
        fields = self._fields(request)
        fields.pop("ID", None)
        fields.pop("project", None)
        label = fields.pop("label", None)
        subject = found.subject
        if subject is None:
            subject = Subject(
                self.archive.new_subject_id(),
                label or where.subject,
                found.project.project_id,
                insert_user=request.user.login,
            )
            self._apply(subject.fields, fields)
            self.archive.subjects[subject.subject_id] = subject
            logger.info("created subject %s (%s)", subject.subject_id, subject.label)
            return text(201, subject.subject_id)
        if label and label != subject.label:
            if self.archive.find_subject(subject.project, label) is not None:
                return error(409, f"Subject label {label} is already used in project {subject.project}")
            subject.label = label
        self._apply(subject.fields, fields)
        return text(200, subject.subject_id)

    def _delete_subject(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        subject = self._resolve(request, where, "delete").subject
        assert subject is not None
        self.archive.remove_subject(subject)
        return text(200)

    # -- experiments ------------------------------------------------------------------------------------
    def _get_experiments(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        columns = self._columns(request)
        if where.project is not None or where.subject is not None:
            found = self._resolve(request, where, "read")
            assert found.project is not None
            experiments = self.archive.experiments_of(found.project.project_id, found.subject)
        else:
            experiments = [e for e in self.archive.experiments.values() if self._readable(request, e.project)]
        rows = [rep.experiment_row(e, self.archive.subjects[e.subject_id], columns) for e in experiments]
        return self._listing(request, rows, "Matching experiments")

    def _get_experiment(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        experiment = self._resolve(request, where, "read").experiment
        assert experiment is not None
        xml = rep.item_xml(
            self.model.element_name(experiment.xsi_type),
            {"ID": experiment.experiment_id, "project": experiment.project, "label": experiment.label},
            {"subject_ID": experiment.subject_id, **experiment.fields},
        )
        return self._item(request, rep.experiment_item(experiment), xml)

    def _put_experiment(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        assert where.experiment is not None and request.user is not None
        found = self._resolve(request, where, "edit", optional="experiment")
        assert found.project is not None
        fields = self._fields(request)
        fields.pop("ID", None)
        fields.pop("project", None)
        subject_key = fields.pop("subject_ID", None)
        label = fields.pop("label", None)
        xsi_type = request.param("xsiType")
        experiment = found.experiment
        if experiment is not None:
            if label and label != experiment.label:
                if self.archive.find_experiment(experiment.project, None, label) is not None:
                    return error(409, f"Experiment label {label} is already used in project {experiment.project}")
                experiment.label = label
            self._apply(experiment.fields, fields)
            return text(200, experiment.experiment_id)
        project_id = found.project.project_id
        if self.archive.find_experiment(project_id, None, where.experiment) is not None:
            return error(
                409, f"Experiment {where.experiment} already exists in project {project_id} for another subject"
            )
        subject = found.subject
        if subject is None and subject_key is not None:
            subject = self.archive.find_subject(project_id, subject_key)
        if subject is None:
            return error(400, "A new experiment needs its subject: /data/projects/{P}/subjects/{S}/experiments/{label}")
        if xsi_type is None:
            return error(400, "Creating an experiment requires the xsiType query parameter")
        if not self.model.is_experiment_type(xsi_type):
            return error(400, f"Invalid xsiType {xsi_type} for an experiment (unknown or abstract data type)")
        experiment = Experiment(
            self.archive.new_experiment_id(),
            label or where.experiment,
            xsi_type,
            project_id,
            subject.subject_id,
            insert_user=request.user.login,
        )
        self._apply(experiment.fields, fields)
        self.archive.experiments[experiment.experiment_id] = experiment
        logger.info("created %s %s (%s)", xsi_type, experiment.experiment_id, experiment.label)
        return text(201, experiment.experiment_id)

    def _delete_experiment(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        experiment = self._resolve(request, where, "delete").experiment
        assert experiment is not None
        self.archive.remove_experiment(experiment)
        return text(200)

    # -- scans ------------------------------------------------------------------------------------------
    def _get_scans(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        experiment = self._resolve(request, where, "read").experiment
        assert experiment is not None
        rows = [rep.scan_row(experiment, scan) for scan in experiment.scans.values()]
        return self._listing(request, rows, "Scans")

    def _get_scan(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        scan = self._resolve(request, where, "read").scan
        assert scan is not None
        xml = rep.item_xml(
            self.model.element_name(scan.xsi_type),
            {"ID": scan.scan_id, "type": scan.fields.get("type", "")},
            {"image_session_ID": scan.image_session_id, **scan.fields},
        )
        return self._item(request, rep.scan_item(scan), xml)

    def _put_scan(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        assert where.scan is not None
        found = self._resolve(request, where, "edit", optional="scan")
        experiment = found.experiment
        assert experiment is not None
        fields = self._fields(request)
        fields.pop("ID", None)
        fields.pop("image_session_ID", None)
        xsi_type = request.param("xsiType")
        scan = found.scan
        if scan is not None:
            self._apply(scan.fields, fields)
            return text(200, scan.scan_id)
        if xsi_type is None:
            return error(400, "Creating a scan requires the xsiType query parameter")
        if not self.model.is_scan_type(xsi_type):
            return error(400, f"Invalid xsiType {xsi_type} for a scan (unknown or abstract data type)")
        scan = Scan(where.scan, xsi_type, experiment.experiment_id, self.archive.new_scan_row())
        scan.fields["quality"] = "usable"  # XNAT's default scan quality
        self._apply(scan.fields, fields)
        experiment.scans[scan.scan_id] = scan
        logger.info("created %s %s in %s", xsi_type, scan.scan_id, experiment.experiment_id)
        return text(201, scan.scan_id)

    def _delete_scan(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        found = self._resolve(request, where, "delete")
        assert found.experiment is not None and found.scan is not None
        del found.experiment.scans[found.scan.scan_id]
        return text(200)

    # -- resources --------------------------------------------------------------------------------------
    def _get_resources(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        found = self._resolve(request, where, "read")
        rows = [rep.resource_row(r, found.scan) for r in found.owner_resources.values()]
        return self._listing(request, rows, "Resources")

    def _get_resource(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        resource = self._resolve(request, where, "read").resource
        assert resource is not None
        return xml_response(rep.catalog_xml(resource))

    def _put_resource(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        assert where.resource is not None
        found = self._resolve(request, where, "edit", optional="resource")
        if found.resource is not None:
            return error(409, f"Specified resource {where.resource} already exists")
        xsi_type = request.param("xsiType")
        if xsi_type is not None and xsi_type != "xnat:resourceCatalog":
            return error(400, f"Unsupported resource xsiType {xsi_type} (the emulator stores xnat:resourceCatalog)")
        fields = self._fields(request)
        resource = Resource(
            self.archive.new_resource_id(),
            fields.get("label", where.resource),
            format=request.param("format") or fields.get("format", ""),
            content=request.param("content") or fields.get("content", ""),
            description=request.param("description") or fields.get("description", ""),
            tags=request.param("tags") or fields.get("tags", ""),
        )
        found.owner_resources[resource.label] = resource
        logger.info("created resource %s (%d)", resource.label, resource.resource_id)
        return text(201)

    def _delete_resource(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        found = self._resolve(request, where, "delete")
        assert found.resource is not None
        del found.owner_resources[found.resource.label]
        return text(200)

    # -- files ------------------------------------------------------------------------------------------
    def _resource_uri(self, found: _Found, resource: Resource) -> str:
        rid = resource.resource_id
        if found.scan is not None and found.experiment is not None:
            return f"/data/experiments/{found.experiment.experiment_id}/scans/{found.scan.scan_id}/resources/{rid}"
        if found.experiment is not None:
            return f"/data/experiments/{found.experiment.experiment_id}/resources/{rid}"
        assert found.project is not None
        if found.subject is not None:
            return f"/data/projects/{found.project.project_id}/subjects/{found.subject.subject_id}/resources/{rid}"
        return f"/data/projects/{found.project.project_id}/resources/{rid}"

    def _zip_prefix(self, found: _Found, resource: Resource) -> str:
        """Folders of a zip download, as XNAT lays them out: ``ses/scans/1-T1w/resources/NIFTI/files``."""
        if found.scan is not None and found.experiment is not None:
            scan_type = re.sub(r"[^A-Za-z0-9_-]", "_", found.scan.fields.get("type", ""))
            scan_folder = f"{found.scan.scan_id}-{scan_type}" if scan_type else found.scan.scan_id
            return f"{found.experiment.label}/scans/{scan_folder}/resources/{resource.label}/files"
        owner_label = (
            found.experiment.label
            if found.experiment is not None
            else found.subject.label
            if found.subject is not None
            else found.project.project_id
            if found.project is not None
            else ""
        )
        return f"{owner_label}/resources/{resource.label}/files"

    def _get_files(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        groups: list[tuple[_Found, Resource]] = []
        if where.scan is not None and (where.scan.upper() == "ALL" or "," in where.scan):
            found = self._resolve(request, replace(where, scan=None), "read")
            assert found.experiment is not None
            wanted = None if where.scan.upper() == "ALL" else set(where.scan.split(","))
            for scan in found.experiment.scans.values():
                if wanted is None or scan.scan_id in wanted:
                    scan_found = replace(found, scan=scan)
                    groups.extend((scan_found, r) for r in scan.resources.values())
        else:
            found = self._resolve(request, where, "read")
            resources = [found.resource] if found.resource is not None else list(found.owner_resources.values())
            groups.extend((found, r) for r in resources if r is not None)
        if request.format == "zip":
            entries = [
                (f"{self._zip_prefix(owner, resource)}/{stored.path}", stored.data)
                for owner, resource in groups
                for stored in resource.files.values()
            ]
            return ApiResponse(200, rep.build_zip(entries), "application/zip")
        rows = [
            rep.file_row(resource, stored, self._resource_uri(owner, resource))
            for owner, resource in groups
            for stored in resource.files.values()
        ]
        return self._listing(request, rows, "Files")

    def _get_file(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        found = self._resolve(request, where, "read")
        assert found.resource is not None and where.file_path is not None
        stored = found.resource.files.get(where.file_path)
        if stored is None:
            return error(404, f"Unable to find file {where.file_path}")
        content_type = mimetypes.guess_type(stored.name)[0] or "application/octet-stream"
        return ApiResponse(200, stored.data, content_type)

    def _delete_file(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        found = self._resolve(request, where, "delete")
        assert found.resource is not None and where.file_path is not None
        if found.resource.files.pop(where.file_path, None) is None:
            return error(404, f"Unable to find file {where.file_path}")
        return text(200)

    def _put_file(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        assert where.file_path is not None
        parts = uploaded_parts(request)
        if len(parts) != 1:
            return error(400, f"Expected one file for {where.file_path}, got {len(parts)}")
        return self._store_upload(request, where, [(where.file_path, parts[0].data)])

    def _put_files(self, request: ApiRequest, where: ArchivePath) -> ApiResponse:
        if where.resource is None:
            return error(405, "Upload files into a resource: .../resources/{label}/files/{path}")
        incoming: list[tuple[str, bytes]] = []
        for part in uploaded_parts(request):
            if not part.filename:
                return error(400, "A file uploaded to .../files needs a file name (multipart filename)")
            incoming.append((part.filename, part.data))
        return self._store_upload(request, where, incoming)

    def _store_upload(self, request: ApiRequest, where: ArchivePath, incoming: list[tuple[str, bytes]]) -> ApiResponse:
        assert where.resource is not None
        found = self._resolve(request, replace(where, file_path=None), "edit", optional="resource")
        if request.flag("extract"):
            unpacked: list[tuple[str, bytes]] = []
            for path, data in incoming:
                if rep.is_archive_name(path):
                    folder = posixpath.dirname(path)
                    try:
                        members = rep.extract_archive(path, data)
                    except (OSError, ValueError) as exc:
                        return error(400, f"Cannot extract {path}: {exc}")
                    unpacked.extend((posixpath.join(folder, name), content) for name, content in members)
                else:
                    unpacked.append((path, data))
            incoming = unpacked
        resource = found.resource
        existing = resource.files if resource is not None else {}
        duplicates = [path for path, _data in incoming if path in existing]
        if duplicates and not request.flag("overwrite"):
            self.duplicate_writes.extend(duplicates)
            logger.info("refused duplicate upload of %s (no overwrite=true)", duplicates)
            return json_response({"duplicates": duplicates})
        if resource is None:
            resource = Resource(self.archive.new_resource_id(), where.resource)
            found.owner_resources[resource.label] = resource
            logger.info("created resource %s on file upload", resource.label)
        for path, data in incoming:
            resource.files[path] = StoredFile(
                path,
                data,
                content=request.param("content") or "",
                format=request.param("format") or "",
                tags=request.param("tags") or "",
            )
        logger.debug("stored %d file(s) in resource %s", len(incoming), resource.label)
        return text(200)


def _role_from_group(group: str) -> str | None:
    """``Owners``, ``owners``, ``owner`` and ``P_owner`` all name the owner role."""
    name = re.sub(r"^.*_", "", group).lower().removesuffix("s")
    return name if name in _ROLE_GROUPS else None


def _normalise_date(value: str) -> str:
    """XNAT stores dates as ``YYYY-MM-DD``; DICOM ``YYYYMMDD`` and US ``MM/DD/YYYY`` are converted."""
    if match := re.fullmatch(r"(\d{4})(\d{2})(\d{2})", value):
        return "-".join(match.groups())
    if match := re.fullmatch(r"(\d{2})/(\d{2})/(\d{4})", value):
        month, day, year = match.groups()
        return f"{year}-{month}-{day}"
    return value


def _normalise_time(value: str) -> str:
    """XNAT stores times as ``HH:MM:SS``; DICOM ``HHMMSS.ffffff`` is converted."""
    if match := re.fullmatch(r"(\d{2})(\d{2})(\d{2})(\.\d+)?", value):
        return ":".join(match.groups()[:3])
    return value
