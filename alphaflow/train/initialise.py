"""``train.init_from``: start a run from another run's weights (fine-tuning; Decoupled MeanFlow from a
flow-matching model, docs/objectives.md#the-meanflow-family).

The network and its EMA take the source checkpoint's ``net`` and ``ema`` weights and the data statistics (so
latents are normalised as the source saw them); the optimiser, the step counter and the random streams start
fresh from this run's config. The run folder records the source in ``init.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from alphaflow.data.base import TrainData
from alphaflow.run.files import read_checkpoint
from alphaflow.run.checkpoints import init_checkpoint
from alphaflow.train.optim import EMA


# Heads a run may add to its source's network: they keep their own (zero) initialisation.
NEW_HEADS = ("logvar_head.",)  # the log-variance head of model.logvar=true (Decoupled MeanFlow from a fm run)


def _load(module: nn.Module, state: dict[str, Any], what: str, source: str) -> list[str]:
    """``module.load_state_dict(state)``, refused with the mismatching keys named instead of torch's wall of text;
    keys of ``NEW_HEADS`` that the source lacks keep their initialisation. Returns those keys."""
    own = module.state_dict()
    new = sorted(k for k in set(own) - set(state) if k.startswith(NEW_HEADS))
    missing, unexpected = sorted(set(own) - set(state) - set(new)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{name}: {keys[:5]}{' …' if len(keys) > 5 else ''}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]
        raise ValueError(f"train.init_from={source!r}: its {what} weights do not fit this run's model ("
                         + "; ".join(parts) + "); use the source's model.name and data")
    module.load_state_dict(state, strict=not new)
    return new


def initialise_from(source: str, net: nn.Module, ema: EMA, data: TrainData, say: Callable[[str], None], *,
                    seed: int | None = None, root: Path | None = None) -> dict[str, Any]:
    """Load ``source``'s newest checkpoint (a finished run folder) or the checkpoint file itself into ``net``,
    ``ema`` and ``data``; ``{seed}`` and ``{root}`` in ``source`` are this run's seed and parent folder
    (``alphaflow.run.checkpoints.init_checkpoint``). Returns the record for ``init.json`` (source, checkpoint path, its step)."""
    path = init_checkpoint(source, seed=seed, root=root)
    ckpt = read_checkpoint(path)
    new = _load(net, ckpt["net"], "network", source)
    _load(ema.model, ckpt["ema"], "EMA", source)
    data.load_state_dict(ckpt["data_stats"])
    fresh = f"; new here, as initialised: {', '.join(new)}" if new else ""
    say(f"initialised from {path} (step {ckpt['step']}): weights and EMA; a fresh optimiser at step 0{fresh}")
    return {"init_from": str(source), "checkpoint": str(path.resolve()), "step": int(ckpt["step"])}
