"""Loading a config (defaults ← YAML file or recipe ← overrides), its dict and YAML forms, and its hash.

    cfg = load_config("imagenet-b2", ["train.steps=1000", "objective.ratio_fm=0.25"])

Values in a YAML file or an override parse as YAML (``1e-4``, ``true``, ``null``, ``[1, 2]``) and
are checked against the field's type. A run writes ``dump_yaml(cfg)``'s dict form first;
``config_hash`` names runs in sweeps. ``from_dict`` also reads the config.json of a run written
before the ``objective`` section became a tagged union (``upgrade_legacy``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from alphaflow.config.merge import ConfigError, _apply, _did_you_mean, apply_overrides
from alphaflow.config.rules import validate
from alphaflow.config.schema import Config
from alphaflow.objectives import OPTIONS

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


def upgrade_legacy(data: Mapping) -> dict:
    """The dict form of a config written by an earlier version, in today's form (a copy).

    Earlier versions called the guidance section ``objective.cfg``, wrote ``objective.ratio_fm: null``
    for "the objective's own default", and gave every objective α-Flow's ``alpha``, ``clip`` and ``shift``
    (which only α-Flow read). Today's form is returned unchanged.
    """
    data = copy.deepcopy(dict(data))
    objective = data.get("objective")
    if not isinstance(objective, dict):
        return data
    if "cfg" in objective and "guidance" not in objective:
        objective["guidance"] = objective.pop("cfg")
    if objective.get("ratio_fm", 0) is None:
        del objective["ratio_fm"]
    variant = OPTIONS.get(objective.get("name", "alphaflow"))
    if variant is not None:
        known = {f.name for f in dataclasses.fields(variant)}
        for key in [k for k in objective if k not in known and k in ("alpha", "clip", "shift")]:
            del objective[key]
    return data


def from_dict(data: Mapping) -> Config:
    """A ``Config`` from its (possibly partial) dict form; strict like YAML. Does not validate.

    Accepts the config.json of runs written by earlier versions (``upgrade_legacy``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of config sections, got {type(data).__name__}")
    return _apply(Config(), upgrade_legacy(data))


def to_dict(cfg: Config) -> dict:
    """Plain nested JSON-able dict, every field present, numbers normalised to their annotation
    (so a config built in code and the same config loaded from YAML give the same dict)."""
    return dataclasses.asdict(_apply(Config(), dataclasses.asdict(cfg)))


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


