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
from alphaflow.data.base import TrainData
from alphaflow.metrics import FeatureExtractor, FeatureStats, frechet_distance
from alphaflow.metrics.features import METRIC_NAMES, default_cache_dir


class OnlineEval:
    """Small-sample Fréchet distances of the EMA network, for metrics rows.

    The extractor and the reference statistics are built on first use (the digits classifier and its
    statistics are cached on disk, so that is seconds on the embedded default).
    """

    def __init__(self, cfg: Config, data: TrainData, objective_name: str, cache_dir: str | Path | None = None,
                 device: str | torch.device = "cpu"):
        from alphaflow.snapshots import sampler_for

        self.cfg, self.data = cfg, data
        self.device = torch.device(device)  # the training device: the extractor runs beside the EMA network
        self.sampler = sampler_for(objective_name, cfg.sample.sampler)
        self.cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._feats: FeatureExtractor | None = None
        self._ref: FeatureStats | None = None

    def _prepare(self) -> tuple[FeatureExtractor, FeatureStats]:
        from alphaflow.evaluate import extractor_for, reference_stats

        if self._feats is None or self._ref is None:
            self._feats = extractor_for(self.cfg.data.name, self.cfg.eval.metric, self.cache, device=self.device)
            self._ref = reference_stats(self.data, self.cfg.data.name, self._feats, self.cache)
        return self._feats, self._ref

    def __call__(self, ema: nn.Module) -> dict[str, float]:
        """{``eval_<metric>_nfe<k>``: d²} for each k in ``eval.nfe``, from ``eval.num_samples`` samples of ``ema``.

        Inception and DINOv2 weights come from ALPHAFLOW_INCEPTION_WEIGHTS / ALPHAFLOW_DINOV2 (``alphaflow eval``'s
        environment variables)."""
        from alphaflow.evaluate import sample_features

        feats, ref = self._prepare()
        was_training = ema.training
        ema.eval()
        try:
            out = {}
            for k in self.cfg.eval.nfe:
                stats = sample_features(ema, self.data, feats, nfe=k, sampler=self.sampler,
                                        t_mid=self.cfg.sample.t_mid, num_samples=self.cfg.eval.num_samples,
                                        labels="random", seed=self.cfg.eval.seed, batch=self.cfg.eval.batch_size)
                out[f"eval_{METRIC_NAMES.get(feats.name, feats.name)}_nfe{k}"] = frechet_distance(stats, ref)
        finally:
            ema.train(was_training)
        return out


def finish_run(cfg: Config, run_dir: str | Path, device: str, log: Callable[[str], None] = print) -> None:
    """The end-of-run work the config asks for: ``eval.final`` (rows in eval.jsonl) and ``probe.final``
    (rows in probes.jsonl), both on the last checkpoint, which the caller has just written."""
    if cfg.eval.final:
        from alphaflow.evaluate import evaluate_run

        evaluate_run(run_dir, nfe=cfg.eval.nfe, sampler=cfg.sample.sampler, t_mid=cfg.sample.t_mid,
                     num_samples=cfg.eval.final_samples, extractor=cfg.eval.metric, seed=cfg.eval.seed,
                     device=device, batch_size=cfg.eval.batch_size, decode_batch_size=cfg.eval.decode_batch_size,
                     log=log)
    if cfg.probe.final:
        from alphaflow.probe_run import probe_run

        probe_run(run_dir, batches=cfg.probe.batches, batch_size=cfg.probe.batch_size, checkpoints="last",
                  parts=cfg.probe.parts, seed=cfg.probe.seed, device=device, chunk_size=cfg.probe.chunk_size, log=log)
