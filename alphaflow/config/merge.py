"""Typed merging of nested mappings and ``dotted.key=value`` overrides into the config tree.

Every mistake is a ``ConfigError`` naming the dotted key, with close matches suggested. A tagged
union (``schema.TAGGED``: the ``objective`` section) picks its variant from the tag (``name``) first;
switching the tag keeps the fields both variants share that were changed from the old variant's
defaults, and takes the new variant's defaults for the rest (so ``objective.name=shortcut`` trains with
the Shortcut model's own weighting).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

import yaml

from alphaflow.config.schema import TAGGED, Config
from alphaflow.run.errors import UsageError
from alphaflow.core.schedules import ScheduleConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Section = TypeVar("_Section", bound="DataclassInstance")  # a config section (a dataclass instance)


class ConfigError(UsageError):
    """A config that cannot run: unknown key, wrong type or a value outside its rules."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation (the annotations are strings under __future__)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_type(tp: Any) -> TypeGuard[type[Any]]:
    """``dataclasses.is_dataclass`` of an annotation, which is a class, never an instance."""
    return dataclasses.is_dataclass(tp)


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
    if _dataclass_type(tp):
        return f"a mapping of {tp.__name__} fields"
    name: str = tp.__name__  # a class: int, float, str, bool
    return name


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    near = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""


def _variants(tp: Any) -> list[type]:
    """The classes a section of annotation ``tp`` may hold: the variants of a tagged union, else ``tp``."""
    return list(TAGGED[tp][1].values()) if tp in TAGGED else [tp]


def _all_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the tree, sections included, e.g. 'objective.alpha.k_end' (every variant's)."""
    keys: list[str] = []
    for name, tp in _hints(cls or Config).items():
        keys.append(prefix + name)
        inner, _ = _optional(tp)
        if dataclasses.is_dataclass(inner):
            for variant in _variants(inner):
                keys += [k for k in _all_keys(variant, f"{prefix}{name}.") if k not in keys]
    return keys


def _tag_of(cls: type) -> tuple[str, str] | None:
    """(tag field, tag value) of a variant class of a tagged union, else None."""
    for base, (tag, variants) in TAGGED.items():
        for value, variant in variants.items():
            if variant is cls:
                return tag, value
    return None


def _unknown_key(full: str, cls: type, prefix: str) -> ConfigError:
    near = difflib.get_close_matches(full.rsplit(".", 1)[-1], list(_hints(cls)), n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(prefix + n) for n in near)}?)" if near else ""
    if not hint:  # the key may live in another section, e.g. 'steps' → 'train.steps'
        leaf = full.rsplit(".", 1)[-1]
        same_leaf = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf]
        hint = (f" (did you mean {' or '.join(repr(k) for k in same_leaf[:3])}?)" if same_leaf
                else _did_you_mean(full, _all_keys()))
    where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
    tagged = _tag_of(cls)
    if tagged:
        tag, value = tagged
        base = next(b for b in TAGGED if issubclass(cls, b))
        owners = [v for v, variant in TAGGED[base][1].items() if full.rsplit(".", 1)[-1] in _hints(variant)]
        if owners:
            return ConfigError(f"config key {full!r} applies to {prefix}{tag}={' or '.join(owners)}, not to {value!r}; "
                               f"remove it or set {prefix}{tag} first")
        where += f" ({prefix}{tag}={value})"
    return ConfigError(f"unknown config key {full!r}{hint}; valid keys {where}: {', '.join(_hints(cls))}")


def _coerce(value: Any, tp: Any, key: str, current: Any = None) -> Any:
    """``value`` checked against annotation ``tp``; mappings merge into ``current`` (a dataclass)."""
    bad = ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    tp, optional = _optional(tp)
    if value is None and optional:
        return None
    if _dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping) and tp in TAGGED:
            return _apply_tagged(tp, current, value, key + ".")
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


def _apply(obj: _Section, data: Mapping[str, Any], prefix: str = "") -> _Section:
    """A copy of dataclass ``obj`` with the (possibly nested, partial) keys of ``data`` set."""
    hints, changes = _hints(type(obj)), {}
    for name, value in data.items():
        full = f"{prefix}{name}"
        if not isinstance(name, str) or name not in hints:
            raise _unknown_key(full, type(obj), prefix)
        changes[name] = _coerce(value, hints[name], full, current=getattr(obj, name))
    try:
        return dataclasses.replace(obj, **changes)
    except ValueError as exc:  # a section that checks itself (e.g. the guidance window)
        raise ConfigError(f"{prefix[:-1] or 'config'}: {exc}") from None


def _apply_tagged(base: type, current: Any, data: Mapping[str, Any], prefix: str) -> Any:
    """Merge ``data`` into a tagged-union section: the tag picks the variant before any other key applies."""
    tag, variants = TAGGED[base]
    current = current if isinstance(current, base) else None
    name = data.get(tag, getattr(current, tag, None))
    if not isinstance(name, str) or name not in variants:
        raise ConfigError(f"config key {prefix + tag!r} must be one of {sorted(variants)}, got {name!r}"
                          f"{_did_you_mean(str(name), sorted(variants))}")
    cls = variants[name]
    if type(current) is not cls:
        fresh, kept = cls(), {}
        if current is not None:  # carry over what the user changed in a field both variants have
            old_defaults = type(current)()
            kept = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)
                    if f.name != tag and f.name in _hints(cls) and getattr(current, f.name) != getattr(old_defaults, f.name)}
        current = dataclasses.replace(fresh, **kept)
    return _apply(current, {k: v for k, v in data.items() if k != tag}, prefix)


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


