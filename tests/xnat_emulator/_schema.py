"""XNAT's data-model schema: the documents the emulator serves and the type hierarchy it enforces.

xnat-py builds its object model from ``/xapi/schemas/xnat`` and ``/xapi/schemas/xdat``; the emulator serves
XNAT's real ``xnat.xsd`` (kept in ``shared/xnat/`` beside the repository) and a minimal xdat schema. The
same ``xnat.xsd`` tells which ``xsiType`` values exist and what they extend, so a PUT with an unknown or a
generic base type (``xnat:imageScanData``) is refused as XNAT refuses it.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

XS_NAMESPACE = "http://www.w3.org/2001/XMLSchema"
XDAT_NAMESPACE = "http://nrg.wustl.edu/xdat"

#: Where CI and developers keep the schema: ``shared/xnat/xnat.xsd`` next to the repository checkout.
DEFAULT_XSD_PATH = Path(__file__).resolve().parents[3] / "shared" / "xnat" / "xnat.xsd"

#: xnat-py 0.8.1 needs the two xdat types that ``xnat.xsd`` refers to; an empty schema makes it fail.
MINIMAL_XDAT_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="http://nrg.wustl.edu/xdat" xmlns:xdat="http://nrg.wustl.edu/xdat" \
xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified" attributeFormDefault="unqualified">
\t<xs:simpleType name="LONGVARCHAR">
\t\t<xs:restriction base="xs:string"/>
\t</xs:simpleType>
\t<xs:simpleType name="jsonb">
\t\t<xs:restriction base="xs:string"/>
\t</xs:simpleType>
</xs:schema>
"""

#: Base types XNAT will not instantiate through REST: they only exist to be extended.
GENERIC_BASE_TYPES = frozenset(
    {
        "xnat:experimentData",
        "xnat:subjectAssessorData",
        "xnat:imageSessionData",
        "xnat:imageScanData",
        "xnat:imageAssessorData",
        "xnat:derivedData",
        "xnat:abstractResource",
        "xnat:abstractProjectAsset",
    }
)


class SchemaNotFoundError(FileNotFoundError):
    """The data-model schema is missing; the emulator cannot serve xnat-py's object model without it."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"XNAT schema not found at {path}: clone the repository next to shared/ "
            "(shared/xnat/xnat.xsd) or pass xsd_path= to XnatEmulator"
        )


@dataclass(frozen=True)
class DataModel:
    """The served schema text and the ``xsiType`` inheritance read from it."""

    xnat_xsd: str
    parents: dict[str, str]
    declared_abstract: frozenset[str]
    #: xsiType -> name of the root element of its XML documents (``xnat:mrSessionData`` -> ``MRSession``)
    element_names: dict[str, str]

    @classmethod
    def load(cls, path: Path | None = None) -> DataModel:
        """Read ``xnat.xsd`` (default: :data:`DEFAULT_XSD_PATH`) and index its complex types."""
        xsd_path = path or DEFAULT_XSD_PATH
        if not xsd_path.is_file():
            raise SchemaNotFoundError(xsd_path)
        text = xsd_path.read_text(encoding="utf-8")
        root = ET.fromstring(text)
        namespaces = {"xs": XS_NAMESPACE, "xdat": XDAT_NAMESPACE}
        parents: dict[str, str] = {}
        abstract: set[str] = set()
        for complex_type in root.findall("xs:complexType", namespaces):
            name = f"xnat:{complex_type.get('name')}"
            extension = complex_type.find("xs:complexContent/xs:extension", namespaces)
            if extension is not None and extension.get("base"):
                parents[name] = str(extension.get("base"))
            else:
                parents.setdefault(name, "")
            element = complex_type.find("xs:annotation/xs:appinfo/xdat:element", namespaces)
            if element is not None and element.get("abstract") == "true":
                abstract.add(name)
        element_names = {
            str(element.get("type")): str(element.get("name"))
            for element in root.findall("xs:element", namespaces)
            if element.get("type") and element.get("name")
        }
        logger.debug("loaded %d complex types from %s", len(parents), xsd_path)
        return cls(text, parents, frozenset(abstract), element_names)

    def element_name(self, xsi_type: str) -> str:
        return self.element_names.get(xsi_type, xsi_type.split(":", 1)[-1])

    def ancestors(self, xsi_type: str) -> list[str]:
        """The chain of base types of ``xsi_type``, nearest first (empty for unknown types)."""
        chain: list[str] = []
        current = self.parents.get(xsi_type, "")
        while current and current not in chain:
            chain.append(current)
            current = self.parents.get(current, "")
        return chain

    def is_concrete(self, xsi_type: str) -> bool:
        return (
            xsi_type in self.parents and xsi_type not in GENERIC_BASE_TYPES and xsi_type not in self.declared_abstract
        )

    def extends(self, xsi_type: str, base: str) -> bool:
        return base in self.ancestors(xsi_type)

    def is_experiment_type(self, xsi_type: str) -> bool:
        """A concrete type that can live under a subject (image sessions, subject variables, ...)."""
        return self.is_concrete(xsi_type) and self.extends(xsi_type, "xnat:subjectAssessorData")

    def is_session_type(self, xsi_type: str) -> bool:
        return self.is_concrete(xsi_type) and self.extends(xsi_type, "xnat:imageSessionData")

    def is_scan_type(self, xsi_type: str) -> bool:
        return self.is_concrete(xsi_type) and self.extends(xsi_type, "xnat:imageScanData")


#: The data types the emulator lists at ``/data/search/elements`` (xnat-py injects their search fields).
SEARCH_ELEMENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "xnat:projectData": ("Project", "Projects", ("ID", "NAME", "DESCRIPTION", "SECONDARY_ID")),
    "xnat:subjectData": ("Subject", "Subjects", ("SUBJECT_ID", "SUBJECT_LABEL", "PROJECT", "INSERT_DATE")),
    "xnat:mrSessionData": ("MR Session", "MR Sessions", ("SESSION_ID", "LABEL", "DATE", "PROJECT", "SUBJECT_ID")),
    "xnat:petSessionData": ("PET Session", "PET Sessions", ("SESSION_ID", "LABEL", "DATE", "PROJECT")),
    "xnat:ctSessionData": ("CT Session", "CT Sessions", ("SESSION_ID", "LABEL", "DATE", "PROJECT")),
    "xnat:mrScanData": ("MR Scan", "MR Scans", ("ID", "TYPE", "SERIES_DESCRIPTION")),
}
