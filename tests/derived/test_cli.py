"""`bidsbridge derive adc|seg|sr` as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom

BIDSBRIDGE = Path(sys.executable).parent / "bidsbridge"


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIDSBRIDGE), "derive", *map(str, args)], capture_output=True, text=True,
                          timeout=300, check=False)


def test_derive_adc_then_seg_and_sr_from_its_mask(corpus: Path, tmp_path: Path) -> None:
    dwi = corpus / "dcm_qa_xa30" / "In" / "10_DWI_dir80_PA"
    adc = _run("adc", dwi, tmp_path / "adc")
    assert adc.returncode == 0, adc.stderr
    names = sorted(Path(line).name for line in adc.stdout.split())
    assert names == sorted(f"10_DWI_dir80_PA_{n}" for n in
                           ("adc_pm.dcm", "mask_seg.dcm", "adc_sr.dcm", "adc.nii.gz", "mask.nii.gz", "mask.tsv"))
    pm = pydicom.dcmread(tmp_path / "adc" / "10_DWI_dir80_PA_adc_pm.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    # The mask NIfTI goes back in as a user label map: SEG, then an SR measuring it with the ADC map.
    seg = _run("seg", tmp_path / "adc" / "10_DWI_dir80_PA_mask.nii.gz", "--source", dwi,
               "--labels", tmp_path / "adc" / "10_DWI_dir80_PA_mask.tsv", tmp_path / "seg")
    assert seg.returncode == 0, seg.stderr
    seg_path = Path(seg.stdout.strip())
    assert hd.seg.segread(seg_path).number_of_segments == 1
    sr = _run("sr", "--seg", seg_path, "--pm", tmp_path / "adc" / "10_DWI_dir80_PA_adc_pm.dcm", "--source", dwi,
              tmp_path / "sr")
    assert sr.returncode == 0, sr.stderr
    assert pydicom.dcmread(Path(sr.stdout.strip())).Modality == "SR"


def test_derive_adc_of_a_non_diffusion_series_fails_clearly_and_writes_nothing(corpus: Path, tmp_path: Path) -> None:
    t1w = corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl"
    out = tmp_path / "out"
    out.mkdir()
    result = _run("adc", t1w, out)
    assert result.returncode == 1
    assert "no diffusion information" in result.stderr and "5_anat-T1w_acq-tfl" in result.stderr
    assert list(out.iterdir()) == []
