"""The instance count one header announces (early completion), on every corpus series."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from converters.completeness import expected_instances


def _series(corpus: Path) -> dict[tuple[str, str], list[Dataset]]:
    found: dict[tuple[str, str], list[Dataset]] = collections.defaultdict(list)
    for path in sorted(corpus.glob("*/In/**/*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        if "SeriesInstanceUID" in ds:
            found[(path.relative_to(corpus).parts[0], str(ds.SeriesInstanceUID))].append(ds)
    return found


@pytest.fixture(scope="module")
def corpus_series(corpus: Path) -> dict[tuple[str, str], list[Dataset]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel's "experimental DICOM readers" notice
        return _series(corpus)


def _claims(headers: list[Dataset]) -> set[int | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {None if e is None else e.instances for e in map(expected_instances, headers)}


def test_no_header_claims_fewer_instances_than_its_series_has(
    corpus_series: dict[tuple[str, str], list[Dataset]]
) -> None:
    """A claim below the true count converts an incomplete series early (then again at
    STABLE_SERIES). The one corpus set that does so is artificial: dcm_qa_ts stores one mosaic
    nine times, in nine transfer syntaxes, under one SeriesInstanceUID."""
    early: list[str] = []
    for (corpus_set, _uid), headers in corpus_series.items():
        count = len({str(ds.SOPInstanceUID) for ds in headers})
        for claim in _claims(headers):
            if claim is not None and claim < count and corpus_set != "dcm_qa_ts":
                early.append(f"{corpus_set} {headers[0].get('SeriesDescription')}: claims {claim} of {count}")
    assert not early, early


@pytest.mark.parametrize(("corpus_set", "description", "count"), [
    ("dcm_qa_nih", "Axial EPI-FMRI (Interleaved I to S)", 150),  # GE: ImagesInAcquisition x temporal positions
    ("dcm_qa_deident", "Accelerated SAG IR-SPGR", 196),  # GE: ImagesInAcquisition
    ("dcm_qa_fmap", "B0map", 32),
    ("dcm_qa_xa30", "anat-T1w_acq-tfl", 1),  # one enhanced instance of the whole volume
    ("dcm_qa_xa30", "func-bold_task-fa_run-1", 20),  # Siemens XA: one enhanced instance per volume
    ("dcm_qa_xa30", "DWI_dir80_AP", 21),
    ("dcm_qa_xa30", "asl_2d_tra", 7),
    ("dcm_qa_mosaic", "ep2d_Asc", 6),  # Siemens mosaic: lRepetitions + 1
    ("dcm_qa_nih", "EPI PE=AP", 2),
])
def test_headers_that_announce_their_series_count_are_read_exactly(
    corpus_series: dict[tuple[str, str], list[Dataset]], corpus_set: str, description: str, count: int
) -> None:
    matching = [h for (s, _), h in corpus_series.items()
                if s == corpus_set and str(h[0].get("SeriesDescription")) == description]
    assert matching, f"no {description!r} series in {corpus_set}"
    for headers in matching:
        assert len({str(ds.SOPInstanceUID) for ds in headers}) == count
        assert _claims(headers) == {count}


@pytest.mark.parametrize(("corpus_set", "description"), [
    ("dcm_qa_polar", "FM_cv12_0_3mm"),  # GE pepolar: ImagesInAcquisition already counts all four positions
    ("dcm_qa_xa30", "gre_field_mapping"),  # Siemens XA: an instance per echo, or one for both
    ("dcm_qa_xa30", "DWI_dir80_AP_ADC"),  # a derived map keeping its acquisition's 21 positions
    ("dcm_qa_xa30i_bold", "func-bold_task-fa_run-1"),  # classic XA: nothing announces the count
    ("dcm_qa_enh", "REST1 w SMS PF7-8"),  # enhanced, no NumberOfTemporalPositions
])
def test_headers_that_cannot_prove_completeness_wait_for_stable(
    corpus_series: dict[tuple[str, str], list[Dataset]], corpus_set: str, description: str
) -> None:
    matching = [h for (s, _), h in corpus_series.items()
                if s == corpus_set and str(h[0].get("SeriesDescription")) == description]
    assert matching
    for headers in matching:
        count = len({str(ds.SOPInstanceUID) for ds in headers})
        assert all(claim is None or claim > count for claim in _claims(headers))


def test_a_concatenation_announces_its_instance_count() -> None:
    ds = Dataset()
    ds.InConcatenationTotalNumber = 3
    ds.NumberOfFrames = 100
    found = expected_instances(ds)
    assert found is not None and found.instances == 3 and "Concatenation" in found.evidence


def test_a_mosaic_with_diffusion_or_averages_proves_nothing(corpus: Path) -> None:
    path = next(p for p in sorted((corpus / "dcm_qa_mosaic" / "In").rglob("*")) if p.is_file())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    csa = ds[0x00291020].value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert expected_instances(ds) is not None
        for change in (b"sDiffusion.ulMode\t = \t1", b"lAverages\t = \t1"):
            assert change in csa, change
            for replacement in (b"sDiffusion.ulMode\t = \t4", b"lAverages\t = \t2"):
                if replacement.split(b"\t")[0] == change.split(b"\t")[0]:
                    ds[0x00291020].value = csa.replace(change, replacement)
                    assert expected_instances(ds) is None
