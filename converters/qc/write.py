"""The QC step: draw the pictures of a converted series' images (or of derivative images) and
file them into the QC derivatives dataset (:mod:`converters.qc.dataset`).

Which pictures an image gets (:func:`views`): every raw image ``ortho``; a 4D one also ``mean``;
an anatomical (``anat/``) one also ``mosaic``; a derivative label map (``_dseg``) ``outline``
over its source image (its sidecar's ``Sources``); any other derivative ``map``.

Drawing happens outside the dataset lock, into a staging folder; filing takes the lock, checks
that each image drawn is still the one converted (a newer conversion may have replaced it) and
replaces the owner's earlier pictures. Nothing here fails a conversion: a picture that cannot be
drawn is a problem in the returned :class:`QcOutcome`, the other pictures are still made.

Importing this module loads matplotlib (:mod:`.render`): the plugin's workers do at start, the
offline converter only when asked for pictures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from converters.bids.manifests import discard_staging, make_staging_dir, manifest_path, read_manifest
from converters.qc.dataset import (
    Locator,
    Rendered,
    current_series_image,
    file_owner,
    identity,
    publish_pictures,
    series_owner,
)
from converters.qc.records import QcOutcome, QcView
from converters.qc.render import draw_map, draw_mean, draw_mosaic, draw_ortho, draw_outline

__all__ = ["views", "write_derived_qc", "write_series_qc"]

logger = logging.getLogger(__name__)

_NIFTI = (".nii.gz", ".nii")


def _suffix(relative: str) -> str:
    name = relative.rsplit("/", 1)[-1]
    stem = next((name[: -len(ext)] for ext in _NIFTI if name.endswith(ext)), name)
    return stem.rsplit("_", 1)[-1]


def views(relative: str, volumes: int) -> list[QcView]:
    """The pictures an image (path relative to the dataset root; its number of volumes) gets."""
    if relative.startswith("derivatives/"):
        return ["outline"] if _suffix(relative) == "dseg" else ["map"]
    found: list[QcView] = ["ortho"]
    if volumes > 1:
        found.append("mean")
    if relative.split("/")[-2:-1] == ["anat"]:
        found.append("mosaic")
    return found


def _sidecar(root: Path, relative: str) -> Mapping[str, Any]:
    stem = next((relative[: -len(ext)] for ext in _NIFTI if relative.endswith(ext)), relative)
    try:
        data = json.loads((root / f"{stem}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _underlay(root: Path, sidecar: Mapping[str, Any]) -> Path | None:
    """The raw image a derivative names in ``Sources`` (``bids:raw:<path>``), if it is there."""
    sources = sidecar.get("Sources")
    for source in sources if isinstance(sources, list) else ():
        if isinstance(source, str) and source.startswith(("bids:raw:", "bids::")):
            path = root / source.split(":", 2)[2]
            if path.is_file() and path.name.endswith(_NIFTI):
                return path
    return None


def _draw(root: Path, relative: str, folder: Path) -> tuple[dict[QcView, Path], list[str]]:
    """Every picture of one image into ``folder``; (the pictures, the problems)."""
    path = root / relative
    sidecar = _sidecar(root, relative)
    try:
        shape = tuple(getattr(nib.load(str(path)), "shape", ()))
    except Exception as exc:  # nibabel raises many types for unreadable files
        return {}, [f"{relative}: no QC picture: cannot read it ({exc})"]
    volumes = 1
    for size in shape[3:]:
        volumes *= int(size)
    drawn: dict[QcView, Path] = {}
    problems: list[str] = []
    for view in views(relative, volumes):
        out = folder / f"{view}.png"
        try:
            if view == "ortho":
                draw_ortho(path, out)
            elif view == "mean":
                tr = sidecar.get("RepetitionTime")
                draw_mean(path, out, repetition_time=float(tr) if isinstance(tr, int | float) else None)
            elif view == "mosaic":
                draw_mosaic(path, out)
            elif view == "map":
                draw_map(path, out, units=str(sidecar.get("Units", "")))
            else:
                draw_outline(path, out, underlay=_underlay(root, sidecar))
        except Exception as exc:  # a picture must never fail the conversion; say why it is missing
            logger.warning("no %s QC picture of %s: %s", view, relative, exc, exc_info=not isinstance(exc, ValueError))
            problems.append(f"{relative}: no {view} QC picture: {exc}")
            out.unlink(missing_ok=True)
            continue
        drawn[view] = out
    return drawn, problems


def _run(root: Path, sources: Sequence[str], owner_of: Callable[[str], str],
         locator: Callable[[], Locator]) -> QcOutcome:
    staging = make_staging_dir(root)
    try:
        rendered: list[Rendered] = []
        problems: list[str] = []
        for index, relative in enumerate(sources):
            before = identity(root / relative)
            if before is None:
                problems.append(f"{relative}: no QC picture: the file is gone")
                continue
            folder = staging / str(index)
            folder.mkdir()
            drawn, trouble = _draw(root, relative, folder)
            problems += trouble
            if drawn:
                rendered.append(Rendered(relative, before, drawn))
        filed, late = publish_pictures(root, owner_of, rendered, locator)
    finally:
        discard_staging(staging)
    return QcOutcome(tuple(filed), tuple(problems + late))


def write_series_qc(dataset_root: Path, series_uid: str) -> QcOutcome:
    """Draw and file the QC pictures of the images a series owns now (its earlier pictures are
    replaced); a series without images gets none. Raises only
    :class:`~converters.errors.DatasetError` (the dataset cannot be written)."""
    root = Path(dataset_root).resolve()
    manifest = read_manifest(manifest_path(root, series_uid))
    outputs = manifest.outputs if manifest is not None else ()
    sources = [p for p in outputs if p.endswith(_NIFTI) and not p.startswith("sourcedata/")]
    return _run(root, sources, lambda _source: series_owner(series_uid),
                lambda: current_series_image(root, series_uid))


def write_derived_qc(dataset_root: Path, outputs: Sequence[str]) -> QcOutcome:
    """Draw and file the QC pictures of derivative images (``outputs``: paths relative to the
    dataset root, as :func:`converters.bids.derivatives.publish_derivatives` returns them)."""
    root = Path(dataset_root).resolve()
    sources = sorted(p for p in outputs if p.endswith(_NIFTI))

    def locate(item: Rendered) -> str | None:
        return item.source if identity(root / item.source) == item.identity else None

    return _run(root, sources, file_owner, lambda: locate)
