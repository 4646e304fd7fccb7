"""Test helpers: the dciodvfy validator, volumes of scanner series, synthetic classic DWI series."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from converters.derived import ImageSeries

DWI = {"PA": "10_DWI_dir80_PA", "AP": "17_DWI_dir80_AP"}
SCANNER_ADC = {"PA": "11_DWI_dir80_PA", "AP": "19_DWI_dir80_AP"}
T1W = "5_anat-T1w_acq-tfl"


@dataclass(frozen=True)
class Validation:
    """What dciodvfy said about one file."""

    path: Path
    errors: list[str]
    warnings: list[str]


def dciodvfy(path: Path) -> Validation:
    """Validate a file against its IOD with dicom3tools' dciodvfy; parse its Error/Warning lines."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        pytest.fail("dciodvfy is not installed: apt-get install -y dicom3tools")
    done = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return Validation(
        path=path,
        errors=[line.strip() for line in lines if re.match(r"^\s*Error", line)],
        warnings=[line.strip() for line in lines if re.match(r"^\s*Warning", line)],
    )


def series_volume(series: ImageSeries, volume: int = 0) -> npt.NDArray[np.float64]:
    """The ``volume``-th frame of every slice of a series as one (slice, row, column) array."""
    pixels = series.pixels()
    out = np.zeros(series.geometry.shape, dtype=np.float64)
    seen = np.zeros(series.geometry.shape[0], dtype=int)
    for frame, plane in zip(series.frames, pixels, strict=True):
        if seen[frame.slice_index] == volume:
            out[frame.slice_index] = plane
        seen[frame.slice_index] += 1
    return out


def synthetic_adc(shape: tuple[int, int, int]) -> npt.NDArray[np.float64]:
    """A known ADC map (µm²/s) varying over the volume, 0 outside a central block."""
    slices, rows, columns = shape
    k, r, c = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    adc = 500.0 + 100.0 * k + 20.0 * r + 5.0 * c
    block = (r >= 2) & (r < rows - 2) & (c >= 2) & (c < columns - 2)
    return np.where(block, adc, 0.0)


def write_classic_dwi(
    folder: Path,
    *,
    shape: tuple[int, int, int] = (4, 12, 10),
    bvalues: Sequence[float] = (0.0, 500.0, 1000.0),
    directions: Sequence[tuple[float, float, float]] = ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    vendor_fields: bool = False,
    s0: float = 20000.0,
) -> list[Path]:
    """Write a classic single-frame MR DWI series (one file per slice and volume).

    Signal: ``S = s0·exp(-b·ADC)`` with :func:`synthetic_adc`, 0 outside its block. b = 0 gets one
    volume, other b-values one volume per direction. With ``vendor_fields`` the encoding is only
    in Siemens' private (0019,xx0C)/(0019,xx0E) instead of the standard attributes. Files are
    written in reverse order with shuffled names so that sorting is exercised.
    """
    folder.mkdir(parents=True, exist_ok=True)
    slices, rows, columns = shape
    adc = synthetic_adc(shape)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    volumes: list[tuple[float, tuple[float, float, float] | None]] = []
    for b in bvalues:
        volumes.extend([(b, None)] if b == 0 else [(b, d) for d in directions])
    paths: list[Path] = []
    instance = 0
    for b, direction in volumes:
        signal = np.where(adc > 0, s0 * np.exp(-b * adc * 1e-6), 0.0)
        for k in range(slices):
            instance += 1
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
            sop = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
            ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Phantom", "SYN1", "", "O"
            ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
            ds.ReferringPhysicianName = ""
            ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "MR", "SIEMENS", 7, instance
            ds.SeriesDescription = "synthetic_dwi"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
            ds.ImagePositionPatient = [-20.0, -30.0, 2.5 * k - 5.0]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.5
            ds.Rows, ds.Columns = rows, columns
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            if vendor_fields:
                block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
                block.add_new(0x0C, "IS", str(int(b)))
                if direction is not None:
                    block.add_new(0x0E, "FD", list(direction))
            else:
                ds.DiffusionBValue = float(b)
                if direction is not None:
                    ds.DiffusionGradientOrientation = list(direction)
            ds.PixelData = np.round(signal[k]).astype(np.uint16).tobytes()
            path = folder / f"{generate_uid().rsplit('.', 1)[-1]}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
