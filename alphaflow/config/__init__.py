"""The run configuration: a tree of dataclasses with defaults in code.

A config is built in three layers, each overriding the last:

    defaults (``schema.Config()``: the digits / DiT-T/2 / α-Flow recipe)
      → a YAML file, a nested mapping mirroring the tree (may be partial), or a recipe name
        from ``alphaflow/recipes/`` such as ``imagenet-b2``
      → ``dotted.key=value`` overrides, applied in order

    cfg = load_config("imagenet-b2", ["train.steps=1000", "objective.ratio_fm=0.25"])

``schema`` holds the tree (the ``objective`` section is the named objective's ``Options``), ``merge``
the typed merging, ``loading`` loading, the semantic rules, the dict/YAML forms and the hash.
Every mistake is a ``ConfigError`` naming the dotted key, raised before anything runs.
"""

from alphaflow.config.loading import (RECIPE_DIR, config_hash, dump_yaml, from_dict, load_config, read_yaml,
                                      to_dict, upgrade_legacy, validate, without_later_defaults)
from alphaflow.config.merge import ConfigError, apply_overrides
from alphaflow.config.schema import (DEVICES, PRECISIONS, SAMPLERS, Config, DataConfig, EMAConfig, EvalConfig,
                                     ModelConfig, OptimConfig, ProbeConfig, SampleConfig, TrainConfig)
from alphaflow.objectives import Guidance, ObjectiveOptions
from alphaflow.core.schedules import ScheduleConfig
from alphaflow.core.timesteps import TimeConfig

__all__ = ["Config", "ConfigError", "DataConfig", "EMAConfig", "EvalConfig", "Guidance", "ModelConfig",
           "ObjectiveOptions", "OptimConfig", "ProbeConfig", "RECIPE_DIR", "SampleConfig", "ScheduleConfig",
           "TimeConfig", "TrainConfig", "DEVICES", "PRECISIONS", "SAMPLERS", "apply_overrides", "config_hash",
           "dump_yaml", "from_dict", "load_config", "read_yaml", "to_dict", "upgrade_legacy", "validate", "without_later_defaults"]
