"""Sweep files: a base config, named variants, a grid, zipped axes and seeds, expanded into runs.

    name: grad_conflict                  # a plain folder name (default: the file's stem): runs/<name>
    recipe: digits                       # optional: start from a recipe or YAML file
    base: {train: {steps: 1500}}         # a (partial) config mapping applied on top
    variants:                            # named sets of dotted overrides (optional)
      meanflow-fm0:  {objective.name: meanflow, objective.ratio_fm: 0.0}
      meanflow-fm75: {objective.name: meanflow, objective.ratio_fm: 0.75}
    grid: {optim.lr: [1.0e-3, 3.0e-4]}   # Cartesian product (optional)
    zip: {a.b: [1, 2], c.d: [3, 4]}      # axes taken together (optional, equal lengths)
    baseline: meanflow-fm0               # the variant the report compares the others with (default: the first)
    seeds: [0, 1]                        # sets the top-level seed (optional); per variant instead:
                                         #   seeds: {meanflow-fm0: [0, 1, 2], meanflow-fm75: [0, 1]}
    resources: {timeout_min: 60, gpus_per_node: 1, tasks_per_node: 1, cpus_per_task: 8, mem_gb: 32,
                partition: learn, array_parallelism: 16, max_num_timeout: 20,
                slurm: {account: my-account, qos: normal}}

Every section is checked for this shape when the file is read, ``resources`` key by key with types and ranges
(``alphaflow.launch.resources``), so a bad file is refused in one line naming the file and the key.

Each run is named ``<readable-description>-<config-hash>`` (DomainBed style), so its folder is a
pure function of its config; the description is the variant, the grid and zip values and ``s<seed>``.
This module only expands files: ``alphaflow.launch.executors`` runs the runs (inline in this process,
or as one submitit job array, local or SLURM, with the file's ``resources``).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphaflow.config import Config, ConfigError, apply_overrides, config_hash, load_config, read_yaml, validate
from alphaflow.launch.resources import check_resources

_KEYS = {"name", "recipe", "base", "variants", "grid", "zip", "seeds", "resources", "baseline"}


@dataclass
class SweepRun:
    """One run of a sweep: its folder name, config, the overrides that made it, its ``variant`` (the name without
    seed and hash: what the seeds of one setting share; "base" when nothing but the seed varies) and its sweep."""

    name: str
    config: Config
    overrides: list[str]
    variant: str = "base"
    sweep: str = ""  # the sweep's name
    baseline: str = ""  # the variant the report compares the others with (the file's ``baseline``, else the first)


@dataclass
class Sweep:
    name: str
    runs: list[SweepRun]
    resources: dict[str, Any]


def _flatten(mapping: dict[str, Any], prefix: str = "") -> list[str]:
    """{"train": {"steps": 5}} → ["train.steps=5"] (values written as JSON, which YAML reads back)."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # one folder under runs/: no '/', '..', hidden or empty


def sweep_name(path: Path, spec: dict[str, Any]) -> str:
    """The sweep's ``name`` (default: the file's stem), refused unless it is a plain folder name: the default root
    of its runs is ``runs/<name>``, which a name such as ``../..`` or ``a/b`` would put elsewhere."""
    name = spec.get("name", path.stem)
    if isinstance(name, str) and _PLAIN_NAME.fullmatch(name):
        return name
    rule = "a plain folder name (letters, digits, '-', '_' and '.', not starting with '.'), as runs go to runs/<name>"
    if "name" not in spec:
        raise ValueError(f"{path}: the file has no 'name' and its stem {name!r} is not {rule}; add name: <a name>")
    raise ValueError(f"{path}: 'name' must be {rule}, got {name!r}")


def _check_sections(path: Path, spec: dict[str, Any]) -> None:
    """Every section has the shape the module docstring gives it: recipe a string, base a mapping, variants a
    mapping of names to mappings of dotted keys, grid and zip mappings of dotted keys, seeds whole numbers,
    baseline a variant's name; ``resources`` is checked key by key (``alphaflow.launch.resources``)."""
    sweep_name(path, spec)
    recipe = spec.get("recipe")
    if recipe is not None and (not isinstance(recipe, str) or not recipe.strip()):
        raise ValueError(f"{path}: 'recipe' must be a recipe name or a YAML file (a string), got {recipe!r}")
    base = spec.get("base")
    if base is not None and not isinstance(base, dict):
        raise ValueError(f"{path}: 'base' must be a (partial) config mapping, e.g. {{train: {{steps: 1500}}}}, "
                         f"got {base!r}")
    variants = spec.get("variants")
    if variants is not None and not isinstance(variants, dict):
        raise ValueError(f"{path}: 'variants' must map variant names to mappings of dotted overrides, e.g. "
                         f"{{fm: {{objective.name: fm}}}}, got {variants!r}")
    for name, extra in (variants or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: variant names are strings, got {name!r} in 'variants'")
        if extra is not None and not isinstance(extra, dict):
            raise ValueError(f"{path}: variant {name!r} must be a mapping of dotted overrides, e.g. "
                             f"{{objective.name: fm}}, got {extra!r}")
        bad = [k for k in (extra or {}) if not isinstance(k, str) or not k.strip()]
        if bad:
            raise ValueError(f"{path}: variant {name!r}: {bad[0]!r} is not a dotted config key such as optim.lr")
    for section in ("grid", "zip"):
        bad = [k for k in (spec.get(section) or {}) if not isinstance(k, str) or not k.strip()] \
            if isinstance(spec.get(section), dict) else []
        if bad:
            raise ValueError(f"{path}: {section} axis {bad[0]!r} is not a dotted config key such as optim.lr")
    seeds = spec.get("seeds")
    lists = seeds.values() if isinstance(seeds, dict) else [seeds] if isinstance(seeds, list) else []
    bad = [x for values in lists if isinstance(values, list) for x in values
           if isinstance(x, bool) or not isinstance(x, int)]
    if bad:
        raise ValueError(f"{path}: 'seeds' holds whole numbers (e.g. [0, 1, 2]), got {bad[0]!r}")
    baseline = spec.get("baseline")
    if "baseline" in spec and (not isinstance(baseline, str) or not baseline.strip()):
        raise ValueError(f"{path}: 'baseline' must name one of the variants, got {baseline!r}")
    try:
        check_resources(spec.get("resources"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _check_axes(path: Path, spec: dict[str, Any]) -> None:
    """Refuse empty axes and a key set by two of base/variants/grid/zip/seeds at once."""
    grid, zipped = spec.get("grid") or {}, spec.get("zip") or {}
    for section, axes in (("grid", grid), ("zip", zipped)):
        if not isinstance(axes, dict):
            raise ValueError(f"{path}: '{section}' must map dotted keys to lists of values")
        for key, values in axes.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{path}: {section} axis {key!r} needs a non-empty list of values, got {values!r}")
    seeds = spec.get("seeds")
    if isinstance(seeds, dict):  # per variant: every variant named, each with a non-empty list
        named = set((spec.get("variants") or {}))
        if set(seeds) != named:
            raise ValueError(f"{path}: 'seeds' as a mapping needs one list per variant {sorted(named)}, got "
                             f"{sorted(seeds)}")
        bad = {k: v for k, v in seeds.items() if not isinstance(v, list) or not v}
        if bad:
            raise ValueError(f"{path}: every 'seeds' entry needs a non-empty list, got {bad!r}")
    elif seeds is not None and (not isinstance(seeds, list) or not seeds):
        raise ValueError(f"{path}: 'seeds' needs a non-empty list (or a mapping variant → list), got {seeds!r}")
    owners: dict[str, str] = {}
    variant_keys = {k for extra in (spec.get("variants") or {}).values() for k in (extra or {})}
    for section, keys in (("grid", grid), ("zip", zipped), ("variants", variant_keys),
                          ("seeds", ["seed"] if seeds else [])):
        for key in keys:
            if key in owners:
                raise ValueError(f"{path}: {key!r} is set by both '{owners[key]}' and '{section}'; "
                                 "each key may vary along one axis only")
            owners[key] = section


def _check_overrides(path: Path, spec: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Command-line overrides must be ``key=value`` and must not fight an axis of the file."""
    axes = set((spec.get("grid") or {})) | set((spec.get("zip") or {}))
    axes |= {k for extra in (spec.get("variants") or {}).values() for k in (extra or {})}
    if spec.get("seeds"):
        axes.add("seed")
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. data.path=/datasets/latents)")
        if key.strip() in axes:
            raise ValueError(f"override {item!r}: {path} varies {key.strip()!r} across its runs; edit the file instead")


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Expand a sweep file into its runs; errors name the file and the offending entry.

    ``overrides`` (``key=value``, from the command line) apply to every run after the file's base,
    e.g. ``data.path=/datasets/imagenet-latents`` for the ImageNet sweeps; a key the file varies
    along an axis cannot be overridden this way.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"sweep file {str(path)!r} does not exist")
    spec = read_yaml(path)
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a sweep file is a mapping with keys {sorted(_KEYS)}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown sweep keys {sorted(map(str, unknown))}; expected some of {sorted(_KEYS)}")
    _check_sections(path, spec)
    _check_axes(path, spec)
    _check_overrides(path, spec, overrides)
    base = _flatten(spec.get("base") or {}) + list(overrides)
    variants = spec.get("variants") or {"": {}}
    grid = spec.get("grid") or {}
    zipped = spec.get("zip") or {}
    if len({len(v) for v in zipped.values()}) > 1:
        raise ValueError(f"{path}: every 'zip' axis needs the same length, got "
                         f"{ {k: len(v) for k, v in zipped.items()} }")
    zip_rows = list(zip(*zipped.values())) if zipped else [()]
    seeds = spec.get("seeds") or [None]
    per_variant = seeds if isinstance(seeds, dict) else {v: seeds for v in variants}
    name = sweep_name(path, spec)
    runs = []
    points = [(variant, extra, combo, row, seed)
              for (variant, extra), combo, row in itertools.product(variants.items(),
                                                                    itertools.product(*grid.values()), zip_rows)
              for seed in per_variant[variant]]
    for variant, extra, combo, row, seed in points:
        axes = {**dict(zip(grid, combo)), **dict(zip(zipped, row))}
        overrides = base + _flatten(extra or {}) + [f"{k}={json.dumps(v)}" for k, v in axes.items()]
        if seed is not None:
            overrides.append(f"seed={seed}")
        try:
            cfg = apply_overrides(load_config(spec.get("recipe")), overrides)
            validate(cfg)
        except ConfigError as exc:
            raise ValueError(f"{path}, variant {variant or '(base)'} {axes or ''}: {exc}") from None
        parts = [_slug(p) for p in [variant, *(f"{k.split('.')[-1]}{v}" for k, v in axes.items())] if p]
        desc = "-".join([*parts, _slug(f"s{cfg.seed}")])
        runs.append(SweepRun(f"{desc}-{config_hash(cfg)}", cfg, overrides, "-".join(parts) or "base", name))
    variants_found = list(dict.fromkeys(r.variant for r in runs))
    baseline = spec.get("baseline", variants_found[0])
    if baseline not in variants_found:
        raise ValueError(f"{path}: baseline {baseline!r} is not one of the sweep's variants {variants_found}")
    for r in runs:
        r.baseline = baseline
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: two runs share a name (identical configs?): {sorted(n for n in names if names.count(n) > 1)}")
    return Sweep(name, runs, check_resources(spec.get("resources")))
