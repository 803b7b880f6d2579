"""A variant is its config: runs under one variant name whose configs differ (seed aside) are split.

The seeds of a variant are pooled by every table of the report, so two runs may share a variant only if their
resolved configs are equal but for ``seed`` (and the ``log`` section, which only feeds trackers). Editing a
sweep file's ``base`` and rerunning it into the same root gives new runs under the old variant names; without
this check their seeds would be pooled with the old ones. ``split_variants`` renames such runs
``<variant>@<config hash>`` and says which keys differ, in a problem line that the report's summary.md and its
stdout show.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

from alphaflow.config import without_later_defaults

from .records import RunRecord, flatten

IGNORED = ("seed", "log")  # top-level keys that may differ between the runs of one variant
HASH_LENGTH = 6
MAX_KEYS = 6  # differing keys named in a problem line


def variant_hash(config: dict[str, Any]) -> str:
    """The first HASH_LENGTH hex digits of SHA-1 over the canonical JSON of ``config`` (a normalised config dict)
    without IGNORED keys and without later fields at their defaults (``alphaflow.config.without_later_defaults``)."""
    body = without_later_defaults({k: v for k, v in config.items() if k not in IGNORED})
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:HASH_LENGTH]


def _differing(groups: dict[str, list[RunRecord]]) -> list[str]:
    """'key: value (hash) vs value (hash)' for the dotted keys whose values differ between the groups."""
    flat = {h: flatten({k: v for k, v in (rs[0].config or {}).items() if k not in IGNORED}) for h, rs in groups.items()}
    keys = sorted(set().union(*flat.values()))
    out = []
    for key in keys:
        values = {h: f.get(key, "(absent)") for h, f in flat.items()}
        if len({json.dumps(v, default=str) for v in values.values()}) > 1:
            out.append(f"{key}: " + " vs ".join(f"{v} (@{h})" for h, v in values.items()))
    return out


def split_variants(records: list[RunRecord]) -> list[str]:
    """Rename, in place, the runs of a variant whose configs differ to ``<variant>@<variant_hash>``; one problem
    line per split variant (its runs per config and the differing keys). Runs without a readable config keep
    their variant (their own problem line says why)."""
    by_variant: dict[str, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if isinstance(r.config, dict):
            by_variant[r.variant][variant_hash(r.config)].append(r)
    problems = []
    for variant, groups in sorted(by_variant.items()):
        if len(groups) < 2:
            continue
        for h, runs in groups.items():
            for r in runs:
                r.variant = f"{variant}@{h}"
        counts = ", ".join(f"{variant}@{h} ({len(rs)} run{'s' * (len(rs) > 1)})" for h, rs in groups.items())
        keys = _differing(groups)
        more = f"; and {len(keys) - MAX_KEYS} more" if len(keys) > MAX_KEYS else ""
        problems.append(f"variant {variant!r} holds runs of {len(groups)} different configs, not seeds of one: "
                        f"split into {counts}; differing keys: {'; '.join(keys[:MAX_KEYS])}{more}")
    return problems
