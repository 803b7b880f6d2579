"""Checkpoints of the official α-Flow code (snap-research/alphaflow) as run folders of this project:
``import_official`` (``alphaflow import-official``), the restricted unpickler and the name mapping
(docs/official_code.md#importing-checkpoints)."""

from alphaflow.official.importer import import_official
from alphaflow.official.unpickle import read_snapshot

__all__ = ["import_official", "read_snapshot"]
