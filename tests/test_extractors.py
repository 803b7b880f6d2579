"""The real-weight extractors (Inception for FID, DINOv2 for FDD) on random weights, and their CLI wiring.

Nothing is downloaded: the Inception is random-initialised and saved under the real file's key names, the
DINOv2 is a tiny random ``Dinov2Model`` saved with ``save_pretrained``. Tests with the real weights run only
when ALPHAFLOW_INCEPTION_WEIGHTS / ALPHAFLOW_DINOV2 point at them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.evaluate.quality import extractor_for, load_reference, parse_metrics, parse_ref_stats
from alphaflow.metrics import EXTRACTORS, METRIC_NAMES, FeatureExtractor, FeatureStats
from alphaflow.metrics.inception import FIDInceptionV3, InceptionFeatures, inception_extractor
from alphaflow.metrics.preprocess import dinov2_input, inception_input, quantize_8bit, to_uint8_levels

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

REAL_INCEPTION = os.environ.get("ALPHAFLOW_INCEPTION_WEIGHTS")
REAL_DINOV2 = os.environ.get("ALPHAFLOW_DINOV2")


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random FIDInceptionV3 saved as a plain state dict, like pt_inception-2015-12-05-6726825d.pth."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(FIDInceptionV3().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                       patch_size=14, image_size=56)
    folder = tmp_path_factory.mktemp("dinov2") / "tiny-dinov2"
    transformers.Dinov2Model(config).save_pretrained(folder)
    return folder


# --- preprocessing ---------------------------------------------------------------------------------------------

def test_quantisation_is_the_png_grid_and_idempotent() -> None:
    x = torch.rand(2, 3, 5, 5) * 2.4 - 1.2  # also outside [−1, 1]
    levels = to_uint8_levels(x)
    assert torch.equal(levels, levels.round()) and levels.min() >= 0 and levels.max() <= 255
    q = quantize_8bit(x)
    assert torch.equal(quantize_8bit(q), q)
    pixels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16)
    assert torch.equal(to_uint8_levels(pixels / 127.5 - 1), pixels), "u / 127.5 − 1 (the loaders) maps back to u"
    # EDM's PNG writer: (x · 127.5 + 128) truncated to uint8
    edm = (x * 127.5 + 128).clip(0, 255).to(torch.uint8).float()
    assert torch.equal(levels, edm)


def test_inception_input_shape_range_and_grayscale() -> None:
    gray = torch.rand(2, 1, 8, 8) * 2 - 1
    x = inception_input(gray)
    assert x.shape == (2, 3, 299, 299) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert torch.equal(inception_input(gray), inception_input(quantize_8bit(gray))), "quantised first"
    same = torch.rand(1, 3, 299, 299) * 2 - 1  # at 299 no resize: exactly the 8-bit image in [−1, 1]
    assert torch.allclose(inception_input(same), to_uint8_levels(same) / 255 * 2 - 1)
    with pytest.raises(ValueError, match="1 or 3"):
        inception_input(torch.zeros(1, 4, 8, 8))


def test_dinov2_input_is_224_imagenet_normalised() -> None:
    x = dinov2_input(torch.rand(3, 1, 32, 32) * 2 - 1)
    assert x.shape == (3, 3, 224, 224)
    white = dinov2_input(torch.ones(1, 3, 17, 17))  # constant images stay constant through the resize
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(white.mean(dim=(0, 2, 3)), expected, atol=1e-5)


# --- Inception -------------------------------------------------------------------------------------------------

def test_inception_architecture_matches_the_fid_state_dict_layout() -> None:
    sd = FIDInceptionV3().state_dict()
    # torchvision's inception_v3 has 27,161,264 parameters; minus its auxiliary head (3,326,696) and with 1008
    # instead of 1000 classes (+8 · 2049) that is pytorch-fid's FID Inception
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 23_850_960
    assert len(sd) == 566 and not any(k.startswith("AuxLogits") for k in sd)
    shapes = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
              "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
              "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
              "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
              "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
              "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
              "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
              "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    assert all(m.eps == 1e-3 for m in FIDInceptionV3().modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_inception_extractor_round_trips_a_state_dict_and_gives_pool3_features(inception_file: Path) -> None:
    extract = inception_extractor(inception_file)
    assert isinstance(extract, FeatureExtractor) and (extract.name, extract.dim) == ("inception", 2048)
    ref = FIDInceptionV3()
    ref.load_state_dict(torch.load(inception_file, weights_only=True))
    assert all(torch.equal(a, b) for a, b in zip(extract.model.state_dict().values(), ref.state_dict().values()))
    images = torch.rand(3, 3, 40, 40) * 2 - 1
    feats = extract(images)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all(), "pool3 averages post-ReLU maps"
    assert not torch.equal(feats[0], feats[1])
    assert torch.allclose(extract(images[:1]), feats[:1], rtol=1e-4, atol=1e-9), "batching does not matter"
    assert extract(torch.zeros(0, 3, 8, 8)).shape == (0, 2048)
    assert extract.logits(images[:1]).shape == (1, 1008)


def test_inception_pooling_follows_the_tf_graph() -> None:
    """A and C blocks average without counting zero padding; Mixed_7c max-pools."""
    net = FIDInceptionV3()
    assert (net.Mixed_7b.pool, net.Mixed_7c.pool) == ("avg", "max")
    from alphaflow.metrics.inception import _pool3x3
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(_pool3x3(x, "avg"), x), "count_include_pad=False keeps a constant map constant at borders"
    x[0, 0, 0, 0] = 5.0
    assert _pool3x3(x, "max")[0, 0, 1, 1] == 5.0


def test_inception_file_errors(tmp_path: Path, inception_file: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        inception_extractor(tmp_path / "nowhere.pth")
    sd = torch.load(inception_file, weights_only=True)
    sd["Mixed_5b.branch1x1.conv.weight_renamed"] = sd.pop("Mixed_5b.branch1x1.conv.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"renamed\.pth.*missing keys.*Mixed_5b\.branch1x1\.conv\.weight'.*"
                                         r"unexpected keys.*weight_renamed"):
        inception_extractor(bad)
    sd = torch.load(inception_file, weights_only=True)
    sd["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's 1000-class head
    torch.save(sd, bad)
    with pytest.raises(ValueError, match="fc.weight"):
        inception_extractor(bad)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        inception_extractor(tmp_path / "junk.pth")


# --- DINOv2 ----------------------------------------------------------------------------------------------------

def test_dinov2_extractor_gives_cls_features(dinov2_folder: Path) -> None:
    from alphaflow.metrics.dinov2 import dinov2_extractor

    extract = dinov2_extractor(dinov2_folder)
    assert isinstance(extract, FeatureExtractor) and (extract.name, extract.dim) == ("dinov2", 32)
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    feats = extract(images)
    assert feats.shape == (2, 32) and torch.isfinite(feats).all()
    with torch.no_grad():  # by hand: 224-pixel input, CLS token of the layer-normed last hidden state
        out = extract.model(pixel_values=dinov2_input(images))
    assert torch.allclose(feats, out.last_hidden_state[:, 0], atol=1e-5)
    assert out.last_hidden_state.shape[1] == 1 + (224 // 14) ** 2


def test_dinov2_folder_errors(tmp_path: Path, dinov2_folder: Path) -> None:
    from alphaflow.metrics.dinov2 import dinov2_extractor

    with pytest.raises(FileNotFoundError, match="does not exist"):
        dinov2_extractor(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        dinov2_extractor(empty)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((dinov2_folder / "config.json").read_text())
    with pytest.raises(ValueError, match="cannot load DINOv2 from .*partial"):
        dinov2_extractor(partial)  # config but no weights
    transformers = pytest.importorskip("transformers")
    shallow = transformers.Dinov2Config.from_pretrained(dinov2_folder)
    shallow.num_hidden_layers = 1
    transformers.Dinov2Model(shallow).save_pretrained(partial)
    (partial / "config.json").write_text((dinov2_folder / "config.json").read_text())  # claims 2 layers
    with pytest.raises(ValueError, match=r"lacks \d+ DINOv2 weights, first \['encoder\.layer\.1\."):
        dinov2_extractor(partial)


# --- registry, metric and reference-file parsing, CLI --------------------------------------------------------

def test_registry_and_metric_names() -> None:
    assert set(EXTRACTORS) == {"digits", "inception", "dinov2"}
    assert METRIC_NAMES == {"digits": "fd_digits", "inception": "fid", "dinov2": "fdd"}
    assert parse_metrics(None, "digits") == ["digits"] and parse_metrics(None, "imagefolder") == ["inception"]
    assert parse_metrics(["fid,fdd", "fid"], "digits") == ["inception", "dinov2"]
    with pytest.raises(ValueError, match="unknown metric 'is'"):
        parse_metrics("is", "digits")
    with pytest.raises(ValueError, match="no default metric"):
        parse_metrics(None, "toy2d")


def test_weights_come_from_the_option_or_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         inception_file: Path) -> None:
    monkeypatch.delenv("ALPHAFLOW_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("ALPHAFLOW_DINOV2", raising=False)
    with pytest.raises(ValueError, match="--inception-weights PATH or set ALPHAFLOW_INCEPTION_WEIGHTS"):
        extractor_for("digits", "fid", tmp_path)
    with pytest.raises(ValueError, match="--dinov2 PATH or set ALPHAFLOW_DINOV2"):
        extractor_for("digits", "fdd", tmp_path)
    with pytest.raises(ValueError, match=r"--inception-weights = .*absent\.pth' does not exist"):
        extractor_for("digits", "fid", tmp_path, weights={"inception": tmp_path / "absent.pth"})
    monkeypatch.setenv("ALPHAFLOW_INCEPTION_WEIGHTS", str(inception_file))
    assert isinstance(extractor_for("digits", "fid", tmp_path), InceptionFeatures)


def test_reference_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "adm.npz", mu=rng.normal(size=4), sigma=np.eye(4), mu_s=np.zeros(2))  # ADM's layout
    stats = load_reference(tmp_path / "adm.npz", 4)
    assert stats.dim == 4 and stats.count == 0
    FeatureStats(np.zeros(4), np.eye(4), 10).save(tmp_path / "ours.npz")
    assert load_reference(tmp_path / "ours.npz", 4).count == 10
    with pytest.raises(ValueError, match="4-d statistics, the extractor gives 2048-d"):
        load_reference(tmp_path / "adm.npz", 2048)
    assert parse_ref_stats(["a.npz"], ["inception"]) == {"inception": Path("a.npz")}
    assert parse_ref_stats(["fdd=b.npz", "fid=a.npz"], ["inception", "dinov2"]) == {
        "inception": Path("a.npz"), "dinov2": Path("b.npz")}
    with pytest.raises(ValueError, match="METRIC=FILE"):
        parse_ref_stats(["a.npz"], ["inception", "dinov2"])


def test_cli_errors_name_the_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.delenv("ALPHAFLOW_INCEPTION_WEIGHTS", raising=False)
    assert main(["ref-stats", "--data", "digits", "--metric", "fid", "--cache", str(tmp_path)]) == 2
    assert "--inception-weights PATH or set ALPHAFLOW_INCEPTION_WEIGHTS" in capsys.readouterr().err
    assert main(["ref-stats", "--data", "digits", "--metric", "kid", "--cache", str(tmp_path)]) == 2
    assert "unknown metric 'kid'" in capsys.readouterr().err
    assert main(["ref-stats", "--data", "latents", "--data-path", str(tmp_path), "--cache", str(tmp_path)]) == 2
    assert "--data imagefolder" in capsys.readouterr().err


def test_cli_ref_stats_with_two_metrics(tmp_path: Path, inception_file: Path, dinov2_folder: Path, capsys) -> None:
    """Reference statistics of a small image folder (grayscale PNGs) for fid and fdd in one pass."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "images" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"class{c}" / f"{i}.png")
    args = ["ref-stats", "--data", "imagefolder", "--data-path", str(tmp_path / "images"), "--resolution", "16",
            "--metric", "fid,fdd", "--inception-weights", str(inception_file), "--dinov2", str(dinov2_folder),
            "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(fid): 6 samples, 2048 features" in out and "(fdd): 6 samples, 32 features" in out
    files = sorted(p.name for p in (tmp_path / "cache").glob("ref-*.npz"))
    assert len(files) == 2 and all(f.startswith("ref-imagefolder16-") for f in files)


# --- real weights (skipped unless present) -------------------------------------------------------------------

@pytest.mark.skipif(not (REAL_INCEPTION and Path(REAL_INCEPTION).is_file()),
                    reason="set ALPHAFLOW_INCEPTION_WEIGHTS to pt_inception-2015-12-05-6726825d.pth")
def test_real_inception_weights() -> None:
    extract = inception_extractor(REAL_INCEPTION)
    gray = torch.zeros(2, 3, 64, 64)  # mid-gray
    feats, logits = extract(gray), extract.logits(gray)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all() and feats.sum() > 0
    assert logits.shape == (2, 1008) and torch.isfinite(logits).all()


@pytest.mark.skipif(not (REAL_DINOV2 and Path(REAL_DINOV2).is_dir()),
                    reason="set ALPHAFLOW_DINOV2 to a local facebook/dinov2-large folder")
def test_real_dinov2_weights() -> None:
    from alphaflow.metrics.dinov2 import dinov2_extractor

    extract = dinov2_extractor(REAL_DINOV2)
    feats = extract(torch.zeros(2, 3, 64, 64))
    assert extract.dim == 1024 and feats.shape == (2, 1024) and torch.isfinite(feats).all()


def test_eval_command_with_fid_and_fdd(tmp_path: Path, inception_file: Path, dinov2_folder: Path, capsys) -> None:
    """One set of samples, two metrics, reference statistics from files (a full digits reference through a
    299-pixel Inception would take minutes on CPU)."""
    from alphaflow.config import load_config
    from alphaflow.run.folder import read_jsonl
    from alphaflow.train.loop import train

    cfg = load_config(None, ["model.name=DiT-N/2", "train.steps=2", "train.batch_size=8", "train.sample_every=0",
                             "train.log_every=1", "objective.name=meanflow"])
    train(cfg, tmp_path / "run", log=lambda _: None)
    rng = np.random.default_rng(0)
    for name, dim in (("fid", 2048), ("fdd", 32)):
        np.savez(tmp_path / f"{name}.npz", mu=rng.random(dim), sigma=np.eye(dim))
    args = ["eval", str(tmp_path / "run"), "--nfe", "1", "--num-samples", "4", "--metric", "fid", "--metric", "fdd",
            "--inception-weights", str(inception_file), "--dinov2", str(dinov2_folder), "--device", "cpu",
            "--ref-stats", f"fdd={tmp_path / 'fdd.npz'}", "--ref-stats", f"fid={tmp_path / 'fid.npz'}",
            "--cache", str(tmp_path / "cache")]
    assert main(args) == 0
    rows = read_jsonl(tmp_path / "run" / "eval.jsonl")
    assert [r["metric"] for r in rows] == ["fid", "fdd"] and all(np.isfinite(r["value"]) for r in rows)
    assert rows[0]["ref"].endswith("fid.npz") and rows[1]["ref"].endswith("fdd.npz")
    assert "1-NFE" in capsys.readouterr().out
    assert main(args[:-4] + ["--ref-stats", str(tmp_path / "fid.npz")]) == 2
    assert "METRIC=FILE" in capsys.readouterr().err
