"""The run configuration: a tree of dataclasses with defaults in code (STYLE principle 5).

A config is built in three layers, each overriding the last:

    defaults (this file: the digits / DiT-T/2 / α-Flow recipe)
      → a YAML file, a nested mapping mirroring the tree (may be partial), or a recipe name
        from ``alphaflow/recipes/`` such as ``imagenet-b2``
      → ``dotted.key=value`` overrides, applied in order; values parse as YAML (``1e-4``,
        ``true``, ``null``, ``[1, 2]``) and are checked against the field's type.

    cfg = load_config("imagenet-b2", ["train.steps=1000", "objective.ratio_fm=0.25"])

Every mistake is a ``ConfigError`` naming the dotted key, raised before anything runs.
``validate`` holds the semantic rules; registry names (model, data, objective, time sampler)
are checked by the trainer, since this module is the lowest layer and imports only stdlib,
yaml and ``alphaflow.schedules``. A run writes ``dump_yaml(cfg)`` as its first file;
``config_hash`` names runs in sweeps.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alphaflow.schedules import Schedule, check_unit_interval

# Closed sets checked by ``validate``. SAMPLERS is ``alphaflow.sampling.SAMPLERS`` plus "auto" (the
# trainer's choice: euler for fm, ode otherwise), spelled out because sampling imports torch; a test
# keeps them equal.
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
UNITS = ("step", "fraction")
SAMPLERS = ("auto", "ode", "consistency", "euler")

RECIPE_DIR = Path(__file__).with_name("recipes")  # a recipe name is the stem of a YAML file here


class ConfigError(ValueError):
    """A config that cannot run: unknown key, wrong type or a value outside its rules."""


# ----------------------------------------------------------------------------- the schema

@dataclass
class ScheduleConfig:
    """A ``Schedule`` (SPEC §4.1) whose window may be given as fractions of the run.

    unit "step": k_start/k_end are steps; "fraction": they are fractions of ``train.steps``.
    A plain number where a schedule is expected means a constant: ``ratio_fm: 0.75``.
    """

    kind: str = "constant"
    start: float = 1.0
    end: float = 0.0
    k_start: float = 0.0
    k_end: float = 0.0
    unit: str = "step"
    gamma: float = 25.0
    clamp: float = 0.0
    discrete: bool = False

    def resolve(self, total_steps: int) -> Schedule:
        """The ``Schedule`` for a run of ``total_steps``: k_* become whole steps (nearest).

        Raises ``ValueError`` (from ``Schedule`` or for a bad unit) naming the field.
        """
        if self.unit not in UNITS:
            raise ValueError(f"unknown schedule unit {self.unit!r}{_did_you_mean(self.unit, UNITS)}; "
                             f"expected one of {list(UNITS)}")
        scale = total_steps if self.unit == "fraction" else 1
        k_start, k_end = self.k_start * scale, self.k_end * scale
        if self.unit == "step" and not (float(k_start).is_integer() and float(k_end).is_integer()):
            raise ValueError(f"with unit 'step' k_start and k_end count whole steps, got {self.k_start}, {self.k_end}"
                             " (use unit 'fraction' for fractions of train.steps)")
        return Schedule(kind=self.kind, start=float(self.start), end=float(self.end), k_start=round(k_start),
                        k_end=round(k_end), gamma=float(self.gamma), clamp=float(self.clamp),
                        discrete=self.discrete)


def _alpha_default() -> ScheduleConfig:
    # The paper's curriculum (SPEC §4.1) over the whole run: α = 1 → 0, γ = 25, η = 5e-3.
    return ScheduleConfig(kind="sigmoid", start=1.0, end=0.0, k_start=0.0, k_end=1.0, unit="fraction",
                          gamma=25.0, clamp=5e-3)


@dataclass
class TimeConfig:
    """The time sampler (SPEC §1.4): logit-normal(mu, sigma), or uniform(low, high)."""

    name: str = "logit_normal"
    mu: float = -0.4
    sigma: float = 1.0
    low: float = 0.0
    high: float = 1.0


@dataclass
class CFGConfig:
    """Guidance baked into training (SPEC §1.5): ṽ = ω·v + κ·u(c) + (1 − ω − κ)·u(∅) in (t_min, t_max)."""

    omega: float = 1.0
    kappa: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0
    label_dropout: float = 0.0


@dataclass
class ObjectiveConfig:
    """Which loss and its knobs. ``alpha``, ``clip`` and ``shift`` are read by α-Flow only."""

    name: str = "alphaflow"  # fm | tfm | meanflow | shortcut | alphaflow
    alpha: ScheduleConfig = field(default_factory=_alpha_default)
    ratio_fm: ScheduleConfig | None = None  # share of r = t rows; None: the objective's own default
    time: TimeConfig = field(default_factory=TimeConfig)
    cfg: CFGConfig = field(default_factory=CFGConfig)
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    clip: float | None = 4.0
    shift: str = "velocity"


@dataclass
class ModelConfig:
    name: str = "DiT-T/2"  # a key of alphaflow.models.MODELS
    time_scale: float = 1.0


@dataclass
class DataConfig:
    name: str = "digits"
    path: str | None = None
    resolution: int = 256
    toy: str = "moons"
    toy_size: int = 8192
    stats_samples: int = 2048  # samples for the latent mean/std (SPEC §6.4)
    workers: int = 0
    vae_path: str | None = None


@dataclass
class OptimConfig:
    """Adam (SPEC §6.3); lr is constant after a linear warm-up of ``warmup_steps``."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 16.0


@dataclass
class EMAConfig:
    """EMA with half-life in steps and ramp-up min(halflife, rampup_ratio·step) (SPEC §6.3)."""

    halflife_steps: float = 500.0
    rampup_ratio: float | None = 0.05


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 48  # global batch, split across ranks
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    log_every: int = 50
    ckpt_every: int = 500  # rolling "latest" checkpoint
    keep_every: int = 0  # permanent checkpoints every k steps (0 = none)
    sample_every: int = 500  # EMA sample grids (0 = only at the end)
    max_nonfinite: int = 20  # stop after this many consecutive non-finite losses
    threads: int | None = None  # torch CPU threads
    compile: bool = False
    tf32: bool = True  # CUDA: TF32 tensor cores for the fp32 matmuls and convolutions (sampling, probes, tangents)
    dist_timeout_min: float = 60.0  # process-group timeout; rank 0's in-run evaluation must fit inside it


@dataclass
class SampleConfig:
    """Sample grids during and after training (SPEC §1.6)."""

    num: int = 64
    nfe: list[int] = field(default_factory=lambda: [1, 2])
    sampler: str = "auto"  # auto (euler for fm, ode otherwise) | ode | consistency | euler
    t_mid: float = 0.5
    seed: int = 0


@dataclass
class ProbeConfig:
    """Online gradient probes (SPEC §5): every ``every`` steps (a multiple of train.log_every; 0 = off),
    on the step's training batch with a fresh (t, r, ε) holding a ``ratio_fm`` share of r = t rows."""

    every: int = 0
    ratio_fm: float = 0.0
    parts: bool = False   # also per DiT block / embedder / final layer
    loss: bool = True     # also the training objective's own loss as a term
    seed: int = 0
    final: bool = False   # at the end, the offline protocol (``alphaflow probe``) on the last checkpoint
    batches: int = 16     # ... with this many fresh batches
    batch_size: int = 64  # ... of this size
    chunk_size: int = 0   # rows per forward/backward chunk of a probe (0: the whole batch); same numbers, less memory


@dataclass
class EvalConfig:
    """Sample quality during and after training (SPEC §7): the Fréchet distance of EMA samples (fixed seeds,
    ``sample.sampler`` at ``sample.t_mid``) to the training data's cached reference statistics.

    Every ``every`` steps (a multiple of train.log_every; 0 = off) ``num_samples`` samples per NFE give
    ``eval_<metric>_nfe<k>`` in that metrics.jsonl row; with ``final`` the run ends by appending
    ``final_samples``-sample rows to eval.jsonl, as ``alphaflow eval`` does. ``metric``: the feature
    extractor (None: the data's default, e.g. the digits classifier on the embedded default).
    """

    every: int = 0
    num_samples: int = 500
    final: bool = False
    final_samples: int = 2000
    nfe: list[int] = field(default_factory=lambda: [1, 2])
    metric: str | None = None
    seed: int = 0
    batch_size: int = 256  # samples generated per batch
    decode_batch_size: int = 32  # latent runs: samples decoded by the VAE at once


@dataclass
class Config:
    """The whole run. ``Config()`` is the embedded default recipe (``recipes/digits.yaml``)."""

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ----------------------------------------------------------------------------- typed merging

@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation (the annotations are strings under __future__)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _type_name(tp: Any) -> str:
    inner, optional = _optional(tp)
    if optional:
        return _type_name(inner) + (" or null" if dataclasses.is_dataclass(inner) else " | None")
    if typing.get_origin(tp) is list:
        return f"list[{typing.get_args(tp)[0].__name__}]"
    if tp is ScheduleConfig:
        return "a schedule (a number for a constant, or a mapping of ScheduleConfig fields)"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return tp.__name__


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""


def _all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the tree, sections included, e.g. 'objective.alpha.k_end'."""
    keys = []
    for name, tp in _hints(cls or Config).items():
        keys.append(prefix + name)
        inner, _ = _optional(tp)
        if dataclasses.is_dataclass(inner):
            keys += _all_keys(inner, f"{prefix}{name}.")
    return keys


def _unknown_key(full: str, cls: type, prefix: str) -> ConfigError:
    near = difflib.get_close_matches(full.rsplit(".", 1)[-1], list(_hints(cls)), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(prefix + n) for n in near)}?)" if near else ""
    if not hint:  # the key may live in another section, e.g. 'steps' → 'train.steps'
        leaf = full.rsplit(".", 1)[-1]
        same_leaf = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf]
        hint = (f" (did you mean {' or '.join(repr(k) for k in same_leaf[:3])}?)" if same_leaf
                else _did_you_mean(full, _all_keys()))
    where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
    return ConfigError(f"unknown config key {full!r}{hint}; valid keys {where}: {', '.join(_hints(cls))}")


def _coerce(value: Any, tp: Any, key: str, current: Any = None) -> Any:
    """``value`` checked against annotation ``tp``; mappings merge into ``current`` (a dataclass)."""
    bad = ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    tp, optional = _optional(tp)
    if value is None and optional:
        return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):  # partial: merge into what is there, or into the defaults
            return _apply(current if isinstance(current, tp) else tp(), value, key + ".")
        if tp is ScheduleConfig:  # a plain number is a constant schedule
            try:
                v = _coerce(value, float, key)
            except ConfigError:
                raise bad from None
            return ScheduleConfig(kind="constant", start=v, end=v)
        raise bad
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise bad
        return value
    if tp in (int, float):
        number = value
        if isinstance(number, str):  # YAML 1.1 reads '1e-4' as a string
            try:
                number = float(number.strip())
            except ValueError:
                raise bad from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise bad
        if tp is int:
            if isinstance(number, float) and not number.is_integer():
                raise bad
            return int(number)
        return float(number)
    raise TypeError(f"config.py cannot handle the annotation {tp!r} of {key!r}")  # a schema bug, not user input


def _apply(obj: Any, data: Mapping, prefix: str = "") -> Any:
    """A copy of dataclass ``obj`` with the (possibly nested, partial) keys of ``data`` set."""
    hints, changes = _hints(type(obj)), {}
    for name, value in data.items():
        full = f"{prefix}{name}"
        if not isinstance(name, str) or name not in hints:
            raise _unknown_key(full, type(obj), prefix)
        changes[name] = _coerce(value, hints[name], full, current=getattr(obj, name))
    return dataclasses.replace(obj, **changes)


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply ``dotted.key=value`` strings in order (values parse as YAML). Does not validate."""
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"malformed override {text!r}: expected the form key=value, e.g. train.steps=1000")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. an unbalanced bracket in a path): take the text as is
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = _apply(cfg, nested)
    return cfg


# ----------------------------------------------------------------------------- loading and writing

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


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults ← YAML file or recipe name ← ``key=value`` overrides, then ``validate``."""
    cfg = Config()
    if path is not None:
        file = _find(path)
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML: {e}") from None
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


def from_dict(data: Mapping) -> Config:
    """A ``Config`` from its (possibly partial) dict form; strict like YAML. Does not validate."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of config sections, got {type(data).__name__}")
    return _apply(Config(), data)


def to_dict(cfg: Config) -> dict:
    """Plain nested JSON-able dict, every field present, numbers normalised to their annotation
    (so a config built in code and the same config loaded from YAML give the same dict)."""
    return dataclasses.asdict(from_dict(dataclasses.asdict(cfg)))


class _Dumper(yaml.SafeDumper):
    """Block mappings, one-line lists (``nfe: [1, 2]``)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def dump_yaml(cfg: Config) -> str:
    """The YAML text of the whole config; ``load_config`` of it gives ``cfg`` back."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def config_hash(cfg: Config, length: int = 10) -> str:
    """Short stable hex digest of the canonical JSON form, for run names ``<desc>-<hash>``."""
    text = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------- semantic rules

def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _check_types(cfg: Config) -> None:
    """A config built in code may hold anything: every field must already be of its annotated type."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a Config, got {type(cfg).__name__}")
    if from_dict(dataclasses.asdict(cfg)) == cfg:  # raises on values that cannot convert
        return
    given, normal = _flat(dataclasses.asdict(cfg)), _flat(to_dict(cfg))
    key = next((k for k in given if k not in normal or given[k] != normal[k]), None)
    if key is None:  # e.g. a section replaced by a plain dict of the same values
        raise ConfigError("a config built in code holds a value of the wrong type (compare it with from_dict(to_dict(cfg)))")
    tp: Any = Config
    for part in key.split("."):
        tp = _hints(_optional(tp)[0])[part]
    raise ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {given[key]!r} ({type(given[key]).__name__}); "
                      "load_config and from_dict convert, a config built in code must hold the exact types")


# Numeric rules by key: (rule, test). Optional fields may also be null.
_AT_LEAST_ONE = ("train.steps", "train.batch_size", "train.log_every", "train.ckpt_every", "train.max_nonfinite",
                 "train.threads", "data.resolution", "data.toy_size", "data.stats_samples", "sample.num",
                 "probe.batches", "probe.batch_size", "eval.batch_size", "eval.decode_batch_size")
_AT_LEAST_TWO = ("eval.num_samples", "eval.final_samples")  # a covariance needs two samples
_POSITIVE = ("train.dist_timeout_min", "optim.lr", "optim.eps", "optim.grad_clip", "ema.halflife_steps", "ema.rampup_ratio",
             "model.time_scale", "objective.adaptive_c", "objective.clip")
_NON_NEGATIVE = ("seed", "probe.chunk_size", "train.keep_every", "train.sample_every", "optim.weight_decay", "optim.warmup_steps",
                 "data.workers", "objective.adaptive_p")
_CHOICES = {"train.device": DEVICES, "train.precision": PRECISIONS, "sample.sampler": SAMPLERS}


def validate(cfg: Config) -> None:
    """Raise one ``ConfigError`` listing every broken rule, each naming its dotted key."""
    _check_types(cfg)
    problems: list[str] = []

    def get(key: str) -> Any:
        return functools.reduce(getattr, key.split("."), cfg)

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{key} {rule}, got {get(key)!r}")

    for keys, rule, test in ((_AT_LEAST_ONE, "must be >= 1", lambda v: v >= 1),
                             (_AT_LEAST_TWO, "must be >= 2", lambda v: v >= 2),
                             (_POSITIVE, "must be > 0", lambda v: v > 0),
                             (_NON_NEGATIVE, "must be >= 0", lambda v: v >= 0)):
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
    for key in ("objective.alpha", "objective.ratio_fm"):
        if get(key) is None:
            continue
        try:  # α and ratio_fm are both fractions, so both ends must lie in [0, 1]
            check_unit_interval(get(key).resolve(max(cfg.train.steps, 1)), key.split(".")[-1])
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
