"""Fixtures for the derived-objects tests: the XA30 diffusion series and their ADC.

Data: ``dcm_qa_xa30`` of the shared corpus (Siemens XA30 Enhanced MR, BSD-2, see
``shared/corpus/README.md``): series 10 (PA) and 17 (AP) are 21-volume DWI (b = 0 and 20
directions at b = 2500 s/mm², one volume per file), 11 and 19 the scanner's ADC maps of them,
5 a T1w with no diffusion information. Synthetic classic single-frame series
come from :mod:`tests.derived.helpers`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from converters.derived import (
    AdcResult,
    compute_adc,
    encode_mask_segmentation,
    encode_measurement_sr,
    encode_parametric_map,
)
from tests.derived.helpers import DWI


@pytest.fixture(scope="session")
def xa30(corpus: Path) -> Path:
    return corpus / "dcm_qa_xa30" / "In"


@pytest.fixture(scope="session")
def xa30_expected(corpus: Path) -> Path:
    return corpus / "dcm_qa_xa30" / "expected"


@pytest.fixture(scope="session")
def adc_pa(xa30: Path) -> AdcResult:
    return compute_adc(xa30 / DWI["PA"])


@pytest.fixture(scope="session")
def adc_ap(xa30: Path) -> AdcResult:
    return compute_adc(xa30 / DWI["AP"])


@pytest.fixture(scope="session")
def pa_outputs(adc_pa: AdcResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Parametric Map, mask Segmentation and Measurement Report of series 10, written once."""
    out = tmp_path_factory.mktemp("pa")
    pm = encode_parametric_map(adc_pa)
    seg = encode_mask_segmentation(adc_pa)
    sr = encode_measurement_sr(seg, adc_pa.series, pm)
    paths = {"pm": out / "pm.dcm", "seg": out / "seg.dcm", "sr": out / "sr.dcm"}
    for key, ds in (("pm", pm), ("seg", seg), ("sr", sr)):
        ds.save_as(paths[key], enforce_file_format=True)
    return paths
