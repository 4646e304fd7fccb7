"""The one error tree: every error class of the product derives from ``BidsBridgeError`` and says
whether retrying may help; one test per retry decision."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import converters
import orthanc_plugin
import xnat_container
from converters.derived.errors import (
    DerivedInputError,
    DiffusionInfoError,
    EmptyMaskError,
    GeometryError,
    GeometryMismatchError,
    LabelTableError,
    MissingB0Error,
)
from converters.errors import (
    BidsBridgeError,
    ConversionError,
    DatasetError,
    Dcm2niixError,
    DicomInputError,
    LabelError,
    QcError,
    UnreadableDataError,
)
from orthanc_plugin.config import ConfigError
from orthanc_plugin.derive_stage import SourceNotReady
from orthanc_plugin.embedded import OrthancSetupError
from orthanc_plugin.rest_client import OrthancError, OrthancUnreachable, SeriesNotFound
from orthanc_plugin.routing_stage import ForwardError, RoutingError
from orthanc_plugin.rules import RulesError
from xnat_container.errors import (
    XnatAuthError,
    XnatConfigError,
    XnatError,
    XnatLabelError,
    XnatRequestError,
    XnatTLSError,
    XnatUnavailable,
    XnatVerificationError,
)

#: Every error and whether the job queue retries a job that failed with it (and why).
RETRY_DECISIONS: list[tuple[type[BidsBridgeError], bool, str]] = [
    (DicomInputError, False, "the input is unusable: re-sending the same files gives the same"),
    (UnreadableDataError, False, "dcm2niix cannot decode the data"),
    (LabelError, False, "a site policy (subject map) refuses the patient"),
    (ConversionError, True, "dcm2niix or its environment failed"),
    (Dcm2niixError, True, "an environment exit code of dcm2niix"),
    (DatasetError, True, "disk full, permissions: may be fixed meanwhile"),
    (QcError, False, "an image no QC picture can be drawn of (recorded, never failing a job)"),
    (DerivedInputError, False, "the series does not allow the derivation"),
    (MissingB0Error, False, "no b = 0 volume"),
    (DiffusionInfoError, False, "no b-values for some frames"),
    (GeometryError, False, "frames that do not form one grid"),
    (EmptyMaskError, False, "nothing to encode"),
    (GeometryMismatchError, False, "a label map on another grid"),
    (LabelTableError, False, "a malformed label table"),
    (OrthancError, True, "Orthanc unreachable or answering 5xx"),
    (OrthancUnreachable, True, "Orthanc not answering at all (the worker gives the job back, uncounted)"),
    (SeriesNotFound, False, "the series was deleted"),
    (ForwardError, True, "a forward's Orthanc job failed"),
    (SourceNotReady, True, "the series a SEG refers to is not converted yet"),
    (RoutingError, False, "the rules cannot be applied to the series"),
    (ConfigError, False, "a configuration value is wrong"),
    (RulesError, False, "a rule file is wrong"),
    (OrthancSetupError, False, "Orthanc is not installed"),
    (XnatError, False, "an XNAT error of no more specific kind"),
    (XnatUnavailable, True, "XNAT down, slow or answering 5xx"),
    (XnatVerificationError, True, "a file differs after upload: send again"),
    (XnatAuthError, False, "401/403"),
    (XnatRequestError, False, "XNAT refused the request"),
    (XnatLabelError, False, "a label with nothing left after sanitizing"),
    (XnatConfigError, False, "a destination configured wrongly"),
    (XnatTLSError, False, "a certificate problem"),
]


@pytest.mark.parametrize(("error", "retryable", "why"), RETRY_DECISIONS, ids=[e.__name__ for e, _, _ in
                                                                              RETRY_DECISIONS])
def test_retry_decision(error: type[BidsBridgeError], retryable: bool, why: str) -> None:
    assert issubclass(error, BidsBridgeError)
    assert error.retryable is retryable, why


def _product_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for package in (converters, orthanc_plugin, xnat_container):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith(("orthanc_entry", ".plugin", "__main__")):
                continue  # need Orthanc's embedded interpreter (the `orthanc` module)
            module = importlib.import_module(info.name)
            for _name, value in inspect.getmembers(module, inspect.isclass):
                if issubclass(value, BaseException) and value.__module__ == module.__name__:
                    found.append(value)
    return found


def test_every_error_of_the_product_is_in_the_tree() -> None:
    exceptions = _product_exceptions()
    assert len(exceptions) > 20
    outside = [e.__qualname__ for e in exceptions if not issubclass(e, BidsBridgeError)]
    # _Refused: the YAML loader's internal signal, turned into a RulesError before it leaves the loader.
    assert outside == ["_Refused"], outside
    assert {e for e, _, _ in RETRY_DECISIONS} >= {e for e in exceptions if e.__module__.split(".")[-1] == "errors"
                                                  and issubclass(e, BidsBridgeError) and e is not BidsBridgeError}


def test_an_error_restated_keeps_its_class_fields_and_retry_decision(tmp_path: Path) -> None:
    """Errors whose constructors take more than a message (dcm2niix's) can be put in other terms."""
    scratch = tmp_path / "dicom"
    for original in (Dcm2niixError(scratch, 2, f"Error: cannot write {scratch}/x.nii"),
                     UnreadableDataError(scratch, 2, ("Error: corrupt",))):
        twin = original.restated(str(original).replace(str(scratch), "Orthanc series abc"))
        assert type(twin) is type(original) and twin.retryable is original.retryable
        assert twin.returncode == original.returncode and twin.__cause__ is original
        assert str(scratch) not in str(twin) and "Orthanc series abc" in str(twin)
