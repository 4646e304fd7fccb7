"""Names a package imports on first use (PEP 562), so that importing the package stays light.

``bidsbridge --help`` and Orthanc's start-up import packages whose full contents need numpy,
pydicom, highdicom or yaml; a package lists those names with their modules and gets them when
first used. Standard library only: Orthanc's interpreter imports this before the venv is on its path.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each name to the module defining
    it; the first use imports that module and keeps the value in the package."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
