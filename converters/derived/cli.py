"""The ``derive`` subcommand: derived DICOM objects offline.

``bidsbridge derive adc DWI_DICOM_DIR OUT_DIR`` — ADC Parametric Map, signal-mask SEG,
measurement SR (``.dcm``) and the NIfTI maps.
``bidsbridge derive seg LABELMAP.nii.gz --source SERIES_DICOM_DIR [--labels TABLE] OUT_DIR`` — SEG.
``bidsbridge derive sr --seg SEG.dcm [--pm PM.dcm] --source SERIES_DICOM_DIR OUT_DIR`` — SR.

Nothing half-written is left in ``OUT_DIR`` on error; the message names what is wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from converters.errors import BidsBridgeError

__all__ = ["register"]

# The handlers import the derivations (numpy, pydicom, highdicom, nibabel) when they run, so that
# building the parser (`bidsbridge --help`) needs the standard library only.


def _adc(args: argparse.Namespace) -> int:
    from converters.derived.derive import derive_adc  # noqa: PLC0415

    return _report(lambda: derive_adc(args.dwi_dir, args.out_dir, segmentation_type=args.segmentation_type))


def _seg(args: argparse.Namespace) -> int:
    from converters.derived.derive import derive_seg  # noqa: PLC0415

    return _report(lambda: [derive_seg(args.labelmap, args.source, args.out_dir, args.labels,
                                       segmentation_type=args.segmentation_type, algorithm=args.algorithm)])


def _sr(args: argparse.Namespace) -> int:
    from converters.derived.derive import derive_sr  # noqa: PLC0415

    return _report(lambda: [derive_sr(args.seg, args.pm, args.source, args.out_dir)])


def _report(run: Any) -> int:
    try:
        written = run()
    except (BidsBridgeError, OSError) as exc:
        print(f"bidsbridge derive: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``derive adc|seg|sr``; handlers are stored as ``handler``."""
    derive = subparsers.add_parser("derive", help="derived DICOM objects (ADC map, SEG, SR) offline",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = derive.add_subparsers(dest="derivation", required=True, metavar="KIND")

    adc = kinds.add_parser("adc", help="ADC Parametric Map + mask SEG + SR from a DWI series")
    adc.add_argument("dwi_dir", type=Path, metavar="DWI_DICOM_DIR")
    adc.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    adc.add_argument("--segmentation-type", choices=("BINARY", "LABELMAP"), default="BINARY")
    adc.set_defaults(handler=_adc)

    seg = kinds.add_parser("seg", help="Segmentation from a NIfTI label map aligned to a series")
    seg.add_argument("labelmap", type=Path, metavar="LABELMAP.nii.gz")
    seg.add_argument("--source", type=Path, required=True, metavar="SERIES_DICOM_DIR")
    seg.add_argument("--labels", type=Path, metavar="TABLE.json|.tsv")
    seg.add_argument("--segmentation-type", choices=("BINARY", "LABELMAP"), default="BINARY")
    seg.add_argument("--algorithm", help="name of the algorithm that made the labels (default: manual)")
    seg.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    seg.set_defaults(handler=_seg)

    sr = kinds.add_parser("sr", help="TID 1500 measurement SR of a SEG (and mean ADC from a PM)")
    sr.add_argument("--seg", type=Path, required=True, metavar="SEG.dcm")
    sr.add_argument("--pm", type=Path, metavar="PM.dcm")
    sr.add_argument("--source", type=Path, required=True, metavar="SERIES_DICOM_DIR")
    sr.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    sr.set_defaults(handler=_sr)
