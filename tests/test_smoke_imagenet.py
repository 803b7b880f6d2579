"""The ImageNet path end to end on made-up data (tests/fake_imagenet.py): a folder of JPEGs → ``extract-latents``
with a random SD-VAE-shaped AutoencoderKL saved locally → ``sweep --smoke`` of the Table 2a sweep file (arXiv
2510.20771 Table 2a) → ``eval --metric fid`` with a random Inception → ``report``. Only sizes differ from a
cluster run: the file, the latent pipeline at 256 × 256 (4 × 32 × 32 latents), the VAE decode of the sample
grids and the Fréchet distance against the source images are the real code paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from alphaflow.cli.main import main
from alphaflow.config import to_dict
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import RunFolder
from fake_imagenet import make_all

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
TABLE2A = ROOT / "sweeps" / "imagenet" / "table2a_schedules.yaml"


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fake_imagenet")
    fake = make_all(tmp)
    assert main(["extract-latents", str(fake["images"]), "--vae", str(fake["vae"]), "--out", str(tmp / "latents"),
                 "--batch-size", "5"]) == 0
    args = ["sweep", str(TABLE2A), "--smoke", f"data.path={tmp / 'latents'}", f"data.vae_path={fake['vae']}",
            "--root", str(tmp / "runs"), "--smoke-steps", "2"]  # stop at 1, resume, end at 2: the test tier's budget
    return tmp, fake, args


def test_extracted_latents_have_imagenet_shape(rehearsed):
    tmp, _, _ = rehearsed
    meta = json.loads((tmp / "latents" / "meta.json").read_text())
    assert meta["shape"] == [4, 32, 32] and meta["num"] == 12 and meta["num_classes"] == 3
    assert meta["resolution"] == 256


def test_smoke_of_table2a_trains_every_run_through_a_requeue(rehearsed, capsys):
    tmp, fake, args = rehearsed
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "model.name              DiT-B/2 -> DiT-XT/2" in out and "train.batch_size        256 -> 8" in out
    assert "train.steps             400000 -> 2" in out
    assert "#SBATCH --gpus-per-node=8" in out and "smoke: 7/7 runs finished" in out
    real = {r.name.rsplit("-", 1)[0]: r.config for r in load_sweep(TABLE2A, [f"data.path={tmp / 'latents'}"]).runs}
    folders = sorted((tmp / "runs").iterdir())
    assert len(folders) == 7
    for folder in folders:
        run = RunFolder(folder)
        cfg = json.loads((folder / "config.json").read_text())
        assert run.is_done() and cfg["model"]["name"] == "DiT-XT/2"
        assert cfg["objective"] == to_dict(real[folder.name.rsplit("-", 1)[0]])["objective"]  # schedule as filed
        steps = [row["step"] for row in run.read_metrics() if "loss" in row]
        assert steps == [1, 2]  # stopped at 1, resumed: no row lost or written twice
        assert "resuming" in out and all(math.isfinite(r["loss"]) for r in run.read_metrics() if "loss" in r)
        from PIL import Image
        with Image.open(run.sample_path(2, 1)) as grid:  # 16 samples decoded by the VAE: 4 × 4 tiles of 256²
            assert grid.size[0] >= 4 * 256
    # a second rehearsal finds every run done and trains nothing
    assert main(args) == 0
    assert capsys.readouterr().out.count("done by an earlier rehearsal") == 7


def test_eval_fid_with_random_inception_then_report(rehearsed, capsys):
    tmp, fake, args = rehearsed
    if not (tmp / "runs").exists() or len(list((tmp / "runs").iterdir())) < 7:
        assert main(args) == 0
    run = next(p for p in sorted((tmp / "runs").iterdir()) if p.name.startswith("sigmoid-0k-400k"))
    assert main(["eval", str(run), "--metric", "fid", "--ref-images", str(fake["images"]), "--inception-weights",
                 str(fake["inception"]), "--cache", str(tmp / "cache")]) == 0
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [(r["metric"], r["nfe"], r["num_samples"]) for r in rows] == [("fid", 1, 16), ("fid", 2, 16)]
    assert all(np.isfinite(r["value"]) and r["value"] > 0 for r in rows)  # random features, but not degenerate
    assert main(["report", str(tmp / "runs")]) == 0
    summary = (tmp / "runs" / "report" / "summary.md").read_text()
    assert "sigmoid-0k-400k" in summary and "fid" in summary and "constant-0" in summary
    capsys.readouterr()
