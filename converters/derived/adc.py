"""Apparent diffusion coefficient (ADC) from a diffusion-weighted DICOM series.

The computation, step by step (each step is what :func:`compute_adc` does, in order):

1. **Diffusion encoding per frame.** The b-value comes from the standard attributes: the MR
   Diffusion functional group (enhanced MR: per-frame or shared ``MRDiffusionSequence`` →
   Diffusion b-value (0018,9087)) or, for classic images, the top-level Diffusion b-value; the
   gradient direction likewise from Diffusion Gradient Orientation (0018,9089). Only when a frame
   has no standard b-value are the vendor fields read (Siemens (0019,xx0C)/(0019,xx0E), GE
   (0043,xx39)/(0019,xxBB-BD), Philips (2001,xx03)/(2005,xxB0-B2)).
2. **4D volume.** Frames are placed on the series grid (:mod:`converters.derived.geometry`);
   the n-th frame (in acquisition order) of every slice forms volume n, as dcm2niix orders them.
   Should that mix b-values within a volume, each slice's frames are sorted by (b-value,
   direction, acquisition order) instead; a volume must carry one b-value at every slice.
3. **Shells.** b-values within max(10 s/mm², 2 %) of each other form one shell whose nominal
   b-value is their mean. The lowest shell must have b ≤ ``b0_max`` (default 50 s/mm²) and at
   least one shell must lie above it.
4. **Trace per shell** = geometric mean of all volumes of the shell (directions and repeats):
   ``S_b = exp(mean(ln S))``; for orthogonal or evenly spread directions this is the trace-
   weighted image. Scanner-made isotropic (trace) frames are used as they are, unless the shell
   also has directional frames, which are then preferred.
5. **Fit** ``ln S_b = ln S_0 - b·ADC`` by ordinary least squares over the shells (one point per
   shell); with two shells this is the two-point formula ``ADC = ln(S_0/S_b) / (b - b_0)``.
6. **Mask (voxels with signal).** A voxel is kept when every volume has a positive value there
   and its b ≈ 0 trace exceeds ``signal_fraction`` (default 5 %) of the 99th percentile of the
   b ≈ 0 trace over the whole volume. Outside the mask ADC is 0. The mask is returned (and
   becomes a Segmentation).
7. **Units.** ADC in µm²/s (= 10⁻⁶ mm²/s, UCUM ``um2/s``), float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from converters.derived.errors import DiffusionInfoError, EmptyMaskError, MissingB0Error
from converters.derived.geometry import SeriesGeometry
from converters.derived.series import ImageSeries, SeriesFrame, functional_item, read_image_series

__all__ = [
    "DEFAULT_B0_MAX",
    "DEFAULT_SIGNAL_FRACTION",
    "AdcResult",
    "DiffusionEncoding",
    "FittingMethod",
    "compute_adc",
    "diffusion_encoding",
]

logger = logging.getLogger(__name__)

#: Largest b-value (s/mm²) of a shell that still counts as b = 0.
DEFAULT_B0_MAX = 50.0
#: Voxels whose b ≈ 0 trace is below this fraction of its 99th percentile have no signal.
DEFAULT_SIGNAL_FRACTION = 0.05
_SHELL_TOLERANCE_ABS = 10.0
_SHELL_TOLERANCE_REL = 0.02
_UM2_PER_MM2 = 1e6

#: ``two-point``: ln(S0/Sb)/(b-b0) (DCM 113260 "Log of ratio of two samples");
#: ``least-squares``: log-linear fit over ≥ 3 shells (DCM 113261 "Least squares fit of multiple samples").
FittingMethod = Literal["two-point", "least-squares"]


@dataclass(frozen=True)
class DiffusionEncoding:
    """Diffusion weighting of one frame or volume."""

    #: s/mm².
    bvalue: float
    #: Unit gradient direction in patient coordinates (LPS), when the source gives one.
    direction: tuple[float, float, float] | None
    #: Diffusion Directionality (0018,9075) when known: NONE, DIRECTIONAL, BMATRIX, ISOTROPIC.
    directionality: str
    #: Where the b-value was read, e.g. ``MR Diffusion functional group`` or ``Siemens private``.
    origin: str


@dataclass(frozen=True, eq=False, repr=False)
class AdcResult:
    """An ADC map with everything needed to encode it and to explain it."""

    #: µm²/s, float32, (slice, row, column) on :attr:`geometry`; 0 outside :attr:`mask`.
    adc: npt.NDArray[np.float32]
    #: Voxels with signal (see the module doc, step 6).
    mask: npt.NDArray[np.bool_]
    geometry: SeriesGeometry
    #: Nominal b-value of each shell used, ascending (s/mm²); the first is the b ≈ 0 shell.
    bvalues: tuple[float, ...]
    #: Number of volumes combined into each shell's trace.
    volumes_per_shell: tuple[int, ...]
    method: FittingMethod
    signal_fraction: float
    #: The absolute b ≈ 0 trace value below which voxels are masked.
    signal_threshold: float
    #: The source series (instances, frames, geometry).
    series: ImageSeries
    #: The diffusion-weighted volumes (volume, slice, row, column), rescaled values, float32.
    dwi: npt.NDArray[np.float32]
    #: Encoding of each volume of :attr:`dwi`.
    encodings: tuple[DiffusionEncoding, ...]

    def __repr__(self) -> str:
        return (
            f"AdcResult({self.series.name}, {self.geometry.describe()}, b-values {self.bvalues}, "
            f"{self.method}, {int(self.mask.sum())} voxels in the mask)"
        )

    @property
    def source_datasets(self) -> tuple[Dataset, ...]:
        return self.series.datasets

    def derivation_description(self) -> str:
        """Plain-text account of the computation, as recorded in Derivation Description."""
        shells = ", ".join(
            f"b={b:g} ({n} vol)" for b, n in zip(self.bvalues, self.volumes_per_shell, strict=True)
        )
        fit = (
            "two-point formula ln(S0/Sb)/(b-b0)"
            if self.method == "two-point"
            else "log-linear least squares over shells"
        )
        return (
            f"ADC (um2/s), mono-exponential model, {fit}; trace per shell = geometric mean of its "
            f"volumes; shells {shells} s/mm2; 0 where the b=0 trace < {self.signal_fraction:g} x its 99th "
            f"percentile ({self.signal_threshold:.4g}) or any volume <= 0"
        )


def _from_bytes(value: bytes) -> list[float] | None:
    """Numbers of a value pydicom left as bytes (VR UN): decimal text first, else little-endian floats."""
    texts = value.decode("latin-1").strip("\x00 ").split("\\")
    try:
        return [float(t) for t in texts]
    except ValueError:
        pass
    for size, dtype in ((8, "<f8"), (4, "<f4")):
        if len(value) in (size, 3 * size):
            return [float(v) for v in np.frombuffer(value, dtype=dtype)]
    return None


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        numbers = _from_bytes(value)
        return numbers[0] if numbers else None
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        seq = list(value)  # type: ignore[call-overload]
        return _number(seq[0]) if seq else None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _vector(value: object) -> tuple[float, float, float] | None:
    if value is None:
        return None
    parts: list[object]
    if isinstance(value, bytes):
        parts = list(_from_bytes(value) or [])
    else:
        try:
            parts = list(value)  # type: ignore[call-overload]
        except TypeError:
            return None
    numbers = [_number(p) for p in parts]
    if len(numbers) != 3 or any(n is None for n in numbers):
        return None
    vec = np.array(numbers, dtype=np.float64)
    norm = float(np.linalg.norm(vec))
    if norm < 1e-6:
        return None
    vec /= norm
    return (float(vec[0]), float(vec[1]), float(vec[2]))


def _private(ds: Dataset, group: int, creator: str, element: int) -> object:
    try:
        return ds.private_block(group, creator)[element].value
    except KeyError:
        return None


def _vendor_encoding(ds: Dataset) -> DiffusionEncoding | None:
    b = _number(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0C))
    if b is not None:
        direction = _vector(_private(ds, 0x0019, "SIEMENS MR HEADER", 0x0E))
        return DiffusionEncoding(b, direction if b > 0 else None, "", "Siemens private (0019,xx0C)")
    b = _number(_private(ds, 0x0043, "GEMS_PARM_01", 0x39))
    if b is not None:
        b = b % 1e9 if b >= 1e9 else b  # GE adds 1e9 to flag some b-values
        parts = [_number(_private(ds, 0x0019, "GEMS_ACQU_01", e)) for e in (0xBB, 0xBC, 0xBD)]
        direction = _vector(parts) if all(p is not None for p in parts) else None
        return DiffusionEncoding(b, direction if b > 0 else None, "", "GE private (0043,xx39)")
    b = _number(_private(ds, 0x2001, "Philips Imaging DD 001", 0x03))
    if b is not None:
        parts = [_number(_private(ds, 0x2005, "Philips MR Imaging DD 001", e)) for e in (0xB0, 0xB1, 0xB2)]
        direction = _vector(parts) if all(p is not None for p in parts) else None
        return DiffusionEncoding(b, direction if b > 0 else None, "", "Philips private (2001,xx03)")
    return None


def diffusion_encoding(frame: SeriesFrame) -> DiffusionEncoding | None:
    """The diffusion encoding of a frame from standard attributes, else vendor fields, else None."""
    item = functional_item(frame.groups, "MRDiffusionSequence")
    if item is not None and item.get("DiffusionBValue") is not None:
        directionality = str(item.get("DiffusionDirectionality", "") or "")
        direction_item = functional_item([item], "DiffusionGradientDirectionSequence")
        direction = _vector(direction_item.get("DiffusionGradientOrientation")) if direction_item else None
        origin = "MR Diffusion functional group"
        return DiffusionEncoding(float(item.DiffusionBValue), direction, directionality, origin)
    ds = frame.groups[-1]
    if ds.get("DiffusionBValue") is not None:
        direction = _vector(ds.get("DiffusionGradientOrientation"))
        if direction is None:
            direction_item = functional_item([ds], "DiffusionGradientDirectionSequence")
            direction = _vector(direction_item.get("DiffusionGradientOrientation")) if direction_item else None
        directionality = str(ds.get("DiffusionDirectionality", "") or "")
        return DiffusionEncoding(float(ds.DiffusionBValue), direction, directionality, "Diffusion b-value (0018,9087)")
    return _vendor_encoding(ds)


def _direction_key(encoding: DiffusionEncoding) -> tuple[float, float, float]:
    if encoding.direction is None:
        return (0.0, 0.0, 0.0)
    return (round(encoding.direction[0], 3), round(encoding.direction[1], 3), round(encoding.direction[2], 3))


def _shells(bvalues: Sequence[float]) -> list[list[int]]:
    """Group volume indices into shells of near-equal b-value, ascending."""
    order = sorted(range(len(bvalues)), key=lambda i: bvalues[i])
    shells: list[list[int]] = []
    for index in order:
        if shells:
            first = bvalues[shells[-1][0]]
            tolerance = max(_SHELL_TOLERANCE_ABS, _SHELL_TOLERANCE_REL * bvalues[index])
            if bvalues[index] - first <= tolerance:
                shells[-1].append(index)
                continue
        shells.append([index])
    return shells


def _assemble(series: ImageSeries) -> tuple[npt.NDArray[np.float64], list[DiffusionEncoding]]:
    """The 4D (volume, slice, row, column) array and each volume's encoding."""
    encodings = [diffusion_encoding(frame) for frame in series.frames]
    missing = sum(e is None for e in encodings)
    if missing:
        what = (
            "none of its"
            if missing == len(encodings)
            else f"{missing} of its"
        )
        raise DiffusionInfoError(
            f"{series.name} has no diffusion information: {what} {len(encodings)} frames carry a "
            "Diffusion b-value (0018,9087) (MR Diffusion functional group or top level) or a known "
            "vendor b-value field; is it a diffusion-weighted series?",
            series.paths[0],
        )
    known = [e for e in encodings if e is not None]
    n_slices = series.geometry.shape[0]
    n_volumes = series.frames_per_slice
    per_slice: list[list[int]] = [[] for _ in range(n_slices)]
    for index, frame in enumerate(series.frames):
        per_slice[frame.slice_index].append(index)

    def consistent(groups: list[list[int]]) -> bool:
        for v in range(n_volumes):
            bvals = [known[groups[k][v]].bvalue for k in range(n_slices)]
            if max(bvals) - min(bvals) > max(_SHELL_TOLERANCE_ABS, _SHELL_TOLERANCE_REL * max(bvals)):
                return False
        return True

    # Acquisition order first (as dcm2niix orders volumes); if that mixes b-values within a
    # volume, order each slice's frames by encoding instead.
    by_acquisition = [sorted(members, key=lambda i: series.frames[i].order) for members in per_slice]
    by_encoding = [
        sorted(members, key=lambda i: (known[i].bvalue, _direction_key(known[i]), series.frames[i].order))
        for members in per_slice
    ]
    groups = by_acquisition if consistent(by_acquisition) else by_encoding
    if groups is by_encoding and not consistent(by_encoding):
        raise DiffusionInfoError(
            f"{series.name}: the frames cannot be grouped into volumes of one b-value each "
            "(slices carry different sets of b-values)",
            series.paths[0],
        )
    pixels = series.pixels()
    volumes = np.empty((n_volumes, *series.geometry.shape), dtype=np.float64)
    volume_encodings: list[DiffusionEncoding] = []
    for v in range(n_volumes):
        for k in range(n_slices):
            volumes[v, k] = pixels[groups[k][v]]
        volume_encodings.append(known[groups[0][v]])
    return volumes, volume_encodings


def compute_adc(
    dwi: Path | Sequence[Path] | ImageSeries,
    *,
    b0_max: float = DEFAULT_B0_MAX,
    signal_fraction: float = DEFAULT_SIGNAL_FRACTION,
) -> AdcResult:
    """Compute the ADC map of a diffusion-weighted series (see the module doc for the method).

    :param dwi: a folder with the series, its files, or a series already read with pixels.
    :raises DiffusionInfoError: frames without b-value (not a diffusion series), or frames that do
        not group into volumes.
    :raises MissingB0Error: no shell with b ≤ ``b0_max``, or no shell above it.
    :raises EmptyMaskError: no voxel passes the signal mask.
    :raises GeometryError: the frames do not form one regular grid.
    """
    series = dwi if isinstance(dwi, ImageSeries) else read_image_series(dwi)
    volumes, encodings = _assemble(series)
    bvalues = [e.bvalue for e in encodings]
    shells = _shells(bvalues)
    # Scanner-made isotropic (trace) images are redundant beside directional ones of the same shell.
    for n, shell in enumerate(shells):
        directional = [i for i in shell if encodings[i].directionality != "ISOTROPIC"]
        if directional and len(directional) < len(shell):
            shells[n] = directional
    nominal = [float(np.mean([bvalues[i] for i in shell])) for shell in shells]
    found = ", ".join(f"{b:g}" for b in nominal)
    if nominal[0] > b0_max:
        raise MissingB0Error(
            f"{series.name} has no b = 0 volume (lowest b-value {nominal[0]:g} s/mm², b-values found: {found}; "
            f"a b ≤ {b0_max:g} s/mm² volume is needed for the ADC)",
            series.paths[0],
        )
    if len(shells) < 2:
        raise MissingB0Error(
            f"{series.name} has no diffusion-weighted volume (all b-values ≤ {b0_max:g} s/mm²: {found})",
            series.paths[0],
        )
    for shell_b, shell in zip(nominal, shells, strict=True):
        directions = [encodings[i].direction for i in shell if encodings[i].direction is not None]
        if shell_b > b0_max and directions and np.linalg.matrix_rank(np.array(directions), tol=0.1) < 3:
            logger.warning(
                "%s: the b=%g shell has gradient directions spanning fewer than 3 axes; "
                "its geometric mean is not a trace and the ADC depends on direction",
                series.name,
                shell_b,
            )

    positive = np.all(volumes > 0, axis=0)
    logs = np.log(np.where(volumes > 0, volumes, 1.0))
    ln_trace = np.stack([logs[shell].mean(axis=0) for shell in shells])
    s0_trace = np.exp(ln_trace[0])
    threshold = float(signal_fraction * np.percentile(s0_trace, 99))
    mask = positive & (s0_trace > threshold)
    if not mask.any():
        raise EmptyMaskError(
            f"{series.name}: no voxel has signal (b=0 trace > {threshold:.4g} and every volume > 0); "
            "nothing to compute"
        )
    b = np.asarray(nominal, dtype=np.float64)
    centred_b = b - b.mean()
    slope = np.tensordot(centred_b, ln_trace - ln_trace.mean(axis=0), axes=1) / float(centred_b @ centred_b)
    adc = np.where(mask, -slope * _UM2_PER_MM2, 0.0).astype(np.float32)
    logger.debug("%s: ADC from shells %s, %d voxels with signal", series.name, found, int(mask.sum()))
    return AdcResult(
        adc=adc,
        mask=mask,
        geometry=series.geometry,
        bvalues=tuple(nominal),
        volumes_per_shell=tuple(len(shell) for shell in shells),
        method="two-point" if len(shells) == 2 else "least-squares",
        signal_fraction=signal_fraction,
        signal_threshold=threshold,
        series=series,
        dwi=volumes.astype(np.float32),
        encodings=tuple(encodings),
    )
