"""Send DICOM files to a DICOM node with C-STORE (pynetdicom), as a modality would."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE

__all__ = ["SendReport", "send_files"]

logger = logging.getLogger(__name__)

#: Explicit and implicit VR little endian.
_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


@dataclass(frozen=True)
class SendReport:
    sent: int
    failed: tuple[tuple[Path, str], ...]


def send_files(
    files: Iterable[Path], host: str, port: int, *, called_aet: str, calling_aet: str = "BIDSBRIDGE"
) -> SendReport:
    """C-STORE every file over one association; files that fail are reported, not raised."""
    paths = sorted(Path(f) for f in files)
    datasets = []
    failed: list[tuple[Path, str]] = []
    for path in paths:
        try:
            datasets.append((path, dcmread(path)))
        except (InvalidDicomError, OSError, EOFError) as exc:
            failed.append((path, f"not readable as DICOM: {exc}"))
    ae = AE(ae_title=calling_aet)
    # One presentation context per SOP class and transfer syntax the files use (a peer accepts one
    # syntax per context: a context offering several would leave files in the others unsendable),
    # plus the uncompressed ones; at most the 128 contexts an association can carry.
    pairs = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets}
    pairs |= {(sop, syntax) for sop, _ in pairs for syntax in _UNCOMPRESSED}
    ae.requested_contexts = []
    for sop_class, syntax in sorted(pairs)[:128]:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"DICOM association to {called_aet}@{host}:{port} was not established")
    sent = 0
    try:
        for path, dataset in datasets:
            status = assoc.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code == 0x0000:
                sent += 1
            else:
                failed.append((path, f"C-STORE status {code!r}"))
    finally:
        assoc.release()
    return SendReport(sent=sent, failed=tuple(failed))
