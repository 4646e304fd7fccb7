"""``rules check`` on the shipped rules and the examples; ``rules test`` on the XA30 corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orthanc_plugin.rules.cli import main

RULES = Path(__file__).resolve().parents[2] / "orthanc_plugin" / "rules"
EXAMPLES = sorted((RULES / "examples").glob("*.yaml"))
ORTHANC_CONFIG = """{
  // Orthanc configuration files may hold comments
  "DicomModalities": {"ARCHIVE": ["ARCHIVE", "pacs.example", 104]},
  /* the plugin's section */
  "BidsBridge": {"Destinations": {"xnat-main": {"Url": "https://xnat.example"}},
                 "Datasets": {"neuro": "/data/neuro", "cardiac": "/data/cardiac"}}
}
"""
#: Series number -> SeriesDescription in dcm_qa_xa30/In: 20 MR image series and one SR.
XA30 = {
    5: "anat-T1w_acq-tfl", 6: "anat-T1w_acq-tfl", 7: "func-bold_task-fa_run-1", 8: "gre_field_mapping",
    9: "gre_field_mapping", 10: "DWI_dir80_PA", 11: "DWI_dir80_PA_ADC", 12: "DWI_dir80_PA_TRACEW",
    13: "DWI_dir80_PA_FA", 14: "DWI_dir80_PA_ColFA", 16: "DWI_dir80_PA_TENSOR_B0", 17: "DWI_dir80_AP",
    19: "DWI_dir80_AP_ADC", 20: "DWI_dir80_AP_TRACEW", 21: "DWI_dir80_AP_FA", 22: "DWI_dir80_AP_ColFA",
    24: "DWI_dir80_AP_TENSOR_B0", 25: "asl_2d_tra", 27: "Perfusion_Weighted", 28: "relCBF", 99: "PhoenixZIPReport",
}  # fmt: skip


@pytest.fixture(scope="module")
def xa30(corpus: Path) -> Path:
    return corpus / "dcm_qa_xa30" / "In"


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict]:
    assert main(argv) == 0
    records = json.loads(capsys.readouterr().out)
    assert isinstance(records, list)
    return records


def test_default_rules_pass_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(RULES / "defaults.yaml")]) == 0
    assert "OK (3 rules)" in capsys.readouterr().out


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_check_against_a_deployment(example: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "orthanc.json"
    config.write_text(ORTHANC_CONFIG, encoding="utf-8")
    assert main(["rules", "check", str(example), "--orthanc-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("rules)"), out
    assert "note:" not in out  # every name verified against the configuration


def test_there_are_three_documented_examples() -> None:
    assert len(EXAMPLES) >= 3
    for example in EXAMPLES:
        assert example.read_text(encoding="utf-8").startswith("# Example: ")


def test_defaults_on_xa30_json(xa30: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = _json(capsys, ["rules", "test", "--dicom", str(xa30), "--json"])
    by_number = {int(r["series_number"]): r for r in records}
    assert {n: r["series_description"] for n, r in by_number.items()} == XA30
    assert len({r["series_uid"] for r in records}) == len(XA30)
    for number, record in by_number.items():
        assert record["rules"]["source"] == "<defaults>"
        assert record["rules"]["digest"].startswith("sha256:")
        assert record["problems"] == []
        if number == 99:
            assert record["outcome"] == "skip"
            assert record["matched"] == ["non-image-objects"]
            assert record["skip"]["rule"] == "non-image-objects"
            assert record["skip"]["reason"] == "not an image (Modality SR): raw BIDS holds images only"
            assert [a["action"] for a in record["actions"]] == ["skip"]
            assert [t["status"] for t in record["trace"]] == ["matched", "not-evaluated", "not-evaluated"]
        else:
            assert record["outcome"] == "convert", record
            assert record["matched"] == ["mr-pet-ct-images"]
            assert record["skip"] is None
            (convert,) = record["actions"]
            assert convert["action"] == "convert"
            assert convert["dataset"] == "default"
            assert convert["override"] is None
            first = record["trace"][0]
            assert first["status"] == "no-match"
            assert "Modality 'MR' is not one of" in first["reason"]
            assert record["trace"][2]["status"] == "not-evaluated"


def test_defaults_preview_bids_paths_from_headers(
    xa30: Path, cached_folders: None, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _json(capsys, ["rules", "test", "--dicom", str(xa30), "--json"])
    previews = {int(r["series_number"]): r["actions"][0].get("bids_preview") for r in records}
    prefix = "sub-12343hucheng/ses-20220711/"
    assert previews[5]["path"] == f"{prefix}anat/sub-12343hucheng_ses-20220711_acq-tfl_T1w.nii.gz"
    assert previews[7]["path"] == f"{prefix}func/sub-12343hucheng_ses-20220711_task-fa_run-1_bold.nii.gz"
    # A diffusion series needs dcm2niix's b-values: no path is promised before conversion.
    assert previews[10]["path"] is None
    assert "decided at conversion" in previews[10]["note"]
    assert previews[99] is None  # skipped: nothing to preview


def test_defaults_on_xa30_text(xa30: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in xa30.rglob("*"))
    assert main(["rules", "test", "--dicom", str(xa30)]) == 0
    out = capsys.readouterr().out
    blocks = [b for b in out.split("\n#") if b.strip()]
    assert len(blocks) == len(XA30)
    for number, description in XA30.items():
        (block,) = [b for b in blocks if b.lstrip("#").startswith(f"{number} {description} [")]
        head = block.splitlines()[0]
        if number == 99:
            assert head.endswith(": SKIP")
            assert "-> skip: not an image (Modality SR): raw BIDS holds images only (rule non-image-objects)" in block
        else:
            assert head.endswith(": CONVERT")
            assert "matched      mr-pet-ct-images (line 19)" in block
            assert "-> convert into dataset 'default'" in block
    assert out.rstrip().endswith("nothing written")
    assert "21 series (20 convert, 1 skip)" in out
    assert sorted(p.name for p in xa30.rglob("*")) == before


def test_example_routes_by_calling_aet(xa30: Path, cached_folders: None, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(RULES / "examples" / "route-by-calling-aet.yaml")
    neuro = _json(capsys, ["rules", "test", example, "--dicom", str(xa30), "--calling-aet", "Prisma_Neuro", "--json"])
    t1 = next(r for r in neuro if r["series_number"] == "5")
    assert t1["matched"] == ["archive-copy", "neuro-prisma"]
    kinds = [a["action"] for a in t1["actions"]]
    assert kinds == ["forward", "convert", "push_xnat"]
    push = t1["actions"][2]
    assert push["project"] == "NEURO"
    assert push["subject"].startswith("N") and len(push["subject"]) == 13
    assert push["uri"] == (f"xnat://xnat-main/data/projects/NEURO/subjects/{push['subject']}"
                           f"/experiments/{push['session']}")
    assert push["session"].endswith("_20220711")
    assert t1["actions"][1]["dataset"] == "neuro"
    assert t1["actions"][1]["session"] == "20220711"

    cardiac = _json(capsys, ["rules", "test", example, "--dicom", str(xa30), "--calling-aet", "SKYRA_CARDIO",
                             "--json"])
    t1 = next(r for r in cardiac if r["series_number"] == "5")
    assert t1["matched"] == ["archive-copy", "cardiac-skyra"]
    assert t1["actions"][1]["dataset"] == "cardiac"
    assert t1["actions"][2]["project"] == "CARDIO_20220711"
    assert t1["actions"][2]["subject"] == "12343_hucheng"  # '@' is not allowed in XNAT IDs

    other = _json(capsys, ["rules", "test", example, "--dicom", str(xa30), "--calling-aet", "CT_SCANNER", "--json"])
    for record in other:
        assert record["outcome"] == "skip"
        if record["series_number"] != "99":
            assert record["skip"]["reason"].startswith("calling AET CT_SCANNER has no route")
            # The archive copy survives a later skip; research actions do not.
            assert [a["action"] for a in record["actions"]] == ["forward", "skip"]


def test_example_reproin_only(xa30: Path, cached_folders: None, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(RULES / "examples" / "reproin-only.yaml")
    records = _json(capsys, ["rules", "test", example, "--dicom", str(xa30), "--json"])
    converted = sorted(int(r["series_number"]) for r in records if r["outcome"] == "convert")
    assert converted == [5, 6, 7]
    gre = next(r for r in records if r["series_number"] == "8")
    assert gre["skip"]["reason"].startswith("protocol gre_field_mapping is not ReproIn-named")


def test_example_protocol_overrides(xa30: Path, cached_folders: None, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(RULES / "examples" / "protocol-overrides.yaml")
    records = _json(capsys, ["rules", "test", example, "--dicom", str(xa30), "--json"])
    by_number = {int(r["series_number"]): r for r in records}
    dwi = by_number[17]
    convert, derive = dwi["actions"]
    assert convert["override"] == {"datatype": "dwi", "suffix": "dwi", "entities": {"acq": "dir80", "dir": "AP"},
                                   "metadata": {}, "companions": {}}
    assert derive == {"action": "derive", "rule": "dwi-ap", "names": ["adc"]}
    assert convert["bids_preview"]["path"].endswith("_acq-dir80_dir-AP_dwi.nii.gz")
    assert convert["subject"] is not None and len(convert["subject"]) == 12
    assert "12343" not in convert["bids_preview"]["path"]  # hashed label
    assert by_number[11]["skip"]["rule"] == "scanner-derived-maps"
    assert by_number[8]["skip"]["rule"] == "field-maps"
    assert by_number[25]["matched"] == ["everything-else"]


def test_orthanc_source_with_a_rest_server(orthanc_stub: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = str(RULES / "examples" / "route-by-calling-aet.yaml")
    records = _json(capsys, ["rules", "test", example, "--orthanc", orthanc_stub, "--series", "s-1", "--json"])
    (record,) = records
    assert record["orthanc_id"] == "s-1"
    assert record["series_description"] == "anat-T1w_acq-tfl"
    assert record["matched"] == ["archive-copy", "neuro-prisma"]


def test_orthanc_unreachable_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test", "--orthanc", "http://127.0.0.1:9", "--series", "x"]) == 2
    assert "cannot read the series" in capsys.readouterr().err


def test_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "test", "--dicom", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_rules_can_supply_what_headers_lack(xa30: Path, tmp_path: Path, cached_folders: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """ASL needs timing and an aslcontext.tsv that no header records: a rule can give them."""
    rules = tmp_path / "asl.yaml"
    rules.write_text(
        "version: 1\nrules:\n"
        "  - name: asl\n"
        "    match: {SeriesDescription: asl_2d_tra}\n"
        "    actions:\n"
        "      - convert:\n"
        "          datatype: perf\n"
        "          suffix: asl\n"
        "          metadata: {M0Type: Absent, PostLabelingDelay: 1.8, BackgroundSuppression: false,\n"
        "                     SliceTiming: [0, 0.5]}\n"
        "          companions:\n"
        "            _aslcontext.tsv: |\n"
        "              volume_type\n"
        "              control\n"
        "              label\n"
        "    stop: true\n"
        "  - {name: rest, match: {}, actions: [{skip: not ASL}]}\n",
        encoding="utf-8",
    )
    records = _json(capsys, ["rules", "test", str(rules), "--dicom", str(xa30), "--json"])
    (asl,) = [r for r in records if r["outcome"] == "convert"]
    override = asl["actions"][0]["override"]
    assert override["metadata"] == {"M0Type": "Absent", "PostLabelingDelay": 1.8, "BackgroundSuppression": False,
                                    "SliceTiming": [0, 0.5]}
    assert override["companions"] == {"_aslcontext.tsv": "volume_type\ncontrol\nlabel\n"}
    assert asl["actions"][0]["bids_preview"]["path"] == (
        "sub-12343hucheng/ses-20220711/perf/sub-12343hucheng_ses-20220711_asl.nii.gz"
    )
