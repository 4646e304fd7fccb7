"""The one JSON form of the project's typed records (dataclasses): what ``to_dict``/``to_json``
methods return, job records store and reports print.

:func:`to_json` is :func:`dataclasses.asdict` with tuples as lists (so that the form equals what
:func:`json.loads` gives back) and paths as strings. Records whose form differs from their
fields (timestamps as ISO text, secrets hidden, computed keys) say so where they build it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["to_json"]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


def to_json(record: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON object, field by field, in field order."""
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"{type(record).__name__} is not a dataclass instance")
    plain = _plain(dataclasses.asdict(record))
    assert isinstance(plain, dict)
    return plain
