"""Which feature extractor a metric name means, the dataset's default metric, and where real weights come from."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import torch

from alphaflow.metrics.features import EXTRACTORS, METRIC_NAMES, FeatureExtractor

# metric name on the command line → extractor (extractor names are accepted too)
METRICS = {"digits": "digits", "fid": "inception", "fdd": "dinov2"}
# the metric used when none is chosen; toy2d has no images, hence no default
DEFAULT_METRIC = {"digits": "digits", "cifar10": "fid", "imagefolder": "fid", "latents": "fid"}
# where a real-weight extractor finds its weights: (CLI option, environment variable, what to point at)
WEIGHTS_SOURCES = {
    "inception": ("--inception-weights", "ALPHAFLOW_INCEPTION_WEIGHTS",
                  "pytorch-fid's pt_inception-2015-12-05-6726825d.pth"),
    "dinov2": ("--dinov2", "ALPHAFLOW_DINOV2", "a local Hugging Face DINOv2 folder (facebook/dinov2-large)"),
}
LATENT_REFERENCE = ("reference statistics of a latent dataset come from the images the latents were encoded from: "
                    "pass --ref-images IMAGE_FOLDER, or --ref-stats FILE.npz (mu/sigma, e.g. ADM's "
                    "VIRTUAL_imagenet256_labeled.npz, or `alphaflow ref-stats --data imagefolder`)")


def parse_metrics(metrics: str | Sequence[str] | None, data_name: str) -> list[str]:
    """``"fid,fdd"``, ``["fid", "fdd"]`` or None (the dataset's default) → extractor names, in order, unique."""
    items = [metrics] if isinstance(metrics, str) else list(metrics or [])
    names = [m.strip() for item in items for m in str(item).split(",") if m.strip()]
    if not names:
        if data_name not in DEFAULT_METRIC:
            raise ValueError(f"no default metric for data.name={data_name!r} (not image data); "
                             f"choose --metric from {', '.join(METRICS)}")
        names = [DEFAULT_METRIC[data_name]]
    out: list[str] = []
    for name in names:
        ext = METRICS.get(name, name if name in EXTRACTORS else None)
        if ext is None:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        if ext not in out:
            out.append(ext)
    return out


def weights_path(extractor: str, given: str | Path | None) -> Path:
    """The weights of a real-weight extractor: ``given`` (the CLI option), else its environment variable."""
    option, env, what = WEIGHTS_SOURCES[extractor]
    value, source = (given, option) if given else (os.environ.get(env), f"${env}")
    if not value:
        raise ValueError(f"the {METRIC_NAMES[extractor]} metric needs {what}: pass {option} PATH or set {env}")
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{source} = {str(path)!r} does not exist (expected {what})")
    return path


def extractor_for(data_name: str, name: str | None, cache_dir: Path, *,
                  weights: Mapping[str, str | Path | None] | None = None,
                  device: str | torch.device = "cpu") -> FeatureExtractor:
    """One extractor by metric or extractor name (None: the dataset's default metric).

    ``weights`` maps "inception" / "dinov2" to a local path; a missing entry falls back to the environment.
    """
    names = parse_metrics(name, data_name)
    if len(names) != 1:
        raise ValueError(f"extractor_for takes one metric, got {name!r}")
    ext = names[0]
    if ext == "digits":
        return EXTRACTORS[ext](cache_dir)
    try:
        return EXTRACTORS[ext](weights_path(ext, (weights or {}).get(ext)), device)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
