"""Session-wide naming and linking: pure functions of the series a session holds.

Whatever order series arrive in (plugin workers run in parallel), the final names and the
cross-series sidecar fields of a session are computed from all its series at once, so the
dataset ends up the same as after a sequential conversion:

- series whose images would get the same name (apart from ``run``) but are **different
  protocols** (MRAcquisitionType, else SequenceName differ) are told apart by
  ``acq-<that value>``; **true repeats** of one protocol are numbered ``run-1``,
  ``run-2``, ... in acquisition order (AcquisitionDateTime, then SeriesNumber, then
  SeriesInstanceUID); a name used once keeps the run its series asked for (a ReproIn ``run-1``)
  or none;
- **magnitude/phase pairs**: a magnitude image whose phase came as a separate series
  (``part-phase``) is named ``part-mag``;
- **GRE field-map sets**: a magnitude series and the phase series acquired right after it with
  the same echo times (Siemens writes them as two series) form one set and share one run;
- **field-map links**: each raw ``func``/``dwi``/``perf`` image gets ``B0FieldSource`` naming the
  field-map set acquired closest before it (else the first one after it); the set's images get
  that ``B0FieldIdentifier`` and ``IntendedFor`` (BIDS URIs) listing the images they correct. A
  set is a GRE set or consecutive ``fmap/epi`` series with opposite ``dir`` (a pepolar pair).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from converters.bids.naming import relative_path, sanitize_label, session_prefix
from converters.errors import LabelError
from converters.records import BidsTarget

__all__ = [
    "CORRECTED",
    "LINK_KEYS",
    "ImageRecord",
    "SeriesEntry",
    "Slot",
    "file_path",
    "layout",
    "links",
]

#: GRE field-map suffixes (BIDS "fieldmaps" cases 1-3).
_GRE = frozenset({"magnitude1", "magnitude2", "phasediff", "phase1", "phase2", "magnitude", "fieldmap"})
#: (datatype, suffix) of raw images a field map corrects.
CORRECTED = frozenset({
    ("func", "bold"), ("func", "sbref"), ("dwi", "dwi"), ("dwi", "sbref"), ("perf", "asl"), ("perf", "m0scan"),
})  # fmt: skip
#: Sidecar keys owned by :func:`links`; recomputed on every publish of the session.
LINK_KEYS = ("B0FieldIdentifier", "B0FieldSource", "IntendedFor")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a series as the classifier placed it, before session-wide numbering."""

    datatype: str
    suffix: str
    entities: Mapping[str, str] = field(default_factory=dict, hash=False)
    #: File extensions written for the image (``.nii.gz``, ``.json``, ...).
    extensions: tuple[str, ...] = ()
    #: Echo times (s) a GRE field-map image stems from, to pair magnitude and phase series.
    echo_times: tuple[float, ...] = ()
    #: What makes two acquisitions the same protocol: (MRAcquisitionType, SequenceName).
    #: Clashing series that differ here are told apart by ``acq``, not ``run``.
    variant: tuple[str, ...] = ()
    #: The acquisition of its series the image belongs to (a series dcm2niix split into several
    #: acquisitions is named as that many units, see :func:`converters.split.partition`).
    unit: int = 0

    def target(self, run: str | None, acq: str | None = None) -> BidsTarget:
        entities = {k: v for k, v in self.entities.items() if k != "run"}
        if acq is not None:
            entities["acq"] = acq
        if run is not None:
            entities["run"] = run
        return BidsTarget(self.datatype, self.suffix, entities)

    def to_json(self) -> dict[str, Any]:
        return {
            "datatype": self.datatype,
            "suffix": self.suffix,
            "entities": dict(self.entities),
            "extensions": list(self.extensions),
            "echo_times": list(self.echo_times),
            "variant": list(self.variant),
            "unit": self.unit,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRecord:
        return cls(
            datatype=str(data["datatype"]),
            suffix=str(data["suffix"]),
            entities={str(k): str(v) for k, v in data["entities"].items()},
            extensions=tuple(str(e) for e in data["extensions"]),
            echo_times=tuple(float(t) for t in data.get("echo_times", ())),
            variant=tuple(str(v) for v in data.get("variant", ())),
            unit=int(data.get("unit", 0)),
        )


@dataclass(frozen=True)
class SeriesEntry:
    """What :func:`layout` needs to know of one series of the session."""

    series_uid: str
    series_number: int | None
    acquisition_time: str
    images: tuple[ImageRecord, ...]
    #: For one acquisition of a split series (see :func:`_split`): the positions of ``images`` in
    #: the series' image list; empty for a whole series.
    indices: tuple[int, ...] = ()

    @property
    def order(self) -> tuple[str, int, str, int]:
        unit = self.images[0].unit if self.images else 0
        number = -1 if self.series_number is None else self.series_number
        return (self.acquisition_time or "~", number, self.series_uid, unit)

    def positions(self) -> tuple[int, ...]:
        """Positions of the entry's images in its series' image list."""
        return self.indices or tuple(range(len(self.images)))


@dataclass(frozen=True)
class Slot:
    """Final place of one image: its target and its files (extension -> path from the dataset root)."""

    target: BidsTarget
    paths: Mapping[str, str] = field(hash=False)


def file_path(subject: str, session: str | None, target: BidsTarget, key: str) -> str:
    """Path of one file of an image: ``key`` is an extension (``.nii.gz``) or, for a companion
    file, ``_<suffix><extension>`` (``_aslcontext.tsv``: same entities, other suffix)."""
    if key.startswith("_"):
        suffix, dot, extension = key[1:].partition(".")
        return relative_path(subject, session, replace(target, suffix=suffix), f"{dot}{extension}")
    return relative_path(subject, session, target, key)


def _split(entries: Sequence[SeriesEntry]) -> list[SeriesEntry]:
    """Each series as one entry per acquisition (unit) it holds: units are named apart."""
    parts: list[SeriesEntry] = []
    for entry in entries:
        units = sorted({image.unit for image in entry.images})
        if len(units) <= 1:
            parts.append(entry)
            continue
        for unit in units:
            indices = tuple(i for i, image in enumerate(entry.images) if image.unit == unit)
            parts.append(replace(entry, images=tuple(entry.images[i] for i in indices), indices=indices))
    return parts


def _base(image: ImageRecord) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    return image.datatype, image.suffix, tuple(sorted((k, v) for k, v in image.entities.items() if k != "run"))


def _is_gre(entry: SeriesEntry) -> bool:
    return bool(entry.images) and all(i.datatype == "fmap" and i.suffix in _GRE for i in entry.images)


def _echoes_fit(members: Sequence[SeriesEntry], entry: SeriesEntry) -> bool:
    times = {round(t, 6) for m in (*members, entry) for i in m.images for t in i.echo_times}
    return len(times) <= 2


def _units(entries: Sequence[SeriesEntry]) -> list[list[SeriesEntry]]:
    """Series grouped into naming units: a GRE field-map set, or one series."""
    units: list[list[SeriesEntry]] = []
    open_sets: dict[tuple[tuple[str, str], ...], list[SeriesEntry]] = {}
    for entry in sorted(entries, key=lambda e: e.order):
        if not _is_gre(entry):
            units.append([entry])
            continue
        key = tuple(sorted((k, v) for i in entry.images for k, v in i.entities.items() if k != "run"))
        current = open_sets.get(key)
        suffixes = {i.suffix for i in entry.images}
        if current is not None:
            taken = {i.suffix for m in current for i in m.images}
            if not taken & suffixes and _echoes_fit(current, entry):
                current.append(entry)
                continue
        current = [entry]
        open_sets[key] = current
        units.append(current)
    return units


def _with_magnitude_parts(entries: Sequence[SeriesEntry]) -> list[SeriesEntry]:
    """A magnitude image whose phase came as another series (``part-phase``) becomes ``part-mag``."""

    def key(image: ImageRecord) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        rest = tuple(sorted((k, v) for k, v in image.entities.items() if k not in ("run", "part")))
        return image.datatype, image.suffix, rest

    phased = {key(i) for e in entries for i in e.images if i.entities.get("part") == "phase"}
    if not phased:
        return list(entries)
    return [
        replace(
            entry,
            images=tuple(
                replace(image, entities={**image.entities, "part": "mag"})
                if "part" not in image.entities and key(image) in phased
                else image
                for image in entry.images
            ),
        )
        for entry in entries
    ]


def layout(
    subject: str, session: str | None, entries: Sequence[SeriesEntry], foreign: Callable[[str], bool]
) -> dict[str, list[Slot]]:
    """Final names of every image of the session's series, by SeriesInstanceUID.

    ``foreign(path)`` says whether a path is taken by a file no series owns (it is never
    overwritten: the unit moves to the next free run).
    """
    units = _units(_split(_with_magnitude_parts(entries)))
    # Units that share any base name are repeats of one another (union-find over names).
    parent = list(range(len(units)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}
    for index, unit in enumerate(units):
        for entry in unit:
            for image in entry.images:
                base = _base(image)
                if base in owner:
                    parent[find(index)] = find(owner[base])
                else:
                    owner[base] = index
    groups: dict[int, list[int]] = {}
    for index in range(len(units)):
        groups.setdefault(find(index), []).append(index)

    found_slots: dict[str, dict[int, Slot]] = {}
    claimed: set[str] = set()  # never two units on one path, whatever acq/run gave

    def taken(path: str) -> bool:
        return path in claimed or foreign(path)

    for members in groups.values():
        members.sort(key=lambda i: units[i][0].order)
        for acq, repeats in _by_protocol([units[i] for i in members], set(owner)):
            for position, unit in enumerate(repeats, start=1):
                if len(repeats) == 1:
                    runs = {i.entities.get("run") for e in unit for i in e.images}
                    run = runs.pop() if len(runs) == 1 else None
                else:
                    run = str(position)
                placed = _place(subject, session=session, unit=unit, run=run, acq=acq, foreign=taken)
                claimed.update(p for found in placed.values() for slot in found.values() for p in slot.paths.values())
                for uid, by_position in placed.items():
                    found_slots.setdefault(uid, {}).update(by_position)
    return {uid: [by_position[i] for i in sorted(by_position)] for uid, by_position in found_slots.items()}


def _variant(unit: Sequence[SeriesEntry]) -> tuple[str, ...]:
    return next((image.variant for entry in unit for image in entry.images if image.variant), ())


def _by_protocol(
    units: list[list[SeriesEntry]], bases: set[tuple[str, str, tuple[tuple[str, str], ...]]]
) -> list[tuple[str | None, list[list[SeriesEntry]]]]:
    """Split clashing units (in acquisition order) into true repeats of one protocol, each group
    with the ``acq`` label that tells it from the others (None when all are one protocol, when
    no header field tells them apart, when a name already has ``acq``, or when the label would
    give a name another series of the session asks for: ``bases``)."""
    variants: dict[tuple[str, ...], list[list[SeriesEntry]]] = {}
    for unit in units:
        variants.setdefault(_variant(unit), []).append(unit)
    has_acq = any("acq" in image.entities for unit in units for entry in unit for image in entry.images)
    if len(variants) < 2 or has_acq or () in variants:
        return [(None, units)]
    for field_index in range(2):  # MRAcquisitionType, SequenceName
        labels: dict[tuple[str, ...], str] = {}
        for variant in variants:
            try:
                text = variant[field_index] if len(variant) > field_index else ""
                labels[variant] = sanitize_label(text).lower() if field_index == 0 else sanitize_label(text)
            except LabelError:
                break
        if len(labels) == len(variants) and len(set(labels.values())) == len(variants):
            wanted = {
                _base(replace(image, entities={**image.entities, "acq": labels[variant]}))
                for variant, found in variants.items()
                for unit in found
                for entry in unit
                for image in entry.images
            }
            if not wanted & bases:
                return [(labels[variant], found) for variant, found in variants.items()]
    return [(None, units)]


def _place(
    subject: str,
    *,
    session: str | None,
    unit: Sequence[SeriesEntry],
    run: str | None,
    acq: str | None,
    foreign: Callable[[str], bool],
) -> dict[str, dict[int, Slot]]:
    """Slots of one unit by series and image position; a name taken by a foreign file moves the
    unit to the next free run."""
    attempt = 0
    while True:
        candidate = run if attempt == 0 else str((int(run) if run else 1) + attempt)
        placed: dict[str, dict[int, Slot]] = {}
        for entry in unit:
            for position, image in zip(entry.positions(), entry.images, strict=True):
                target = image.target(candidate, acq)
                paths = {ext: file_path(subject, session, target, ext) for ext in image.extensions}
                placed.setdefault(entry.series_uid, {})[position] = Slot(target, paths)
        if not any(foreign(p) for images in placed.values() for slot in images.values() for p in slot.paths.values()):
            return placed
        attempt += 1


def _uri(path: str) -> str:
    return f"bids::{path}"


def _is_pepolar(entry: SeriesEntry) -> bool:
    return bool(entry.images) and all(i.datatype == "fmap" and i.suffix == "epi" for i in entry.images)


def _fieldmap_groups(entries: Sequence[SeriesEntry]) -> list[list[SeriesEntry]]:
    """Field maps of the session as estimation inputs, in acquisition order: each GRE set, and
    each run of consecutive ``epi`` series with opposite directions (a pepolar pair, e.g.
    ``dir-AP`` + ``dir-PA``, is one input to one estimation)."""
    groups: list[list[SeriesEntry]] = []
    for unit in _units(_split(entries)):
        if _is_gre(unit[0]):
            suffixes = {image.suffix for entry in unit for image in entry.images}
            if "phasediff" in suffixes or "fieldmap" in suffixes or {"phase1", "phase2"} <= suffixes:
                groups.append(unit)  # magnitudes alone estimate nothing
        elif _is_pepolar(unit[0]):
            entry = unit[0]
            key = {k: v for i in entry.images for k, v in i.entities.items() if k not in ("dir", "run")}
            directions = {i.entities.get("dir") for i in entry.images}
            last = groups[-1] if groups else None
            if last is not None and all(_is_pepolar(member) for member in last):
                last_key = {
                    k: v for m in last for i in m.images for k, v in i.entities.items() if k not in ("dir", "run")
                }
                last_directions = {i.entities.get("dir") for m in last for i in m.images}
                if last_key == key and not directions & last_directions:
                    last.append(entry)
                    continue
            groups.append([entry])
    return groups


def links(
    subject: str, session: str | None, entries: Sequence[SeriesEntry], slots: Mapping[str, Sequence[Slot]]
) -> dict[str, dict[str, Any]]:
    """Linking sidecar fields (:data:`LINK_KEYS`) for each image of the session, by its ``.json``
    path; images without links map to ``{}``."""
    units = _fieldmap_groups(entries)
    fields: dict[str, dict[str, Any]] = {
        slot.paths[".json"]: {} for uid in slots for slot in slots[uid] if ".json" in slot.paths
    }
    if not units:
        return fields
    _, prefix = session_prefix(subject, session)
    label = prefix.split("_", 1)[1] if "_" in prefix else ""
    names = [f"{label}_fmap{n}" if label else f"fmap{n}" for n in range(1, len(units) + 1)]
    starts = [unit[0].order for unit in units]
    served: dict[int, list[str]] = {n: [] for n in range(len(units))}

    def slots_of(entry: SeriesEntry) -> list[tuple[ImageRecord, Slot]]:
        found = slots.get(entry.series_uid, ())
        return [(image, found[i]) for i, image in zip(entry.positions(), entry.images, strict=True) if i < len(found)]

    for entry in sorted(_split(entries), key=lambda e: e.order):
        for image, slot in slots_of(entry):
            if (image.datatype, image.suffix) not in CORRECTED or ".json" not in slot.paths:
                continue
            before = [n for n, start in enumerate(starts) if start <= entry.order]
            choice = before[-1] if before else 0
            fields[slot.paths[".json"]]["B0FieldSource"] = names[choice]
            served[choice].append(_uri(slot.paths[".nii.gz"]))
    for number, unit in enumerate(units):
        if not served[number]:
            continue
        for entry in unit:
            for _image, slot in slots_of(entry):
                if ".json" in slot.paths:
                    fields[slot.paths[".json"]] = {
                        "B0FieldIdentifier": names[number],
                        "IntendedFor": sorted(served[number]),
                    }
    return fields
