"""The shape the plugin and the XNAT delivery keep so that a newcomer can change them: no
function longer than 60 lines (ruff checks branches and statements: PLR0912/PLR0915)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 60


def _functions(package: str) -> list[tuple[str, int]]:
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                found.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}", length))
    return found


@pytest.mark.parametrize("package", ["orthanc_plugin", "xnat_container"])
def test_no_function_is_longer_than_60_lines(package: str) -> None:
    functions = _functions(package)
    assert len(functions) > 50
    too_long = [f"{name} ({length} lines)" for name, length in functions if length > MAX_LINES]
    assert too_long == []
