"""Run bids-validator-deno (the BIDS validator of record) and return its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


def validate(dataset: Path) -> list[dict[str, Any]]:
    """Every issue of severity ``error`` that the validator reports on ``dataset``."""
    completed = subprocess.run(
        [str(VALIDATOR), "--format", "json", str(dataset)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"bids-validator-deno gave no JSON (exit {completed.returncode}): {completed.stderr[-2000:]}"
        ) from exc
    issues = report["issues"]["issues"]
    return [issue for issue in issues if issue.get("severity") == "error"]
