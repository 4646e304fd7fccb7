"""The typed records of QC pictures: which labels a picture's edges carry, what was drawn, and
what a QC run made or could not make. Standard library only (the plugin's job records use them).

The labels a picture shows are also stored in its PNG text chunk :data:`ORIENTATION_KEY` as the
JSON of :meth:`QcPicture.orientation_json`, so that a reader (a test, a curator's script) can
check them without looking at the pixels: :func:`read_orientation`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ORIENTATION_KEY",
    "VIEW_KEY",
    "EdgeLabels",
    "QcOutcome",
    "QcPicture",
    "QcView",
    "read_orientation",
    "read_png_text",
]

#: PNG ``tEXt`` keyword holding the orientation labels drawn (JSON, see :meth:`QcPicture.orientation_json`).
ORIENTATION_KEY = "bidsbridge:orientation"
#: PNG ``tEXt`` keyword holding the kind of picture (:data:`QcView`).
VIEW_KEY = "bidsbridge:view"

#: The pictures an image gets: ``ortho`` (three orthogonal mid-slices; of the first volume of a
#: 4D image), ``mean`` (4D: the mean volume and the mean intensity over time), ``mosaic``
#: (anatomicals: axial slices), ``map`` (a derived parametric map with a colour bar), ``outline``
#: (a label map's outlines over its source image).
QcView = Literal["ortho", "mean", "mosaic", "map", "outline"]


@dataclass(frozen=True)
class EdgeLabels:
    """The anatomical direction (``L R A P S I``) at each edge of one panel of a picture."""

    #: ``sagittal``, ``coronal`` or ``axial``.
    plane: str
    left: str
    right: str
    top: str
    bottom: str

    def to_json(self) -> dict[str, str]:
        return {"left": self.left, "right": self.right, "top": self.top, "bottom": self.bottom}


@dataclass(frozen=True)
class QcPicture:
    """One PNG drawn of one image."""

    path: Path
    view: QcView
    #: nibabel's ``aff2axcodes`` of the image drawn: the direction each voxel axis runs towards.
    axcodes: tuple[str, ...]
    #: The labels of each panel, one per plane shown (a mosaic shows one plane).
    labels: tuple[EdgeLabels, ...]

    def orientation_json(self) -> str:
        return json.dumps(
            {"axcodes": "".join(self.axcodes), "planes": {e.plane: e.to_json() for e in self.labels}},
            sort_keys=True,
        )


@dataclass(frozen=True)
class QcOutcome:
    """What one QC run made: pictures (paths relative to the dataset root), and for each image
    that got none or fewer than planned, why (the conversion stands either way)."""

    files: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def __add__(self, other: QcOutcome) -> QcOutcome:
        return QcOutcome(self.files + other.files, self.problems + other.problems)


def read_png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG file (keyword -> text), read with Pillow; raises ``ValueError``
    (Pillow's ``UnidentifiedImageError``) when the file is not an image."""
    from PIL import Image  # noqa: PLC0415  (Pillow comes with matplotlib; loaded only when reading)

    with Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError(f"{path} is a {image.format} file, not a PNG")
        return {str(key): str(value) for key, value in getattr(image, "text", {}).items()}


def read_orientation(path: Path) -> Mapping[str, Any]:
    """The orientation labels a QC picture says it drew: ``{"axcodes": "RAS", "planes":
    {"axial": {"left": "L", ...}, ...}}``; raises ``ValueError`` when it has none."""
    text = read_png_text(path).get(ORIENTATION_KEY)
    if text is None:
        raise ValueError(f"{path} has no {ORIENTATION_KEY} text chunk: not a bidsbridge QC picture")
    value: Mapping[str, Any] = json.loads(text)
    return value
