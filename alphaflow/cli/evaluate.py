"""The commands on trained networks: ``eval``, ``ref-stats``, ``sample`` and ``import-official`` (thin wrappers over
``alphaflow.evaluate`` and ``alphaflow.official``), and the helpers every command shares: ``run_config_with``
(``probe`` too) and ``checked_path`` (the ``--out``/``--root`` of train, sweep, extract-latents)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Sequence

from alphaflow.run.errors import UsageError

if TYPE_CHECKING:
    from alphaflow.config import Config


def run_config_with(run_dir: str, overrides: Sequence[str], sections: tuple[str, ...]) -> Config:
    """A run folder's config with ``key=value`` overrides of the given sections (``eval``, ``sample``, ``probe``)."""
    from alphaflow.config import apply_overrides, from_dict, validate
    from alphaflow.run.folder import RunFolder

    config = RunFolder(run_dir).read_config()
    if config is None:
        raise ValueError(f"{run_dir} is not a run folder (no config.json)")
    outside = [o for o in overrides if o.partition("=")[0].strip().split(".")[0] not in sections]
    if outside:
        raise ValueError(f"{outside[0]!r}: only {', '.join(s + '.*' for s in sections)} keys can change here "
                         "(the rest describes how the run was trained)")
    cfg = apply_overrides(from_dict(config), overrides)
    validate(cfg)
    return cfg


def checked_path(flag: str, value: str | None) -> str | None:
    """``value`` of a path flag (``--out``, ``--root``), refused when empty or blank: an unset shell variable
    (``--out $RUN``) would otherwise mean the current folder. None (an optional flag not given) passes."""
    if value is not None and not value.strip():
        raise UsageError(f"{flag} is empty ({value!r}); give a path (an unset shell variable?)")
    return value


def weights_choice(value: str) -> str:
    """``--weights``: ``ema`` or ``raw`` (the training weights) in every command; ``net``, the old name of ``raw``
    in ``sample`` and ``import-official``, is still accepted."""
    return "raw" if value == "net" else value


def require_checkpoint(run_dir: str, purpose: str) -> None:
    """Refuse ``eval``/``sample`` of a run folder without a checkpoint before any model or reference loads
    (``select_checkpoints`` says what to do)."""
    from alphaflow.run.checkpoints import select_checkpoints
    from alphaflow.run.folder import RunFolder

    select_checkpoints(RunFolder(run_dir), "all", purpose)


def _cmd_eval(args: argparse.Namespace) -> int:
    from alphaflow.evaluate.quality import EvalRequest, References, evaluate_run

    cfg = run_config_with(args.run_dir, args.overrides, ("eval", "sample"))
    require_checkpoint(args.run_dir, "evaluate")
    request = EvalRequest.from_config(cfg, nfe=args.nfe, sampler=args.sampler, t_mid=args.t_mid,
                                      num_samples=args.num_samples, labels=args.labels, metrics=args.metric,
                                      seed=args.seed, checkpoint=args.checkpoint, weights=args.weights,
                                      batch_size=args.batch_size, decode_batch_size=args.decode_batch_size)
    refs = References(cache_dir=args.cache, inception_weights=args.inception_weights, dinov2=args.dinov2,
                      ref_stats=args.ref_stats, ref_images=args.ref_images)
    evaluate_run(args.run_dir, request, refs, device=args.device, save_npz=args.save_npz)
    return 0


def _cmd_ref_stats(args: argparse.Namespace) -> int:
    from alphaflow.evaluate.quality import compute_reference_stats

    results = compute_reference_stats(args.data, path=args.data_path, resolution=args.resolution,
                                      metrics=args.metric, cache_dir=args.cache, device=args.device,
                                      inception_weights=args.inception_weights, dinov2=args.dinov2)
    for metric, stats, file in results:
        print(f"reference statistics of {args.data} ({metric}): {stats.count} samples, {stats.dim} features, "
              f"cached in {file}")
    return 0


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    """--metric and the weights of the real-weight extractors, shared by eval and ref-stats."""
    p.add_argument("--metric", action="append", default=None, metavar="METRIC",
                   help="digits, fid or fdd; repeat or comma-separate for several (default: digits on the digits "
                        "data, fid on image data)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="fid: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: "
                        "$ALPHAFLOW_INCEPTION_WEIGHTS)")
    p.add_argument("--dinov2", default=None, metavar="PATH",
                   help="fdd: local Hugging Face DINOv2 ViT-L/14 folder, e.g. facebook/dinov2-large saved with "
                        "save_pretrained (default: $ALPHAFLOW_DINOV2)")


def add_evaluation_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """eval, ref-stats, sample, import-official."""
    p = sub.add_parser("eval", help="Fréchet distance of EMA samples at 1 and 2 NFE (appends RUN_DIR/eval.jsonl)",
                       description="Defaults come from the run's config: eval.nfe, eval.final_samples, eval.metric, "
                                   "eval.seed, eval.batch_size, sample.sampler, sample.t_mid; change them with "
                                   "eval.*/sample.* key=value overrides, as for train, or with the flags.")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="eval.* and sample.* keys, e.g. eval.nfe=[1,2,4]")
    p.add_argument("--nfe", type=int, nargs="+", default=None, help="default: eval.nfe")
    p.add_argument("--sampler", choices=("auto", "ode", "consistency", "euler"), default=None, help="default: sample.sampler")
    p.add_argument("--t-mid", type=float, default=None, help="default: sample.t_mid")
    p.add_argument("--num-samples", type=int, default=None, help="default: eval.final_samples")
    p.add_argument("--labels", choices=("random", "balanced"), default=None, help="default: random")
    _add_metric_args(p)
    p.add_argument("--ref-stats", action="append", default=None, metavar="[METRIC=]FILE.npz",
                   help="precomputed reference statistics (mu/sigma, e.g. ADM's VIRTUAL_imagenet256_labeled.npz, "
                        "or mean/cov from ref-stats) instead of the training data's; METRIC= when several")
    p.add_argument("--ref-images", default=None, metavar="FOLDER",
                   help="latent runs: the image folder the latents were encoded from (reference statistics)")
    p.add_argument("--checkpoint", default=None, help="last (default) or a step")
    p.add_argument("--batch-size", type=int, default=None, help="samples generated at once (default: eval.batch_size)")
    p.add_argument("--decode-batch-size", type=int, default=None,
                   help="latent runs: samples decoded by the VAE at once (default: eval.decode_batch_size)")
    p.add_argument("--weights", type=weights_choice, choices=("ema", "raw"), default=None,
                   help="EMA (default) or the raw training weights")
    p.add_argument("--seed", type=int, default=None, help="default: eval.seed")
    p.add_argument("--cache", default=None, help="feature-extractor and reference-statistics cache folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--save-npz", default=None, metavar="FILE.npz",
                   help="also write the samples as ADM's evaluation suite reads them (arr_0 uint8 [N, H, W, 3], "
                        "arr_1 labels); FILE-nfe<k>.npz per NFE when there are several")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("ref-stats", help="compute and cache the reference feature statistics of a dataset")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("--resolution", type=int, default=256, help="imagefolder: centre-crop resolution")
    _add_metric_args(p)
    p.add_argument("--cache", default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_ref_stats)
    _add_model_commands(sub)


def _add_model_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """sample, import-official."""
    p = sub.add_parser("sample", help="sample grids of a run folder (trained or imported) at some NFE",
                       description="The same noise and class-balanced labels at every NFE; with several NFE, "
                                   "FILE-nfe<k>.png per NFE.")
    p.add_argument("run_dir")
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num", type=int, default=64, help="samples per grid")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--weights", type=weights_choice, choices=("ema", "raw"), default="ema",
                   help="EMA (default) or the raw training weights (net: the old name of raw)")
    p.add_argument("--sampler", choices=("auto", "ode", "consistency", "euler"), default="auto")
    p.add_argument("--t-mid", type=float, default=None, help="default: the run's sample.t_mid")
    p.add_argument("--checkpoint", default="last", help="last or a step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("import-official", help="a training snapshot of the official α-Flow code as a run folder",
                       description="Reads the snapshot without running its code, maps its DiT onto this project's "
                                   "(every key or none), and writes a run folder that sample, eval, probe and "
                                   "train.init_from accept (docs/official_code.md#importing-checkpoints).")
    p.add_argument("snapshot", metavar="SNAPSHOT.pt")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--weights", type=weights_choice, choices=("ema", "raw"), default="ema",
                   help="which of its weights: EMA (default) or the raw training weights (net: the old name of raw)")
    p.add_argument("--model", default=None, help="a registry DiT, when the snapshot's config does not settle it")
    p.add_argument("--num-classes", type=int, default=None, help="when its config names neither classes nor dropout")
    p.add_argument("--latent-stats", default=None, metavar="FILE.npz",
                   help="arrays mean and std [C, H, W], when the snapshot holds no latent statistics")
    p.add_argument("--vae-path", default=None, metavar="FOLDER",
                   help="the SD-VAE (a local diffusers AutoencoderKL) to decode samples: the run's data.vae_path")
    p.add_argument("--data-path", default=None, metavar="FOLDER",
                   help="a latents folder (extract-latents) of the same shape and classes: the run's data.path, "
                        "so it can be probed (default: a metadata-only folder in the run)")
    p.set_defaults(func=_cmd_import_official)


def _cmd_sample(args: argparse.Namespace) -> int:
    checked_path("--out", args.out)
    from alphaflow.evaluate.sample_run import sample_run

    require_checkpoint(args.run_dir, "sample")
    sample_run(args.run_dir, args.out, nfe=args.nfe, num=args.num, weights=args.weights, sampler=args.sampler,
               t_mid=args.t_mid, seed=args.seed, checkpoint=args.checkpoint, device=args.device)
    return 0


def _cmd_import_official(args: argparse.Namespace) -> int:
    checked_path("--out", args.out)
    from alphaflow.official import import_official

    import_official(args.snapshot, args.out, weights=args.weights, model=args.model, num_classes=args.num_classes,
                    latent_stats=args.latent_stats, vae_path=args.vae_path,
                    data_path=args.data_path)
    return 0
