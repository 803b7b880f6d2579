"""``alphaflow ref-stats`` and ``alphaflow eval``: Fréchet distances of a run's samples
(arXiv 2510.20771 §5, Table 1, Appendix I; docs/official_code.md#evaluation-metrics).

Samples come from the EMA weights of a checkpoint, from fixed seeds: the noise of sample i and its
label are drawn from generators seeded with ``seed``, so two evaluations of the same weights give
the same number. Labels are ``random`` (uniform, the paper's protocol) or ``balanced`` (i mod K).
Metrics (``METRICS``): ``digits`` (a small digits classifier, the embedded default), ``fid``
(Inception-v3 pool3, from ``--inception-weights`` / ``$ALPHAFLOW_INCEPTION_WEIGHTS``) and ``fdd``
(DINOv2 CLS, from ``--dinov2`` / ``$ALPHAFLOW_DINOV2``). The samples are generated once and fed to
every chosen extractor. Reference statistics come from the training images, cached as
``<cache>/ref-<data tag>-<extractor>.npz``, or from a file (``--ref-stats``, e.g. ADM's
``VIRTUAL_imagenet256_labeled.npz`` with ``mu``/``sigma``). Latent runs decode their samples with
``data.vae_path`` and take the reference from the images the latents were made from (``--ref-images``).
Each (step, NFE, sampler, metric) appends one row to ``RUN_DIR/eval.jsonl`` with ``metric`` and
``value`` (the Fréchet distance d²).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypedDict, cast

import numpy as np
import torch

from alphaflow.train.build import open_run
from alphaflow.objectives import objective_from_options
from alphaflow.config import Config
from alphaflow.data import build_dataset, dataset_class
from alphaflow.data.base import TrainData
from alphaflow.data.imagefolder import ImageFolderData
from alphaflow.train.distributed import resolve_device, set_tf32
from alphaflow.metrics import (EXTRACTORS, METRIC_NAMES, FeatureExtractor, FeatureStats, StatsAccumulator,
                               frechet_distance)
from alphaflow.metrics.choice import LATENT_REFERENCE, METRICS, extractor_for, parse_metrics
from alphaflow.metrics.features import default_cache_dir
from alphaflow.run.files import atomic_write_bytes
from alphaflow.run.images import to_uint8
from alphaflow.run.checkpoints import load_weights, select_checkpoints
from alphaflow.run.folder import append_jsonl

from alphaflow.train.sample_grids import sampler_for
from alphaflow.core.sampling import generate

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only

SampleBatch = tuple[torch.Tensor, torch.Tensor | None]  # uint8 [b, H, W, 3] samples, labels [b] or None

def data_tag(name: str, path: str | Path | None = None, resolution: int | None = None) -> str:
    """The cache name of a training set: its dataset name, plus resolution and a path hash for image folders."""
    if name != "imagefolder":
        return name
    digest = hashlib.sha1(str(Path(path or "").expanduser().resolve()).encode()).hexdigest()[:8]
    return f"imagefolder{resolution}-{digest}"


def load_reference(path: str | Path, dim: int) -> FeatureStats:
    """Reference statistics from ``.npz``: ``mu``/``sigma`` (ADM, EDM) or ``mean``/``cov`` (``FeatureStats.save``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--ref-stats file {str(file)!r} does not exist")
    with np.load(file, allow_pickle=False) as z:  # lazy: ADM's file also holds 10k images we never read
        keys = ("mu", "sigma") if "mu" in z.files else ("mean", "cov")
        if not set(keys) <= set(z.files):
            raise ValueError(f"{str(file)!r} has neither mu/sigma nor mean/cov arrays (it has {sorted(z.files)})")
        stats = FeatureStats(z[keys[0]], z[keys[1]], int(z["count"]) if "count" in z.files else 0)
    if stats.dim != dim:
        raise ValueError(f"{str(file)!r} holds {stats.dim}-d statistics, the extractor gives {dim}-d features")
    return stats


def parse_ref_stats(items: Sequence[str] | None, extractors: Sequence[str]) -> dict[str, Path]:
    """``["FILE"]`` (one metric) or ``["fid=FILE", "fdd=FILE2"]`` → {extractor name: file}."""
    out: dict[str, Path] = {}
    for item in items or []:
        key, sep, file = item.partition("=")
        if sep and (key in METRICS or key in EXTRACTORS):
            ext = METRICS.get(key, key)
        elif len(extractors) == 1:
            ext, file = extractors[0], item
        else:
            raise ValueError(f"--ref-stats {item!r}: with several metrics write METRIC=FILE (e.g. fid=ref.npz)")
        if ext not in extractors:
            raise ValueError(f"--ref-stats given for {METRIC_NAMES[ext]}, which is not being evaluated")
        out[ext] = Path(file).expanduser()
    return out


def _images(data: TrainData, raw: torch.Tensor) -> torch.Tensor:
    """Training rows → images [b, C, H, W] in [−1, 1]; refuses data that has no images."""
    images = data.to_images(raw)
    if images is None:
        raise ValueError(f"{type(data).__name__} is not image data; Fréchet distances need images")
    return images


def reference_stats_all(data: TrainData, tag: str, extractors: Sequence[FeatureExtractor], cache_dir: Path,
                        *, batch: int = 512) -> list[FeatureStats]:
    """Each extractor's feature statistics over the whole training set, in one pass over the data, cached."""
    paths = [cache_dir / f"ref-{tag}-{e.name}.npz" for e in extractors]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    if todo and data.reference_from_source_images:
        raise ValueError(LATENT_REFERENCE)
    accs = {i: StatsAccumulator() for i in todo}
    for start in range(0, len(data) if todo else 0, batch):
        raw, _ = data.get(range(start, min(start + batch, len(data))))
        images = _images(data, raw)
        for i in todo:
            accs[i].update(extractors[i](images))
    cache_dir.mkdir(parents=True, exist_ok=True)
    for i in todo:
        tmp = paths[i].with_name(f".{paths[i].name}.tmp.npz")
        accs[i].finalize().save(tmp)
        tmp.replace(paths[i])
    return [FeatureStats.load(p) for p in paths]


def reference_stats(data: TrainData, data_name: str, extractor: FeatureExtractor, cache_dir: Path,
                    *, batch: int = 512) -> FeatureStats:
    """Statistics of the extractor's features over the whole training set, computed once and cached.

    ``data_name`` names the cache file (``data_tag`` gives it for a dataset with a path).
    """
    return reference_stats_all(data, data_name, [extractor], cache_dir, batch=batch)[0]


def compute_reference_stats(data_name: str, *, path: str | None = None, resolution: int = 256,
                            metrics: str | Sequence[str] | None = None, cache_dir: str | Path | None = None,
                            device: str = "auto", inception_weights: str | None = None,
                            dinov2: str | None = None) -> list[tuple[str, FeatureStats, Path]]:
    """``alphaflow ref-stats``: (metric, statistics, cache file) per chosen metric of a training set."""
    if dataset_class(data_name).reference_from_source_images:
        raise ValueError("reference statistics of latents come from the images they were encoded from: "
                         "run ref-stats with --data imagefolder --data-path IMAGE_FOLDER --resolution R")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dev = resolve_device(device)
    names = parse_metrics(metrics, data_name)
    data = build_dataset(data_name, path=path, resolution=resolution)
    weights = {"inception": inception_weights, "dinov2": dinov2}
    feats = [extractor_for(data_name, n, cache, weights=weights, device=dev) for n in names]
    tag = data_tag(data_name, path, resolution)
    stats = reference_stats_all(data, tag, feats, cache)
    return [(METRIC_NAMES[f.name], s, cache / f"ref-{tag}-{f.name}.npz") for f, s in zip(feats, stats)]


@torch.no_grad()
def sample_stats(net: torch.nn.Module, data: TrainData, extractors: Sequence[FeatureExtractor], *, nfe: int,
                 sampler: str, t_mid: float, num_samples: int, labels: str, seed: int,
                 batch: int = 256, keep: list[SampleBatch] | None = None) -> list[FeatureStats]:
    """Each extractor's feature statistics of the same ``num_samples`` samples drawn from fixed seeds; with
    ``keep`` (a list) the samples are appended to it too, as (uint8 [b, H, W, 3], labels [b] or None) batches.

    ``batch`` samples are generated at a time (a latent dataset decodes them ``decode_batch_size`` at a
    time). The noise is drawn batch by batch, so the samples depend on ``batch``: keep it fixed (``eval.batch_size``)
    when comparing numbers.
    """
    device = next(net.parameters()).device
    noise_gen, label_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    accs = [StatsAccumulator() for _ in extractors]
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        noise = torch.randn(n, *data.shape, generator=noise_gen).to(device)
        y = None
        if data.num_classes > 0:
            y = (torch.arange(start, start + n) % data.num_classes if labels == "balanced"
                 else torch.randint(0, data.num_classes, (n,), generator=label_gen)).to(device)
        out = generate(net, noise, y, nfe=nfe, sampler=sampler, t_mid=t_mid,
                       generator=torch.Generator(device=device).manual_seed(seed + 2 + start))
        images = data.to_images(out)
        if images is None:
            raise ValueError(f"samples of {type(data).__name__} cannot be turned into images")
        for acc, extractor in zip(accs, extractors):
            acc.update(extractor(images.clamp(-1, 1)))
        if keep is not None:
            pixels = to_uint8(images.clamp(-1, 1).cpu()).permute(0, 2, 3, 1)  # [b, H, W, C]
            keep.append((pixels.expand(-1, -1, -1, 3) if pixels.shape[3] == 1 else pixels, None if y is None else y.cpu()))
    return [acc.finalize() for acc in accs]


def write_adm_npz(batches: list[SampleBatch], path: str | Path) -> Path:
    """Samples as ADM's evaluation suite reads them (openai/guided-diffusion, evaluations/evaluator.py):
    ``arr_0`` uint8 [N, H, W, 3] and, for class-conditional samples, ``arr_1`` int64 [N] labels. Written atomically."""
    images = torch.cat([b[0] for b in batches]).numpy()
    labelled = bool(batches) and batches[0][1] is not None  # then every batch has its labels (one run's samples)
    arrays = [images] + ([torch.cat([cast(torch.Tensor, b[1]) for b in batches]).numpy()] if labelled else [])
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    atomic_write_bytes(Path(path), buffer.getvalue(), what=f"the samples {Path(path).name}")
    return Path(path)


class _SampleArgs(TypedDict):
    nfe: int
    sampler: str
    t_mid: float
    num_samples: int
    labels: str
    seed: int


class SampleOptions(_SampleArgs, total=False):
    """The keyword arguments of ``sample_stats``, which ``sample_features`` passes on."""

    batch: int
    keep: list[SampleBatch] | None


def sample_features(net: torch.nn.Module, data: TrainData, extractor: FeatureExtractor,
                    **kwargs: Unpack[SampleOptions]) -> FeatureStats:
    """``sample_stats`` for one extractor (same keyword arguments)."""
    return sample_stats(net, data, [extractor], **kwargs)[0]


def _references(cfg: Config, data: TrainData, feats: Sequence[FeatureExtractor], files: Mapping[str, Path],
                ref_images: str | None, cache: Path) -> list[tuple[FeatureStats, str]]:
    """(statistics, where from) per extractor: a --ref-stats file, else the (cached) training images."""
    out: dict[str, tuple[FeatureStats, str]] = {f.name: (load_reference(files[f.name], f.dim), str(files[f.name]))
                                               for f in feats if f.name in files}
    rest = [f for f in feats if f.name not in files]
    if rest:
        src, tag = data, data_tag(cfg.data.name, cfg.data.path, cfg.data.resolution)
        if ref_images is not None:  # the images the latents came from, at their resolution
            res = data.source_resolution(cfg.data.resolution)
            src, tag = ImageFolderData(ref_images, resolution=res), data_tag("imagefolder", ref_images, res)
        for f, s in zip(rest, reference_stats_all(src, tag, rest, cache)):
            out[f.name] = (s, str(cache / f"ref-{tag}-{f.name}.npz"))
    return [out[f.name] for f in feats]


@dataclass
class EvalRequest:
    """What one evaluation measures (``alphaflow eval``; ``eval.final`` at the end of a run).

    ``metrics``: metric name(s) (digits, fid, fdd; a list or comma list), None for the dataset's default;
    ``checkpoint``: "last" or a step; ``weights``: "ema" or "raw"; ``batch_size`` / ``decode_batch_size``:
    samples generated / decoded by the VAE at once. ``from_config`` reads the run's eval and sample sections.
    """

    nfe: list[int] = field(default_factory=lambda: [1, 2])
    sampler: str = "auto"
    t_mid: float = 0.5
    num_samples: int = 2000
    labels: str = "random"
    metrics: str | list[str] | None = None
    seed: int = 0
    checkpoint: str = "last"
    weights: str = "ema"
    batch_size: int = 256
    decode_batch_size: int = 32

    @classmethod
    def from_config(cls, cfg: Config, **changes: Any) -> "EvalRequest":
        """The request a run's config describes (eval.*, sample.sampler, sample.t_mid), with ``changes`` applied
        (None values are ignored, so unset command-line flags keep the config's value)."""
        base = cls(nfe=list(cfg.eval.nfe), sampler=cfg.sample.sampler, t_mid=cfg.sample.t_mid,
                   num_samples=cfg.eval.final_samples, metrics=cfg.eval.metric, seed=cfg.eval.seed,
                   batch_size=cfg.eval.batch_size, decode_batch_size=cfg.eval.decode_batch_size)
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> None:
        """Refuse a request that cannot run; messages name the command-line option."""
        if self.labels not in ("random", "balanced"):
            raise ValueError(f"--labels must be random or balanced, got {self.labels!r}")
        if self.weights not in ("raw", "ema"):
            raise ValueError(f"--weights must be raw or ema, got {self.weights!r}")
        if self.num_samples < 2:
            raise ValueError(f"--num-samples must be >= 2, got {self.num_samples}")
        if self.batch_size < 1 or self.decode_batch_size < 1:
            raise ValueError(f"--batch-size and --decode-batch-size must be >= 1, got {self.batch_size} and "
                             f"{self.decode_batch_size}")
        if not self.nfe or any(k < 1 for k in self.nfe):
            raise ValueError(f"--nfe needs entries >= 1, got {self.nfe}")


@dataclass
class References:
    """Where the feature extractors' weights and the reference statistics come from (all optional):
    the cache folder, Inception / DINOv2 weights (else their environment variables), precomputed statistics
    (``[METRIC=]FILE.npz``) and, for latent runs, the image folder the latents were encoded from."""

    cache_dir: str | Path | None = None
    inception_weights: str | None = None
    dinov2: str | None = None
    ref_stats: Sequence[str] | None = None
    ref_images: str | None = None


def per_nfe_paths(path: str | Path, nfe: Sequence[int], suffix: str, option: str) -> dict[int, Path]:
    """Where a command's ``option FILE`` writes each NFE's output: FILE itself for one NFE, FILE's stem +
    ``-nfe<k>`` + ``suffix`` beside it for several (``--save-npz`` here, ``alphaflow sample --out``)."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{option} takes a {suffix} file name, got {str(path)!r}")
    return {k: path if len(nfe) == 1 else path.with_name(f"{path.stem}-nfe{k}{suffix}") for k in nfe}


def evaluate_run(run_dir: str | Path, request: EvalRequest | None = None, refs: References | None = None, *,
                 device: str = "auto", save_npz: str | Path | None = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate one checkpoint of a run at each NFE and metric; appends to and returns the eval.jsonl rows.
    With ``save_npz`` the samples of each NFE are written too (``write_adm_npz``, ``per_nfe_paths``).

    ``request``: what to measure (None: ``EvalRequest.from_config`` of the run's config); ``refs``: where
    weights and reference statistics come from (None: the cache and the environment).
    """
    refs = refs or References()
    dev = resolve_device(device)
    run, cfg, data, net = open_run(run_dir, dev)
    req = request or EvalRequest.from_config(cfg)
    req.check()
    set_tf32(cfg.train.tf32, dev)
    chosen = select_checkpoints(run, str(req.checkpoint), "evaluate")
    if len(chosen) != 1:
        raise ValueError(f"--checkpoint takes last or one step, got {req.checkpoint!r}")
    ((step, path),) = chosen
    cache = Path(refs.cache_dir) if refs.cache_dir is not None else default_cache_dir()
    names = parse_metrics(req.metrics, cfg.data.name)
    files = parse_ref_stats(refs.ref_stats, names)
    if data.reference_from_source_images and refs.ref_images is None and set(names) - set(files):
        raise ValueError(LATENT_REFERENCE)
    feats = [extractor_for(cfg.data.name, n, cache, weights={"inception": refs.inception_weights,
                                                             "dinov2": refs.dinov2}, device=dev) for n in names]
    references = _references(cfg, data, feats, files, refs.ref_images, cache)
    if data.decodes_samples:  # samples are latents: decode them with the run's VAE
        if cfg.data.vae_path is None:
            raise ValueError("a latent run needs data.vae_path (the VAE folder) to decode samples for evaluation")
        data.attach_decoder(cfg.data.vae_path, dev, batch_size=req.decode_batch_size)
    state, stats = load_weights(path, req.weights)  # on the CPU, one state dict kept
    net.load_state_dict(state)
    data.load_state_dict(stats)
    del state
    net.eval()
    sampler = sampler_for(objective_from_options(cfg.objective, cfg.train.steps), req.sampler)
    rows = []
    npz = per_nfe_paths(save_npz, req.nfe, ".npz", "--save-npz") if save_npz is not None else {}
    for k in req.nfe:
        kept: list[SampleBatch] | None = [] if k in npz else None
        sampled = sample_stats(net, data, feats, nfe=k, sampler=sampler, t_mid=req.t_mid, num_samples=req.num_samples,
                               labels=req.labels, seed=req.seed, batch=req.batch_size, keep=kept)
        if kept is not None:
            log(f"step {step}  {k}-NFE {sampler}: {req.num_samples} samples written to {write_adm_npz(kept, npz[k])}")
        for f, s, (ref, ref_source) in zip(feats, sampled, references):
            metric = METRIC_NAMES[f.name]
            row = {"step": step, "nfe": k, "sampler": sampler, "t_mid": req.t_mid, "num_samples": req.num_samples,
                   "labels": req.labels, "weights": req.weights, "seed": req.seed, "metric": metric,
                   "value": frechet_distance(s, ref), "ref": ref_source}
            append_jsonl(run.eval_path, row, what=f"the {metric} row of step {step}, {k} NFE")
            rows.append(row)
            log(f"step {step}  {k}-NFE {sampler}: {metric} = {row['value']:.3f}")
    return rows
