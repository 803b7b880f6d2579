"""Read one run folder into a ``RunRecord`` (config, status, variant, tables): what ``load_runs`` and its cache hold.

The files, their readers and the state of a run are ``alphaflow.run.folder``'s: ``read_run`` turns
config.json, run.json, job.json, error.txt and the JSONL files (metrics, probes, eval) into a
``RunRecord``: the config (through ``alphaflow.config.from_dict``, which upgrades old files), the
status (``alphaflow.run.folder.run_status`` without a scheduler, so one of ``STATUSES``), the variant
(run.json's, else ``variant_of`` the run name) and one ``pyarrow.Table`` per JSONL file. It never
raises on bad content: a torn line, an unreadable config, run.json or job.json become strings in
``RunRecord.problems``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from alphaflow.config import Config, ConfigError, config_hash, from_dict, to_dict, without_later_defaults
from alphaflow.run.folder import (CHECKPOINTS, CONFIG, ERROR, EVAL, FILES, METRICS, PROBES, SAMPLES, RunFolder, State,
                                 read_json, run_status, scan_jsonl)

TABLES = {"metrics": METRICS, "probes": PROBES, "evals": EVAL}  # RunRecord.tables key → file
SOURCES = FILES  # every file a record depends on
STATUSES = (State.DONE, State.INCOMPLETE, State.FAILED, State.EMPTY)  # the states of a folder, no scheduler asked
ERROR_TAIL_LINES = 10
_HASH = re.compile(r"-([0-9a-f]{10})$")  # alphaflow.launch.sweeps names runs <desc>-<config_hash(cfg)>
_SEED = re.compile(r"(?:^|-)s\d+$")  # ... and ends <desc> with s<seed>
read_jsonl = scan_jsonl  # (rows, skipped lines): the one JSONL reader, under the name analysis uses


@dataclass
class RunRecord:
    """Everything ``analysis`` keeps of one run folder (what the cache stores)."""

    name: str
    status: str
    config: dict[str, Any] | None  # normalised through alphaflow.config where it parses, else as written
    error: str | None = None  # the last ERROR_TAIL_LINES lines of error.txt
    job: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    tables: dict[str, pa.Table] = field(default_factory=dict)  # "metrics" | "probes" | "evals"
    variant: str = ""  # run.json's variant, else variant_of(name)
    baseline: str = ""  # run.json's baseline: the sweep's reference variant ("" if not recorded)


# ----------------------------------------------------------------------------- folders and names

def run_folders(root: str | Path) -> tuple[list[Path], list[str]]:
    """The run folders under ``root`` (or ``[root]`` if it is a run itself), sorted, and problems.

    A sub-folder is a run if it holds any run-format file, or nothing at all (an empty run), or
    is named ``<desc>-<10 hex>``; hidden folders and others (a ``report/``) are not runs.
    """
    root = Path(root)
    if not root.is_dir():
        return [], [f"{root} is not a folder"]
    if (root / CONFIG).exists():
        return [root], []
    marks = set(SOURCES) | {CHECKPOINTS, SAMPLES}
    found, problems = [], []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            names = {c.name for c in p.iterdir()}
        except OSError as exc:
            problems.append(f"{p.name}: unreadable folder ({type(exc).__name__}); skipped")
            continue
        if names & marks or not names or _HASH.search(p.name):
            found.append(p)
    return found, problems


def variant_of(name: str) -> str:
    """The run name without its ``-<config hash>`` and ``-s<seed>`` parts: the seeds of one variant share it.
    For folders without run.json (written before the sweep recorded the variant there).

    "meanflow-fm75-lr0.001-s2-5502342f1a" → "meanflow-fm75-lr0.001"; a bare "s0-…" → "base".
    """
    desc = _HASH.sub("", name)
    return _SEED.sub("", desc) or "base"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"objective": {"ratio_fm": {"start": 0.75}}} → {"objective.ratio_fm.start": 0.75}.

    Lists become their JSON text ("[1, 2]") so every value is a scalar a DataFrame column can hold.
    """
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: None}
    return {prefix[:-1]: json.dumps(tree) if isinstance(tree, list) else tree}


# ----------------------------------------------------------------------------- files

def _column(values: list[Any]) -> pa.Array:
    """An Arrow column from Python values. Numbers mixed with text fall back to text; nested values
    (a dict or list logged as one value) become their JSON text."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        array = None
    if array is not None and not pa.types.is_nested(array.type):
        return array
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], type=pa.string())


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows → a table with one column per key (in order of first appearance); absent keys are null."""
    union: dict[str, Any] = {}
    for r in rows:
        union.update(r)  # a C loop: only the keys (in first-seen order) are used
    keys = list(union)
    cols = [_column([r.get(k) for r in rows]) for k in keys]
    return pa.Table.from_arrays(cols, names=keys) if keys else pa.table({})


def _config(run: RunFolder, info: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    """The run's config, normalised (every field of today's schema) where it parses; None if unreadable."""
    unreadable: list[str] = []
    raw = read_json(run.config_path, unreadable)
    problems += [f"{p}; no cfg columns" for p in unreadable]
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"{run.root.name}: {CONFIG} is not a mapping; no cfg columns")
        return None
    try:
        cfg = from_dict(raw)
        normal = to_dict(cfg)
    except (ConfigError, TypeError, ValueError) as exc:
        problems.append(f"{run.root.name}: {CONFIG} does not fit today's schema ({exc}); cfg columns as written")
        return raw
    _check_hash(run.root.name, raw, cfg, info, problems)
    return normal


def _check_hash(name: str, raw: dict[str, Any], cfg: Config, info: dict[str, Any], problems: list[str]) -> None:
    """A sweep run's name ends in the hash of its config; a mismatch means a renamed folder or edited config.

    A config.json in an older schema (``from_dict`` upgrades it, so its hash today differs) is checked
    against the hash run.json recorded at submission instead, and not at all without run.json.
    """
    m = _HASH.search(name)
    current: str | None = config_hash(cfg)
    if not m or m.group(1) == current:
        return
    if without_later_defaults(json.loads(json.dumps(to_dict(cfg)))) != without_later_defaults(raw):  # an earlier schema
        current = info.get("config_hash")
        if not isinstance(current, str) or m.group(1) == current:
            return
    problems.append(f"{name}: the name's hash {m.group(1)} is not the config's ({current}); "
                    "renamed folder or edited config.json?")


def _error_tail(run: RunFolder) -> str | None:
    try:
        tail = run.read_error(ERROR_TAIL_LINES)
    except OSError as exc:
        return f"(unreadable {ERROR}: {type(exc).__name__})"
    return None if tail is None else tail or f"(empty {ERROR})"


def _last_per_step(rows: list[dict[str, Any]], name: str, problems: list[str]) -> list[dict[str, Any]]:
    """One metrics row per step, the last written (a resume that did not truncate would repeat steps)."""
    try:
        by_step = {r["step"]: r for r in rows}
    except TypeError:  # an unhashable step: leave the rows as they are
        return rows
    if len(by_step) < len(rows):
        problems.append(f"{name}: {len(rows) - len(by_step)} repeated step(s) in {METRICS}; kept the last of each")
        return list(by_step.values())
    return rows


def read_run(folder: str | Path) -> RunRecord:
    """Read one run folder (config, run.json, JSONL tables, job.json, error.txt) into a ``RunRecord``; never
    raises on content."""
    run = RunFolder(folder)
    name = run.root.name
    problems: list[str] = []
    info = run.read_info(problems)
    config = _config(run, info, problems)
    tables = {}
    for key, filename in TABLES.items():
        try:
            rows, bad = read_jsonl(run.root / filename, require=None if key == "evals" else "step")
        except OSError as exc:  # permissions, a folder where a file should be, an I/O error
            problems.append(f"{name}: unreadable {filename} ({type(exc).__name__})")
            rows, bad = [], 0
        if bad:
            problems.append(f"{name}: skipped {bad} unreadable line(s) in {filename}")
        if key == "metrics":
            rows = _last_per_step(rows, name, problems)
        tables[key] = rows_to_table(rows)
    status = run_status(run, problems=problems, logged=tables["metrics"].num_rows > 0)
    variant = info.get("variant")
    variant = variant if isinstance(variant, str) and variant else variant_of(name)
    baseline = info.get("baseline")
    return RunRecord(name, status.state, config, _error_tail(run), status.job, problems, tables, variant,
                     baseline if isinstance(baseline, str) else "")


def last_step(table: pa.Table) -> float:
    """The largest logged ``step`` of a metrics table; NaN if none."""
    if "step" not in table.column_names or table.num_rows == 0:
        return math.nan
    try:
        step = pc.max(table.column("step")).as_py()
        return math.nan if step is None else float(step)
    except (pa.ArrowException, TypeError, ValueError):  # a step that is not a number
        return math.nan
