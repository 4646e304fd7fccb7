"""Session-wide naming and linking (converters.bids.session): a pure function of the session's
series, whatever order they are listed (arrive) in."""

from __future__ import annotations

import itertools

from converters.bids.session import ImageRecord, SeriesEntry, layout, links

EXT = (".nii.gz", ".json")


def _entry(uid: str, time: str, *images: ImageRecord, number: int = 1) -> SeriesEntry:
    return SeriesEntry(uid, number, f"2024-01-02T{time}", images)


def _image(datatype: str, suffix: str, echoes: tuple[float, ...] = (), **entities: str) -> ImageRecord:
    return ImageRecord(datatype, suffix, entities, EXT, echoes)


SESSION = [
    _entry("pa", "09:00:00", _image("fmap", "epi", dir="PA")),
    _entry("ap", "09:00:30", _image("fmap", "epi", dir="AP")),
    _entry("bold1", "09:01:00", _image("func", "bold", task="rest")),
    _entry("mag", "09:10:00", _image("fmap", "magnitude1", (0.005,)), _image("fmap", "magnitude2", (0.0075,))),
    _entry("phase", "09:10:01", _image("fmap", "phasediff", (0.005, 0.0075))),
    _entry("bold2", "09:11:00", _image("func", "bold", task="rest")),
    _entry("dwi", "09:20:00", _image("dwi", "dwi", dir="AP")),
    _entry("t1", "09:30:00", _image("anat", "T1w")),
]


def _names(entries: list[SeriesEntry]) -> dict[str, list[str]]:
    slots = layout("01", "A", entries, lambda _path: False)
    return {uid: [slot.paths[".nii.gz"].rsplit("/", 1)[1] for slot in found] for uid, found in slots.items()}


def test_runs_only_for_true_repeats_in_acquisition_order() -> None:
    names = _names(SESSION)
    assert names["bold1"] == ["sub-01_ses-A_task-rest_run-1_bold.nii.gz"]
    assert names["bold2"] == ["sub-01_ses-A_task-rest_run-2_bold.nii.gz"]
    assert names["mag"] == ["sub-01_ses-A_magnitude1.nii.gz", "sub-01_ses-A_magnitude2.nii.gz"]
    assert names["phase"] == ["sub-01_ses-A_phasediff.nii.gz"]  # one set with the magnitudes: no run
    assert names["t1"] == ["sub-01_ses-A_T1w.nii.gz"]
    for order in itertools.islice(itertools.permutations(SESSION), 0, None, 997):
        assert _names(list(order)) == names


def test_a_second_field_map_set_is_a_repeat() -> None:
    later = [
        _entry("mag2", "09:40:00", _image("fmap", "magnitude1", (0.005,)), _image("fmap", "magnitude2", (0.0075,))),
        _entry("phase2", "09:40:01", _image("fmap", "phasediff", (0.005, 0.0075))),
    ]
    names = _names(SESSION + later)
    assert names["phase"] == ["sub-01_ses-A_run-1_phasediff.nii.gz"]
    assert names["mag2"] == ["sub-01_ses-A_run-2_magnitude1.nii.gz", "sub-01_ses-A_run-2_magnitude2.nii.gz"]
    assert names["phase2"] == ["sub-01_ses-A_run-2_phasediff.nii.gz"]


def test_each_scan_is_linked_to_the_field_map_acquired_before_it() -> None:
    slots = layout("01", "A", SESSION, lambda _path: False)
    fields = links("01", "A", SESSION, slots)

    def of(uid: str, index: int = 0) -> dict[str, object]:
        return fields[slots[uid][index].paths[".json"]]

    # The pepolar pair is one field map; the GRE set another.
    assert of("pa")["B0FieldIdentifier"] == of("ap")["B0FieldIdentifier"] == "ses-A_fmap1"
    assert of("mag")["B0FieldIdentifier"] == of("mag", 1)["B0FieldIdentifier"] == of("phase")["B0FieldIdentifier"]
    assert of("phase")["B0FieldIdentifier"] == "ses-A_fmap2"
    assert of("bold1") == {"B0FieldSource": "ses-A_fmap1"}
    assert of("bold2") == {"B0FieldSource": "ses-A_fmap2"} and of("dwi") == {"B0FieldSource": "ses-A_fmap2"}
    assert of("t1") == {}
    assert of("ap")["IntendedFor"] == ["bids::sub-01/ses-A/func/sub-01_ses-A_task-rest_run-1_bold.nii.gz"]
    assert of("phase")["IntendedFor"] == [
        "bids::sub-01/ses-A/dwi/sub-01_ses-A_dir-AP_dwi.nii.gz",
        "bids::sub-01/ses-A/func/sub-01_ses-A_task-rest_run-2_bold.nii.gz",
    ]


def test_a_taken_path_moves_the_unit_to_a_free_run() -> None:
    entries = [_entry("t1", "09:30:00", _image("anat", "T1w"))]
    taken = "sub-01/ses-A/anat/sub-01_ses-A_T1w.nii.gz"
    slots = layout("01", "A", entries, lambda path: path == taken)
    assert slots["t1"][0].paths[".nii.gz"] == "sub-01/ses-A/anat/sub-01_ses-A_run-2_T1w.nii.gz"


def test_a_magnitude_with_a_separate_phase_series_becomes_part_mag() -> None:
    entries = [
        _entry("mag", "10:00:00", _image("anat", "T2starw")),
        _entry("phase", "10:00:01", _image("anat", "T2starw", part="phase")),
    ]
    assert _names(entries) == {
        "mag": ["sub-01_ses-A_part-mag_T2starw.nii.gz"],
        "phase": ["sub-01_ses-A_part-phase_T2starw.nii.gz"],
    }


def test_clashing_series_of_different_protocols_get_acq_not_run() -> None:
    def t1(uid: str, time: str, variant: tuple[str, ...]) -> SeriesEntry:
        return _entry(uid, time, ImageRecord("anat", "T1w", {}, EXT, (), variant))

    entries = [
        t1("mprage", "10:00:00", ("3D", "*tfl3d1_16ns")),
        t1("space", "10:10:00", ("3D", "*spc_314ns")),
        t1("mprage2", "10:20:00", ("3D", "*tfl3d1_16ns")),
    ]
    assert _names(entries) == {
        "mprage": ["sub-01_ses-A_acq-tfl3d116ns_run-1_T1w.nii.gz"],
        "mprage2": ["sub-01_ses-A_acq-tfl3d116ns_run-2_T1w.nii.gz"],
        "space": ["sub-01_ses-A_acq-spc314ns_T1w.nii.gz"],
    }


def test_an_acq_label_never_lands_on_another_series_name() -> None:
    entries = [
        _entry("a", "10:00:00", ImageRecord("anat", "T1w", {}, EXT, (), ("2D", "x"))),
        _entry("b", "10:10:00", ImageRecord("anat", "T1w", {}, EXT, (), ("3D", "y"))),
        _entry("c", "10:20:00", ImageRecord("anat", "T1w", {"acq": "2d"}, EXT, (), ("2D", "z"))),
    ]
    # acq-2d would be c's name: the sequence names tell a and b apart instead.
    assert _names(entries) == {
        "a": ["sub-01_ses-A_acq-x_T1w.nii.gz"],
        "b": ["sub-01_ses-A_acq-y_T1w.nii.gz"],
        "c": ["sub-01_ses-A_acq-2d_T1w.nii.gz"],
    }


def test_magnitudes_without_a_phase_are_not_a_field_map() -> None:
    entries = [SESSION[3], SESSION[5]]  # magnitudes, then a BOLD run
    slots = layout("01", "A", entries, lambda _path: False)
    assert all(fields == {} for fields in links("01", "A", entries, slots).values())
