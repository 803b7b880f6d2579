"""Config → objects, and the checks that need the registries (which config, the lowest layer, cannot import);
``load_model`` (``alphaflow.load_model``): the network of any run folder, trained here or imported
(``alphaflow import-official``), ready to call as ``net(z, r, t, labels)``."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

from alphaflow.config import Config, ConfigError, from_dict
from alphaflow.config.extras import check_trackers
from alphaflow.data import TrainData, check_data_options, dataset_class, dataset_from_config
from alphaflow.models import MODELS, build_for_data, check_model_name, model_options
from alphaflow.run.checkpoints import check_weights, init_checkpoint, load_weights, select_checkpoints
from alphaflow.run.folder import RunFolder
from alphaflow.metrics.choice import WEIGHTS_SOURCES, parse_metrics, weights_path
from alphaflow.objectives import OBJECTIVES, Objective, objective_from_options
from alphaflow.objectives.imf import ImprovedMeanFlowOptions


def preflight(cfg: Config) -> Objective:
    """Check what config validation cannot (registry names, the data path, the objective's options)
    before anything runs; raises ValueError naming the key. Returns the objective it built to check its
    options, for the trainer to use (``train(..., objective=)``): one objective per run."""
    objective = objective_from_options(cfg.objective, cfg.train.steps)
    if cfg.conflict.mode != "none" and not objective.conflict_parts:
        names = ", ".join(sorted(n for n, c in OBJECTIVES.items() if c.conflict_parts))
        raise ConfigError(f"conflict.mode={cfg.conflict.mode} combines the gradients of L_TFM and L_TCC, and "
                          f"objective.name={cfg.objective.name} has no L_TCC; use one of {names}")
    if objective.needs_logvar and not cfg.model.logvar:
        raise ConfigError(f"objective.name={cfg.objective.name} weights its loss by a learned log-variance: set "
                          "model.logvar=true (and model.decouple_at=K, about 2/3 of the depth, for its architecture)")
    if objective.needs_velocity_head and cfg.model.aux_head_depth is None:
        raise ConfigError(f"objective.name={cfg.objective.name} reads the network's instantaneous-velocity head: set "
                          "model.aux_head_depth=K (0: a second final layer on the trunk; the official B/2 forks 8 of "
                          "its 12 blocks)")
    if getattr(objective, "guides", False) and not cfg.model.guidance_embed:
        omega_max = cast(ImprovedMeanFlowOptions, cfg.objective).omega_max  # only iMF's objective guides
        raise ConfigError(f"objective.omega_max={omega_max} trains guidance as a conditioning input: "
                          "set model.guidance_embed=true")
    if cfg.train.init_from:
        init_checkpoint(cfg.train.init_from)  # the source exists and holds a checkpoint (it names the input)
    check_model_name(cfg.model.name)
    check_dit_option(cfg.model.name, "decouple_at", cfg.model.decouple_at)
    check_dit_option(cfg.model.name, "aux_head_depth", cfg.model.aux_head_depth)
    if cfg.model.decouple_at is not None and cfg.model.aux_head_depth is not None:
        raise ConfigError("model.decouple_at and model.aux_head_depth do not combine; set one of them")
    if cfg.model.guidance_embed and cfg.model.name not in MODELS:
        raise ConfigError(f"model.guidance_embed is an option of the DiT models, not of model.name={cfg.model.name!r}")
    if cfg.model.time_cond != "t_and_h" and cfg.model.name not in MODELS:
        raise ConfigError(f"model.time_cond={cfg.model.time_cond} is an option of the DiT models, not of "
                          f"model.name={cfg.model.name!r}")
    if cfg.model.time_cond == "h" and cfg.model.decouple_at is not None:
        raise ConfigError("model.time_cond=h and model.decouple_at do not combine (decoupled blocks are conditioned "
                          "on t and r); set one of them")
    check_data_options(cfg.data.name, cfg.data.path)
    if cfg.data.vae_path is not None and not Path(cfg.data.vae_path).expanduser().exists():
        raise ValueError(f"data.vae_path {cfg.data.vae_path!r} does not exist (a local diffusers AutoencoderKL folder)")
    check_compile(cfg)
    check_trackers(cfg)
    check_eval(cfg)
    return objective


def check_dit_option(name: str, key: str, blocks: int | None) -> None:
    """``model.<key>`` (decouple_at, aux_head_depth) is a DiT option, a block count in [0, depth]."""
    if blocks is None:
        return
    if name not in MODELS:
        raise ConfigError(f"model.{key} is an option of the DiT models, not of model.name={name!r}")
    depth = MODELS[name].keywords["depth"]
    if not 0 <= blocks <= depth:
        raise ConfigError(f"model.{key} must lie in [0, {depth}] (the depth of {name}), got {blocks}")


def check_eval(cfg: Config) -> None:
    """``eval.every`` / ``eval.final`` need their extractor's weights up front, and a reference the trainer can
    compute: latent runs take theirs from the original images, which only ``alphaflow eval --ref-images`` has."""
    if not (cfg.eval.every or cfg.eval.final):
        return
    if dataset_class(cfg.data.name).reference_from_source_images:
        raise ConfigError("eval.every / eval.final: a latent run's reference statistics come from the images the "
                          "latents were encoded from; evaluate it with `alphaflow eval RUN --ref-images FOLDER` "
                          "(or --ref-stats FILE.npz) and leave eval.every=0, eval.final=false")
    for ext in parse_metrics(cfg.eval.metric, cfg.data.name):
        if ext in WEIGHTS_SOURCES:
            try:
                weights_path(ext, None)
            except ValueError as exc:
                raise ConfigError(f"eval.metric: {exc}") from None


def check_compile(cfg: Config) -> None:
    """``train.compile=true`` needs TorchDynamo on this Python and, on the CPU, the C++ compiler that
    inductor calls (g++ or $CXX); refuse it before anything runs rather than at the first step.
    Every objective compiles: only the prediction pass is compiled (see the trainer)."""
    if not cfg.train.compile:
        return
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError("train.compile=true: torch.compile is not supported by this Python or platform; "
                          "set train.compile=false")
    if cfg.train.device == "cpu" or (cfg.train.device == "auto" and not torch.cuda.is_available()):
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as exc:  # inductor's own search: InvalidCxxCompiler, or a broken install
            raise ConfigError("train.compile=true on the CPU needs the C++ compiler that torch.compile's inductor "
                              f"calls (g++, or the one named by $CXX), and found none ({type(exc).__name__}); "
                              "install g++ or set train.compile=false") from None


def open_run(run_dir: str | Path, device: torch.device) -> tuple[RunFolder, Config, TrainData, torch.nn.Module]:
    """A run folder's config, dataset and (freshly built, not yet loaded) network on ``device``."""
    run = RunFolder(run_dir)
    config = run.read_config()
    if config is None:
        raise ValueError(f"{run.root} is not a run folder (no config.json)")
    cfg = from_dict(config)
    data = dataset_from_config(cfg.data, cfg.seed)
    net = build_for_data(cfg.model.name, data.shape, data.num_classes, **model_options(cfg.model)).to(device)
    return run, cfg, data, net


def load_model(run_dir: str | Path, weights: str = "ema", *, checkpoint: str = "last",
               device: str | torch.device = "cpu") -> nn.Module:
    """The network of ``run_dir`` with its ``weights`` ("ema" or "raw", the training weights) at ``checkpoint`` ("last"
    or a step), in eval mode on ``device``: ``u = net(z, r, t, labels)`` with z [B, C, H, W], r, t [B] and labels
    [B] int64 (or None), u the average velocity over [r, t] (docs/conventions.md). Built from the run's config.json
    and sized by its data (an imported run's latents-meta), so the run's data must be readable here; in the
    precision its weights were saved in."""
    check_weights(weights)
    run, _, _, net = open_run(run_dir, torch.device(device))
    ((_, path),) = select_checkpoints(run, str(checkpoint))
    state, _ = load_weights(path, weights)
    floating = [v.dtype for v in state.values() if v.is_floating_point()]
    if floating:  # the weights' own precision (a float64 import stays float64)
        net.to(floating[0])
    net.load_state_dict(state)
    return net.eval()
