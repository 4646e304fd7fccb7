"""Route helpers that read the converter's bookkeeping without importing it (Orthanc's process)."""

from __future__ import annotations

from pathlib import Path

import pydicom

from converters import convert_series, series_outputs
from orthanc_plugin.routes import _current_outputs


def test_current_outputs_read_the_converters_manifest(corpus: Path, tmp_path: Path) -> None:
    t1w = corpus / "dcm_qa_xa30" / "In" / "5_anat-T1w_acq-tfl"
    result = convert_series(t1w, tmp_path / "bids")
    uid = str(pydicom.dcmread(next(t1w.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    assert result.state == "converted"
    assert _current_outputs(tmp_path / "bids", uid) == series_outputs(tmp_path / "bids", uid) == list(result.outputs)
    assert _current_outputs(tmp_path / "bids", "1.2.3") is None
    assert _current_outputs(tmp_path / "bids", "") is None
