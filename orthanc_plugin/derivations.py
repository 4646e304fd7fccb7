"""The derivations a job can make, in one place: what a rule's ``derive`` and
``POST /bidsbridge/series/{id}/convert {"derive": [...]}`` may name, and what each makes.

``seg_mask`` is a name for what the ``adc`` derivation makes beside the ADC map (the signal mask
as a DICOM SEG and its measurement SR); asking for it runs ``adc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

__all__ = ["DERIVATIONS", "DERIVATION_NAMES", "DerivationName"]

#: The derivations the worker runs.
DerivationName = Literal["adc"]
DERIVATIONS: tuple[DerivationName, ...] = get_args(DerivationName)

#: Every name a rule or a request may use -> (the derivation that makes it, what it makes).
DERIVATION_NAMES: Mapping[str, tuple[DerivationName, str]] = {
    "adc": ("adc", "apparent diffusion coefficient map (DICOM Parametric Map) from a DWI series, with its "
                   "signal-mask SEG and a measurement SR"),
    "seg_mask": ("adc", "the signal-mask segmentation (DICOM SEG) the adc derivation makes"),
}
