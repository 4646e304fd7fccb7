"""QC pictures (``converters.qc``): one set per converted image of the XA30 session, real PNGs
whose orientation labels follow the affine, a valid BIDS derivatives dataset, pictures that are
replaced, renamed and removed with their images, and the derived ADC map and mask."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import aff2axcodes
from PIL import Image

from converters import convert_tree
from converters.bids.derivatives import DerivativeImage, publish_derivatives
from converters.bids.manifests import dataset_lock, manifest_path, read_manifest
from converters.derived.derive import derive_adc
from converters.qc import (
    ORIENTATION_KEY,
    QC_DERIVATIVES,
    VIEW_KEY,
    file_pictures,
    read_orientation,
    series_pictures,
    write_derived_qc,
    write_series_qc,
)
from converters.qc.dataset import follow_series, picture_path
from converters.qc.orientation import panels
from converters.qc.records import read_png_text
from converters.qc.render import draw_ortho
from tests.converters.helpers import Converted, series_dir, series_tree
from tests.validator import validate

OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


@pytest.fixture(scope="module")
def qc_dataset(xa30: Path, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    """The whole XA30 session converted with its QC pictures (read-only for the tests)."""
    root = tmp_path_factory.mktemp("xa30-qc") / "bids"
    return Converted(root, convert_tree(xa30 / "In", root, qc=True, jobs=2))


def _pngs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / "derivatives" / QC_DERIVATIVES).rglob("*.png")}


def _volumes(path: Path) -> int:
    shape = nib.load(str(path)).shape
    return int(np.prod(shape[3:])) if len(shape) > 3 else 1


def test_every_converted_image_has_its_pictures_and_nothing_else(qc_dataset: Converted) -> None:
    root = qc_dataset.root
    converted = [r for r in qc_dataset.results if r.state == "converted"]
    assert len(converted) >= 10
    expected: set[str] = set()
    for result in converted:
        images = [p for p in result.outputs if p.endswith(".nii.gz")]
        assert images, result
        for image in images:
            views = ["ortho"] + (["mean"] if _volumes(root / image) > 1 else []) + (
                ["mosaic"] if image.split("/")[-2] == "anat" else [])
            wanted = {picture_path(image, view) for view in views}
            assert wanted <= set(result.qc), (image, result.qc, result.notes)
            expected |= wanted
        assert not [note for note in result.notes if "QC" in note]
        assert set(result.qc) == set(series_pictures(root, result.acquisition or result.series_uid))
    assert _pngs(root) == expected  # one set, nothing left over
    kinds = {path.rsplit("_desc-", 1)[1].split("_")[0] for path in expected}
    assert kinds == {"ortho", "mean", "mosaic"}


def test_pictures_are_real_pngs_saying_what_they_show(qc_dataset: Converted) -> None:
    root = qc_dataset.root
    for relative in sorted(_pngs(root)):
        path = root / relative
        with Image.open(path) as picture:
            picture.load()  # decodes every pixel
            assert picture.format == "PNG" and picture.width > 100 and picture.height > 100
            pixels = np.asarray(picture.convert("L"))
        assert pixels.std() > 5  # not a blank picture
        text = read_png_text(path)
        assert text[VIEW_KEY] == relative.rsplit("_desc-", 1)[1].split("_")[0]
        assert ORIENTATION_KEY in text


def test_orientation_labels_match_each_images_affine(qc_dataset: Converted) -> None:
    root = qc_dataset.root
    for result in (r for r in qc_dataset.results if r.state == "converted"):
        for image in (p for p in result.outputs if p.endswith(".nii.gz")):
            codes = aff2axcodes(nib.load(str(root / image)).affine)
            picture = root / picture_path(image, "ortho")
            told = read_orientation(picture)
            assert told["axcodes"] == "".join(codes)
            planes = told["planes"]
            assert set(planes) == {"sagittal", "coronal", "axial"}
            # Each panel: its two axes are the other two anatomical axes, edges opposite.
            for plane, across, up in (("sagittal", "AP", "SI"), ("coronal", "LR", "SI"), ("axial", "LR", "AP")):
                edges = planes[plane]
                assert {edges["left"], edges["right"]} == set(across)
                assert {edges["top"], edges["bottom"]} == set(up)
                assert edges["right"] in codes and edges["top"] in codes  # index grows towards them


def test_a_flipped_copy_gets_the_labels_of_that_axis_swapped(qc_dataset: Converted, tmp_path: Path) -> None:
    result = next(r for r in qc_dataset.results if r.series_number == 5)
    source = qc_dataset.root / next(p for p in result.outputs if p.endswith(".nii.gz"))
    image = nib.load(str(source))
    codes = aff2axcodes(image.affine)
    lr_axis = next(i for i, code in enumerate(codes) if code in "LR")
    flip = np.eye(4)
    flip[lr_axis, lr_axis] = -1
    flip[lr_axis, 3] = image.shape[lr_axis] - 1
    flipped = nib.Nifti1Image(np.flip(np.asanyarray(image.dataobj), axis=lr_axis), image.affine @ flip,
                              image.header)
    copy = tmp_path / "flipped.nii.gz"
    nib.save(flipped, str(copy))
    assert aff2axcodes(flipped.affine)[lr_axis] == OPPOSITE[codes[lr_axis]]  # same place, other way round

    original = draw_ortho(source, tmp_path / "original.png")
    mirrored = draw_ortho(copy, tmp_path / "mirrored.png")
    before = {e.plane: e for e in original.labels}
    after = {e.plane: e for e in mirrored.labels}
    for plane in ("coronal", "axial"):  # left-right runs across them: swapped
        assert (after[plane].left, after[plane].right) == (before[plane].right, before[plane].left)
        assert (after[plane].top, after[plane].bottom) == (before[plane].top, before[plane].bottom)
    assert after["sagittal"] == before["sagittal"]  # it cuts left-right: unchanged
    assert read_orientation(tmp_path / "mirrored.png")["planes"]["axial"] == after["axial"].to_json()
    # What is drawn is mirrored too: the axial panel of one is the other's, flipped left-right.
    with Image.open(tmp_path / "original.png") as one, Image.open(tmp_path / "mirrored.png") as two:
        assert one.size == two.size and np.asarray(one).tobytes() != np.asarray(two).tobytes()


def test_labels_of_known_affines() -> None:
    codes, found = panels(np.diag([1.0, 1.0, 1.0, 1.0]))
    by_plane = {panel.plane: panel.labels for panel in found}
    assert codes == ("R", "A", "S")
    assert (by_plane["axial"].left, by_plane["axial"].right, by_plane["axial"].top) == ("L", "R", "A")
    assert (by_plane["sagittal"].left, by_plane["sagittal"].right, by_plane["sagittal"].top) == ("P", "A", "S")
    codes, found = panels(np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS, as DICOM stores it
    by_plane = {panel.plane: panel.labels for panel in found}
    assert codes == ("L", "P", "S")
    assert (by_plane["axial"].left, by_plane["axial"].right, by_plane["axial"].top) == ("R", "L", "P")


def test_the_qc_dataset_is_a_valid_bids_derivatives_dataset(qc_dataset: Converted) -> None:
    qc_root = qc_dataset.root / "derivatives" / QC_DERIVATIVES
    description = json.loads((qc_root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bidsbridge"
    assert validate(qc_root) == []
    assert validate(qc_dataset.root) == []  # the raw dataset stays valid beside it


def test_a_reconversion_leaves_one_set_and_a_conversion_without_qc_none(xa30: Path, tmp_path: Path) -> None:
    tree = series_tree(xa30, tmp_path, [5, 7])
    root = tmp_path / "bids"
    first = convert_tree(tree, root, qc=True)
    pictures = _pngs(root)
    assert len(pictures) == 4 and pictures == {p for r in first for p in r.qc}  # T1w ortho+mosaic, bold ortho+mean
    stamps = {p: (root / p).stat().st_mtime_ns for p in pictures}
    again = convert_tree(tree, root, qc=True)
    assert _pngs(root) == pictures and {p for r in again for p in r.qc} == pictures
    assert all((root / p).stat().st_mtime_ns != stamps[p] for p in pictures)  # drawn again, not kept
    assert len(list((root / ".bidsbridge" / "qc").glob("*.json"))) == 2
    convert_tree(tree, root, qc=False)  # the images are new: pictures of the old ones must not stay
    assert _pngs(root) == set()
    assert not list((root / ".bidsbridge" / "qc").glob("*.json"))


def test_pictures_follow_a_renamed_image(xa30: Path, tmp_path: Path) -> None:
    tree = series_tree(xa30, tmp_path, [5])
    root = tmp_path / "bids"
    (result,) = convert_tree(tree, root, qc=True)
    image = next(p for p in result.outputs if p.endswith(".nii.gz"))
    renamed = image.replace("_acq-tfl_", "_acq-tfl_run-2_")
    (root / renamed).parent.mkdir(parents=True, exist_ok=True)
    (root / image).rename(root / renamed)  # as publishing renames a repeat's files
    with dataset_lock(root):
        follow_series(root, {result.series_uid: (renamed,)})
    assert _pngs(root) == {picture_path(renamed, "ortho"), picture_path(renamed, "mosaic")}
    assert series_pictures(root, result.series_uid) == sorted(_pngs(root))
    with dataset_lock(root):
        follow_series(root, {result.series_uid: None})  # the series owns nothing any more
    assert _pngs(root) == set()


def test_derived_adc_map_and_its_mask_outline(xa30: Path, tmp_path: Path) -> None:
    tree = series_tree(xa30, tmp_path, [10])
    root = tmp_path / "bids"
    (result,) = convert_tree(tree, root, qc=True)
    assert result.state == "converted" and result.qc
    written = derive_adc(series_dir(xa30, 10), tmp_path / "adc")
    by_suffix = {path.name.rsplit("_", 1)[-1]: path for path in written}
    outputs = publish_derivatives(root, result.series_uid, "adc", [
        DerivativeImage(by_suffix["adc.nii.gz"], "ADC", sidecar={"Units": "um2/s"}),
        DerivativeImage(by_suffix["mask.nii.gz"], "dseg", desc="adcmask", table=by_suffix["mask.tsv"]),
    ])
    made = write_derived_qc(root, outputs)
    assert made.problems == ()
    adc = next(p for p in outputs if p.endswith("_ADC.nii.gz"))
    mask = next(p for p in outputs if p.endswith("_dseg.nii.gz"))
    assert set(made.files) == {picture_path(adc, "map"), picture_path(mask, "outline")}
    assert picture_path(mask, "outline").endswith("_desc-adcmaskOutline_dseg.png")
    assert file_pictures(root, outputs) == sorted(made.files)
    for picture in made.files:
        with Image.open(root / picture) as png:
            png.load()
        told = read_orientation(root / picture)
        assert told["axcodes"] == "".join(aff2axcodes(nib.load(str(root / adc)).affine))
    assert read_png_text(root / picture_path(adc, "map"))[VIEW_KEY] == "map"
    assert validate(root / "derivatives" / QC_DERIVATIVES) == []
    # Deriving again writes new files: their old pictures go, the new ones come with the QC step.
    publish_derivatives(root, result.series_uid, "adc", [
        DerivativeImage(by_suffix["adc.nii.gz"], "ADC", sidecar={"Units": "um2/s"}),
    ])
    assert file_pictures(root, outputs) == []
    assert _pngs(root) == set(result.qc)


def test_a_series_without_a_manifest_gets_no_pictures(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    root.mkdir()
    made = write_series_qc(root, "1.2.3")
    assert made.files == () and made.problems == ()
    assert read_manifest(manifest_path(root, "1.2.3")) is None


def test_copying_the_dataset_keeps_the_pictures_listed(qc_dataset: Converted, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(qc_dataset.root, copy)
    result = next(r for r in qc_dataset.results if r.state == "converted")
    assert series_pictures(copy, result.acquisition or result.series_uid) == sorted(result.qc)


def test_a_damaged_qc_manifest_never_fails_a_conversion(xa30: Path, tmp_path: Path) -> None:
    tree = series_tree(xa30, tmp_path, [5])
    root = tmp_path / "bids"
    convert_tree(tree, root, qc=True)
    (manifest,) = (root / ".bidsbridge" / "qc").glob("*.json")
    manifest.write_text("{not json")
    (again,) = convert_tree(tree, root, qc=True)
    assert again.state == "converted" and again.qc == ()
    assert any(note.startswith("no QC pictures: corrupt QC manifest") for note in again.notes), again.notes
