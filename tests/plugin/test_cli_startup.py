"""``bidsbridge --help`` and every ``bidsbridge ... --help`` load no heavy third-party package.

Building the parser must need the standard library only; each handler imports what its command
needs when it runs (issue 12, benchmark B9: ``--help`` under 0.3 s). Each case runs in a fresh
interpreter, so nothing the test process already imported can hide an import. No timings here:
the module list is what keeps startup fast, on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import orthanc_plugin
from orthanc_plugin.cli import build_parser

#: Third-party packages that take tens to hundreds of milliseconds to import (numpy, pydicom and
#: nibabel most of all); the converters, the derivations, the rules engine and the XNAT delivery
#: pull them in, the parser must not.
HEAVY = ("PIL", "highdicom", "matplotlib", "nibabel", "numpy", "pydicom", "pynetdicom", "requests", "urllib3", "xnat",
         "yaml")

#: The checkout the test imports; the child interpreter must import the same one.
ROOT = Path(orthanc_plugin.__file__).resolve().parents[1]

MARKER = "LOADED-MODULES:"

PROBE = f"""
import sys
{{setup}}
from orthanc_plugin.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
else:
    code = None
import orthanc_plugin
heavy = {HEAVY!r}
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set(heavy))
print({MARKER!r} + json.dumps({{"code": code, "modules": loaded, "package": orthanc_plugin.__file__}}))
"""


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``parser`` (empty when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """``()``, then every subcommand path (``("derive",)``, ``("derive", "adc")``, ...)."""
    paths = [prefix]
    for name, sub in _choices(parser).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


def _parser_at(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = _choices(parser)[name]
    return parser


COMMANDS = _command_paths(build_parser())


def _probe(argv: list[str], setup: str = "") -> tuple[str, dict[str, object]]:
    """Run ``bidsbridge ARGV`` in a fresh interpreter; return its output and what it loaded."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    script = "import json\n" + PROBE.replace("{setup}", setup)
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    output, _, report = done.stdout.rpartition(MARKER)
    assert report, f"the probe printed no report:\n{done.stdout}\n{done.stderr}"
    result: dict[str, object] = json.loads(report)
    assert Path(str(result["package"])).resolve().parent == ROOT / "orthanc_plugin"
    return output, result


def test_every_command_is_covered() -> None:
    top = {path[0] for path in COMMANDS if path}
    assert {"convert", "derive", "rules", "xnat", "serve", "demo"} <= top
    assert len(COMMANDS) > len(top) + 1  # the nested ones too (derive adc, rules check, xnat push, ...)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda path: " ".join(path) or "bidsbridge")
def test_help_loads_no_heavy_package(path: tuple[str, ...]) -> None:
    output, result = _probe([*path, "--help"])
    assert result["code"] == 0
    assert result["modules"] == [], f"`bidsbridge {' '.join(path)} --help` imported {result['modules']}"
    assert output.startswith("usage: bidsbridge"), output
    for name in _choices(_parser_at(path)):
        assert name in output, f"`bidsbridge {' '.join(path)} --help` does not list {name!r}"


def test_the_probe_sees_heavy_imports() -> None:
    """The check above can fail: a handler's imports do show up in the list."""
    _, result = _probe(["--help"], setup="import converters.pipeline")
    modules = result["modules"]
    assert isinstance(modules, list)
    assert {"numpy", "pydicom"} <= set(modules)
