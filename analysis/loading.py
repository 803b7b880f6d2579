"""Load a sweep root into tidy frames: metrics, one row per run, probes and evals, with config columns.

    runs = load_runs("runs/grad_conflict")
    runs.metrics      run, variant, step, every metrics key, cfg.* (one row per run and logged step)
    runs.runs         run, variant, status, last_step, label, error, job_*, cfg.* (one row per run)
    runs.probes       load_probes' columns (run, objective, ratio_fm, seed, label, step, weights, ...) + cfg.*
    runs.evals        run, variant, eval.jsonl keys, cfg.* (empty if no run has eval.jsonl)
    runs.problems     torn lines, unreadable config.json or job.json, mismatched hashes: strings
    runs.baselines    the sweep's baseline variant as each run's run.json records it (``compare.baseline_of``)

Config columns are the run's config.json flattened with dotted keys (``cfg.objective.ratio_fm.start``),
normalised through ``alphaflow.config`` so runs written before a field existed show its default.
In the per-row frames, text config columns, ``run`` and ``variant`` are categoricals (cheap at a
million rows); numbers keep their dtype. ``variant`` is what the seeds of one setting share: the one
the sweep wrote to run.json, or for folders without run.json the run name without ``-<hash>`` and
``-s<seed>`` (``records.variant_of``), suffixed ``@<config hash>`` where runs under one name have different
configs (``variants.split_variants``). Group by it to pool seeds.

Nothing raises on bad content; see ``records`` for statuses and ``cache`` for the Parquet cache
(``cache=False`` reads every file and writes nothing).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa


from .cache import RunCache, SourceKey, source_key
from .labels import RUN_COLUMNS, run_identity
from .records import RunRecord, flatten, last_step, read_run, run_folders
from .variants import split_variants

JOB_COLUMNS = {"job_id": "job_id", "executor": "executor", "submitted": "submitted", "state": "job_state"}
RUN_TABLE_COLUMNS = ["run", "variant", "status", "last_step", "label", "error", *JOB_COLUMNS.values()]


@dataclass
class Runs:
    """The frames of one sweep root (see the module docstring for their columns)."""

    metrics: pd.DataFrame
    runs: pd.DataFrame
    probes: pd.DataFrame
    evals: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)  # each run's recorded baseline (run.json), where it has one

    @property
    def cfg_columns(self) -> list[str]:
        """The ``cfg.*`` columns, in config order."""
        return [c for c in self.runs.columns if c.startswith("cfg.")]


def _records(root: Path, cache: bool, problems: list[str]) -> list[RunRecord]:
    """One record per run folder: from the cache where its key matches, else read (and cached)."""
    folders, scan_problems = run_folders(root)
    problems += scan_problems
    store = RunCache(root) if cache else None
    keys = cast(list[SourceKey],  # the Nones only without a store, which reads no key
                [source_key(f) for f in folders] if store else [None] * len(folders))  # stat before reading
    cached: list[RunRecord | None] = [None] * len(folders)
    if store is not None:
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # Parquet reads release the GIL
            cached = list(pool.map(store.load, [f.name for f in folders], keys))
    records = []
    for folder, key, rec in zip(folders, keys, cached):
        if rec is None:
            rec = read_run(folder)
            if store is not None:
                try:
                    store.store(rec, key)
                except OSError as exc:
                    problems.append(f"cache: cannot write {store.dir} ({type(exc).__name__}); loading without it")
                    store = None
        records.append(rec)
    if store is not None:
        store.prune({f.name: k for f, k in zip(folders, keys)})
    return records


def _run_table(records: list[RunRecord]) -> pd.DataFrame:
    """One row per run: RUN_TABLE_COLUMNS then cfg.* (runs without a readable config have NaN there)."""
    with_cfg = [(r.name, r.config) for r in records if r.config is not None]
    labels = run_identity(with_cfg).set_index("run")["label"].to_dict() if with_cfg else {}
    rows = []
    for r in records:
        row = {"run": r.name, "variant": r.variant, "status": r.status,
               "last_step": last_step(r.tables["metrics"]), "label": labels.get(r.name, r.name), "error": r.error}
        row.update({col: r.job.get(k) for k, col in JOB_COLUMNS.items()})
        row.update({f"cfg.{k}": v for k, v in flatten(r.config or {}).items()})
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else RUN_TABLE_COLUMNS)
    table = table.reindex(columns=list(dict.fromkeys(RUN_TABLE_COLUMNS + list(table.columns))))
    for col in table.columns[table.dtypes == object]:
        present = table[col].dropna()
        if len(present) and present.map(type).eq(bool).all():  # True/False with gaps: nullable boolean
            table[col] = table[col].astype("boolean")
        elif present.empty:  # nothing there (no error, no job.json, a null config field): NaN, not None
            table[col] = np.nan if col in RUN_TABLE_COLUMNS else table[col].astype(object)
    return table


def _broadcast(runs: pd.DataFrame, cols: list[str], codes: np.ndarray) -> pd.DataFrame:
    """Run-level columns repeated per row (row k belongs to run ``codes[k]``), in ``cols`` order.

    Numpy-typed columns of one dtype are taken together into one 2-D block, laid out as pandas keeps
    it, so a million rows cost one copy and no consolidation; text and mixed columns become categoricals.
    """
    parts: list[pd.DataFrame] = []
    groups: dict[np.dtype, list[str]] = {}
    other: dict[str, object] = {}
    for c in cols:
        dtype = runs[c].dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
            groups.setdefault(dtype, []).append(c)
        elif pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype):  # nullable boolean
            other[c] = runs[c].array.take(codes)
        else:
            cat = pd.Categorical(runs[c].astype(object).where(runs[c].notna(), None))
            other[c] = pd.Categorical.from_codes(cat.codes[codes], cat.categories)
    for dtype, names in groups.items():
        block = np.take(np.ascontiguousarray(runs[names].to_numpy(dtype).T), codes, axis=1)  # (columns, rows)
        parts.append(pd.DataFrame(block.T, columns=names, copy=False))
    parts.append(pd.DataFrame(other, index=pd.RangeIndex(len(codes))))
    return pd.concat(parts, axis=1)[cols]


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Stack per-run tables (columns unioned by name, numbers promoted) into one frame."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowException, TypeError):  # a key that is a number in one run and text in another
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def _tidy(records: list[RunRecord], runs: pd.DataFrame, table: str) -> pd.DataFrame:
    """The ``table`` rows of every record (``runs`` row i describes ``records[i]``): run, variant, step,
    the file's keys, then cfg.*. A key that clashes with those names gets a ``<table>.`` prefix."""
    parts = [(i, r.tables[table]) for i, r in enumerate(records) if r.tables[table].num_rows]
    cfg_cols = [c for c in runs.columns if c.startswith("cfg.")]
    if not parts:
        return pd.DataFrame(columns=["run", "variant", "step", *cfg_cols])
    body = _concat([t for _, t in parts])
    body = body.rename(columns={c: f"{table}.{c}" for c in body.columns if c in {"run", "variant", *cfg_cols}})
    codes = np.repeat([i for i, _ in parts], [t.num_rows for _, t in parts])
    keys = (["step"] if "step" in body.columns else []) + [c for c in body.columns if c != "step"]
    # concat along columns shares the blocks (copy-on-write): no copy of a million-row frame here
    return pd.concat([_broadcast(runs, ["run", "variant"], codes), body[keys], _broadcast(runs, cfg_cols, codes)],
                     axis=1)


def _probe_frame(records: list[RunRecord], runs: pd.DataFrame) -> pd.DataFrame:
    """Probe rows as ``load_probes`` gives them (the runs with a config; same columns, rows and order),
    then ``variant`` and cfg.*."""
    mask = [r.config is not None for r in records]
    with_cfg, sub = [r for r in records if r.config is not None], runs.loc[mask].reset_index(drop=True)
    df = _tidy(with_cfg, sub, "probes")
    if df.empty or not with_cfg:
        return pd.DataFrame(columns=RUN_COLUMNS + ["step", "weights", "batches", "batch_size", "probe_seed"])
    ident = run_identity([(r.name, cast(dict[str, Any], r.config)) for r in with_cfg])  # each has a config
    df = df.assign(run=df["run"].astype(str)).rename(columns={"seed": "probe_seed"})
    df = df.merge(ident, on="run", how="left", sort=False)
    sort = [c for c in ("label", "weights", "step") if c in df.columns]
    df = df.sort_values(sort, kind="stable").reset_index(drop=True)  # stable: file order within ties
    rest = [c for c in df.columns if c not in RUN_COLUMNS and c != "variant" and not c.startswith("cfg.")]
    return df[RUN_COLUMNS + rest + ["variant"] + [c for c in df.columns if c.startswith("cfg.")]]


def load_runs(root: str | Path, *, cache: bool = True) -> Runs:
    """Load every run under ``root`` (a sweep root, or one run folder) into a ``Runs``.

    Tolerant: a torn line is skipped, a run without DONE is ``incomplete``, a run with error.txt
    ``failed``, a folder with nothing in it ``empty`` (``alphaflow.run.folder.run_status``); what was
    skipped is in ``Runs.problems``.
    With ``cache`` (default) each run is read once per change of its files and kept as Parquet under
    ``root/.analysis-cache/``.
    """
    root = Path(root)
    problems: list[str] = []
    records = _records(root, cache, problems)
    for r in records:
        problems += r.problems
    problems += split_variants(records)  # a variant is its config: runs of two configs are not pooled as seeds
    runs = _run_table(records)
    metrics, evals = _tidy(records, runs, "metrics"), _tidy(records, runs, "evals")
    return Runs(metrics, runs, _probe_frame(records, runs), evals, problems, [r.baseline for r in records if r.baseline])
