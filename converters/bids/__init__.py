"""Writing a raw BIDS dataset: names (:mod:`.naming`), session-wide layout (:mod:`.session`),
dataset-level files (:mod:`.dataset`), the bookkeeping folder and its per-series manifests
(:mod:`.manifests`), session labels (:mod:`.session_labels`), the dataset tables (:mod:`.tables`),
atomic, concurrency-safe publishing (:mod:`.publish`) and the derivatives dataset
(:mod:`.derivatives`)."""

from converters.bids.manifests import BOOKKEEPING_DIR
from converters.bids.naming import sanitize_label

__all__ = ["BOOKKEEPING_DIR", "sanitize_label"]
