"""Label tables: JSON (short and rich), BIDS dseg.tsv, defaults, renumbering, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.sr.coding import Code

from converters.derived import Label, LabelTable, LabelTableError, format_dseg_tsv, parse_label_table, read_label_table
from converters.derived.labels import DEFAULT_CATEGORY, DEFAULT_TYPE


def test_short_json(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"1": "tumor", "4": "edema"}))
    table = read_label_table(path)
    assert [(label.value, label.name) for label in table.labels] == [(1, "tumor"), (4, "edema")]
    assert table[4].category == DEFAULT_CATEGORY and table[4].type == DEFAULT_TYPE


def test_rich_json_with_codes_and_colours() -> None:
    table = parse_label_table(
        {
            "2": {
                "name": "tumor",
                "category": {"CodeValue": "49755003", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Morph"},
                "type": "SCT:108369006:Neoplasm",
                "color": "#ff8000",
                "description": "enhancing",
            }
        }
    )
    label = table[2]
    assert label.category == Code("49755003", "SCT", "Morph")
    assert label.type == Code("108369006", "SCT", "Neoplasm")
    assert label.color == (255, 128, 0)
    assert label.description == "enhancing"


def test_list_json() -> None:
    table = parse_label_table([{"index": 3, "name": "a"}, {"index": 1, "name": "b", "color": [1, 2, 3]}])
    assert table.values == (1, 3)
    assert table[1].color == (1, 2, 3)


def test_dseg_tsv(tmp_path: Path) -> None:
    path = tmp_path / "sub-01_dseg.tsv"
    path.write_text(
        "index\tname\tabbreviation\tcolor\n"
        "0\tbackground\tbg\tn/a\n1\tgray matter\tGM\t#808080\n3\tCSF\tCSF\tn/a\n"
    )
    table = read_label_table(path)
    assert table.values == (1, 3)
    assert table[1].color == (128, 128, 128)
    assert read_label_table(_write(tmp_path / "again.tsv", format_dseg_tsv(table))) == table


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_renumbering_records_the_mapping() -> None:
    table = LabelTable.of([Label(7, "b"), Label(2, "a"), Label(30, "c")])
    renumbered, mapping = table.renumbered()
    assert mapping == {2: 1, 7: 2, 30: 3}
    assert [(label.value, label.name) for label in renumbered.labels] == [(1, "a"), (2, "b"), (3, "c")]


def test_restricted_to_values_in_the_image() -> None:
    table = LabelTable.of([Label(1, "a"), Label(2, "b")])
    assert table.restricted_to([0, 2], what="x").values == (2,)
    with pytest.raises(LabelTableError, match=r"label map x holds label value\(s\) 5 that the label table"):
        table.restricted_to([1, 5], what="label map x")


def test_defaults() -> None:
    assert [label.name for label in LabelTable.defaults([0, 3, 1, 3]).labels] == ["label 1", "label 3"]


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"0": "background"}, "outside 1..65535"),
        ({"x": "a"}, "must be an integer"),
        ({"1": ""}, "empty name"),
        ({"1": {"type": "SCT:1:x"}}, 'missing "name"'),
        ({"1": {"name": "a", "type": "nonsense"}}, "a code must be"),
        ({"1": {"name": "a", "color": "red"}}, "colour must be"),
        ([{"name": "a"}], 'with "index"'),
        ("text", "expected a JSON object or list"),
        ({}, "no labels"),
        ([{"index": 1, "name": "a"}, {"index": 1, "name": "b"}], "given twice"),
    ],
)
def test_malformed_tables(obj: object, message: str) -> None:
    with pytest.raises(LabelTableError, match=message):
        parse_label_table(obj)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LabelTableError, match="not valid JSON"):
        read_label_table(_write(tmp_path / "x.json", "{"))
    with pytest.raises(LabelTableError, match='needs columns "index" and "name"'):
        read_label_table(_write(tmp_path / "x.tsv", "id\tlabel\n1\ta\n"))
    with pytest.raises(LabelTableError, match="cannot read label table"):
        read_label_table(tmp_path / "missing.json")
