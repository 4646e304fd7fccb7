"""Drawing QC pictures of NIfTI images with matplotlib (a :class:`~matplotlib.figure.Figure` of
its own per picture, saved through the Agg canvas: no pyplot, no global state, no display).

Each ``draw_*`` function reads one image, draws one PNG and returns its :class:`QcPicture`; the
PNG's text chunks say what was drawn (:data:`~converters.qc.records.ORIENTATION_KEY`,
:data:`~converters.qc.records.VIEW_KEY`). Voxels are shown as stored, the edges labelled from
the affine (:mod:`converters.qc.orientation`). Memory: a 4D image is read a few volumes at a
time (its file kept open), never whole.

This module imports matplotlib; import it only to draw (:mod:`converters.qc.write` does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import nibabel as nib
import numpy as np
import numpy.typing as npt
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from converters.errors import QcError
from converters.qc.orientation import Panel, panels
from converters.qc.records import ORIENTATION_KEY, VIEW_KEY, EdgeLabels, QcPicture, QcView

__all__ = ["draw_map", "draw_mean", "draw_mosaic", "draw_ortho", "draw_outline"]

#: nibabel is only partly annotated; its calls go through ``Any``.
_NIB: Any = nib
_DPI = 80
_PANEL_INCHES = 3.0
#: Slices a mosaic shows at most, and its columns.
_MOSAIC_SLICES = 15
_MOSAIC_COLUMNS = 5
#: Bytes of float64 volumes read at once from a 4D image.
_CHUNK_BYTES = 64 * 1024 * 1024
_LABEL_STYLE: dict[str, Any] = {
    "color": "yellow",
    "fontsize": 12,
    "fontweight": "bold",
    "path_effects": [patheffects.withStroke(linewidth=2.5, foreground="black")],
}

Volume = npt.NDArray[np.float64]


def _load(path: Path) -> Any:
    try:
        return _NIB.load(str(path), keep_file_open=True)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise QcError(f"cannot read {path.name} to draw it: {exc}") from exc


def _spatial(image: Any) -> tuple[tuple[int, ...], int]:
    """(the three spatial sizes, the number of volumes) of an image of 2 to 7 dimensions."""
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        raise QcError(f"an image of shape {shape} has no slices to draw")
    spatial = (*shape, 1, 1)[:3]
    volumes = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if min(spatial) < 1 or volumes < 1:
        raise QcError(f"an image of shape {shape} has no voxels to draw")
    return spatial, volumes


def _channels(image: Any) -> tuple[str, ...]:
    """The channels of an RGB(A) image (dcm2niix writes colour maps such as colFA as RGB24), else ()."""
    names = image.get_data_dtype().names
    return tuple(names[:3]) if names else ()


def _colour_volume(image: Any) -> Volume:
    """An RGB image's first volume as (x, y, z, 3) floats in 0..1."""
    spatial, _ = _spatial(image)
    raw = np.asanyarray(image.dataobj)
    raw = raw.reshape((*spatial, -1), order="F")[..., 0] if raw.size != int(np.prod(spatial)) else raw.reshape(spatial)
    colour: Volume = np.stack([raw[name].astype(np.float64) for name in _channels(image)], axis=-1) / 255.0
    return colour


def _volumes(image: Any, start: int = 0, stop: int | None = None) -> Iterator[Volume]:
    """Volumes ``start..stop`` of an image (3D: the one volume), a few read at once; an RGB
    image's as their grey level (the mean of the channels)."""
    spatial, count = _spatial(image)
    stop = count if stop is None else min(stop, count)
    if _channels(image):
        yield _colour_volume(image).mean(axis=-1)
        return
    if len(image.shape) <= 3:
        yield np.asarray(image.dataobj, dtype=np.float64).reshape(spatial)
        return
    flat = image.dataobj
    if len(image.shape) > 4:  # later dimensions (rare) are walked as if they were time
        flat = np.asarray(flat).reshape((*spatial, count), order="F")
    step = max(1, _CHUNK_BYTES // (8 * int(np.prod(spatial))))
    for first in range(start, stop, step):
        chunk = np.asarray(flat[..., first : min(first + step, stop)], dtype=np.float64)
        for index in range(chunk.shape[-1]):
            yield chunk[..., index]


def _first_volume(image: Any) -> Volume:
    return next(_volumes(image, 0, 1))


def _window(volume: Volume, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Display range: percentiles of the finite voxels (of the non-zero ones when there are any)."""
    finite = volume[np.isfinite(volume)]
    nonzero = finite[finite != 0]
    values = nonzero if nonzero.size else finite
    if values.size == 0:
        raise QcError("the image has no finite voxel values to draw")
    if values.size > 2_000_000:  # percentiles of a sample are as good for a display range
        values = values[:: values.size // 1_000_000]
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _zooms(affine: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    zooms: npt.NDArray[np.float64] = np.sqrt((np.asarray(affine[:3, :3], dtype=float) ** 2).sum(axis=0))
    positive: npt.NDArray[np.float64] = np.where(zooms > 0, zooms, 1.0)
    return positive


def _cut(volume: Volume, panel: Panel, index: int) -> Volume:
    """The slice ``index`` of ``volume`` across ``panel.cut``, as rows = up, columns = across (a
    colour volume keeps its channels last)."""
    plane: Volume = np.take(volume, index, axis=panel.cut)
    return np.swapaxes(plane, 0, 1) if panel.across < panel.up else plane


def _label_edges(axes: Axes, labels: EdgeLabels, fontsize: float = 12) -> None:
    style = {**_LABEL_STYLE, "fontsize": fontsize, "transform": axes.transAxes}
    axes.text(0.02, 0.5, labels.left, ha="left", va="center", **style)
    axes.text(0.98, 0.5, labels.right, ha="right", va="center", **style)
    axes.text(0.5, 0.98, labels.top, ha="center", va="top", **style)
    axes.text(0.5, 0.02, labels.bottom, ha="center", va="bottom", **style)


def _show(axes: Axes, plane: Volume, panel: Panel, zooms: npt.NDArray[np.float64], **style: Any) -> Any:
    shown = axes.imshow(plane, origin="lower", interpolation="nearest",
                        aspect=float(zooms[panel.up] / zooms[panel.across]), **style)
    axes.set_axis_off()
    return shown


def _figure(columns: int, rows: float, *, extra_width: float = 0.0) -> Figure:
    figure = Figure(figsize=(columns * _PANEL_INCHES + extra_width, rows * _PANEL_INCHES), dpi=_DPI,
                    facecolor="black")
    return figure


def _save(figure: Figure, out: Path, view: QcView, codes: tuple[str, ...], labels: Sequence[EdgeLabels]) -> QcPicture:
    picture = QcPicture(Path(out), view, codes, tuple(labels))
    metadata = {"Software": "bidsbridge", ORIENTATION_KEY: picture.orientation_json(), VIEW_KEY: view}
    figure.savefig(out, format="png", dpi=_DPI, facecolor=figure.get_facecolor(), metadata=metadata)
    return picture


def _describe(image: Any, spatial: tuple[int, ...], volumes: int) -> str:
    zooms = _zooms(np.asarray(image.affine, dtype=float))
    size = "x".join(str(n) for n in spatial) + (f"x{volumes}" if volumes > 1 else "")
    return f"{size} voxels of {'x'.join(f'{z:.3g}' for z in zooms)} mm"


def _ortho_row(figure: Figure, volume: Volume, image: Any, *, top: float, bottom: float,
               right: float = 0.99, **style: Any) -> tuple[tuple[str, ...], list[EdgeLabels], Any]:
    """Three panels (sagittal, coronal, axial) of ``volume`` through its middle, in one row."""
    affine = np.asarray(image.affine, dtype=float)
    codes, found = panels(affine)
    zooms = _zooms(affine)
    grid = figure.add_gridspec(1, 3, left=0.01, right=right,
                               top=top, bottom=bottom, wspace=0.03)
    shown = None
    for column, panel in enumerate(found):
        axes = figure.add_subplot(grid[0, column])
        index = volume.shape[panel.cut] // 2
        shown = _show(axes, _cut(volume, panel, index), panel, zooms, **style)
        axes.set_title(f"{panel.plane} {index + 1}/{volume.shape[panel.cut]}", color="white", fontsize=9)
        _label_edges(axes, panel.labels)
    return codes, [panel.labels for panel in found], shown


def draw_ortho(nifti: Path, out: Path) -> QcPicture:
    """Three orthogonal mid-slices (of the first volume of a 4D image; in colour for an RGB one), labelled."""
    image = _load(nifti)
    spatial, volumes = _spatial(image)
    style: dict[str, Any] = {}
    if _channels(image):
        volume = _colour_volume(image)
    else:
        volume = _first_volume(image)
        lo, hi = _window(volume)
        style = {"cmap": "gray", "vmin": lo, "vmax": hi}
    figure = _figure(3, 1.15)
    which = "first volume, " if volumes > 1 else ""
    figure.suptitle(f"{which}{_describe(image, spatial, volumes)}", color="white", fontsize=10)
    codes, labels, _ = _ortho_row(figure, volume, image, top=0.84, bottom=0.01, **style)
    return _save(figure, out, "ortho", codes, labels)


def draw_mean(nifti: Path, out: Path, *, repetition_time: float | None = None) -> QcPicture:
    """A 4D image's mean volume (three mid-slices) and its mean intensity over time."""
    image = _load(nifti)
    spatial, volumes = _spatial(image)
    if volumes < 2:
        raise QcError(f"{nifti.name} has one volume: no mean over time to draw")
    total = np.zeros(spatial, dtype=np.float64)
    course = np.empty(volumes, dtype=np.float64)
    for index, volume in enumerate(_volumes(image)):
        finite = np.where(np.isfinite(volume), volume, 0.0)
        total += finite
        course[index] = float(finite.mean())
    mean = total / volumes
    lo, hi = _window(mean)
    figure = _figure(3, 1.75)
    figure.suptitle(f"mean of {volumes} volumes, {_describe(image, spatial, volumes)}", color="white", fontsize=10)
    codes, labels, _ = _ortho_row(figure, mean, image, top=0.88, bottom=0.36, cmap="gray",
                                  vmin=lo, vmax=hi)
    plot = figure.add_axes((0.08, 0.07, 0.88, 0.2), facecolor="black")
    step = repetition_time if repetition_time is not None and repetition_time > 0 else None
    plot.plot(np.arange(volumes) * (step or 1.0), course, color="deepskyblue", linewidth=1.2)
    plot.set_xlabel("time (s)" if step else "volume", color="white", fontsize=8)
    plot.set_ylabel("mean", color="white", fontsize=8)
    plot.tick_params(colors="white", labelsize=7)
    for spine in plot.spines.values():
        spine.set_color("white")
    return _save(figure, out, "mean", codes, labels)


def draw_mosaic(nifti: Path, out: Path) -> QcPicture:
    """Axial slices spread over the volume (the first volume of a 4D image), tiled into one
    picture whose edges are labelled (every tile has the same orientation)."""
    image = _load(nifti)
    spatial, volumes = _spatial(image)
    volume = _first_volume(image)
    affine = np.asarray(image.affine, dtype=float)
    codes, found = panels(affine)
    axial = next(panel for panel in found if panel.plane == "axial")
    count = volume.shape[axial.cut]
    if count < 3:
        indices = list(range(count))
    else:
        picks = np.linspace(count * 0.1, count * 0.9 - 1, min(_MOSAIC_SLICES, count))
        indices = sorted({round(float(i)) for i in picks})
    columns = min(_MOSAIC_COLUMNS, len(indices))
    rows = -(-len(indices) // columns)
    height, width = _cut(volume, axial, indices[0]).shape
    tiles = np.full((rows * height, columns * width), np.nan)
    corners: list[tuple[int, int, int]] = []
    for position, index in enumerate(indices):
        row, column = rows - 1 - position // columns, position % columns  # first tile top left
        tiles[row * height : (row + 1) * height, column * width : (column + 1) * width] = _cut(volume, axial, index)
        corners.append(((column + 1) * width - 1, (row + 1) * height - 1, index))
    lo, hi = _window(volume)
    zooms = _zooms(affine)
    aspect = float(zooms[axial.up] / zooms[axial.across]) * rows * height / (columns * width)
    inches = 2.0 * columns  # 160 pixels a tile across
    figure = Figure(figsize=(inches, min(inches, inches * aspect / 0.9) + 0.3), dpi=_DPI, facecolor="black")
    figure.suptitle(f"axial slices, {_describe(image, spatial, volumes)}", color="white", fontsize=10)
    axes = figure.add_axes((0.01, 0.01, 0.98, 0.9))
    _show(axes, tiles, axial, zooms, cmap="gray", vmin=lo, vmax=hi)
    for x, y, index in corners:
        axes.text(x, y, str(index + 1), color="white", fontsize=7, ha="right", va="top")
    _label_edges(axes, axial.labels)
    return _save(figure, out, "mosaic", codes, [axial.labels])


def draw_map(nifti: Path, out: Path, *, units: str = "") -> QcPicture:
    """A derived parametric map (an ADC map): three mid-slices in colour, with a colour bar."""
    image = _load(nifti)
    spatial, volumes = _spatial(image)
    volume = _first_volume(image)
    finite = volume[np.isfinite(volume)]
    positive = finite[finite > 0]
    hi = float(np.percentile(positive, 99.0)) if positive.size else _window(volume)[1]
    lo = 0.0 if positive.size else _window(volume)[0]
    figure = _figure(3, 1.15, extra_width=0.9)
    figure.suptitle(f"map, {_describe(image, spatial, volumes)}", color="white", fontsize=10)
    codes, labels, shown = _ortho_row(figure, volume, image, top=0.84, bottom=0.01, right=0.87,
                                      cmap=mpl.colormaps["magma"], vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    bar_axes = figure.add_axes((0.9, 0.08, 0.025, 0.7))
    bar = figure.colorbar(shown, cax=bar_axes)
    bar.set_label(units or "value", color="white", fontsize=9)
    bar.ax.tick_params(colors="white", labelsize=8)
    return _save(figure, out, "map", codes, labels)


def _labels_on(display: Any, seg: Any, seg_labels: npt.NDArray[np.int32], panel: Panel, *, index: int,
               shape: tuple[int, ...]) -> npt.NDArray[np.int32]:
    """The label map sampled (nearest voxel) on one slice of the display image's grid."""
    axes = [np.arange(n) for n in shape]
    axes[panel.cut] = np.array([index])
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    to_seg = np.linalg.inv(np.asarray(seg.affine, dtype=float)) @ np.asarray(display.affine, dtype=float)
    voxels = np.rint(to_seg[:3, :3] @ grid + to_seg[:3, 3:]).astype(np.int64)
    inside = np.all((voxels >= 0) & (voxels < np.array(seg_labels.shape)[:, None]), axis=0)
    sampled = np.zeros(grid.shape[1], dtype=np.int32)
    sampled[inside] = seg_labels[voxels[0, inside], voxels[1, inside], voxels[2, inside]]
    volume_shape = list(shape)
    volume_shape[panel.cut] = 1
    plane = sampled.reshape(volume_shape)
    cut = np.take(plane, 0, axis=panel.cut)
    result: npt.NDArray[np.int32] = cut.T if panel.across < panel.up else cut
    return result


def _outline(plane: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """The labels of ``plane`` kept only on their borders (where a 4-neighbour differs)."""
    padded = np.pad(plane, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    border = (
        (centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1])
        | (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:])
    )
    outlined: npt.NDArray[np.int32] = np.where(border & (plane > 0), plane, 0).astype(np.int32)
    return outlined


def draw_outline(labels: Path, out: Path, *, underlay: Path | None) -> QcPicture:
    """A label map's outlines (a colour per label) over its source image, through the labels'
    centre; over the label map itself when the source is not at hand (``underlay=None``)."""
    seg = _load(labels)
    seg_spatial, _ = _spatial(seg)
    seg_labels = np.rint(np.nan_to_num(_first_volume(seg))).astype(np.int32).reshape(seg_spatial)
    if not (seg_labels > 0).any():
        raise QcError(f"{labels.name} labels no voxel: no outline to draw")
    display = _load(underlay) if underlay is not None else seg
    spatial, _ = _spatial(display)
    background = _first_volume(display).reshape(spatial) if underlay is not None else (seg_labels > 0).astype(float)
    lo, hi = _window(background)
    affine = np.asarray(display.affine, dtype=float)
    codes, found = panels(affine)
    zooms = _zooms(affine)
    centre_seg = np.argwhere(seg_labels > 0).mean(axis=0)
    to_display = np.linalg.inv(affine) @ np.asarray(seg.affine, dtype=float)
    centre = to_display[:3, :3] @ centre_seg + to_display[:3, 3]
    colours = mpl.colormaps["tab10"]
    figure = _figure(3, 1.15)
    source = "its source image" if underlay is not None else "the label map (source image not found)"
    figure.suptitle(f"labels {sorted(int(v) for v in np.unique(seg_labels) if v > 0)[:8]} over {source}",
                    color="white", fontsize=10)
    grid = figure.add_gridspec(1, 3, left=0.01, right=0.99, top=0.84, bottom=0.01, wspace=0.03)
    for column, panel in enumerate(found):
        axes = figure.add_subplot(grid[0, column])
        index = int(np.clip(round(float(centre[panel.cut])), 0, spatial[panel.cut] - 1))
        _show(axes, _cut(background, panel, index), panel, zooms, cmap="gray", vmin=lo, vmax=hi)
        edges = _outline(_labels_on(display, seg, seg_labels, panel, index=index, shape=spatial))
        overlay = np.zeros((*edges.shape, 4), dtype=np.float64)
        for value in np.unique(edges[edges > 0]):
            overlay[edges == value] = colours((int(value) - 1) % 10)
        _show(axes, overlay, panel, zooms)
        axes.set_title(f"{panel.plane} {index + 1}/{spatial[panel.cut]}", color="white", fontsize=9)
        _label_edges(axes, panel.labels)
    return _save(figure, out, "outline", codes, [panel.labels for panel in found])
