"""The semantic rules of a config: ``validate`` raises one ``ConfigError`` listing every broken rule.

Registry names that config validation cannot see (model, dataset) and the data path are checked by
``alphaflow.build.preflight`` before a run starts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from alphaflow.config.merge import ConfigError, _apply, _did_you_mean, _hints, _optional, _type_name
from alphaflow.config.schema import DEVICES, PRECISIONS, SAMPLERS, Config
from alphaflow.schedules import ScheduleConfig, check_unit_interval


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
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

    def get(key: str) -> Any:  # None for a key the chosen objective does not have (e.g. objective.clip for fm)
        return functools.reduce(lambda obj, part: getattr(obj, part, None), key.split("."), cfg)

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
    for f in dataclasses.fields(cfg.objective):  # every schedule of an objective is a fraction (α, ratio_fm)
        value = getattr(cfg.objective, f.name)
        if isinstance(value, ScheduleConfig):
            try:
                check_unit_interval(value.resolve(max(cfg.train.steps, 1)), f.name)
            except ValueError as e:
                problems.append(f"objective.{f.name}: {e}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
