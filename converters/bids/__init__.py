"""Writing a raw BIDS dataset: names (:mod:`.naming`), dataset-level files (:mod:`.dataset`) and
atomic, concurrency-safe publishing with per-series manifests (:mod:`.publish`)."""

from converters.bids.naming import sanitize_label
from converters.bids.publish import BOOKKEEPING_DIR

__all__ = ["BOOKKEEPING_DIR", "sanitize_label"]
