"""Evaluation and probing inside a training run (``eval.every``, ``eval.final``, ``probe.final``).

During training, every ``eval.every`` steps the EMA network draws ``eval.num_samples`` samples per
NFE from fixed seeds and their Fréchet distance to the training data's reference statistics lands
in that step's metrics row as ``eval_<metric>_nfe<k>`` (``eval_fd_digits_nfe1``, ``eval_fid_nfe2``, ...). The same
seeds are used every time, so a curve over training compares like with like. At the end of a run,
``eval.final`` appends full-size rows to ``eval.jsonl`` (exactly what ``alphaflow eval`` writes) and
``probe.final`` runs the offline gradient protocol of ``alphaflow probe`` on the last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alphaflow.config import Config
from alphaflow.data import dataset_from_config
from alphaflow.data.base import TrainData
from alphaflow.evaluate.offline_probe import probe_run
from alphaflow.evaluate.quality import EvalRequest, evaluate_run, reference_stats, sample_features
from alphaflow.metrics import FeatureExtractor, FeatureStats, frechet_distance
from alphaflow.metrics.choice import extractor_for
from alphaflow.metrics.features import METRIC_NAMES, default_cache_dir
from alphaflow.objectives import Objective
from alphaflow.train import distributed as D
from alphaflow.train.callbacks import Callback, LogContext
from alphaflow.train.sample_grids import sampler_for


class OnlineEval(Callback):
    """``eval.every``: small-sample Fréchet distances of the EMA network, in the metrics row (main rank).

    The extractor and the reference statistics are built on first use (the digits classifier and its
    statistics are cached on disk, so that is seconds on the embedded default). Inception and DINOv2
    weights come from ALPHAFLOW_INCEPTION_WEIGHTS / ALPHAFLOW_DINOV2 (``alphaflow eval``'s variables).
    """

    serves = ("eval.every",)

    def __init__(self, cfg: Config, data: TrainData | None = None, cache_dir: str | Path | None = None) -> None:
        self.cfg, self.data = cfg, data
        self.cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._feats: FeatureExtractor | None = None
        self._ref: FeatureStats | None = None

    def _prepare(self, device: torch.device) -> tuple[FeatureExtractor, FeatureStats]:
        if self._feats is None or self._ref is None:
            d = self.cfg.data
            if self.data is None:  # not trained here: the run's training images (latent runs are refused by preflight)
                self.data = dataset_from_config(d, self.cfg.seed)
            self._feats = extractor_for(d.name, self.cfg.eval.metric, self.cache, device=device)
            self._ref = reference_stats(self.data, d.name, self._feats, self.cache)
        return self._feats, self._ref

    def on_log(self, ctx: LogContext) -> dict[str, float]:
        if not self.cfg.eval.every or ctx.step % self.cfg.eval.every or not ctx.info.is_main:
            return {}  # main rank only: the row is written there
        if self.data is None:
            self.data = ctx.data  # the training data, as the loop holds it
        return self.evaluate(ctx.ema, ctx.objective, ctx.x.device)

    def evaluate(self, ema: nn.Module, objective: Objective, device: torch.device) -> dict[str, float]:
        """{``eval_<metric>_nfe<k>``: d²} for each k in ``eval.nfe``, from ``eval.num_samples`` samples of ``ema``."""
        feats, ref = self._prepare(torch.device(device))
        assert self.data is not None  # _prepare has set it
        sampler = sampler_for(objective, self.cfg.sample.sampler)
        was_training = ema.training
        ema.eval()
        try:
            out = {}
            for k in self.cfg.eval.nfe:
                stats = sample_features(ema, self.data, feats, nfe=k, sampler=sampler,
                                        t_mid=self.cfg.sample.t_mid, num_samples=self.cfg.eval.num_samples,
                                        labels="random", seed=self.cfg.eval.seed, batch=self.cfg.eval.batch_size)
                out[f"eval_{METRIC_NAMES.get(feats.name, feats.name)}_nfe{k}"] = frechet_distance(stats, ref)
        finally:
            ema.train(was_training)
        return out


class FinalWork(Callback):
    """``eval.final`` (rows in eval.jsonl) and ``probe.final`` (rows in probes.jsonl), both on the last
    checkpoint, which the loop has just written; main rank only."""

    serves = ("eval.final", "probe.final")

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def on_end(self, run_dir: Path, device: torch.device, info: D.DistInfo, log: Callable[[str], None]) -> None:
        if info.is_main:
            finish_run(self.cfg, run_dir, device.type, log=log)


def in_run_callbacks(cfg: Config) -> list[Callback]:
    """The evaluation callbacks ``cfg`` asks for (``eval.every``, ``eval.final``, ``probe.final``)."""
    out: list[Callback] = []
    if cfg.eval.every:
        out.append(OnlineEval(cfg))
    if cfg.eval.final or cfg.probe.final:
        out.append(FinalWork(cfg))
    return out


def finish_run(cfg: Config, run_dir: str | Path, device: str, log: Callable[[str], None] = print) -> None:
    """The end-of-run work the config asks for: ``eval.final`` (rows in eval.jsonl) and ``probe.final``
    (rows in probes.jsonl), both on the last checkpoint."""
    if cfg.eval.final:
        evaluate_run(run_dir, EvalRequest.from_config(cfg), device=device, log=log)
    if cfg.probe.final:
        probe_run(run_dir, checkpoints="last", device=device, log=log)  # the run's probe.* settings
