"""Loading a config (defaults ← YAML file or recipe ← overrides), its rules, its dict and YAML forms, its hash.

    cfg = load_config("imagenet-b2", ["train.steps=1000", "objective.ratio_fm=0.25"])

Values in a YAML file or an override parse as YAML (``1e-4``, ``true``, ``null``, ``[1, 2]``) and
are checked against the field's type. A run writes ``dump_yaml(cfg)``'s dict form first;
``config_hash`` names runs in sweeps. ``from_dict`` also reads the config.json of a run written
before the ``objective`` section became a tagged union (``upgrade_legacy``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Callable, cast
from pathlib import Path

import yaml

from alphaflow.config.merge import ConfigError, _apply, _did_you_mean, _hints, _optional, _type_name, apply_overrides
from alphaflow.config.strict_yaml import safe_load_unique
from alphaflow.config.schema import DEVICES, PRECISIONS, SAMPLERS, WANDB_MODES, Config, ConflictConfig, LogConfig
from alphaflow.core.conflict import MODES
from alphaflow.objectives import OPTIONS
from alphaflow.core.schedules import ScheduleConfig, check_unit_interval

RECIPE_DIR = Path(__file__).parents[1] / "recipes"  # a recipe name is the stem of a YAML file here


def _find(path: str | Path) -> Path:
    """A file if one exists at ``path``, else the recipe of that name."""
    p = Path(path)
    if p.is_file():
        return p
    recipes = sorted(r.stem for r in RECIPE_DIR.glob("*.yaml"))
    name = p.name.removesuffix(".yaml")
    if p.parent == Path(".") and name in recipes:  # a bare name (or name.yaml) with no such file
        return RECIPE_DIR / f"{name}.yaml"
    raise ConfigError(f"no config file or recipe {str(path)!r}{_did_you_mean(name, recipes)}; "
                      f"recipes: {', '.join(recipes)}")


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; an unreadable file or a syntax error is a ``ConfigError`` of one line
    naming the file, the line and the column."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read this file ({getattr(e, 'strerror', None) or e})") from None
    try:
        return safe_load_unique(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults ← YAML file or recipe name ← ``key=value`` overrides, then ``validate``."""
    cfg = Config()
    if path is not None:
        file = _find(path)
        data = read_yaml(file)
        data = {} if data is None else data  # an empty (comment-only) file is the defaults
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: the top level must be a mapping of config sections, "
                              f"got {type(data).__name__}")
        try:
            cfg = _apply(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{file}: {e}") from None
    cfg = apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def upgrade_legacy(data: Mapping[str, Any]) -> dict[str, Any]:
    """The dict form of a config written by an earlier version, in today's form (a copy).

    Earlier versions called the guidance section ``objective.cfg``, wrote ``objective.ratio_fm: null``
    for "the objective's own default", and gave every objective α-Flow's ``alpha``, ``clip`` and ``shift``
    (which only α-Flow read). Today's form is returned unchanged.
    """
    config = copy.deepcopy(dict(data))
    objective = config.get("objective")
    if not isinstance(objective, dict):
        return config
    if "cfg" in objective and "guidance" not in objective:
        objective["guidance"] = objective.pop("cfg")
    if objective.get("ratio_fm", 0) is None:
        del objective["ratio_fm"]
    variant = OPTIONS.get(objective.get("name", "alphaflow"))
    if variant is not None:
        known = {f.name for f in dataclasses.fields(variant)}
        for key in [k for k in objective if k not in known and k in ("alpha", "clip", "shift")]:
            del objective[key]
    return config


def from_dict(data: Mapping[str, Any]) -> Config:
    """A ``Config`` from its (possibly partial) dict form; strict like YAML. Does not validate.

    Accepts the config.json of runs written by earlier versions (``upgrade_legacy``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of config sections, got {type(data).__name__}")
    return _apply(Config(), upgrade_legacy(data))


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested JSON-able dict, every field present, numbers normalised to their annotation
    (so a config built in code and the same config loaded from YAML give the same dict)."""
    return dataclasses.asdict(_apply(Config(), dataclasses.asdict(cfg)))


class _Dumper(yaml.SafeDumper):
    """Block mappings, one-line lists (``nfe: [1, 2]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_yaml(cfg: Config) -> str:
    """The YAML text of the whole config; ``load_config`` of it gives ``cfg`` back."""
    text: str = yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return text


# Sections added after runs were first named by their hash: left out of the hash while they hold their
# defaults, so a run folder named before a section existed keeps its name (and resumes) afterwards.
_LATER_SECTIONS = {"conflict": ConflictConfig, "log": LogConfig}
# Fields added to an existing section after that: (section, field) → default, left out the same way.
_LATER_FIELDS = {("train", "init_from"): None, ("model", "decouple_at"): None, ("model", "logvar"): False,
                 ("model", "aux_head_depth"): None, ("model", "guidance_embed"): False,
                 ("model", "pos_embed"): "sincos", ("probe", "online_batches"): 1,
                 ("train", "async_ckpt"): True, ("train", "micro_batch"): 0, ("train", "spike_guard"): 0.0,
                 ("model", "attention"): "auto",
                 ("model", "time_cond"): "t_and_h", ("objective", "adaptive_reduce"): "mean",
                 ("objective", "time", "fm_time"): "single", ("objective", "guidance", "dropout_style"): "project"}


def without_later_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the sections of ``_LATER_SECTIONS`` and the fields of ``_LATER_FIELDS`` that hold
    their defaults (a copy): the form that is hashed, and the one to compare a config.json written before they
    existed with."""
    out = {k: v for k, v in config.items()
           if not (k in _LATER_SECTIONS and v == dataclasses.asdict(_LATER_SECTIONS[k]()))}
    for path, default in _LATER_FIELDS.items():  # (section, ..., field): a field may sit in a nested section
        out = _without_default(out, path, default)
    return out


def _without_default(tree: dict[str, Any], path: tuple[str, ...], default: Any) -> dict[str, Any]:
    """``tree`` without the field at ``path`` where it holds ``default`` (or is absent); copies along the path."""
    head, *rest = path
    if not rest:
        return {k: v for k, v in tree.items() if k != head} if tree.get(head, default) == default else tree
    if not isinstance(tree.get(head), dict):
        return tree
    return {**tree, head: _without_default(tree[head], tuple(rest), default)}


def config_hash(cfg: Config, length: int = 10) -> str:
    """Short stable hex digest of the canonical JSON form, for run names ``<desc>-<hash>``; a section of
    ``_LATER_SECTIONS`` at its defaults is left out (``without_later_defaults``)."""
    text = json.dumps(without_later_defaults(to_dict(cfg)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------- semantic rules
# Registry names config validation cannot see (model, dataset) and the data path are checked by
# ``alphaflow.train.build.preflight`` before a run starts.

def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _check_types(cfg: Config) -> None:
    """A config built in code may hold anything: every field must already be of its annotated type."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a Config, got {type(cfg).__name__}")
    if _apply(Config(), dataclasses.asdict(cfg)) == cfg:  # raises on values that cannot convert
        return
    given, normal = _flat(dataclasses.asdict(cfg)), _flat(dataclasses.asdict(_apply(Config(), dataclasses.asdict(cfg))))
    key = next((k for k in given if k not in normal or given[k] != normal[k]), None)
    if key is None:  # e.g. a section replaced by a plain dict of the same values
        raise ConfigError("a config built in code holds a value of the wrong type (compare it with from_dict(to_dict(cfg)))")
    tp: Any = Config
    for part in key.split("."):
        tp = _hints(_optional(tp)[0])[part]
    raise ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {given[key]!r} ({type(given[key]).__name__}); "
                      "load_config and from_dict convert, a config built in code must hold the exact types")


# Numeric rules by key: (rule, test). Optional fields may also be null.
_AT_LEAST_ONE = ("conflict.every", "train.steps", "train.batch_size", "train.log_every", "train.ckpt_every", "train.max_nonfinite",
                 "train.threads", "data.resolution", "data.toy_size", "data.stats_samples", "sample.num",
                 "probe.batches", "probe.batch_size", "probe.online_batches", "eval.batch_size", "eval.decode_batch_size")
_AT_LEAST_TWO = ("eval.num_samples", "eval.final_samples")  # a covariance needs two samples
_POSITIVE = ("train.dist_timeout_min", "optim.lr", "optim.eps", "optim.grad_clip", "ema.halflife_steps", "ema.rampup_ratio",
             "model.time_scale", "objective.adaptive_c", "objective.clip")
_NON_NEGATIVE = ("conflict.c", "seed", "probe.chunk_size", "train.micro_batch", "train.keep_every", "train.sample_every", "optim.weight_decay", "optim.warmup_steps",
                 "data.workers", "objective.adaptive_p")
_CHOICES = {"train.device": DEVICES, "train.precision": PRECISIONS, "sample.sampler": SAMPLERS, "conflict.mode": MODES,
            "model.pos_embed": ("sincos", "stored"), "model.attention": ("auto", "math", "triton"),
            "model.time_cond": ("t_and_h", "h"), "objective.adaptive_reduce": ("mean", "sum"),
            "objective.time.fm_time": ("single", "max_of_pair"),
            "objective.guidance.dropout_style": ("project", "official_jax"),
            "log.wandb": WANDB_MODES}


def validate(cfg: Config) -> None:
    """Raise one ``ConfigError`` listing every broken rule, each naming its dotted key."""
    _check_types(cfg)
    problems: list[str] = []

    def get(key: str) -> Any:  # None for a key the chosen objective does not have (e.g. objective.clip for fm)
        return functools.reduce(lambda obj, part: getattr(obj, part, None), key.split("."), cast(object, cfg))

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{key} {rule}, got {get(key)!r}")

    rules: tuple[tuple[tuple[str, ...], str, Callable[[float], bool]], ...] = (
        (_AT_LEAST_ONE, "must be >= 1", lambda v: v >= 1), (_AT_LEAST_TWO, "must be >= 2", lambda v: v >= 2),
        (_POSITIVE, "must be > 0", lambda v: v > 0), (_NON_NEGATIVE, "must be >= 0", lambda v: v >= 0))
    for keys, rule, test in rules:
        for key in keys:
            need(get(key) is None or test(get(key)), key, rule)
    for key, allowed in _CHOICES.items():
        need(get(key) in allowed, key, f"must be one of {list(allowed)}{_did_you_mean(get(key), allowed)}")
    need(0 <= cfg.optim.beta1 < 1, "optim.beta1", "must lie in [0, 1)")
    need(0 <= cfg.optim.beta2 < 1, "optim.beta2", "must lie in [0, 1)")
    need(0 < cfg.sample.t_mid < 1, "sample.t_mid", "must lie in (0, 1)")
    need(all(n >= 1 for n in cfg.sample.nfe), "sample.nfe", "entries must be >= 1")
    need(cfg.sample.sampler != "consistency" or all(n <= 2 for n in cfg.sample.nfe), "sample.nfe",
         "entries must be 1 or 2 with the 'consistency' sampler")
    need(cfg.probe.every >= 0, "probe.every", "must be >= 0")
    need(cfg.probe.every <= 0 or cfg.probe.every % cfg.train.log_every == 0, "probe.every",
         f"must be a multiple of train.log_every ({cfg.train.log_every}) so probes land in a metrics row")
    need(0 <= cfg.probe.ratio_fm < 1, "probe.ratio_fm", "must lie in [0, 1) (L_TCC vanishes on r = t rows)")
    need(cfg.eval.every >= 0, "eval.every", "must be >= 0")
    need(cfg.eval.every <= 0 or cfg.eval.every % cfg.train.log_every == 0, "eval.every",
         f"must be a multiple of train.log_every ({cfg.train.log_every}) so evaluations land in a metrics row")
    need(len(cfg.eval.nfe) >= 1 and all(n >= 1 for n in cfg.eval.nfe), "eval.nfe", "needs entries >= 1")
    need(cfg.sample.sampler != "consistency" or all(n <= 2 for n in cfg.eval.nfe), "eval.nfe",
         "entries must be 1 or 2 with the 'consistency' sampler")
    need(cfg.conflict.every == 1 or not cfg.conflict.per_group, "conflict.every",
         "must be 1 with conflict.per_group=true (reused coefficients are whole-vector)")
    need(cfg.train.spike_guard == 0 or cfg.train.spike_guard > 1, "train.spike_guard",  # finite: the type rule
         "must be 0 (off) or a number > 1 (skip a step whose gradient norm exceeds that many times its running "
         "median; docs/spikes.md)")
    need(cfg.conflict.mode == "none" or not cfg.train.compile, "train.compile",
         f"must be false with conflict.mode={cfg.conflict.mode} (its two backward passes run eagerly)")
    for f in dataclasses.fields(cfg.objective):  # every schedule of an objective is a fraction (α, ratio_fm)
        value = getattr(cfg.objective, f.name)
        if isinstance(value, ScheduleConfig):
            try:
                check_unit_interval(value.resolve(max(cfg.train.steps, 1)), f.name)
            except ValueError as e:
                problems.append(f"objective.{f.name}: {e}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
