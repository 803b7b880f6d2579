"""``alphaflow ref-stats`` and ``alphaflow eval``: Fréchet distances of a run's samples (SPEC §7, §9).

Samples come from the EMA weights of a checkpoint, from fixed seeds: the noise of sample i and its
label are drawn from generators seeded with ``seed``, so two evaluations of the same weights give
the same number. Labels are ``random`` (uniform, the paper's protocol) or ``balanced`` (i mod K).
Features come from an extractor (``alphaflow.metrics.EXTRACTORS``; on the embedded default a small
digits classifier), the reference statistics from the training data, cached as
``<cache>/ref-<data>-<extractor>.npz``. Each (step, NFE, sampler) appends one row to
``RUN_DIR/eval.jsonl`` with ``metric`` and ``value`` (the Fréchet distance d²).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from alphaflow.build import objective_from_config, open_run
from alphaflow.data.base import TrainData
from alphaflow.distributed import resolve_device
from alphaflow.metrics import EXTRACTORS, FeatureExtractor, FeatureStats, StatsAccumulator, frechet_distance
from alphaflow.metrics.features import default_cache_dir
from alphaflow.probe_run import select_checkpoints
from alphaflow.runfolder import append_jsonl
from alphaflow.snapshots import sampler_for
from alphaflow.sampling import generate

# which extractor measures which dataset, until Inception (FID) and DINOv2 (FDD) land
DEFAULT_EXTRACTOR = {"digits": "digits"}


def extractor_for(data_name: str, name: str | None, cache_dir: Path) -> FeatureExtractor:
    name = name or DEFAULT_EXTRACTOR.get(data_name)
    if name is None or name not in EXTRACTORS:
        raise ValueError(f"no feature extractor {name!r} for data.name={data_name!r}; available: {sorted(EXTRACTORS)} "
                         "(Inception for FID and DINOv2 for FDD are not implemented yet)")
    return EXTRACTORS[name](cache_dir)


def reference_stats(data: TrainData, data_name: str, extractor: FeatureExtractor, cache_dir: Path,
                    *, batch: int = 512) -> FeatureStats:
    """Statistics of the extractor's features over the whole training set, computed once and cached."""
    path = cache_dir / f"ref-{data_name}-{extractor.name}.npz"
    if path.exists():
        return FeatureStats.load(path)
    acc = StatsAccumulator()
    for start in range(0, len(data), batch):
        raw, _ = data.get(range(start, min(start + batch, len(data))))
        acc.update(extractor(data.to_images(raw)))
    stats = acc.finalize()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    stats.save(tmp)
    tmp.replace(path)
    return stats


@torch.no_grad()
def sample_features(net: torch.nn.Module, data: TrainData, extractor: FeatureExtractor, *, nfe: int, sampler: str,
                    t_mid: float, num_samples: int, labels: str, seed: int, batch: int = 256) -> FeatureStats:
    """Features of ``num_samples`` samples drawn from fixed seeds; returns their statistics."""
    device = next(net.parameters()).device
    noise_gen, label_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    acc = StatsAccumulator()
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        noise = torch.randn(n, *data.shape, generator=noise_gen).to(device)
        y = None
        if data.num_classes > 0:
            y = (torch.arange(start, start + n) % data.num_classes if labels == "balanced"
                 else torch.randint(0, data.num_classes, (n,), generator=label_gen)).to(device)
        out = generate(net, noise, y, nfe=nfe, sampler=sampler, t_mid=t_mid,
                       generator=torch.Generator(device=device).manual_seed(seed + 2 + start))
        acc.update(extractor(data.to_images(out).clamp(-1, 1)))
    return acc.finalize()


def evaluate_run(run_dir: str | Path, *, nfe: Sequence[int] = (1, 2), sampler: str = "auto", t_mid: float = 0.5,
                 num_samples: int = 2000, labels: str = "random", extractor: str | None = None, seed: int = 0,
                 checkpoint: str = "last", weights: str = "ema", cache_dir: str | Path | None = None,
                 device: str = "auto", log: Callable[[str], None] = print) -> list[dict]:
    """Evaluate one checkpoint of a run at each NFE; appends to and returns the eval.jsonl rows."""
    if labels not in ("random", "balanced"):
        raise ValueError(f"--labels must be random or balanced, got {labels!r}")
    if weights not in ("raw", "ema"):
        raise ValueError(f"--weights must be raw or ema, got {weights!r}")
    if num_samples < 2:
        raise ValueError(f"--num-samples must be >= 2, got {num_samples}")
    dev = resolve_device(device)
    run, cfg, data, net = open_run(run_dir, dev)
    chosen = select_checkpoints(run, str(checkpoint))
    if len(chosen) != 1:
        raise ValueError(f"--checkpoint takes last or one step, got {checkpoint!r}")
    ((step, path),) = chosen
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    feats = extractor_for(cfg.data.name, extractor, cache)
    ref = reference_stats(data, cfg.data.name, feats, cache)
    ckpt = torch.load(path, map_location=dev, weights_only=False)
    net.load_state_dict(ckpt["ema" if weights == "ema" else "net"])
    data.load_state_dict(ckpt["data_stats"])
    net.eval()
    chosen = sampler_for(objective_from_config(cfg.objective, cfg.train.steps).name, sampler)
    rows = []
    for k in nfe:
        stats = sample_features(net, data, feats, nfe=k, sampler=chosen, t_mid=t_mid, num_samples=num_samples,
                                labels=labels, seed=seed)
        row = {"step": step, "nfe": k, "sampler": chosen, "t_mid": t_mid, "num_samples": num_samples,
               "labels": labels, "weights": weights, "seed": seed, "metric": f"fd_{feats.name}",
               "value": frechet_distance(stats, ref)}
        append_jsonl(run.root / "eval.jsonl", row)
        rows.append(row)
        log(f"step {step}  {k}-NFE {chosen}: fd_{feats.name} = {row['value']:.3f}")
    return rows
