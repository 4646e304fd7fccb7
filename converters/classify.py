"""Stage 3 — classify: decide where a converted series belongs in a raw BIDS dataset.

A decision is a :class:`~converters.records.BidsTarget` (datatype, suffix, entities, extra sidecar
fields) or a :class:`~converters.records.Skip` with its reason. Decisions come from an ordered
tuple of *rules*; the first rule that returns something wins, then matching :class:`Override` s
may replace fields. Rules are plain functions ``(SeriesFacts) -> BidsTarget | Skip | None``, so
later vendor-specific rules can be inserted into :data:`DEFAULT_RULES` without touching the others.

Order of :data:`DEFAULT_RULES`:

1. non-image objects (SR, KO, PR, Phoenix reports, ...), modalities other than MR (CT, PET: with
   the reason) and secondary captures are skipped — :func:`screen` applies these header-only
   rules before dcm2niix;
2. scanner-derived images (ImageType ``DERIVED``): diffusion maps get the raw ``dwi/`` suffixes
   of the schema (``ADC``, ``FA``, ``colFA``, ``trace``, ``S0map``, ``expADC``); the rest
   (perfusion maps, MPRs, ...) is skipped by policy;
3. ReproIn names in SeriesDescription, then ProtocolName (``anat-T1w_acq-tfl``,
   ``func-bold_task-rest_run-1``, ``dwi_dir-AP``, ``fmap-epi_dir-PA``, ``fmap_acq-x``,
   ``perf-asl``) win over everything below;
4. header facts: localizers are skipped; raw diffusion (b-values) -> ``dwi``; GRE field maps ->
   ``fmap`` magnitude/phasediff/fieldmap; spin-echo EPI field maps by name -> ``fmap/epi``;
   ASL -> ``perf/asl`` when every required field is found (:mod:`converters.asl`), else skipped
   naming the missing fields; single-band references -> ``sbref``; 4D EPI time series ->
   ``func/bold`` with the series name as task;
5. dcm2niix's own ``BidsGuess``, accepted only for anatomical suffixes, as a last hint;
6. anything else is skipped as unrecognised.

Wherever a target allows ``rec`` and the image is the scanner's intensity-normalised version
(``NORM`` in ImageType/ImageTypeText), ``rec-norm`` is added. ``dir`` comes from the name or,
for ``dwi`` and ``fmap/epi``, from PhaseEncodingDirection and the image orientation. Runs,
field-map pairing and linking are decided per session when publishing
(:mod:`converters.bids.session`).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydicom.uid import UID

from converters.asl import AslHeaders, AslPlan, asl_fields
from converters.bids.dataset import BIDS_VERSION
from converters.bids.naming import INDEX_ENTITIES, entity_value, sanitize_label
from converters.errors import LabelError
from converters.records import BidsTarget, Classification, ConvertedImage, DicomSeries, Placement, Skip, SkipCode
from converters.split import variant_tokens

__all__ = [
    "DEFAULT_RULES",
    "HEADER_RULES",
    "SUPPORTED",
    "Override",
    "ReproInName",
    "Rule",
    "SeriesFacts",
    "classify",
    "parse_reproin",
    "phase_encoding_label",
    "place",
    "screen",
]

logger = logging.getLogger(__name__)

#: Suffixes of GRE field maps (BIDS "fieldmaps" cases 1-3); several may come from one series.
GRE_FIELDMAP_SUFFIXES = ("magnitude1", "magnitude2", "phasediff", "phase1", "phase2", "magnitude", "fieldmap")
#: Raw ``dwi/`` suffixes the BIDS 1.11 schema defines for maps the scanner computes.
SCANNER_DWI_SUFFIXES = ("ADC", "FA", "S0map", "colFA", "expADC", "trace")
#: Quantitative anatomical maps raw BIDS holds (schema "parametric" anat suffixes).
ANAT_MAP_SUFFIXES = (
    "T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap", "MTRmap", "MTsat", "UNIT1", "T1rho",
    "MWFmap", "MTVmap", "Chimap", "S0map", "M0map",
)  # fmt: skip
#: ImageType values (spaces, ``_`` and ``*`` removed, upper case) of scanner-computed maps that
#: raw ``anat/`` holds: Siemens MP2RAGE ``UNI``, MapIt/MP2RAGE ``T1 MAP``, ``T2 MAP``, ...
_ANAT_MAP_TYPES = {
    "UNI": "UNIT1", "T1MAP": "T1map", "T2MAP": "T2map", "T2STARMAP": "T2starmap", "T2STAR": "T2starmap",
    "R1MAP": "R1map", "R2MAP": "R2map", "R2STARMAP": "R2starmap", "PDMAP": "PDmap", "MTRMAP": "MTRmap",
}  # fmt: skip

#: (datatype, suffix) -> {entity: required?} for the targets this version writes, from the BIDS 1.11
#: schema (``sub``/``ses`` left out). Targets outside this table are only produced by overrides.
SUPPORTED: Mapping[tuple[str, str], Mapping[str, bool]] = {
    **{
        ("anat", suffix): {
            "task": False, "acq": False, "ce": False, "rec": False, "run": False, "echo": False,
            "part": False, "chunk": False,
        }
        for suffix in ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2", "angio")
    },
    ("anat", "MP2RAGE"): {
        "inv": True, "acq": False, "ce": False, "rec": False, "run": False, "echo": False, "part": False,
        "chunk": False,
    },
    **{
        ("anat", suffix): {"task": False, "acq": False, "ce": False, "rec": False, "run": False, "chunk": False}
        for suffix in ANAT_MAP_SUFFIXES
    },
    ("fmap", "TB1TFL"): {
        "acq": False, "ce": False, "rec": False, "run": False, "echo": False, "flip": False, "inv": False,
        "part": False, "chunk": False,
    },
    ("anat", "MEGRE"): {
        "echo": True, "acq": False, "ce": False, "rec": False, "run": False, "part": False, "chunk": False,
    },
    **{
        ("func", suffix): {
            "task": True, "acq": False, "ce": False, "rec": False, "dir": False, "run": False,
            "echo": False, "part": False, "chunk": False,
        }
        for suffix in ("bold", "sbref")
    },
    **{
        ("dwi", suffix): {"acq": False, "rec": False, "dir": False, "run": False, "part": False, "chunk": False}
        for suffix in ("dwi", "sbref")
    },
    ("fmap", "epi"): {
        "acq": False, "ce": False, "rec": False, "dir": True, "run": False, "part": False, "chunk": False,
    },
    **{("fmap", suffix): {"acq": False, "run": False, "chunk": False} for suffix in GRE_FIELDMAP_SUFFIXES},
    **{
        ("dwi", suffix): {"acq": False, "rec": False, "dir": False, "run": False, "chunk": False}
        for suffix in SCANNER_DWI_SUFFIXES
    },
    **{
        ("perf", suffix): {
            "acq": False, "rec": False, "dir": False, "run": False, "echo": False, "part": False,
        }
        for suffix in ("asl", "m0scan")
    },
}  # fmt: skip


#: Suffix a ReproIn name implies when it gives only the datatype (``dwi_dir-AP``).
_DEFAULT_SUFFIX = {"func": "bold", "dwi": "dwi"}
_REPROIN_DATATYPES = frozenset({"anat", "func", "dwi", "fmap", "perf"})
_REPROIN_KEYS = frozenset({"ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part", "inv", "flip", "mt"})
_LOCALIZERS = frozenset({"scout", "localizer", "loc"})


@dataclass(frozen=True)
class SeriesFacts:
    """Everything a rule may look at: DICOM header facts and dcm2niix's outputs (may be empty).

    ``images`` are the images of *one acquisition* of the series (:func:`converters.split.partition`);
    when dcm2niix split the series into several, ``siblings`` holds the images of the others, so
    that a rule can see e.g. both phase-encoding polarities or the planes of a tri-plane localizer.
    """

    series: DicomSeries
    images: tuple[ConvertedImage, ...] = ()
    #: ASL facts from the DICOM headers (read by the pipeline for ASL series only).
    asl: AslHeaders | None = None
    #: The images of the series' other acquisitions (empty when dcm2niix did not split it).
    siblings: tuple[tuple[ConvertedImage, ...], ...] = ()
    #: What of dcm2niix's file-name postfix sets this acquisition apart (``""``, ``a``, ``_c2``, ...).
    residue: str = ""

    def _sidecar_types(self) -> set[str]:
        values: set[str] = set()
        for image in self.images:
            for key in ("ImageType", "ImageTypeText"):
                found = image.metadata.get(key)
                if isinstance(found, list):
                    values.update(str(v).upper() for v in found)
        return values

    @property
    def image_types(self) -> frozenset[str]:
        """Upper-case values of DICOM ImageType and the sidecars' ImageType/ImageTypeText; for one
        acquisition of a split series, its own sidecars' values only (the series' first instance
        may belong to another)."""
        own = self._sidecar_types()
        if self.siblings and own:
            return frozenset(own)
        return frozenset(own | set(self.series.image_type))

    @property
    def primary_type(self) -> str:
        """``ORIGINAL`` or ``DERIVED`` (ImageType value 1) of this acquisition, or ""."""
        if self.siblings:
            for image in self.images:
                found = image.metadata.get("ImageType")
                if isinstance(found, list) and found:
                    return str(found[0]).upper()
        return self.series.image_type[0] if self.series.image_type else ""

    @property
    def volumes(self) -> int:
        """Most volumes (4th dimension) of the acquisition's images; 1 for 3D images."""
        return max((image.shape[3] if len(image.shape) > 3 else 1 for image in self.images), default=0)

    @property
    def slices(self) -> int:
        """Slices (3rd dimension) of the first image, 1 for 2D images, 0 without images."""
        shape = self.images[0].shape if self.images else ()
        if not shape:
            return 0
        return shape[2] if len(shape) > 2 else 1

    @property
    def epi(self) -> bool:
        """Every image is an echo-planar readout (header evidence, see :func:`is_epi`)."""
        return bool(self.images) and all(is_epi(image, self.image_types) for image in self.images)

    @property
    def spin_echo(self) -> bool:
        """A spin-echo readout: ``SE`` in ScanningSequence (or Siemens ``*epse``/``*se`` names)
        and not a gradient-echo (``fid``) sequence name."""
        return bool(self.images) and all(_spin_echo(image) for image in self.images)

    @property
    def opposite_polarity_in_series(self) -> bool:
        """The series also holds this acquisition with the reverse phase-encoding direction
        (dcm2niix split it by polarity, e.g. GE ``epi_pepolar``)."""
        own = {d for image in self.images if (d := _pe(image)) is not None}
        others = {d for images in self.siblings for image in images if (d := _pe(image)) is not None}
        return any(_reverse(direction) in others for direction in own)

    @property
    def names(self) -> tuple[str, str]:
        """(SeriesDescription, ProtocolName)."""
        return self.series.series_description, self.series.protocol_name

    @property
    def bids_guess(self) -> tuple[str, str] | None:
        """dcm2niix's ``BidsGuess`` of the first image as (datatype, name tail), if any."""
        for image in self.images:
            guess = image.metadata.get("BidsGuess")
            if isinstance(guess, list) and len(guess) == 2 and all(isinstance(g, str) for g in guess):
                return guess[0], guess[1]
        return None

    @property
    def has_bvals(self) -> bool:
        return bool(self.images) and all(i.bval is not None and i.bvec is not None for i in self.images)

    @property
    def diffusion_weighted(self) -> bool:
        """dcm2niix found b-values and at least one is not zero."""
        return self.has_bvals and any(b > 0 for image in self.images for b in image.bvalues)


Rule = Callable[[SeriesFacts], Classification | None]


def _tokens(value: object) -> set[str]:
    """``"SE\\EP"`` / ``["GR", "EP"]`` -> ``{"SE", "EP"}`` (upper case)."""
    if isinstance(value, list):
        return {str(v).strip().upper() for v in value}
    return {t.strip().upper() for t in re.split(r"[\\/ _,]+", str(value or "")) if t.strip()}


_EPI_SEQUENCE = re.compile(r"(?:^|[^a-z])(?:ep(?:fid|se|i|_|\d)|epi)", re.IGNORECASE)


def is_epi(image: ConvertedImage, image_types: frozenset[str] = frozenset()) -> bool:
    """Echo-planar readout, from any of: ``EP`` in ScanningSequence, ``MOSAIC`` in ImageType
    (Siemens mosaics are EPI only), an EPI sequence name (Siemens ``*epfid``/``*epse``/``ep_b``,
    GE ``epi*``, ``.../epi_pepolar``), or dcm2niix guessing a ``bold``/``sbref``/``dwi``/``epi`` image."""
    meta = image.metadata
    if "EP" in _tokens(meta.get("ScanningSequence")) or "MOSAIC" in image_types:
        return True
    for key in ("SequenceName", "PulseSequenceName", "PulseSequenceDetails"):
        if _EPI_SEQUENCE.search(str(meta.get(key, ""))):
            return True
    guess = meta.get("BidsGuess")
    if isinstance(guess, list) and len(guess) == 2:
        return str(guess[1]).rsplit("_", 1)[-1] in ("epi", "bold", "sbref", "dwi")
    return False


def _spin_echo(image: ConvertedImage) -> bool:
    meta = image.metadata
    name = str(meta.get("SequenceName", "")).lower()
    if "fid" in name:
        return False
    return "SE" in _tokens(meta.get("ScanningSequence")) or bool(re.search(r"(?:^|[*_/])(?:epse|se\d|tse)", name))


def _pe(image: ConvertedImage) -> str | None:
    direction = image.metadata.get("PhaseEncodingDirection")
    return direction if isinstance(direction, str) and direction in ("i", "i-", "j", "j-", "k", "k-") else None


def _reverse(direction: str) -> str:
    return direction[:-1] if direction.endswith("-") else f"{direction}-"


def _code(target: BidsTarget) -> SkipCode:
    """A target the rules cannot write: the site's doing (an override), else unrecognised."""
    return "rule" if target.rule == "override" else "unrecognised"


def slice_plane(image: ConvertedImage) -> str | None:
    """``ax``, ``sag`` or ``cor``: the world axis the image's slice direction (voxel axis k) is
    closest to, from the affine; None without one."""
    if len(image.affine) < 3:
        return None
    column = [abs(image.affine[row][2]) for row in range(3)]
    if not any(column):
        return None
    return ("sag", "cor", "ax")[max(range(3), key=lambda row: column[row])]


@dataclass(frozen=True)
class ReproInName:
    """A series name in ReproIn form: ``<datatype>[-<suffix>][_<key>-<value>]...[__<anything>]``."""

    datatype: str
    suffix: str | None
    entities: Mapping[str, str] = field(default_factory=dict, hash=False)


def parse_reproin(text: str) -> ReproInName | None:
    """Parse a ReproIn series name, or return None if ``text`` is not one.

    Strict on purpose: every ``_``-separated token after the first must be ``key-value`` with a
    known ReproIn key, so free-text names never pass for ReproIn.
    """
    head = text.strip().split("__", 1)[0]
    tokens = head.split("_")
    datatype, _, suffix = tokens[0].partition("-")
    if datatype not in _REPROIN_DATATYPES:
        return None
    entities: dict[str, str] = {}
    for token in tokens[1:]:
        key, sep, value = token.partition("-")
        if not sep or not value or key not in _REPROIN_KEYS or key in entities:
            return None
        entities[key] = value
    return ReproInName(datatype=datatype, suffix=suffix or None, entities=entities)


def phase_encoding_label(image: ConvertedImage) -> str | None:
    """BIDS ``dir`` label (``AP``, ``PA``, ``LR``, ``RL``, ``IS``, ``SI``) of an image.

    PhaseEncodingDirection (``i``/``j``/``k`` with optional ``-``) is in voxel axes; the affine
    turns that axis into RAS+ space, and the dominant world axis names the direction of travel
    (``PA`` = from posterior to anterior).
    """
    direction = image.metadata.get("PhaseEncodingDirection")
    if not isinstance(direction, str) or direction not in ("i", "i-", "j", "j-", "k", "k-"):
        return None
    if len(image.affine) < 3:
        return None
    axis = "ijk".index(direction[0])
    sign = -1.0 if direction.endswith("-") else 1.0
    vector = [image.affine[row][axis] * sign for row in range(3)]
    dominant = max(range(3), key=lambda row: abs(vector[row]))
    if vector[dominant] == 0:
        return None
    names = (("RL", "LR"), ("AP", "PA"), ("SI", "IS"))
    return names[dominant][vector[dominant] > 0]


def _normalised(facts: SeriesFacts) -> bool:
    return "NORM" in facts.image_types


def _describe(facts: SeriesFacts) -> str:
    if facts.siblings:  # one acquisition of a split series: its own ImageType
        for image in facts.images:
            found = image.metadata.get("ImageType")
            if isinstance(found, list) and found:
                return "\\".join(str(v).upper() for v in found)
    return "\\".join(facts.series.image_type) or "no ImageType"


def _finish(facts: SeriesFacts, target: BidsTarget, *, name: str) -> Classification:
    """Complete a (datatype, suffix) from a rule: check entities, add rec/dir/TaskName."""
    allowed = SUPPORTED.get((target.datatype, target.suffix))
    if allowed is None:
        return Skip(f"{name}: {target.datatype}/{target.suffix} is not supported yet", target.rule, _code(target))
    entities = dict(target.entities)
    metadata = dict(target.metadata)
    refused = sorted(set(entities) - set(allowed))
    if refused:
        return Skip(
            f"{name}: entities {refused} are not allowed for {target.datatype}/{target.suffix}",
            target.rule,
            _code(target),
        )
    if "rec" in allowed and "rec" not in entities and _normalised(facts):
        entities["rec"] = "norm"
    split_by_direction = facts.opposite_polarity_in_series or any(
        {_pe(i) for i in images} != {_pe(i) for i in facts.images} for images in facts.siblings
    )
    if "dir" in allowed and "dir" not in entities and facts.images and (
        target.datatype in ("dwi", "fmap") or split_by_direction
    ):
        labels = {phase_encoding_label(image) for image in facts.images}
        if len(labels) == 1 and None not in labels:
            entities["dir"] = str(labels.pop())
    agent = facts.series.contrast_agent.strip()
    if "ce" in allowed and "ce" not in entities and agent and agent.upper() not in ("NONE", "NO", "N/A", "NA", "0"):
        try:
            entities["ce"] = sanitize_label(agent)
        except LabelError:
            logger.info("%s: contrast agent %r gives no label", name, agent)
    if "part" in allowed and "part" not in entities and facts.images and all(_is_phase(i) for i in facts.images):
        entities["part"] = "phase"
    # place() numbers the echoes of a multi-echo series; a single image must name its echo.
    numbered = {"echo"} if len(facts.images) > 1 else set()
    missing = sorted(
        key for key, required in allowed.items() if required and key not in entities and key not in numbered
    )
    if missing:
        why = ""
        if "dir" in missing and facts.images and not any(_pe(image) for image in facts.images):
            why = (
                " (no PhaseEncodingDirection in the headers; Philips DICOM does not record the polarity:"
                " supply dir and PhaseEncodingDirection with an override)"
            )
        return Skip(
            f"{name}: {target.datatype}/{target.suffix} needs entity {missing}{why}",
            target.rule,
            "rule" if target.rule == "override" else "missing-metadata",
        )
    if target.datatype == "dwi" and target.suffix == "dwi" and not facts.has_bvals:
        return Skip(f"{name}: dcm2niix found no b-values/b-vectors for a dwi series", target.rule, "missing-metadata")
    if "task" in entities:
        metadata.setdefault("TaskName", entities["task"])
    return replace(target, entities=entities, metadata=metadata)


def rule_non_image(facts: SeriesFacts) -> Classification | None:
    """Objects without pixel data (structured reports, key objects, protocol documents, ...)."""
    series = facts.series
    if series.has_pixels:
        return None
    if "PHOENIX" in f"{series.series_description} {series.protocol_name}".upper():
        return Skip(
            f"Siemens Phoenix protocol report (Modality {series.modality or '?'}, SOP class "
            f"{series.sop_class_uid or '?'}): a document, not an image; raw BIDS holds images only",
            "non-image",
            "not-an-image",
        )
    return Skip(
        f"not an image (Modality {series.modality or '?'}, SOP class {series.sop_class_uid or '?'}); "
        "raw BIDS holds images only",
        "non-image",
        "not-an-image",
    )


def rule_not_mr_acquisition(facts: SeriesFacts) -> Classification | None:
    """Images this version never places: other modalities, and screenshots (secondary captures)."""
    series = facts.series
    if series.modality == "CT":
        return Skip(f"CT: BIDS {BIDS_VERSION} defines no raw datatype for CT images", "not-mr", "no-bids-datatype")
    if series.modality == "PT":
        return Skip(
            "PET: pet/ needs tracer, injection and blood fields (TracerName, InjectedRadioactivity, ...) that "
            "image headers do not hold; not placed automatically",
            "not-mr",
            "no-bids-datatype",
        )
    if series.modality != "MR":
        return Skip(
            f"modality {series.modality or '(none)'}: only MR is placed in BIDS so far", "not-mr", "no-bids-datatype"
        )
    if "Secondary Capture" in UID(series.sop_class_uid).name:
        return Skip(f"{UID(series.sop_class_uid).name} (a screenshot, not an acquisition)", "not-mr", "not-an-image")
    return None


def _scanner_dwi_suffix(facts: SeriesFacts) -> str | None:
    """The raw ``dwi/`` suffix of a diffusion map the scanner computed, from ImageType and name."""
    types = facts.image_types
    if "DIFFUSION" not in types:
        return None
    name = facts.series.series_description.upper().replace(" ", "_")
    if ("EXP" in types and "ADC" in types) or "EADC" in types:
        return "expADC"
    if "ADC" in types:
        return "ADC"
    if "TRACEW" in types or "TRACE" in types:
        return "trace"
    if "FA" in types:
        return "colFA" if "COLFA" in name or "COL_FA" in name or "COLOR" in types else "FA"
    if "TENSOR_B0" in types or {"TENSOR", "B0"} <= types:
        return "S0map"
    return None


def _anat_map_suffix(facts: SeriesFacts) -> str | None:
    """The raw ``anat/`` suffix of a quantitative map the scanner computed, from ImageType or
    dcm2niix's guess (MP2RAGE ``UNI`` -> ``UNIT1``, ``T1 MAP`` -> ``T1map``, ...)."""
    guess = facts.bids_guess
    if guess is not None and guess[0] == "anat" and guess[1].rsplit("_", 1)[-1] in ANAT_MAP_SUFFIXES:
        return guess[1].rsplit("_", 1)[-1]
    for value in facts.image_types:
        found = _ANAT_MAP_TYPES.get(re.sub(r"[ _*]", "", value))
        if found is not None:
            return found
    return None


def rule_b1_map(facts: SeriesFacts) -> Classification | None:
    """Siemens ``tfl_b1map`` images, as dcm2niix guesses them: ``fmap/…_acq-famp_TB1TFL`` for the
    flip-angle map (ImageType says ``FLIP ANGLE MAP``/``B1 MAP``), ``…_acq-anat_TB1TFL`` for the
    anatomical-like image (the names of BIDS' qMRI appendix)."""
    guess = facts.bids_guess
    if guess is None or guess[1].rsplit("_", 1)[-1] != "TB1TFL":
        return None
    flat = {re.sub(r"[ _]", "", value) for value in facts.image_types}
    famp = any("FLIPANGLE" in value or "B1MAP" in value or value == "FAMP" for value in flat)
    target = BidsTarget("fmap", "TB1TFL", {"acq": "famp" if famp else "anat"}, rule="b1-map")
    return _finish(facts, target, name=f"B1+ map ({'flip-angle map' if famp else 'anatomical image'})")


def rule_scanner_derived(facts: SeriesFacts) -> Classification | None:
    """Maps the scanner computed (ImageType ``DERIVED``): diffusion maps get the raw ``dwi/``
    suffixes the schema defines for them (``ADC``, ``FA``, ``colFA``, ``trace``, ``S0map``,
    ``expADC``), quantitative anatomical maps the ``anat/`` ones (``UNIT1``, ``T1map``, ...), a
    B1+ flip-angle map ``fmap/…_TB1TFL``; every other derived image (perfusion maps, MPRs,
    subtractions, ...) has no place in raw BIDS and is skipped by policy, with its ImageType as
    the reason."""
    if facts.primary_type != "DERIVED":
        return None
    suffix = _scanner_dwi_suffix(facts)
    if suffix is not None:
        name = f"scanner-derived diffusion map (ImageType {_describe(facts)})"
        return _finish(facts, BidsTarget("dwi", suffix, rule="scanner-derived"), name=name)
    quantitative = _anat_map_suffix(facts)
    if quantitative is not None:
        name = f"scanner-computed {quantitative} (ImageType {_describe(facts)})"
        return _finish(facts, BidsTarget("anat", quantitative, rule="scanner-derived"), name=name)
    b1 = rule_b1_map(facts)
    if b1 is not None:
        return b1
    if "ASL" in facts.image_types or "PERFUSION" in facts.image_types:
        return Skip(
            f"scanner-derived perfusion map (ImageType {_describe(facts)}): BIDS {BIDS_VERSION} defines no file "
            "for it, in raw perf/ or in derivatives; skipped by policy (the raw ASL series is kept)",
            "scanner-derived",
            "scanner-derived",
        )
    return Skip(
        f"scanner-derived image (ImageType {_describe(facts)}): raw BIDS defines no file for it; "
        "skipped by policy (the source series is kept)",
        "scanner-derived",
        "scanner-derived",
    )


def rule_reproin(facts: SeriesFacts) -> Classification | None:
    """ReproIn names in SeriesDescription, else ProtocolName."""
    candidates = (
        ("SeriesDescription", facts.series.series_description),
        ("ProtocolName", facts.series.protocol_name),
    )
    found = [(source, text, parse_reproin(text)) for source, text in candidates]
    matched = [(source, text, parsed) for source, text, parsed in found if parsed is not None]
    if not matched:
        return None
    source, text, parsed = matched[0]
    name = f"ReproIn {source} {text!r}"
    suffix = parsed.suffix or _DEFAULT_SUFFIX.get(parsed.datatype)
    if suffix is not None and suffix.lower() in _LOCALIZERS:
        return Skip(f"{name}: localizer/scout", "reproin", "localizer")
    entities: dict[str, str] = {}
    for key, value in parsed.entities.items():
        if key == "ses":
            logger.info("%s: ses-%s ignored; the session comes from the study or the caller", name, value)
            continue
        try:
            entities[key] = entity_value(key, value)
        except LabelError as exc:
            return Skip(f"{name}: {exc}", "reproin")
    if parsed.datatype == "fmap" and suffix != "epi":
        return _fieldmap_target(facts, entities, "reproin", name)
    if parsed.datatype == "perf" and suffix in (None, "asl"):
        return _asl(facts, entities, "reproin", name)
    if suffix is None:
        return Skip(f"{name}: gives no suffix for datatype {parsed.datatype}", "reproin")
    target = BidsTarget(parsed.datatype, suffix, entities, rule="reproin")
    return _finish(facts, target, name=name)


def rule_diffusion(facts: SeriesFacts) -> Classification | None:
    """Raw diffusion: b-values and b-vectors with DIFFUSION in ImageType, or any non-zero b-value
    (GE and Philips do not always say DIFFUSION). A few EPI volumes all at b = 0 are left to
    :func:`rule_pepolar` (a reverse phase-encoding b0 is a field map, ``fmap/…_epi``)."""
    if not (facts.has_bvals and ("DIFFUSION" in facts.image_types or facts.diffusion_weighted)):
        return None
    if not facts.diffusion_weighted and facts.volumes <= PEPOLAR_MAX_VOLUMES and facts.epi:
        return None  # a few b = 0 volumes: a reverse phase-encoding b0, see rule_pepolar
    return _finish(facts, BidsTarget("dwi", "dwi", rule="diffusion"), name="diffusion series")


def _is_phase(image: ConvertedImage) -> bool:
    types = image.metadata.get("ImageType")
    return "_ph" in image.postfix or (isinstance(types, list) and ("PHASE" in types or "P" in types))


def fieldmap_suffixes(images: Sequence[ConvertedImage]) -> list[str] | str:
    """BIDS suffix of each image of a GRE field-map series, or why they cannot be named.

    ``_fieldmaphz`` images (GE, Philips; Units Hz) are ``fieldmap`` and the other image of their
    series its ``magnitude``; a phase image with EchoTime1/EchoTime2 is ``phasediff``, one without
    is ``phase<echo>``; magnitude echoes of a series without a field map are ``magnitude<echo>``.
    """
    has_fieldmap = any("fieldmaphz" in image.postfix.lower() for image in images)
    magnitudes = [image for image in images if "fieldmaphz" not in image.postfix.lower() and not _is_phase(image)]
    suffixes: list[str] = []
    for image in images:
        meta = image.metadata
        if "fieldmaphz" in image.postfix.lower():
            if meta.get("Units") != "Hz":
                return f"field map image {image.postfix!r} without Units Hz"
            suffixes.append("fieldmap")
        elif _is_phase(image):
            if isinstance(meta.get("EchoTime1"), int | float) and isinstance(meta.get("EchoTime2"), int | float):
                suffixes.append("phasediff")
            elif meta.get("EchoNumber") in (1, 2):
                suffixes.append(f"phase{meta['EchoNumber']}")
            else:
                return "phase image without EchoTime1/EchoTime2 (missing: EchoTime1, EchoTime2)"
        elif has_fieldmap:
            suffixes.append("magnitude")
        elif len(magnitudes) == 1:
            suffixes.append("magnitude1")
        else:
            number = meta.get("EchoNumber")
            if number not in (1, 2):
                return f"magnitude image {image.postfix!r} with echo {number!r} (expected 1 or 2)"
            suffixes.append(f"magnitude{number}")
    if len(set(suffixes)) != len(suffixes):
        return f"images {[i.postfix for i in images]} would share the suffixes {suffixes}"
    return suffixes


def _fieldmap_target(facts: SeriesFacts, entities: Mapping[str, str], rule: str, name: str) -> Classification:
    suffixes = fieldmap_suffixes(facts.images)
    if isinstance(suffixes, str):
        return Skip(f"{name}: {suffixes}", rule, "missing-metadata")
    return _finish(facts, BidsTarget("fmap", suffixes[0], entities, rule=rule), name=name)


def rule_fieldmap(facts: SeriesFacts) -> Classification | None:
    """GRE field maps: dcm2niix's fmap guess, a ``_fieldmaphz`` image, or the Siemens ``fm2d``
    sequence. Magnitude and phase series of one acquisition are paired into one field-map set (and
    linked to the scans they correct) when the session is published, see :mod:`converters.bids.session`."""
    guess = facts.bids_guess
    sequence = str(next((i.metadata.get("SequenceName", "") for i in facts.images), ""))
    hz = any("fieldmaphz" in image.postfix.lower() for image in facts.images)
    # dcm2niix's fmap guess counts only for GRE suffixes (not B1 maps such as TB1TFL, nor epi).
    gre_guess = guess is not None and guess[0] == "fmap" and guess[1].rsplit("_", 1)[-1] in GRE_FIELDMAP_SUFFIXES
    if not (hz or gre_guess or re.search(r"fm\d?d\d", sequence)):
        return None
    return _fieldmap_target(facts, {}, "fieldmap", f"GRE field map ({_describe(facts)})")


def _asl(facts: SeriesFacts, entities: Mapping[str, str], rule: str, name: str) -> Classification:
    if len(facts.images) != 1 or len(facts.images[0].shape) != 4:
        return Skip(f"{name}: ASL series that dcm2niix did not write as one 4D image", rule, "unrecognised")
    image = facts.images[0]
    plan = asl_fields(facts.asl or AslHeaders(), image.metadata, image.shape[3])
    if not isinstance(plan, AslPlan):
        return Skip(
            f"{name}: ASL series, but no header records what BIDS requires for perf/asl "
            f"(missing: {', '.join(plan)}); supply them with an override to place it",
            rule,
            "missing-metadata",
        )
    context = "volume_type\n" + "".join(f"{kind}\n" for kind in plan.volume_types)
    target = BidsTarget("perf", "asl", entities, plan.metadata, rule=rule, companions={"_aslcontext.tsv": context})
    return _finish(facts, target, name=name)


def rule_asl(facts: SeriesFacts) -> Classification | None:
    """Arterial spin labelling raw series (ImageType ASL, or dcm2niix's perf guess)."""
    guess = facts.bids_guess
    if "ASL" not in facts.image_types and not (guess is not None and guess[0] == "perf"):
        return None
    return _asl(facts, {}, "asl", f"ASL ({_describe(facts)})")


_PEPOLAR_NAME = re.compile(
    r"(spin[-_ ]?echo[-_ ]?field[-_ ]?map|se[-_ ]?fmap|fmap[-_ ]?se|topup|pepolar|fieldmap[-_ ]?epi|epi[-_ ]?fieldmap)",
    re.IGNORECASE,
)
#: Most volumes a pepolar field-map series has (more: a time series).
PEPOLAR_MAX_VOLUMES = 10
#: Most volumes of a spin-echo EPI without diffusion weighting that is taken for a field map on
#: that evidence alone (TOPUP pairs are one to three volumes per direction).
SPIN_ECHO_FIELDMAP_MAX_VOLUMES = 3


def _fieldmap_epi_evidence(facts: SeriesFacts) -> str | None:
    """Why a few-volume EPI acquisition without diffusion weighting is a pepolar field map, or None."""
    if len(facts.images) != 1 or not facts.epi or facts.volumes > PEPOLAR_MAX_VOLUMES:
        return None
    types = facts.image_types
    if facts.diffusion_weighted or "ASL" in types:
        return None
    image = facts.images[0]
    if "DIFFUSION" in types:  # b = 0 only (rule_diffusion took every series with b > 0)
        return f"{facts.volumes} b = 0 EPI volume(s) of a diffusion protocol (a reverse phase-encoding b0)"
    for text in facts.names:
        if _PEPOLAR_NAME.search(text):
            return f"named {text!r}"
    sequence = str(image.metadata.get("SequenceName", ""))
    if re.search(r"pepolar|topup", sequence, re.IGNORECASE):
        return f"sequence {sequence!r}"
    if facts.opposite_polarity_in_series:
        return "both phase-encoding polarities in one series"
    guess = facts.bids_guess
    if guess is not None and guess[0] == "fmap" and guess[1].rsplit("_", 1)[-1] == "epi":
        return "dcm2niix guessed fmap/epi"
    if facts.spin_echo and facts.volumes <= SPIN_ECHO_FIELDMAP_MAX_VOLUMES:
        return f"spin-echo EPI of {facts.volumes} volume(s) without diffusion weighting"
    return None


def rule_pepolar(facts: SeriesFacts) -> Classification | None:
    """Spin-echo EPI field maps: a few EPI volumes without diffusion weighting, recognised by name
    (``SpinEchoFieldMap_AP``, ``topup_PA``), sequence (``epi_pepolar``), both polarities in one
    series, dcm2niix's guess, or a spin-echo readout of at most three volumes ->
    ``fmap/…_dir-XX_epi`` (linked to the scans it corrects when the session is published). BIDS
    requires TotalReadoutTime or EffectiveEchoSpacing for it: without either it is skipped
    naming them (an override can supply one)."""
    evidence = _fieldmap_epi_evidence(facts)
    if evidence is None:
        return None
    name = f"spin-echo EPI field map ({evidence})"
    meta = facts.images[0].metadata
    if not any(isinstance(meta.get(key), int | float) for key in ("TotalReadoutTime", "EffectiveEchoSpacing")):
        return Skip(
            f"{name}: fmap/epi needs TotalReadoutTime or EffectiveEchoSpacing, which no header records "
            "(missing: TotalReadoutTime); supply it with an override to place it",
            "pepolar",
            "missing-metadata",
        )
    return _finish(facts, BidsTarget("fmap", "epi", rule="pepolar"), name=name)


_LOCALIZER_NAME = re.compile(r"(localizer|localiser|scout|survey|3[-_ ]?plane|tri[-_ ]?pilot)", re.IGNORECASE)
#: A tri-plane localizer: stacks in two or more orientations, each at most this many slices.
LOCALIZER_MAX_SLICES = 12
#: A single-volume non-EPI image with at most this many slices is a localizer/scout.
FEW_SLICES = 3


def rule_localizer(facts: SeriesFacts) -> Classification | None:
    """Localizers / scouts: by name, ImageType ``LOCALIZER``, stacks in several orthogonal planes
    of a few slices each (dcm2niix splits a tri-plane localizer by orientation), or a single
    non-EPI volume of at most :data:`FEW_SLICES` slices. Positioning images, not data."""
    label = facts.series.series_description or facts.series.protocol_name
    if "LOCALIZER" in facts.image_types or any(_LOCALIZER_NAME.search(text) for text in facts.names):
        return Skip(f"localizer/scout ({label})", "localizer", "localizer")
    stacks = (facts.images, *facts.siblings)
    if len(stacks) > 1 and all(
        len(image.shape) <= 3 and (image.shape[2] if len(image.shape) > 2 else 1) <= LOCALIZER_MAX_SLICES
        for images in stacks
        for image in images
    ):
        planes = {slice_plane(image) for images in stacks for image in images} - {None}
        if len(planes) > 1:
            return Skip(
                f"localizer ({len(stacks)} stacks of at most {LOCALIZER_MAX_SLICES} slices in the "
                f"{', '.join(sorted(str(p) for p in planes))} planes)",
                "localizer",
                "localizer",
            )
    if facts.volumes == 1 and 0 < facts.slices <= FEW_SLICES and not facts.epi and not facts.has_bvals:
        return Skip(f"localizer/scout (a single volume of {facts.slices} slice(s))", "localizer", "localizer")
    return None


def rule_postfix(facts: SeriesFacts) -> Classification | None:
    """Images dcm2niix marks by postfix as no acquisition of their own: overlays (``_ROI<n>``),
    presentation states and raw data (``_PS``, ``_Raw``), the scanner's motion-corrected copy
    (``_MoCo``) or the derived volume Philips appends to a DWI (``_ADC``; dcm2niix also writes the
    DWI without it), and uncombined single-coil images (``_c<coil>``; BIDS has no coil entity)."""
    for token in re.split(r"_", facts.residue):
        if re.fullmatch(r"ROI\d*[a-z]*|PS[a-z]*|Raw[a-z]*", token):
            return Skip(f"dcm2niix image {facts.residue!r}: an overlay or non-image object", "postfix", "not-an-image")
        if re.fullmatch(r"(?:ADC|MoCo)[a-z]*", token):
            return Skip(
                f"dcm2niix image {facts.residue!r}: a copy or map the scanner computed (the acquired image of "
                "the series is kept)",
                "postfix",
                "scanner-derived",
            )
        if re.fullmatch(r"c[A-Za-z0-9]+", token):
            return Skip(
                f"dcm2niix image {facts.residue!r}: one receive coil's uncombined image; BIDS has no entity for "
                "the coil (the combined image, if the series has one, is kept)",
                "postfix",
                "no-bids-datatype",
            )
    return None


def _strip_sbref(text: str) -> str:
    return re.sub(r"[_\- ]?sbref", "", text, flags=re.IGNORECASE)


def rule_sbref(facts: SeriesFacts) -> Classification | None:
    """Single-band reference images (CMRR/Siemens ``*_SBRef``, or dcm2niix's ``sbref`` guess):
    one EPI volume saved beside a multiband run. Beside diffusion it is ``dwi/…_sbref`` (with
    ``dir``); otherwise ``func/…_sbref`` with the task its run gets (the series name without
    ``SBRef``, else ``unnamed`` as for a run without a name, see :func:`rule_bold`)."""
    description = facts.series.series_description
    guess = facts.bids_guess
    guessed = guess is not None and guess[1].rsplit("_", 1)[-1] == "sbref"
    if not ("SBREF" in description.upper() or guessed) or len(facts.images) != 1:
        return None
    if not facts.epi or facts.volumes != 1:
        return None
    name = f"single-band reference {description!r}"
    if "DIFFUSION" in facts.image_types or re.search(r"dwi|diff|dti", description, re.IGNORECASE):
        return _finish(facts, BidsTarget("dwi", "sbref", rule="sbref"), name=name)
    task, note = _task((_strip_sbref(description), _strip_sbref(facts.series.protocol_name)))
    decision = _finish(facts, BidsTarget("func", "sbref", {"task": task}, rule="sbref"), name=name)
    if note is not None and isinstance(decision, BidsTarget):
        decision = replace(decision, notes=(*decision.notes, note))
    return decision


#: Task label of fMRI whose series has neither SeriesDescription nor ProtocolName.
UNNAMED_TASK = "unnamed"


def _task(names: Sequence[str]) -> tuple[str, str | None]:
    """(task label, note): from the first of ``names`` (SeriesDescription, ProtocolName) with
    letters or digits, else :data:`UNNAMED_TASK`."""
    for text in names:
        try:
            return sanitize_label(text), None
        except LabelError:
            continue
    return UNNAMED_TASK, (
        f"no SeriesDescription or ProtocolName to take the task from: task label {UNNAMED_TASK!r} "
        "(rename it with a rule override)"
    )


def rule_bold(facts: SeriesFacts) -> Classification | None:
    """EPI without diffusion weighting or labelling, whatever its number of volumes (a 1-volume
    run is written as a 4D image of one volume): BOLD fMRI. The task label is the series name
    (SeriesDescription, else ProtocolName) reduced to letters and digits, else ``unnamed``."""
    types = facts.image_types
    if not facts.epi or "DIFFUSION" in types or facts.diffusion_weighted or "ASL" in types:
        return None
    task, note = _task(facts.names)
    name = f"EPI time series of {facts.volumes} volume(s)"
    decision = _finish(facts, BidsTarget("func", "bold", {"task": task}, rule="bold"), name=name)
    if note is not None and isinstance(decision, BidsTarget):
        decision = replace(decision, notes=(*decision.notes, note))
    return decision


def _acquisition_2d(facts: SeriesFacts, entities: dict[str, str]) -> None:
    """A 2D (multi-slice) anatomical gets ``acq-<plane>2d`` (``ax2d``, ``sag2d``, ``cor2d``) so that
    stacks in different planes and the 3D version of a contrast never share a name."""
    if "acq" in entities or not facts.images:
        return
    if str(facts.images[0].metadata.get("MRAcquisitionType", "")).upper() != "2D":
        return
    plane = slice_plane(facts.images[0])
    entities["acq"] = f"{plane}2d" if plane else "2d"


def rule_bids_guess(facts: SeriesFacts) -> Classification | None:
    """dcm2niix's BidsGuess, trusted only for anatomical suffixes and only for datatype + suffix."""
    guess = facts.bids_guess
    if guess is None or guess[0] != "anat":
        return None
    tokens = guess[1].strip("_").split("_")
    suffix = tokens[-1]
    if ("anat", suffix) not in SUPPORTED:
        return None
    # Only the entities that tell images of one acquisition apart; dcm2niix's acq/run are noise.
    entities = {
        key: value
        for key, _, value in (token.partition("-") for token in tokens[:-1])
        if key in ("inv", "echo", "part") and value
    }
    _acquisition_2d(facts, entities)
    target = BidsTarget("anat", suffix, entities, rule="bids-guess")
    return _finish(facts, target, name=f"dcm2niix BidsGuess {guess}")


def _number(meta: Mapping[str, Any], key: str) -> float | None:
    value = meta.get(key)
    if isinstance(value, list) and value:
        value = value[0]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_ANGIO_NAME = re.compile(r"(tof|angio|(?:^|[^a-z])mra(?:$|[^a-z]))", re.IGNORECASE)


def _contrast(facts: SeriesFacts) -> tuple[str, str] | None:
    """(anat suffix, evidence) from the sequence type and timing of a non-EPI image, or None."""
    meta = facts.images[0].metadata
    if "ANGIO" in facts.image_types or any(_ANGIO_NAME.search(text) for text in facts.names):
        return "angio", "time-of-flight/angiography"
    tr, te, ti = (_number(meta, key) for key in ("RepetitionTime", "EchoTime", "InversionTime"))
    flip = _number(meta, "FlipAngle")
    if tr is None or te is None:
        return None
    sequence = _tokens(meta.get("ScanningSequence"))
    timing = f"TR {tr:g} s, TE {te:g} s" + (f", TI {ti:g} s" if ti else "")
    if "IR" in sequence or (ti is not None and ti > 0):
        if ti is not None and ti >= 1.4 and tr >= 4.0:
            return "FLAIR", f"inversion recovery, long TI ({timing})"
        if ti is not None and 0.3 <= ti < 1.4 and te < 0.03:
            return "T1w", f"inversion recovery, T1-weighting TI ({timing})"
        return None
    if "GR" in sequence:
        if te >= 0.015:
            return "T2starw", f"gradient echo, long TE ({timing})"
        if tr < 0.1 and te < 0.01:
            if flip is not None and flip < 8:
                return "PDw", f"spoiled gradient echo, low flip angle ({timing}, flip {flip:g})"
            return "T1w", f"spoiled gradient echo ({timing})"
        return None
    if "SE" in sequence:
        if tr < 1.0 and te < 0.03:
            return "T1w", f"spin echo, short TR and TE ({timing})"
        if tr >= 2.0 and te >= 0.06:
            return "T2w", f"spin echo, long TR and TE ({timing})"
        if tr >= 2.0 and te < 0.045:
            return "PDw", f"spin echo, long TR, short TE ({timing})"
    return None


def rule_anatomical(facts: SeriesFacts) -> Classification | None:
    """Structural images dcm2niix did not name: the contrast from the sequence type and timing
    (inversion recovery with long TI -> ``FLAIR``, with T1 TI -> ``T1w``; spin echo short TR/TE ->
    ``T1w``, long TR/TE -> ``T2w``, long TR/short TE -> ``PDw``; gradient echo long TE ->
    ``T2starw``, spoiled -> ``T1w``/``PDw``; time of flight -> ``angio``), for non-EPI images that
    dcm2niix did not take for something else; 2D stacks get ``acq-<plane>2d``."""
    if not facts.images or facts.epi or facts.has_bvals:
        return None
    guess = facts.bids_guess
    if guess is not None and guess[0] not in ("anat", ""):
        return None  # dcm2niix recognised another kind of image (B1 map, ...): not guessed here
    found = _contrast(facts)
    if found is None:
        return None
    suffix, evidence = found
    entities: dict[str, str] = {}
    _acquisition_2d(facts, entities)
    return _finish(facts, BidsTarget("anat", suffix, entities, rule="contrast"), name=f"{suffix} by {evidence}")


def _timing(meta: Mapping[str, Any]) -> str:
    names = {"RepetitionTime": "TR", "EchoTime": "TE", "InversionTime": "TI"}
    shown = [f"{short} {value:g} s" for key, short in names.items() if (value := _number(meta, key)) is not None]
    return ", ".join(shown) or "no TR/TE"


def rule_unrecognised(facts: SeriesFacts) -> Classification | None:
    """Nothing recognised the images; the reason lists the evidence that was looked at."""
    guess = facts.bids_guess
    hint = f"; dcm2niix guessed {guess[0]}/{guess[1]}" if guess else ""
    evidence = [f"ImageType {_describe(facts)}"]
    if facts.images:
        meta = facts.images[0].metadata
        if facts.epi:
            evidence.append("EPI")
        else:
            evidence.append(
                f"not EPI (ScanningSequence {meta.get('ScanningSequence', '?')!s}, "
                f"SequenceName {meta.get('SequenceName', '?')!s})"
            )
        evidence.append(f"{facts.volumes} volume(s) of {facts.slices} slice(s)")
        evidence.append(f"{_timing(meta)} fit no contrast rule")
    return Skip(
        f"not recognised ({'; '.join(evidence)}{hint}); give it a ReproIn name or an override",
        "unrecognised",
        "unrecognised",
    )


#: Rules in the order they are tried; the first non-None answer wins.
#: Rules that need DICOM headers only; :func:`screen` applies them before dcm2niix runs.
HEADER_RULES: tuple[Rule, ...] = (rule_non_image, rule_not_mr_acquisition)

DEFAULT_RULES: tuple[Rule, ...] = (
    *HEADER_RULES,
    rule_postfix,
    rule_scanner_derived,
    rule_reproin,
    rule_localizer,
    rule_diffusion,
    rule_fieldmap,
    rule_b1_map,
    rule_pepolar,
    rule_asl,
    rule_sbref,
    rule_bold,
    rule_bids_guess,
    rule_anatomical,
    rule_unrecognised,
)


@dataclass(frozen=True)
class Override:
    """A site decision that replaces what the rules decided for matching series — the one
    plug-in point of the routing rules (issue 4). Immutable; every field optional.

    Matches by ``series_uid`` and/or an ``fnmatch`` pattern on SeriesDescription (both must match
    when both are given). ``skip`` skips the series with that reason; otherwise the given fields
    replace the rule's. A skipped series (e.g. an ASL series whose headers lack required fields)
    becomes a target only when the override names both ``datatype`` and ``suffix`` — and then the
    override must supply what the rules could not (``metadata``, ``companions``).
    """

    #: Match: this SeriesInstanceUID only.
    series_uid: str | None = None
    #: Match: SeriesDescription matches this ``fnmatch`` pattern (case-sensitive).
    description: str | None = None
    #: BIDS datatype folder (``anat``, ``func``, ``dwi``, ``fmap``, ``perf``, ...) to use instead.
    datatype: str | None = None
    #: BIDS suffix (``T1w``, ``bold``, ``phasediff``, ``asl``, ...) to use instead.
    suffix: str | None = None
    #: Entities merged into the rule's (``task``, ``acq``, ``run``, ``dir``, ...); None removes one.
    #: A ``task`` also sets ``TaskName`` unless ``metadata`` gives one.
    entities: Mapping[str, str | None] = field(default_factory=dict, hash=False)
    #: Extra sidecar fields, e.g. ASL timing or EchoTime1/EchoTime2 no header records.
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: Files written beside the image under another suffix, keyed ``_<suffix><extension>``, with
    #: their text: e.g. ``{"_aslcontext.tsv": "volume_type\ncontrol\nlabel\n"}``.
    companions: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: Skip the series with this reason (wins over everything else).
    skip: str | None = None

    def matches(self, series: DicomSeries) -> bool:
        if self.series_uid is None and self.description is None:
            return False
        if self.series_uid is not None and series.series_uid != self.series_uid:
            return False
        return self.description is None or fnmatch.fnmatchcase(series.series_description, self.description)

    def apply(self, decision: Classification) -> Classification:
        if self.skip is not None:
            return Skip(self.skip, "override", "rule")
        if isinstance(decision, Skip):
            if self.datatype is None or self.suffix is None:
                return decision
            decision = BidsTarget(self.datatype, self.suffix)
        entities = {k: v for k, v in decision.entities.items() if k not in self.entities}
        for key, value in self.entities.items():
            if value is not None:
                entities[key] = entity_value(key, value)
        metadata = {**decision.metadata, **self.metadata}
        if "task" in entities:
            metadata["TaskName"] = self.metadata.get("TaskName", entities["task"])
        datatype, suffix = self.datatype or decision.datatype, self.suffix or decision.suffix
        same_kind = (datatype, suffix) == (decision.datatype, decision.suffix)
        return BidsTarget(
            datatype=datatype,
            suffix=suffix,
            entities=entities,
            metadata=metadata,
            rule="override",
            companions={**(decision.companions if same_kind else {}), **self.companions},
        )


def screen(series: DicomSeries) -> Skip | None:
    """Apply :data:`HEADER_RULES`: a Skip for series not worth running dcm2niix on, else None."""
    facts = SeriesFacts(series)
    for rule in HEADER_RULES:
        decision = rule(facts)
        if isinstance(decision, Skip):
            return decision
    return None


def classify(
    facts: SeriesFacts, *, rules: Sequence[Rule] = DEFAULT_RULES, overrides: Sequence[Override] = ()
) -> Classification:
    """Run ``rules`` in order, then every matching override, and return the decision."""
    decision: Classification | None = None
    for rule in rules:
        decision = rule(facts)
        if decision is not None:
            break
    if decision is None:
        decision = rule_unrecognised(facts)
        assert decision is not None
    for override in overrides:
        if override.matches(facts.series):
            decision = override.apply(decision)
    return decision


def _variant_of(image: ConvertedImage) -> tuple[str | None, str] | None:
    """(echo, part) of one image of an acquisition from dcm2niix's postfix tokens (``_e2``,
    ``_ph``, ``_real``, ``_imaginary``), or None for a scanner field map (``_fieldmaphz``), which
    only a GRE field-map target names."""
    echo: str | None = None
    part = "mag"
    for token in variant_tokens(image.postfix):
        if token == "fieldmaphz":
            return None
        if token.startswith("e"):
            echo = token[1:]
        else:
            part = {"ph": "phase", "real": "real", "imaginary": "imag"}[token]
    return echo, part


def place(facts: SeriesFacts, target: BidsTarget) -> tuple[Placement, ...] | Skip:
    """Give each converted image of one acquisition its own target: one image keeps ``target``;
    several images that differ by echo and/or magnitude/phase/real/imaginary get ``echo-<n>`` /
    ``part-mag|phase|real|imag``; GRE field-map images their suffixes. Images that differ
    otherwise are separate acquisitions (:func:`converters.split.partition`), never given here."""
    images = facts.images
    if len(images) == 1:
        return (Placement(images[0], target),)
    if not images:
        return Skip("dcm2niix wrote no image", target.rule, "unreadable")
    if target.datatype == "fmap" and target.suffix in GRE_FIELDMAP_SUFFIXES:
        suffixes = fieldmap_suffixes(images)
        if isinstance(suffixes, str):
            return Skip(suffixes, target.rule, "missing-metadata")
        return tuple(
            Placement(image, replace(target, suffix=suffix)) for image, suffix in zip(images, suffixes, strict=True)
        )
    allowed = SUPPORTED.get((target.datatype, target.suffix), {})
    parsed = [_variant_of(image) for image in images]
    postfixes = ", ".join(repr(image.postfix) for image in images)
    if any(variant is None for variant in parsed):
        return Skip(
            f"dcm2niix wrote a scanner field map among images {postfixes}, which only a GRE field map names",
            target.rule,
            "unrecognised",
        )
    echoes = {variant[0] for variant in parsed if variant is not None}
    parts = {variant[1] for variant in parsed if variant is not None}
    placements: list[Placement] = []
    for image, variant in zip(images, parsed, strict=True):
        assert variant is not None
        entities = dict(target.entities)
        if len(echoes) > 1:
            number = image.metadata.get("EchoNumber", variant[0])
            if "echo" not in allowed or number is None:
                return Skip(
                    f"{target.datatype}/{target.suffix} with several echoes ({postfixes}) not supported",
                    target.rule,
                    "unrecognised",
                )
            entities["echo"] = str(number)
        if len(parts) > 1:
            if "part" not in allowed:
                return Skip(
                    f"{target.datatype}/{target.suffix} with magnitude and phase not supported",
                    target.rule,
                    "unrecognised",
                )
            entities["part"] = variant[1]
        placements.append(Placement(image, replace(target, entities=entities)))
    names = {tuple(sorted(p.target.entities.items())) for p in placements}
    if len(names) != len(placements):
        return Skip(
            f"dcm2niix wrote several images {postfixes} that would get the same BIDS name", target.rule, "unrecognised"
        )
    for placement in placements:
        for key in INDEX_ENTITIES & set(placement.target.entities):
            entity_value(key, placement.target.entities[key])
    return tuple(placements)
