"""The config tree: defaults, YAML, dotted overrides, errors that name the key, recipes (STYLE principle 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alphaflow.config import (RECIPE_DIR, SAMPLERS, Config, ConfigError, ScheduleConfig, apply_overrides,
                              config_hash, dump_yaml, from_dict, load_config, to_dict, validate)
from alphaflow.recipes import RECIPES
from alphaflow.core.schedules import Schedule


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path=None, overrides=()) -> str:
    """The message of the ConfigError that load_config must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ----------------------------------------------------------------------------- defaults and YAML

def test_defaults_are_the_embedded_recipe():
    cfg = load_config()
    assert cfg == Config()
    assert (cfg.data.name, cfg.model.name, cfg.objective.name) == ("digits", "DiT-T/2", "alphaflow")
    assert cfg.objective.ratio_fm == ScheduleConfig.constant(0.5) and cfg.sample.nfe == [1, 2]
    # α: the paper's sigmoid (γ = 25, η = 5e-3) over the whole run
    assert cfg.objective.alpha.resolve(cfg.train.steps) == Schedule("sigmoid", 1.0, 0.0, 0, 1500, 25.0, 5e-3)
    assert Config().sample.nfe is not Config().sample.nfe, "list defaults must not be shared between instances"


def test_partial_yaml_merges_into_defaults(tmp_path):
    path = write(tmp_path, "train:\n  steps: 100\nobjective:\n  alpha: {k_end: 0.5}\n  ratio_fm: 0.25\n")
    cfg = load_config(path)
    assert cfg.train.steps == 100 and cfg.train.batch_size == 48
    assert cfg.objective.alpha.kind == "sigmoid" and cfg.objective.alpha.k_end == 0.5, "a nested mapping merges"
    assert cfg.objective.ratio_fm == ScheduleConfig(kind="constant", start=0.25, end=0.25)
    assert load_config(write(tmp_path, "# only a comment\n", "empty.yaml")) == Config()


# ----------------------------------------------------------------------------- overrides

def test_overrides_of_every_type():
    cfg = load_config(overrides=[
        "train.steps=200", "optim.lr=1e-4", "optim.beta1=0", "train.compile=true", "model.name=DiT-N/2",
        "data.path=/data/x", "optim.grad_clip=null", "train.threads=2", "sample.nfe=[1, 2, 4]",
        "objective.clip=null", "objective.guidance.kappa=0.5", "ema.halflife_steps=6931",
    ])
    assert cfg.train.steps == 200 and type(cfg.train.steps) is int
    assert cfg.optim.lr == 1e-4 and type(cfg.optim.lr) is float, "YAML 1.1 leaves '1e-4' a string: still a float"
    assert cfg.optim.beta1 == 0.0 and type(cfg.optim.beta1) is float, "an int is a float where a float is expected"
    assert cfg.train.compile is True and cfg.model.name == "DiT-N/2" and cfg.data.path == "/data/x"
    assert cfg.optim.grad_clip is None and cfg.objective.clip is None and cfg.train.threads == 2
    assert cfg.sample.nfe == [1, 2, 4] and cfg.objective.guidance.kappa == 0.5 and cfg.ema.halflife_steps == 6931.0


def test_override_order_and_whole_sections():
    cfg = load_config(overrides=["train.steps=10", "train.steps=20", "objective.guidance={omega: 0.2, kappa: 0.92}"])
    assert cfg.train.steps == 20
    assert (cfg.objective.guidance.omega, cfg.objective.guidance.kappa, cfg.objective.guidance.t_max) == (0.2, 0.92, 1.0)


def test_integral_float_is_an_int():
    assert load_config(overrides=["train.steps=4e5"]).train.steps == 400_000
    assert load_config(overrides=["train.steps=1000.0"]).train.steps == 1000


def test_scalar_means_a_constant_schedule():
    cfg = load_config(overrides=["objective.ratio_fm=0.75", "objective.alpha=0.5"])
    assert cfg.objective.ratio_fm == ScheduleConfig(kind="constant", start=0.75, end=0.75)
    assert cfg.objective.alpha.resolve(cfg.train.steps)(1234) == 0.5


def test_key_under_a_null_optional_section_instantiates_its_defaults():
    cfg = load_config(overrides=["objective.ratio_fm.kind=linear", "objective.ratio_fm.start=0.75",
                                 "objective.ratio_fm.end=0.25", "objective.ratio_fm.k_end=100"])
    assert cfg.objective.ratio_fm == ScheduleConfig(kind="linear", start=0.75, end=0.25, k_end=100.0)
    with pytest.raises(ConfigError, match="'objective.ratio_fm' expects a schedule"):
        load_config(overrides=["objective.ratio_fm=null"])  # every objective has its own default, shown in the config


def test_fraction_unit_resolves_to_steps():
    cfg = load_config(overrides=["train.steps=1000", "objective.alpha.k_start=0.25", "objective.alpha.k_end=0.5"])
    sched = cfg.objective.alpha.resolve(cfg.train.steps)
    assert (sched.k_start, sched.k_end) == (250, 500) and type(sched.k_end) is int
    steps = load_config(overrides=["objective.alpha.unit=step", "objective.alpha.k_end=400"]).objective.alpha
    assert steps.resolve(3000).k_end == 400


# ----------------------------------------------------------------------------- errors that name the key

def test_unknown_key_suggests_the_close_one():
    assert "unknown config key 'train.step' (did you mean 'train.steps'?)" in error(overrides=["train.step=5"])
    assert "'objective.alpha.k_end'" in error(overrides=["objective.alpha.kend=5"])
    assert "'train.steps'" in error(overrides=["steps=5"]), "a key in the wrong section points to the right one"
    assert "'optim'" in error(overrides=["optm.lr=1"])


def test_unknown_yaml_key_names_the_file_and_the_key(tmp_path):
    path = write(tmp_path, "train:\n  batch_sise: 8\n")
    message = error(path)
    assert str(path) in message and "unknown config key 'train.batch_sise'" in message
    assert "(did you mean 'train.batch_size'?)" in message


@pytest.mark.parametrize("override, expected, given", [
    ("train.steps=abc", "int", "'abc'"),
    ("train.steps=1.5", "int", "1.5"),
    ("train.steps=true", "int", "True"),
    ("train.compile=3", "bool", "3"),
    ("optim.lr=fast", "float", "'fast'"),
    ("model.name=null", "str", "None"),
    ("sample.nfe=2", "list[int]", "2"),
    ("sample.nfe=[1, 2.5]", "int", "2.5"),
    ("objective.ratio_fm=high", "schedule", "'high'"),
    ("train=5", "TrainConfig", "5"),
])
def test_wrong_type_names_key_type_and_value(override, expected, given):
    message = error(overrides=[override])
    key = override.split("=")[0]
    assert f"'{key}" in message and expected in message and given in message, message


def test_malformed_override_shows_the_expected_form():
    for bad in ("train.steps", "=5", "train..steps=5"):
        assert "key=value" in error(overrides=[bad])


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- train\n- steps\n")
    message = error(path)
    assert str(path) in message and "mapping" in message


def test_unknown_file_or_recipe():
    assert "did you mean 'cifar10'" in error("cifar")


# ----------------------------------------------------------------------------- semantic rules

def test_semantic_errors_name_the_key():
    assert "train.steps must be >= 1, got 0" in error(overrides=["train.steps=0"])
    assert "optim.lr must be > 0" in error(overrides=["optim.lr=0"])
    assert "train.device must be one of" in error(overrides=["train.device=cdua"])
    assert "(did you mean 'cuda'?)" in error(overrides=["train.device=cdua"])
    assert "sample.nfe entries must be >= 1" in error(overrides=["sample.nfe=[0, 1]"])
    assert "sample.sampler" in error(overrides=["sample.sampler=heun"])
    assert "objective.alpha" in error(overrides=["objective.alpha.unit=fractoin"])


def test_all_problems_are_reported_at_once():
    message = error(overrides=["train.steps=0", "train.batch_size=0", "train.precision=fp16"])
    assert "train.steps" in message and "train.batch_size" in message and "train.precision" in message


def test_bad_schedules_name_the_key():
    message = error(overrides=["objective.alpha.kind=sigmoidd"])
    assert "objective.alpha" in message and "did you mean sigmoid" in message
    assert "objective.alpha" in error(overrides=["objective.alpha.start=1.5"])
    assert "objective.ratio_fm" in error(overrides=["objective.ratio_fm=1.2"])
    assert "objective.ratio_fm" in error(overrides=["objective.ratio_fm.kind=linear"]), "linear needs k_end > k_start"
    # a window that rounds to zero steps on a short run
    assert "objective.alpha" in error(overrides=["train.steps=3", "objective.alpha.k_start=0.5",
                                                 "objective.alpha.k_end=0.6"])


def test_validate_checks_a_config_built_in_code():
    cfg = Config()
    cfg.train.steps = -1
    with pytest.raises(ConfigError, match="train.steps"):
        validate(cfg)
    cfg = Config()
    cfg.train.batch_size = "64"
    with pytest.raises(ConfigError, match="'train.batch_size' expects int"):
        validate(cfg)
    validate(Config())


# ----------------------------------------------------------------------------- round trips and hashes

def test_dict_round_trip_is_exact():
    for cfg in (Config(), load_config(overrides=["objective.ratio_fm.kind=linear", "objective.ratio_fm.k_end=10",
                                                 "sample.nfe=[1, 2, 80]", "optim.grad_clip=null"])):
        d = to_dict(cfg)
        json.dumps(d)  # plain data
        assert from_dict(d) == cfg and from_dict(json.loads(json.dumps(d))) == cfg


def test_from_dict_is_strict():
    with pytest.raises(ConfigError, match="unknown config key 'train.step'"):
        from_dict({"train": {"step": 5}})


def test_yaml_dump_round_trip(tmp_path):
    cfg = load_config("imagenet-xl2-cfg", ["optim.lr=3e-5"])
    assert load_config(write(tmp_path, dump_yaml(cfg))) == cfg


def test_code_built_numbers_normalise():
    cfg = Config()
    cfg.ema.halflife_steps = 6931  # an int in a float field
    loaded = load_config(overrides=["ema.halflife_steps=6931.0"])
    assert to_dict(cfg) == to_dict(loaded) and config_hash(cfg) == config_hash(loaded)


def test_config_hash_is_stable_and_discriminates():
    h = config_hash(Config())
    assert len(h) == 10 and int(h, 16) >= 0
    assert config_hash(Config()) == h
    assert config_hash(load_config(overrides=["train.steps=3001"])) != h
    code = "from alphaflow.config import Config, config_hash; print(config_hash(Config()))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == h, "the hash must not depend on the process (e.g. hash randomisation)"


def test_apply_overrides_without_validation():
    cfg = apply_overrides(Config(), ["train.steps=0"])
    assert cfg.train.steps == 0 and Config().train.steps == 1500, "overrides return a copy"


# ----------------------------------------------------------------------------- recipes

def test_recipe_registry_matches_the_folder():
    assert RECIPES == {p.stem: p for p in RECIPE_DIR.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_loads_and_cites_its_source(name):
    cfg = load_config(name)
    assert load_config(RECIPES[name]) == cfg, "a name and its path load the same config"
    assert load_config(f"{name}.yaml") == cfg
    lines = RECIPES[name].read_text().splitlines()
    header = [line for line in lines[: next(i for i, s in enumerate(lines) if not s.startswith("#"))]]
    assert header[0].startswith(f"# {name}:") and "arXiv 2510.20771" in " ".join(header), "each recipe cites its source"


def test_digits_recipe_is_the_default():
    assert load_config("digits") == Config()


def test_imagenet_recipes_follow_the_paper():
    b2 = load_config("imagenet-b2")
    alpha = b2.objective.alpha.resolve(b2.train.steps)
    assert (b2.model.name, b2.train.batch_size, b2.train.steps, b2.optim.lr) == ("DiT-B/2", 256, 400_000, 1e-4)
    assert (alpha.kind, alpha.k_start, alpha.k_end, alpha.gamma, alpha.clamp) == ("sigmoid", 0, 400_000, 25.0, 5e-3)
    assert b2.objective.ratio_fm.start == 0.5 and b2.ema.halflife_steps == 6931 and b2.optim.grad_clip == 16
    # docs/objectives.md#the-alpha-curriculum: α = 1 until ≈ 115.3K, 0.5 at 200K, 0 from ≈ 284.7K
    assert alpha(115_000) == 1.0 and alpha(200_000) == pytest.approx(0.5) and alpha(285_000) == 0.0
    cfg = load_config("imagenet-b2-cfg").objective
    assert (cfg.guidance.omega, cfg.guidance.kappa, cfg.guidance.label_dropout, cfg.ratio_fm.start) == (1.0, 0.5, 0.1, 0.25)
    xl = load_config("imagenet-xl2-cfg")
    a = xl.objective.alpha.resolve(xl.train.steps)
    assert (xl.model.name, a.k_start, a.k_end, xl.objective.guidance.t_max) == ("DiT-XL/2", 600_000, 1_000_000, 0.75)
    assert (xl.sample.sampler, xl.sample.t_mid) == ("consistency", 0.55)
    mf, fm = load_config("imagenet-meanflow-b2"), load_config("imagenet-fm-b2")
    assert (mf.objective.name, mf.objective.ratio_fm.start) == ("meanflow", 0.75)
    assert (fm.objective.name, fm.objective.ratio_fm) == ("fm", ScheduleConfig.constant(1.0))
    assert (fm.sample.sampler, fm.sample.nfe) == ("euler", [1, 2, 80])


def test_recipe_yaml_is_plain_yaml():
    for path in RECIPES.values():
        assert isinstance(yaml.safe_load(path.read_text()), dict)


def test_sampler_names_match_the_sampling_registry():
    from alphaflow.core.sampling import SAMPLERS as REGISTRY

    assert set(SAMPLERS) == set(REGISTRY) | {"auto"}


def test_the_official_code_options_match_their_owners_and_name_their_key():
    """The choices config validation knows for the options that reproduce the official codes are their owners' own
    (the config may not import the models, so the DiT's are kept equal here), and a bad value names its key."""
    from alphaflow.config.loading import _CHOICES
    from alphaflow.models.dit import TIME_CONDS
    from alphaflow.objectives.base import ADAPTIVE_REDUCTIONS
    from alphaflow.objectives.guidance import DROPOUT_STYLES
    from alphaflow.core.timesteps import FM_TIMES

    owners = {"model.time_cond": TIME_CONDS, "objective.adaptive_reduce": ADAPTIVE_REDUCTIONS,
              "objective.time.fm_time": FM_TIMES, "objective.guidance.dropout_style": DROPOUT_STYLES}
    for key, allowed in owners.items():
        assert tuple(_CHOICES[key]) == tuple(allowed), key
        default = getattr(Config(), key.split(".")[0])
        for part in key.split(".")[1:]:
            default = getattr(default, part)
        assert default == allowed[0], f"{key} defaults to today's behaviour, {allowed[0]!r}"
    for key in ("model.time_cond", "objective.adaptive_reduce", "objective.time.fm_time"):
        assert f"{key} must be one of" in error(overrides=[f"{key}=nonsense"]), key
    assert "objective.guidance: guidance.dropout_style must be one of ['project', 'official_jax']" in error(
        overrides=["objective.guidance.dropout_style=jax"])
    cfg = load_config(overrides=["objective.name=meanflow", "objective.time.fm_time=max_of_pair",
                                 "objective.adaptive_reduce=sum", "objective.adaptive_c=0.01",
                                 "objective.guidance.dropout_style=official_jax", "model.time_cond=h"])
    assert (cfg.objective.time.fm_time, cfg.objective.guidance.dropout_style) == ("max_of_pair", "official_jax")


def test_a_config_json_written_before_the_official_code_options_keeps_its_hash():
    """The new fields, nested ones included (objective.time.fm_time), are left out of the hash at their defaults,
    so a stored config.json without them names the same run; another value names another run."""
    from alphaflow.config import without_later_defaults

    for overrides in ([], ["objective.name=meanflow"], ["objective.name=imf"]):
        cfg = load_config(overrides=overrides)
        old = to_dict(cfg)
        del old["model"]["time_cond"], old["objective"]["adaptive_reduce"]
        del old["objective"]["time"]["fm_time"], old["objective"]["guidance"]["dropout_style"]
        assert from_dict(old) == cfg and config_hash(from_dict(old)) == config_hash(cfg)
        assert without_later_defaults(old) == without_later_defaults(to_dict(cfg))
        assert "fm_time" not in json.dumps(without_later_defaults(to_dict(cfg)))
    assert config_hash(Config()) == "1a45994e5f"
    for key, value in (("model.time_cond", "h"), ("objective.adaptive_reduce", "sum"),
                       ("objective.time.fm_time", "max_of_pair"), ("objective.guidance.dropout_style", "official_jax")):
        changed = load_config(overrides=[f"{key}={value}"])
        assert config_hash(changed) != config_hash(Config()), key
        assert value in json.dumps(without_later_defaults(to_dict(changed))), key


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_names_registered_parts_and_builds_its_objective(name):
    """Config does not check registry names (it is the lowest layer); this test does, for the recipes."""
    from alphaflow.models import MODELS

    cfg = load_config(name)
    assert cfg.model.name in MODELS
    data = pytest.importorskip("alphaflow.data")
    if hasattr(data, "DATASETS"):
        assert cfg.data.name in data.DATASETS
    from alphaflow.objectives import objective_from_options

    objective_from_options(cfg.objective, cfg.train.steps)
