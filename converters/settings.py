"""Typed readers of one value of a JSON configuration section (Orthanc's ``BidsBridge`` section,
an XNAT destination): each returns the value or raises the caller's error class with a message
naming the key, e.g. ``BidsBridge.Workers must be an integer >= 1, not 0``.

Used by :mod:`orthanc_plugin.config` and :mod:`xnat_container.destinations`, so that one kind of
value is checked, and refused, one way. Standard library only (read inside Orthanc).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["read_bool", "read_int", "read_number"]


def read_bool(section: Mapping[str, Any], name: str, default: bool, *, key: str, error: type[Exception]) -> bool:
    """``section[name]`` (default ``default``) as a JSON boolean; ``key`` names it in messages."""
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise error(f"{key} must be true or false, not {value!r}")
    return value


def read_int(section: Mapping[str, Any], name: str, default: int, minimum: int, *, key: str,
             error: type[Exception]) -> int:
    """``section[name]`` as an integer >= ``minimum`` (booleans are not integers here)."""
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise error(f"{key} must be an integer >= {minimum}, not {value!r}")
    return value


def read_number(section: Mapping[str, Any], name: str, default: float, minimum: float, *, key: str,
                error: type[Exception]) -> float:
    """``section[name]`` as a finite number >= ``minimum``."""
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise error(f"{key} must be a number >= {minimum:g}, not {value!r}")
    return float(value)
