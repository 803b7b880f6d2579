"""Optional packages a config asks for (the ``trackers`` extra), checked before anything runs: by
``alphaflow.train.build.preflight`` (the command line and the sweeps) and by ``train`` itself (docs/trackers.md)."""

from __future__ import annotations

import importlib.util

from alphaflow.config.merge import ConfigError
from alphaflow.config.schema import Config

TRACKER_PACKAGES = {"log.tensorboard": "tensorboard", "log.wandb": "wandb"}  # a tracker's key → the module it needs
TRACKERS_INSTALL = "pip install 'alphaflow[trackers]'"


def check_trackers(cfg: Config) -> None:
    """Refuse a tracker that is asked for but not installed, naming the key and the install command."""
    wanted = {"log.tensorboard": cfg.log.tensorboard, "log.wandb": cfg.log.wandb != "disabled"}
    for key, package in TRACKER_PACKAGES.items():
        if wanted[key] and importlib.util.find_spec(package) is None:
            setting = "true" if key == "log.tensorboard" else cfg.log.wandb
            raise ConfigError(f"{key}={setting} needs the {package!r} package, which is not installed: "
                              f"{TRACKERS_INSTALL}")
