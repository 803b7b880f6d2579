"""DINOv2 features for FDD (the Fréchet distance in DINOv2 space; Stein et al. 2023), via Hugging Face.

The model is ``transformers.Dinov2Model`` loaded from a LOCAL folder (``config.json`` + weights), e.g.
``facebook/dinov2-large`` (ViT-L/14, 1024-d) saved once with ``save_pretrained``; nothing is downloaded.
Features are the CLS token of the last hidden state *after* the final LayerNorm (``pooler_output`` of
``Dinov2Model``), which is what the torch.hub model's ``forward`` returns (``x_norm_clstoken``) in the
dgm-eval / EDM2 FDD code. The Hugging Face port interpolates the positional embeddings to 16 × 16 patches
with ``size=`` where the hub code uses a scale factor; the two are not verified here to agree bit for bit.
``transformers`` is imported only when an extractor is built, so the package works without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from alphaflow.metrics.preprocess import dinov2_input

if TYPE_CHECKING:
    from transformers import Dinov2Model

INPUT_SIZE = 224  # 16 × 16 patches of 14 pixels


def load_dinov2(folder: str | Path, device: str | torch.device = "cpu") -> Dinov2Model:
    """A ``Dinov2Model`` from a local ``save_pretrained`` folder, in eval mode without grad, on ``device``.

    Raises FileNotFoundError for a missing folder / config.json, ImportError without ``transformers`` and
    ValueError for a folder that cannot be loaded, is not a DINOv2 model or lacks some of its weights.
    """
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise FileNotFoundError(f"DINOv2 folder {str(path)!r} {what}: expected a local Hugging Face model folder "
                                "(e.g. facebook/dinov2-large saved with save_pretrained); nothing is downloaded")
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError as err:
        raise ImportError("the fdd metric needs `transformers`: pip install -c constraints.txt "
                          "'alphaflow[eval]'") from err
    try:
        config = Dinov2Config.from_pretrained(path, local_files_only=True)
        if config.model_type != "dinov2":
            raise ValueError(f"{str(path)!r} holds a {config.model_type!r} model, not DINOv2")
        loaded = Dinov2Model.from_pretrained(path, local_files_only=True, output_loading_info=True)
        model, info = cast(tuple[Dinov2Model, dict[str, Any]], loaded)  # (model, loading info) with that flag
    except OSError as err:  # no weights file, unreadable JSON, ...
        raise ValueError(f"cannot load DINOv2 from {str(path)!r}: {err}") from err
    # a mask token is only used for masked-image pre-training inputs, never for features
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("mask_token")]
    if missing:
        raise ValueError(f"{str(path)!r} lacks {len(missing)} DINOv2 weights, first {sorted(missing)[:3]}; "
                         "the model would be partly random")
    # transformers declares PreTrainedModel.to through functools.wraps(nn.Module.to): typed as unbound
    return model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]  # the stub gap above


class Dinov2Features:
    """The ``"dinov2"`` extractor (metric ``fdd``): images [B, 1|3, H, W] in [−1, 1] → CLS features [B, hidden].

    Preprocessing: ``preprocess.dinov2_input`` (8-bit quantise, bicubic antialiased resize to 224,
    ImageNet mean/std). ``dim`` is the model's hidden size (1024 for ViT-L/14).
    """

    name: str = "dinov2"

    def __init__(self, model: Dinov2Model, folder: Path | None = None, batch_size: int = 64) -> None:
        self.model = model.eval().requires_grad_(False)
        self.dim = int(model.config.hidden_size)
        self.folder, self.batch_size = folder, batch_size

    def __call__(self, images: Tensor) -> Tensor:
        """images [B, 1|3, H, W] in [−1, 1] → features [B, hidden] float32 on the images' device."""
        dev = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for chunk in images.split(self.batch_size):
                x = dinov2_input(chunk.to(dev), INPUT_SIZE).to(self.model.dtype)
                out.append(self.model(pixel_values=x).pooler_output)  # CLS token after the final LayerNorm
        return torch.cat(out).float().to(images.device) if out else images.new_zeros(0, self.dim, dtype=torch.float32)


def dinov2_extractor(folder: str | Path, device: str | torch.device = "cpu", *, batch_size: int = 64) -> Dinov2Features:
    """The FDD extractor from a local Hugging Face DINOv2 folder (see ``load_dinov2`` for errors)."""
    return Dinov2Features(load_dinov2(folder, device), Path(folder).expanduser(), batch_size)
