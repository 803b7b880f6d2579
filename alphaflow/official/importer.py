"""``alphaflow import-official``: a training snapshot of the official α-Flow code as a run folder of this project
(docs/official_code.md#importing-checkpoints).

    import_official("alphaflow-B-2.pt", "runs/official/alphaflow-b2")   # then sample, eval, probe, init_from it

The snapshot is read without running its code (``unpickle.read_snapshot``); the DiT is found in the chosen weights
(``--weights ema``, the default, or ``net``) and renamed (``mapping``). The architecture comes from the shapes
and, where the shapes cannot tell (the number of heads, whether the label table has a null row), from the
snapshot's config (``cfg['model']['num_heads']``, ``cfg['dataset']['label_shape']``, ``cfg['model']['label_dropout']``)
or the command line (``--model``, ``--num-classes``). The latent statistics are the wrapper's buffers
(``autoencoder_mean``, ``autoencoder_var``), or a ``--latent-stats`` file. The wrapper must be α-Flow's
(``cfg['model']['precond']`` = ``alphaflow``, or not in the config): it hands the DiT's input and output through
unscaled, while e.g. ``recflow`` scales both, which the imported DiT alone would not reproduce (``check_precond``).
The run folder:

    RUN/config.json                 model.name and model.pos_embed=stored, data.name=latents at RUN/latents-meta
    RUN/latents-meta/meta.json      the latent shape and classes, no samples (unless --data-path names real latents)
    RUN/checkpoints/step-N.pt       net and ema (both the chosen weights), data_stats, step N (theirs, else 0);
                                    no optimiser state (it is read, never resumed)
    RUN/import.json                 where it came from and what was decided
    RUN/DONE                        so train.init_from accepts it
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from alphaflow.config import from_dict, to_dict
from alphaflow.data.latent_data import read_meta
from alphaflow.run.files import atomic_write_bytes
from alphaflow.models import MODELS, build_model
from alphaflow.official.mapping import PATCH_KEY, architecture, find_dit, map_dit
from alphaflow.official.unpickle import read_snapshot
from alphaflow.run.folder import RunFolder
from alphaflow.train.loop import CHECKPOINT_FORMAT

META = "latents-meta"
PRECOND = "alphaflow"  # the wrapper whose DiT output is u itself: c_in = c_out = 1, no skip (docs/official_code.md)


def dig(tree: Any, *path: Any) -> Any:
    """tree[path[0]][path[1]]... of a nested dict/list (their config), None where any step is missing."""
    for key in path:
        try:
            tree = tree[key]
        except (KeyError, IndexError, TypeError):
            return None
    return tree


def check_precond(cfg: Any) -> str:
    """The snapshot's ``cfg['model']['precond']``: ``alphaflow`` is returned, a missing key is reported as such, any
    other value is refused in one line naming the key, the value and the expected value."""
    precond = dig(cfg, "model", "precond")
    if precond is None:
        return "not in the snapshot's config (assumed alphaflow)"
    if precond != PRECOND:
        raise ValueError(f"the snapshot's cfg['model']['precond'] is {precond!r}, expected {PRECOND!r}: only the "
                         "α-Flow wrapper hands the DiT's input and output through unscaled, so another one's network "
                         "would not be reproduced by its DiT alone")
    return PRECOND


def choose_model(arch: dict[str, int], cfg: Any, model: str | None) -> str:
    """The registry name of the architecture: ``model`` if given (checked against the shapes), else the one entry
    with the snapshot's depth, width and patch (and its config's heads, where readable)."""
    heads = dig(cfg, "model", "num_heads")
    fits: Callable[[str], bool] = lambda name: all(  # noqa: E731
        MODELS[name].keywords[k] == arch[k] for k in ("depth", "hidden_size", "patch_size"))
    if model is not None:
        if model not in MODELS:
            raise ValueError(f"--model {model!r} is not a DiT of the registry (see `alphaflow models`)")
        if not fits(model) or (heads is not None and MODELS[model].keywords["num_heads"] != heads):
            raise ValueError(f"--model {model} does not fit the snapshot's DiT ({_arch_text(arch, heads)})")
        return model
    found = [n for n in MODELS if fits(n) and (heads is None or MODELS[n].keywords["num_heads"] == heads)]
    if len(found) != 1:
        raise ValueError(f"the snapshot's DiT ({_arch_text(arch, heads)}) matches {len(found)} registry entries "
                         f"{found or ''}; name one with --model")
    return found[0]


def _arch_text(arch: dict[str, int], heads: Any) -> str:
    return (f"depth {arch['depth']}, width {arch['hidden_size']}, patch {arch['patch_size']}, "
            f"heads {heads if heads is not None else 'not in its config'}")


def class_count(arch: dict[str, int], cfg: Any, num_classes: int | None) -> int:
    """K: ``--num-classes``, else their ``cfg['dataset']['label_shape'][0]``, else the table's rows less the null
    row that label dropout adds (``cfg['model']['label_dropout']``); refused when none of these is known."""
    if num_classes is not None:
        return int(num_classes)
    shape = dig(cfg, "dataset", "label_shape", 0)
    if shape is not None:
        return int(shape)
    dropout = dig(cfg, "model", "label_dropout")
    if dropout is not None:
        return arch["table_rows"] - (1 if float(dropout) > 0 else 0)
    raise ValueError("the snapshot's config names neither its classes nor its label dropout, so the label table "
                     f"({arch['table_rows']} rows) may or may not end in a null row; give --num-classes")


def latent_statistics(rest: dict[str, Any], file: str | Path | None, shape: tuple[int, int, int]) -> dict[str, Tensor]:
    """{"latent_mean", "latent_std"} [C, H, W] float32: from ``file`` (.npz with ``mean`` and ``std``) if given,
    else from the wrapper's ``autoencoder_mean`` / ``autoencoder_var`` (std = √(var + 1e-16), as they divide)."""
    def as_chw(a: Any, what: str) -> Tensor:
        t = torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a).double()
        while t.ndim > 3 and t.shape[0] == 1:
            t = t[0]
        try:
            return t.expand(shape).clone()
        except RuntimeError:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, which does not broadcast to the latents' "
                             f"{shape}") from None
    if file is not None:
        with np.load(Path(file)) as npz:
            if not {"mean", "std"} <= set(npz.files):
                raise ValueError(f"--latent-stats {file}: expected arrays 'mean' and 'std', got {npz.files}")
            mean, std = as_chw(npz["mean"], "its mean"), as_chw(npz["std"], "its std")
    else:
        pick: Callable[[str], Any] = lambda end: next(  # noqa: E731
            (v for k, v in rest.items() if k.split(".")[-1] == end), None)
        saved, var, inited = pick("autoencoder_mean"), pick("autoencoder_var"), pick("are_ldm_stats_inited")
        if saved is None or var is None or (inited is not None and not bool(inited)):
            raise ValueError("the snapshot holds no initialised latent statistics (autoencoder_mean / "
                             "autoencoder_var); give --latent-stats FILE.npz with arrays mean and std")
        mean, std = as_chw(saved, "autoencoder_mean"), (as_chw(var, "autoencoder_var") + 1e-16).sqrt()
    return {"latent_mean": mean.float(), "latent_std": std.float()}


def import_official(snapshot: str | Path, out: str | Path, *, weights: str = "ema", model: str | None = None,
                    num_classes: int | None = None, latent_stats: str | Path | None = None,
                    vae_path: str | None = None, data_path: str | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """Write the run folder ``out`` from ``snapshot`` (module docstring); returns its path. ``out`` must not hold
    anything yet: nothing already there is overwritten. ``data_path``: a latents folder of the same shape and
    classes to record as the run's data (for probing it), instead of the metadata-only folder."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"--weights must be ema or raw (the training weights), got {weights!r}")
    run = RunFolder(out)
    if run.root.exists() and any(run.root.iterdir()):
        raise ValueError(f"--out {run.root} is not empty; import into a new folder")
    snap = read_snapshot(snapshot)
    state = snap.get({"ema": "ema", "raw": "net"}[weights])  # the official snapshot keeps the raw weights as net
    if not isinstance(state, dict):
        have = [k for k in ("net", "ema") if isinstance(snap.get(k), dict)]
        raise ValueError(f"the snapshot has no {weights!r} state dict (it has {have or 'neither net nor ema'})")
    cfg = snap.get("cfg")
    precond = check_precond(cfg)
    prefix, dit, rest = find_dit(state)
    arch = architecture(dit)
    name, classes = choose_model(arch, cfg, model), class_count(arch, cfg, num_classes)
    side = math.isqrt(arch["tokens"]) * arch["patch_size"]
    if arch["tokens"] == 0 or math.isqrt(arch["tokens"]) ** 2 != arch["tokens"]:
        raise ValueError(f"the snapshot's DiT has a positional embedding of {arch['tokens']} tokens, expected a "
                         "square grid")
    shape = (arch["in_channels"], side, side)
    net = build_model(name, input_size=side, in_channels=shape[0], num_classes=classes, pos_embed="stored")
    net.to(dit[PATCH_KEY].dtype)  # the snapshot's precision, kept
    net.load_state_dict(map_dit(dit, classes))  # strict: every one of our keys filled, every shape checked
    stats = latent_statistics(rest, latent_stats, shape)
    step = int(dig(snap, "stats", "cur_step") or 0)
    if data_path is not None:
        meta = read_meta(Path(data_path))
        if (tuple(meta["shape"]), int(meta["num_classes"])) != (shape, classes):
            raise ValueError(f"--data-path {data_path} holds latents of shape {meta['shape']} with "
                             f"{meta['num_classes']} classes; the snapshot's DiT takes {list(shape)} and {classes}")
    _write(run, name, shape, classes, (vae_path, data_path), net.state_dict(), stats, step, {
        "source": str(Path(snapshot).resolve()), "weights": weights, "prefix": prefix, "model": name,
        "num_classes": classes, "precond": precond, "null_row": "the source's" if arch["table_rows"] == classes + 1
        else f"class {classes - 1}'s row repeated (the source has no null row)",
        "latent_stats": str(latent_stats) if latent_stats else "the snapshot's autoencoder_mean/var",
        "their_config": {k: dig(cfg, *p) for k, p in (("num_blocks", ("model", "num_blocks")), ("dim", ("model", "dim")),
                         ("num_heads", ("model", "num_heads")), ("label_dropout", ("model", "label_dropout")))}})
    log(f"imported {snapshot} ({weights} weights, {name}, {classes} classes, step {step}) into {run.root}")
    return run.root


def _write(run: RunFolder, name: str, shape: tuple[int, int, int], classes: int, paths: tuple[str | None, ...],
           weights: dict[str, Tensor], stats: dict[str, Tensor], step: int, record: dict[str, Any]) -> None:
    vae_path, data_path = paths
    if data_path is None:
        meta = run.root / META
        meta.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(meta / "meta.json", json.dumps({"num": 0, "shape": list(shape), "num_classes": classes,
                                                           "imported": True}).encode(), what="meta.json")
        data_path = str(meta.resolve())
    cfg = from_dict({"model": {"name": name, "pos_embed": "stored"},
                     "data": {"name": "latents", "path": str(Path(data_path).resolve()), "resolution": 8 * shape[1],
                              "vae_path": vae_path}})
    run.write_config(to_dict(cfg))
    # a finished run's checkpoint: no optimiser state and no random streams (it is never resumed, only read)
    state = {"format": CHECKPOINT_FORMAT, "step": step, "config": to_dict(cfg), "net": weights, "ema": weights,
             "opt": {}, "data_stats": stats, "state": {"step": step, "imported": True}, "rng": []}
    run.save_checkpoint(state, step, keep=True)
    atomic_write_bytes(run.root / "import.json", (json.dumps(record, indent=2) + "\n").encode(), what="import.json")
    run.mark_done({"imported": True, "step": step})
