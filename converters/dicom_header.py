"""Read a DICOM file's header fast: pydicom for the groups bidsbridge reads, a byte walker for the rest.

Enhanced (multi-frame) files carry their per-frame functional groups (5200,9230) and vendors'
private sequences in the header; pydicom builds a Python object for every element of them, which
costs tens of milliseconds per file, while discovery needs only attributes of groups up to
(0028,xxxx). :func:`read_header` hands pydicom the elements of those groups, except for
sequences it was not asked for, and walks past everything else (sequences of any nesting,
defined or undefined length) reading only element headers, until the pixel data element. The
file is left positioned at that element (or at its end when it has none), as pydicom's
``stop_before_pixels`` leaves it. A file that ends inside the groups read raises
:class:`HeaderTruncated` (as pydicom raises); one that ends past them, inside an element walked
past, has a header that ends there (the file is left at its end: no pixel data), as pydicom
reads it.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import BinaryIO

from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag

from converters.errors import DicomInputError

__all__ = ["LONG_VRS", "PIXEL_TAGS", "UNDEFINED_LENGTH", "HeaderTruncated", "read_header"]

#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Explicit-VR value representations with a 4-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: The last group :func:`read_header` reads values of (Image Pixel module: 0028).
LAST_GROUP = 0x0028


class HeaderTruncated(DicomInputError):
    """The file ends inside the groups :func:`read_header` reads (a damaged file)."""


def read_header(fp: BinaryIO, size: int, *, sequences: Collection[int] = (), private: bool = False,
                last_group: int = LAST_GROUP, walk_sequences: bool = False) -> FileDataset:
    """The file's meta and data elements of groups up to ``last_group``; of those, sequences
    only when their tag is in ``sequences`` (undefined-length ones: defined-length ones too when
    ``walk_sequences``; pydicom reads those in full otherwise), private elements (odd groups)
    only when ``private`` (GE and Siemens headers are more than half private elements).
    ``size``: the file's size in bytes."""

    def skipped(tag: BaseTag, vr: str | None, length: int) -> bool:
        group = tag >> 16
        return group > last_group or (not private and group & 1 == 1) or (
            (length == UNDEFINED_LENGTH or (walk_sequences and vr == "SQ")) and int(tag) not in sequences
        )

    def private_next() -> bool:
        position = fp.tell()
        head = fp.read(4)
        fp.seek(position)
        if len(head) < 4:
            return False
        group = int(struct.unpack(f"{order}H", head[:2])[0])
        return group & 1 == 1 and group <= last_group

    ds = read_partial(fp, stop_when=skipped)
    implicit, little = ds.original_encoding
    if implicit is None or little is None:  # deflated or unknown: pydicom read the whole body
        return ds
    order = "<" if little else ">"
    while True:
        position = fp.tell()
        head = fp.read(4)
        fp.seek(position)
        if len(head) < 4:
            return ds
        group, element = struct.unpack(f"{order}HH", head)
        if (group << 16 | element) in PIXEL_TAGS:
            return ds
        if group > last_group:
            if _pixel_data_at_end(fp, ds, implicit, order, size):
                return ds
            try:
                _elements(fp, implicit, order, size, top=True)
            except HeaderTruncated:
                fp.seek(size)
            return ds
        _element(fp, implicit, order, size, top=True)  # the element pydicom stopped at ...
        while not private and private_next():  # ... and the private ones after it
            _element(fp, implicit, order, size, top=True)
        rest: Dataset = read_dataset(fp, implicit, little, stop_when=skipped, parent_encoding=ds._character_set)
        # Raw elements as pydicom keeps them, decoded on access (Dataset.update would decode all now).
        ds._dict.update(rest._dict)


def _pixel_data_at_end(fp: BinaryIO, ds: Dataset, implicit: bool, order: str, size: int) -> bool:
    """Seek to the pixel data element when it ends the file with the length the image attributes
    give (native pixel data: the common case), without walking what lies between: per-frame
    functional groups of enhanced files hold tens of thousands of elements. False (the file
    position unchanged) when it does not: the caller walks."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames * int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return False
    if bits % 8:
        return False
    length = bits // 8 + (bits // 8) % 2  # values have even lengths
    header = 8 if implicit else 12
    start = size - length - header
    if length <= 0 or start < fp.tell():
        return False
    position = fp.tell()
    fp.seek(start)
    head = fp.read(header)
    if len(head) == header:
        group, element = struct.unpack_from(f"{order}HH", head)
        found_length = struct.unpack_from(f"{order}L", head, header - 4)[0]
        vr_ok = implicit or head[4:6] in (b"OB", b"OW")
        if (group << 16 | element) == 0x7FE00010 and found_length == length and vr_ok:
            fp.seek(start)
            return True
    fp.seek(position)
    return False


def _element(fp: BinaryIO, implicit: bool, order: str, size: int, *, top: bool) -> int | None:
    """Skip one data element; return its tag, or None at the end of the file, at the end of an
    undefined-length item (its delimiter consumed) or, ``top``, at the pixel data element (an
    icon's pixel data inside a sequence item is skipped like any element)."""
    head = fp.read(8)
    if len(head) < 8:
        fp.seek(-len(head), 1)
        return None
    group, element = struct.unpack_from(f"{order}HH", head)
    tag = int(group) << 16 | int(element)
    if tag == _ITEM_END:
        return None
    if top and tag in PIXEL_TAGS:
        fp.seek(-8, 1)
        return None
    vr = None
    if implicit or group == 0xFFFE:
        (length,) = struct.unpack_from(f"{order}L", head, 4)
    else:
        vr = head[4:6]
        if vr in LONG_VRS:
            more = fp.read(4)
            if len(more) < 4:
                raise HeaderTruncated(f"the file ends inside the header of element ({group:04X},{element:04X})")
            (length,) = struct.unpack(f"{order}L", more)
        else:
            (length,) = struct.unpack_from(f"{order}H", head, 6)
    if length == UNDEFINED_LENGTH:
        _sequence(fp, implicit or vr == b"UN", order, size)  # UN of undefined length: implicit VR inside
    elif fp.tell() + length > size:
        raise HeaderTruncated(f"element ({group:04X},{element:04X}) of {length} bytes runs past the end of the file")
    else:
        fp.seek(length, 1)
    return tag


def _elements(fp: BinaryIO, implicit: bool, order: str, size: int, *, top: bool) -> None:
    """Skip elements up to the pixel data / end of file (``top``) or to the end of an item."""
    while True:
        before = fp.tell()
        if _element(fp, implicit, order, size, top=top) is None:
            if not top and fp.tell() == before:
                raise HeaderTruncated("the file ends inside a sequence item")
            return


def _sequence(fp: BinaryIO, implicit: bool, order: str, size: int) -> None:
    """Skip the items of an undefined-length sequence, its delimiter included."""
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise HeaderTruncated("the file ends inside a sequence")
        group, element, length = struct.unpack(f"{order}HHL", head)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM:
            raise HeaderTruncated(f"a sequence holds ({group:04X},{element:04X}) where an item belongs")
        if length == UNDEFINED_LENGTH:
            _elements(fp, implicit, order, size, top=False)
        elif fp.tell() + length > size:
            raise HeaderTruncated("a sequence item runs past the end of the file")
        else:
            fp.seek(length, 1)
