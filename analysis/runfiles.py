"""Read one run folder into a ``RunRecord`` (config, status, tables): what ``load_runs`` and its cache hold.

A run folder (``alphaflow.runfolder``) holds config.json, metrics.jsonl, probes.jsonl and DONE; the
launcher may add ``job.json`` (job_id, executor, submitted, state) and, when a run fails,
``error.txt`` (the traceback tail); an evaluation may add ``eval.jsonl``. ``read_run`` turns these
into a ``RunRecord``: the config, a status, and one ``pyarrow.Table`` per JSONL file. It never
raises on bad content: a torn line, an unreadable config or job.json become strings in
``RunRecord.problems``. Status:

    done        DONE exists
    failed      no DONE, and error.txt exists or job.json's state is a failure (FAILED, CANCELLED, ...;
                not TIMEOUT or PREEMPTED, which the launcher resumes)
    empty       none of the above, and neither config.json nor any metrics row
    incomplete  anything else (running, preempted, waiting to be resumed)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from alphaflow.config import ConfigError, config_hash, from_dict, to_dict
from alphaflow.runfolder import CHECKPOINTS, CONFIG, DONE, METRICS, PROBES, SAMPLES

EVAL, ERROR, JOB = "eval.jsonl", "error.txt", "job.json"
TABLES = {"metrics": METRICS, "probes": PROBES, "evals": EVAL}  # RunRecord.tables key → file
SOURCES = (CONFIG, METRICS, PROBES, EVAL, DONE, ERROR, JOB)  # every file a record depends on
STATUSES = ("done", "incomplete", "failed", "empty")
FAILED_STATES = {"FAILED", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "ERROR"}
ERROR_TAIL_LINES = 10
_HASH = re.compile(r"-([0-9a-f]{10})$")  # alphaflow.launch.sweeps names runs <desc>-<config_hash(cfg)>
_SEED = re.compile(r"(?:^|-)s\d+$")  # ... and ends <desc> with s<seed>


@dataclass
class RunRecord:
    """Everything ``analysis`` keeps of one run folder (what the cache stores)."""

    name: str
    status: str
    config: dict | None  # normalised through alphaflow.config where it parses, else as written
    error: str | None = None  # the last ERROR_TAIL_LINES lines of error.txt
    job: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    tables: dict[str, pa.Table] = field(default_factory=dict)  # "metrics" | "probes" | "evals"


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
    found = []
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

def read_jsonl(path: Path, require: str | None = "step") -> tuple[list[dict], int]:
    """The dict rows of a JSONL file (holding ``require`` unless it is None) and how many lines were
    torn or garbled (skipped). A missing file is ([], 0).

    Fast path: the whole file parses as one JSON array; a torn line makes that fail, and then each
    line is parsed on its own. Python's json reads the NaN/Infinity that ``json.dumps`` writes.
    """
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        rows = json.loads("[" + ",".join(lines) + "]")
    except json.JSONDecodeError:
        rows = None
    if rows is None or len(rows) != len(lines):  # a line holding "1, 2" also fails the count
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    kept = [r for r in rows if isinstance(r, dict) and (require is None or require in r)]
    return kept, len(lines) - len(kept)


def _column(values: list) -> pa.Array:
    """An Arrow column from Python values. Numbers mixed with text fall back to text; nested values
    (a dict or list logged as one value) become their JSON text."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        array = None
    if array is not None and not pa.types.is_nested(array.type):
        return array
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], type=pa.string())


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows → a table with one column per key (in order of first appearance); absent keys are null."""
    union: dict = {}
    for r in rows:
        union.update(r)  # a C loop: only the keys (in first-seen order) are used
    keys = list(union)
    cols = [_column([r.get(k) for r in rows]) for k in keys]
    return pa.Table.from_arrays(cols, names=keys) if keys else pa.table({})


def _config(folder: Path, problems: list[str]) -> dict | None:
    """The run's config, normalised (every field of today's schema) where it parses; None if unreadable."""
    try:
        raw = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{folder.name}: unreadable {CONFIG} ({type(exc).__name__}); no cfg columns")
        return None
    if not isinstance(raw, dict):
        problems.append(f"{folder.name}: {CONFIG} is not a mapping; no cfg columns")
        return None
    try:
        cfg = from_dict(raw)
        normal = to_dict(cfg)
    except (ConfigError, TypeError, ValueError) as exc:
        problems.append(f"{folder.name}: {CONFIG} does not fit today's schema ({exc}); cfg columns as written")
        return raw
    _check_hash(folder.name, raw, config_hash(cfg), problems)
    return normal


def _check_hash(name: str, raw: dict, current: str, problems: list[str]) -> None:
    """A sweep run's name ends in the hash of its config; a mismatch means a renamed folder or edited config.

    The hash is checked against the config as written too, so runs from before a schema gained a
    field (whose normalised config hashes differently) are not flagged.
    """
    m = _HASH.search(name)
    if not m or m.group(1) == current:
        return
    # the same canonical JSON as alphaflow.config.config_hash, on the config as written
    written = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    if m.group(1) != written:
        problems.append(f"{name}: the name's hash {m.group(1)} is not the config's ({current}); "
                        "renamed folder or edited config.json?")


def _job(folder: Path, problems: list[str]) -> dict:
    try:
        job = json.loads((folder / JOB).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{folder.name}: unreadable {JOB} ({type(exc).__name__})")
        return {}
    return job if isinstance(job, dict) else {}


def _error_tail(folder: Path) -> str | None:
    try:
        text = (folder / ERROR).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"(unreadable {ERROR}: {type(exc).__name__})"
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(lines[-ERROR_TAIL_LINES:]) or "(empty error.txt)"


def _last_per_step(rows: list[dict], name: str, problems: list[str]) -> list[dict]:
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
    """Read one run folder (config, JSONL tables, job.json, error.txt) into a ``RunRecord``; never raises
    on content."""
    folder = Path(folder)
    problems: list[str] = []
    config = _config(folder, problems)
    tables = {}
    for key, filename in TABLES.items():
        try:
            rows, bad = read_jsonl(folder / filename, require=None if key == "evals" else "step")
        except OSError as exc:  # permissions, a folder where a file should be, an I/O error
            problems.append(f"{folder.name}: unreadable {filename} ({type(exc).__name__})")
            rows, bad = [], 0
        if bad:
            problems.append(f"{folder.name}: skipped {bad} unreadable line(s) in {filename}")
        if key == "metrics":
            rows = _last_per_step(rows, folder.name, problems)
        tables[key] = rows_to_table(rows)
    job, error = _job(folder, problems), _error_tail(folder)
    state = str(job.get("state", "")).upper()
    if (folder / DONE).exists():
        status = "done"
    elif error is not None or state in FAILED_STATES:
        status = "failed"
    elif not (folder / CONFIG).exists() and tables["metrics"].num_rows == 0:
        status = "empty"
    else:
        status = "incomplete"
    return RunRecord(folder.name, status, config, error, job, problems, tables)


def last_step(table: pa.Table) -> float:
    """The largest logged ``step`` of a metrics table; NaN if none."""
    if "step" not in table.column_names or table.num_rows == 0:
        return math.nan
    try:
        step = pc.max(table.column("step")).as_py()
        return math.nan if step is None else float(step)
    except (pa.ArrowException, TypeError, ValueError):  # a step that is not a number
        return math.nan
