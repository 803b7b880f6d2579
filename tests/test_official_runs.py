"""An imported snapshot used as a run folder: sample grids through the VAE, fine-tuning by train.init_from, and
the ADM-format samples of ``alphaflow eval --save-npz`` (slow tier: trains and decodes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import alphaflow

from alphaflow.cli.main import main
from alphaflow.config import load_config
from alphaflow.run.files import read_checkpoint
from alphaflow.official import import_official
from alphaflow.run.folder import RunFolder
from alphaflow.train.loop import train
from test_import_official import TINY, save_snapshot, their_pair

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`


@pytest.fixture(scope="module")
def imported(latents, tmp_path_factory):
    """A tiny snapshot in the official layout, imported with the latents fixture's VAE (4×8×8 latents)."""
    tmp, _, _ = latents
    out = tmp_path_factory.mktemp("official")
    net, ema = their_pair(TINY, classes=2, dropout=0.1)
    save_snapshot(out / "snap.pt", net, ema.float(), classes=2, dropout=0.1, arch=TINY)
    return import_official(out / "snap.pt", out / "run", vae_path=str(tmp / "vae"), log=lambda _: None)


def test_an_imported_run_samples_at_one_and_two_nfe(imported, tmp_path):
    assert main(["sample", str(imported), "--nfe", "1", "2", "--num", "4", "--out", str(tmp_path / "g.png"),
                 "--device", "cpu"]) == 0
    sizes = {k: Image.open(tmp_path / f"g-nfe{k}.png").size for k in (1, 2)}
    assert sizes[1] == sizes[2] and min(sizes[1]) > 16  # decoded 16×16 images on a 2×2 grid
    assert main(["sample", str(imported), "--out", str(tmp_path / "g.jpg")]) == 2


def test_a_run_fine_tunes_from_an_imported_one(imported, latents, tmp_path):
    tmp, _, lat = latents
    cfg = load_config(None, ["model.name=DiT-N/2", "model.pos_embed=stored", "data.name=latents",
                             f"data.path={lat}", "objective.name=meanflow", "train.steps=2", "train.batch_size=4",
                             "train.log_every=1", "train.ckpt_every=2", "train.sample_every=0", "optim.lr=1e-12",
                             "train.threads=1", f"train.init_from={imported}"])
    train(cfg, tmp_path / "ft", log=lambda _: None)
    src = read_checkpoint(RunFolder(imported).checkpoints()[0][1])
    mine = read_checkpoint(RunFolder(tmp_path / "ft").checkpoints()[0][1])
    for key, value in src["net"].items():
        torch.testing.assert_close(mine["net"][key], value, rtol=0, atol=1e-8)
    for key in ("latent_mean", "latent_std"):  # the latents are normalised as the source's were
        assert torch.equal(mine["data_stats"][key], src["data_stats"][key]), key
    assert json.loads((tmp_path / "ft" / "init.json").read_text())["step"] == 1234


def test_eval_writes_the_samples_as_the_adm_suite_reads_them(tmp_path):
    out = tmp_path / "digits"
    train(load_config(None, ["model.name=DiT-N/2", "train.steps=2", "train.batch_size=8", "train.log_every=1",
                             "train.ckpt_every=2", "train.sample_every=0", "train.threads=1"]), out, log=lambda _: None)
    assert main(["eval", str(out), "--nfe", "1", "2", "--num-samples", "12", "--save-npz", str(tmp_path / "s.npz"),
                 "--device", "cpu", "--cache", str(tmp_path / "cache")]) == 0
    net, raw = alphaflow.load_model(out), alphaflow.load_model(out, "raw")
    ckpt = read_checkpoint(RunFolder(out).checkpoints()[0][1])
    assert not net.training and all(torch.equal(v, ckpt["ema"][k]) for k, v in net.state_dict().items())
    assert all(torch.equal(v, ckpt["net"][k]) for k, v in raw.state_dict().items())
    z, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    assert net(z, t * 0.5, t, torch.tensor([0, 1, 2])).shape == (3, 1, 8, 8)
    for k in (1, 2):
        with np.load(tmp_path / f"s-nfe{k}.npz") as npz:
            assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (12, 8, 8, 3)
            assert npz["arr_1"].shape == (12,) and set(npz["arr_1"]) <= set(range(10))
            assert (npz["arr_0"][..., 0] == npz["arr_0"][..., 2]).all(), "grey digits as three equal channels"


def test_an_import_with_real_latents_probes(latents, tmp_path):
    tmp, _, lat = latents
    net, ema = their_pair(TINY, classes=2, dropout=0.1, seed=9)
    save_snapshot(tmp_path / "snap.pt", net, ema.float(), classes=2, dropout=0.1, arch=TINY)
    run = import_official(tmp_path / "snap.pt", tmp_path / "run", data_path=str(lat), log=lambda _: None)
    assert main(["probe", str(run), "--batches", "1", "--batch-size", "4", "--device", "cpu"]) == 0
    row = json.loads((run / "probes.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1234 and -1.0 <= row["cos_tfm_tcc"] <= 1.0
    with pytest.raises(ValueError, match="the snapshot's DiT takes"):
        import_official(tmp_path / "snap.pt", tmp_path / "run2", data_path=str(lat), num_classes=3,
                        log=lambda _: None)

