"""The ``objective`` config section is a tagged union: each objective's options live with the objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from alphaflow.config import ConfigError, config_hash, from_dict, load_config, to_dict
from alphaflow.objectives import OBJECTIVES, OPTIONS, REGISTRY, Shortcut, objective_from_options
from alphaflow.objectives.base import element_mean
from alphaflow.core.schedules import ScheduleConfig


def test_every_registered_objective_has_options_tagged_with_its_name():
    assert [cls.name for cls in REGISTRY] == list(OBJECTIVES) == list(OPTIONS)
    for name, options in OPTIONS.items():
        assert options().name == name, f"{options.__name__}'s tag must be {name!r}"
        built = objective_from_options(options(), total_steps=100)
        assert type(built) is OBJECTIVES[name]


def test_shortcut_from_the_command_line_trains_with_plain_mse():
    """objective.name=shortcut switches the section to the Shortcut model's options: p = 0 (its documented
    default), not α-Flow's adaptive weight p = 1."""
    cfg = load_config(overrides=["objective.name=shortcut"])
    assert cfg.objective.adaptive_p == 0.0 and cfg.objective.ratio_fm == ScheduleConfig.constant(0.75)
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    assert isinstance(objective, Shortcut) and objective.adaptive_p == 0.0
    net = torch.nn.Conv2d(1, 1, 1)
    wrapped = lambda z, r, t, labels: net(z) * (1 + t - r).view(-1, 1, 1, 1)  # noqa: E731
    x = torch.randn(8, 1, 4, 4)
    terms = objective(wrapped, x, generator=torch.Generator().manual_seed(0))
    plain = element_mean((terms.pred - terms.target) ** 2)
    torch.testing.assert_close(terms.loss, plain)  # the loss is the unweighted regression
    # ... and the user can still ask for the adaptive weight, in either order of the overrides
    for overrides in (["objective.name=shortcut", "objective.adaptive_p=1"], ["objective.adaptive_p=0.5", "objective.name=shortcut"]):
        expected = float(overrides[-1].split("=")[1]) if "adaptive" in overrides[-1] else 0.5
        assert load_config(overrides=overrides).objective.adaptive_p == expected, overrides


def test_switching_objectives_keeps_what_the_user_changed_in_shared_fields():
    cfg = load_config(overrides=["objective.guidance.kappa=0.5", "objective.time.mu=0.0", "objective.name=meanflow"])
    assert (cfg.objective.name, cfg.objective.guidance.kappa, cfg.objective.time.mu) == ("meanflow", 0.5, 0.0)
    assert cfg.objective.ratio_fm == ScheduleConfig.constant(0.75), "an untouched field takes MeanFlow's default"
    assert not hasattr(cfg.objective, "alpha"), "α belongs to α-Flow's section only"
    # in one YAML mapping the tag applies first, whatever the key order
    assert from_dict({"objective": {"ratio_fm": 0.25, "name": "meanflow"}}).objective.ratio_fm.start == 0.25


def test_an_option_of_another_objective_is_refused_with_its_owner():
    with pytest.raises(ConfigError, match=r"'objective.alpha' applies to objective.name=alphaflow, not to 'fm'"):
        load_config(overrides=["objective.name=fm", "objective.alpha=0.5"])
    with pytest.raises(ConfigError, match=r"unknown config key 'objective.alpah'.*did you mean 'objective.alpha'"):
        load_config(overrides=["objective.alpah=0.5"])
    with pytest.raises(ConfigError, match=r"'objective.name' must be one of .* got 'shortcutt' \(did you mean 'shortcut'"):
        load_config(overrides=["objective.name=shortcutt"])
    with pytest.raises(ConfigError, match=r"objective.guidance: guidance window needs 0 <= t_min < t_max"):
        load_config(overrides=["objective.guidance.t_min=0.9", "objective.guidance.t_max=0.5"])


def test_a_run_folder_written_before_the_tagged_union_still_loads():
    """config.json of an earlier version: guidance under objective.cfg, ratio_fm null (the objective's own
    default), α-Flow's alpha/clip/shift on every objective. It loads as today's equivalent config."""
    today = load_config(overrides=["objective.name=meanflow", "objective.guidance.kappa=0.5"])
    old = to_dict(today)
    old["objective"]["cfg"] = old["objective"].pop("guidance")
    old["objective"]["ratio_fm"] = None
    old["objective"].update(alpha=dataclasses.asdict(OPTIONS["alphaflow"]().alpha), clip=4.0, shift="velocity")
    upgraded = from_dict(old)
    assert upgraded == today and config_hash(upgraded) == config_hash(today)


def test_a_new_objective_is_one_class_with_its_options_and_one_registration(monkeypatch, tmp_path):
    """What adding an objective takes: a module with the class and its Options, and one registry entry. Its
    options become config keys of its own, and it trains through the ordinary loop."""
    from dataclasses import dataclass

    from alphaflow import objectives
    from alphaflow.objectives import ObjectiveOptions, Terms
    from alphaflow.objectives.base import regression_components
    from alphaflow.train.loop import train

    @dataclass
    class ScaledFMOptions(ObjectiveOptions):
        name: str = "scaled_fm"
        ratio_fm: ScheduleConfig = dataclasses.field(default_factory=lambda: ScheduleConfig.constant(1.0))
        scale: float = 1.0

    class ScaledFM(objectives.Objective):
        """Flow matching with the target multiplied by ``scale`` (a toy, for this test)."""

        name, Options = "scaled_fm", ScaledFMOptions

        def __init__(self, *, scale: float = 1.0, **kwargs) -> None:
            super().__init__(**kwargs)
            self.scale = scale

        def compute(self, net, x, sample, step):
            z, v = self.guided(net, x, sample)
            pred = net(z, sample.t, sample.t, sample.labels)
            parts = regression_components(pred, self.scale * v, v)
            return Terms(loss=self.weighted(parts["mse"]), components=parts, pred=pred, target=self.scale * v,
                         sample=sample, logs={"alpha": 1.0})

    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    monkeypatch.setitem(objectives.OPTIONS, "scaled_fm", ScaledFMOptions)  # the config reads this dict; undone after
    objectives.register(ScaledFM)
    cfg = load_config(overrides=["objective.name=scaled_fm", "objective.scale=0.5", "model.name=DiT-N/2",
                                 "train.steps=2", "train.log_every=1", "train.batch_size=8", "train.sample_every=0"])
    assert cfg.objective.scale == 0.5 and to_dict(cfg)["objective"]["scale"] == 0.5
    built = objective_from_options(cfg.objective, cfg.train.steps)
    assert isinstance(built, ScaledFM) and built.scale == 0.5
    with pytest.raises(ConfigError, match="'objective.scale' applies to objective.name=scaled_fm, not to 'meanflow'"):
        load_config(overrides=["objective.name=meanflow", "objective.scale=2"])
    result = train(cfg, tmp_path / "run", log=lambda _: None)
    assert result.finished and len(result.run.read_metrics()) == 2
    with pytest.raises(ValueError, match="'meanflow' is taken"):
        objectives.register(type("Other", (ScaledFM,), {"name": "meanflow"}))


def test_a_run_folder_written_before_the_tagged_union_resumes(tmp_path):
    """Nothing computed is lost: a run whose config.json has the earlier form trains on (its file is kept)."""
    import json

    from alphaflow.train.loop import train

    cfg = load_config(overrides=["objective.name=meanflow", "model.name=DiT-N/2", "train.steps=4", "train.log_every=2",
                                 "train.ckpt_every=2", "train.batch_size=8", "train.sample_every=0"])
    run = tmp_path / "run"
    assert not train(cfg, run, stop_at=2, log=lambda _: None).finished
    old = to_dict(cfg)
    old["objective"]["cfg"] = old["objective"].pop("guidance")
    old["objective"].update(ratio_fm=None, alpha=dataclasses.asdict(OPTIONS["alphaflow"]().alpha), clip=4.0,
                            shift="velocity")
    (run / "config.json").write_text(json.dumps(old))
    result = train(cfg, run, log=lambda _: None)
    assert result.finished and result.step == 4 and json.loads((run / "config.json").read_text()) == old
    different = load_config(overrides=["objective.name=meanflow", "model.name=DiT-N/2", "train.steps=8"])
    with pytest.raises(ValueError, match="holds a different config"):
        train(different, run, log=lambda _: None)
