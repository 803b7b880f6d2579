"""The FID Inception-v3, in plain torch (no torchvision), loading pytorch-fid's ported TF weights.

This is the network of the 2015-12-05 TensorFlow Inception graph that FID is defined with (Heusel et al.
2017), laid out with torchvision's module names so the state dict ``pt_inception-2015-12-05-6726825d.pth``
(pytorch-fid's release) loads with ``strict=True``. It differs from torchvision's ImageNet Inception-v3
exactly where pytorch-fid's FIDInception{A,C,E_1,E_2} patch it:

* the pool branch of the A, C and first E blocks averages with ``count_include_pad=False`` (TF's padding),
* the pool branch of the last E block (Mixed_7c) is a *max* pool,
* 1008 output classes (TF's label map), no auxiliary head; BatchNorm eps = 0.001 everywhere.

FID features are the 2048-d output of global average pooling after Mixed_7c ("pool3"); ``fc`` is kept only
so the file loads strictly. Shapes below are for a 299 × 299 input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from alphaflow.metrics.preprocess import inception_input

FEATURE_DIM, NUM_CLASSES = 2048, 1008
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # github.com/mseitzer/pytorch-fid/releases (fid_weights)


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm (eps 0.001) → ReLU; keys ``conv.weight``, ``bn.{weight,bias,running_*}``."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool3x3(x: Tensor, kind: str) -> Tensor:
    """3×3, stride 1, pad 1: TF's average (zero padding not counted) or max pool."""
    if kind == "max":
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/c/d, 35×35: cin → 64 + 64 + 96 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_pool3x3(x, "avg"))], 1)


class InceptionB(nn.Module):
    """Mixed_6a, 35×35 → 17×17: cin → 384 + 96 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b/c/d/e, 17×17: cin → 4 · 192 channels, factorised 7×7 convolutions of width c7."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool3x3(x, "avg"))], 1)


class InceptionD(nn.Module):
    """Mixed_7a, 17×17 → 8×8: cin → 320 + 192 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/c, 8×8: cin → 320 + 768 + 768 + 192 = 2048 channels; ``pool`` is "avg" (7b) or "max" (7c)."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
                          self.branch_pool(_pool3x3(x, self.pool))], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID reference graph; input [B, 3, 299, 299] in [−1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)      # 149×149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)               # 147×147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)    # 147×147, max pool → 73×73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)               # 73×73
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)              # 71×71, max pool → 35×35
        self.Mixed_5b = InceptionA(192, pool_features=32)         # 256
        self.Mixed_5c = InceptionA(256, pool_features=64)         # 288
        self.Mixed_5d = InceptionA(288, pool_features=64)         # 288
        self.Mixed_6a = InceptionB(288)                           # 768, 17×17
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)                   # 768
        self.Mixed_7a = InceptionD(768)                           # 1280, 8×8
        self.Mixed_7b = InceptionE(1280, pool="avg")              # 2048
        self.Mixed_7c = InceptionE(2048, pool="max")              # 2048
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)             # TF's 1008-way head; FID ignores it

    def features(self, x: Tensor) -> Tensor:
        """x [B, 3, 299, 299] in [−1, 1] → pool3 features [B, 2048] (≥ 0: the mean of post-ReLU maps)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, 3, 299, 299] in [−1, 1] → logits [B, 1008] (TF label map; index 0 is "background")."""
        return self.fc(self.features(x))


def load_inception(weights: str | Path, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """FIDInceptionV3 with the state dict at ``weights`` (strict), in eval mode without grad, on ``device``.

    Raises FileNotFoundError if the file is missing and ValueError (naming the file and the first missing /
    unexpected / mis-shaped keys) if it is not an FID Inception state dict.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights {str(path)!r} not found: expected pytorch-fid's {WEIGHTS_FILE} "
                                "(download it once; nothing is downloaded at run time)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ValueError(f"cannot read Inception weights {str(path)!r} ({type(err).__name__}: {err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} holds a {type(state).__name__}, not an Inception state dict")
    model = FIDInceptionV3()
    try:
        result = model.load_state_dict(state, strict=False)  # strict by hand below, for a readable message
    except RuntimeError as err:  # shape mismatches
        first = str(err).splitlines()[1:4]
        detail = " ".join(line.strip() for line in first)
        raise ValueError(f"{str(path)!r} does not fit the FID Inception-v3: {detail}") from err
    # BatchNorm's step counter is bookkeeping, not a weight (files from old torch versions lack it)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{str(path)!r} is not an FID Inception-v3 state dict ({WEIGHTS_FILE}): "
                         f"{len(missing)} missing keys, first {missing[:3]}; "
                         f"{len(result.unexpected_keys)} unexpected keys, first {result.unexpected_keys[:3]}")
    return model.to(device).eval().requires_grad_(False)


class InceptionFeatures:
    """The ``"inception"`` extractor (metric ``fid``): images [B, 1|3, H, W] in [−1, 1] → pool3 features [B, 2048].

    Preprocessing: ``preprocess.inception_input`` (8-bit quantise, bilinear resize to 299, [−1, 1]).
    """

    name: str = "inception"
    dim: int = FEATURE_DIM

    def __init__(self, model: FIDInceptionV3, weights_path: Path | None = None, batch_size: int = 64) -> None:
        self.model = model.eval().requires_grad_(False)
        self.weights_path, self.batch_size = weights_path, batch_size

    def _run(self, images: Tensor, head: bool) -> Tensor:
        dev = next(self.model.parameters()).device
        out = []
        with torch.no_grad():
            for chunk in images.split(self.batch_size):
                x = inception_input(chunk.to(dev))
                out.append(self.model(x) if head else self.model.features(x))
        width = NUM_CLASSES if head else FEATURE_DIM
        return torch.cat(out).float().to(images.device) if out else images.new_zeros(0, width, dtype=torch.float32)

    def __call__(self, images: Tensor) -> Tensor:
        """images [B, 1|3, H, W] in [−1, 1] → features [B, 2048] float32 on the images' device."""
        return self._run(images, head=False)

    def logits(self, images: Tensor) -> Tensor:
        """images [B, 1|3, H, W] in [−1, 1] → 1008-way logits [B, 1008] (for checks; FID does not use them)."""
        return self._run(images, head=True)


def inception_extractor(weights: str | Path, device: str | torch.device = "cpu", *,
                        batch_size: int = 64) -> InceptionFeatures:
    """The FID extractor from a local ``pt_inception-2015-12-05-*.pth`` (see ``load_inception`` for errors)."""
    return InceptionFeatures(load_inception(weights, device), Path(weights).expanduser(), batch_size)
