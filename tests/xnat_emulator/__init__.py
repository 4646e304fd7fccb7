"""An XNAT 1.8 emulator for the test-suite: a real HTTP server speaking XNAT's REST API as xnat-py sees it.

Typical use::

    with XnatEmulator(users={"admin": "admin", "uploader": "secret"}) as xnat:
        xnat.add_project("P1", members=["uploader"])
        session = xnat_py.connect(xnat.url, user="uploader", password="secret")
        ...
        xnat.set_faults(error_rate=0.3)       # runtime fault injection, seeded
        with xnat.unreachable():               # connections refused, same port afterwards
            ...
        xnat.inventory().files                 # what was stored (size, md5)

The emulator serves XNAT's real data-model schema (``shared/xnat/xnat.xsd`` beside the repository), so
xnat-py's object API (``session.classes.MrSessionData(...)``) works against it.
"""

from ._faults import FaultKind, FaultPlan
from ._model import (
    ExperimentRecord,
    FileRecord,
    Inventory,
    ProjectRecord,
    ResourceRecord,
    ScanRecord,
    SubjectRecord,
)
from ._schema import DEFAULT_XSD_PATH, SchemaNotFoundError
from ._server import EmulatorBugError, RequestRecord, XnatEmulator

__all__ = [
    "DEFAULT_XSD_PATH",
    "EmulatorBugError",
    "ExperimentRecord",
    "FaultKind",
    "FaultPlan",
    "FileRecord",
    "Inventory",
    "ProjectRecord",
    "RequestRecord",
    "ResourceRecord",
    "ScanRecord",
    "SchemaNotFoundError",
    "SubjectRecord",
    "XnatEmulator",
]
