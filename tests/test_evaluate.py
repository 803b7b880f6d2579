"""alphaflow eval / ref-stats on the embedded default: deterministic, and a trained model beats an untrained one."""

from __future__ import annotations

import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.config import load_config
from alphaflow.data import build_dataset
from alphaflow.evaluate.quality import EvalRequest, References, evaluate_run, extractor_for, reference_stats, sample_features
from alphaflow.metrics import frechet_distance
from alphaflow.models import build_for_data
from alphaflow.run.folder import read_jsonl
from alphaflow.train.loop import train

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    cfg = load_config(None, ["model.name=DiT-N/2", "train.steps=300", "train.batch_size=32", "train.sample_every=0",
                             "train.log_every=100", "ema.halflife_steps=50", "objective.name=meanflow"])
    train(cfg, root / "run", log=lambda _: None)
    return root / "run", root / "cache"


def test_eval_rows_are_deterministic_and_beat_an_untrained_model(trained_run):
    run, cache = trained_run
    first = evaluate_run(run, EvalRequest(num_samples=400), References(cache_dir=cache), log=lambda _: None)
    again = evaluate_run(run, EvalRequest(nfe=[1], num_samples=400), References(cache_dir=cache), log=lambda _: None)
    assert [r["nfe"] for r in first] == [1, 2] and first[0]["metric"] == "fd_digits"
    assert again[0]["value"] == first[0]["value"], "fixed seeds give the same number"
    assert len(read_jsonl(run / "eval.jsonl")) == 3
    data = build_dataset("digits")
    feats = extractor_for("digits", None, cache)
    torch.manual_seed(0)
    untrained = build_for_data("DiT-N/2", data.shape, data.num_classes)
    stats = sample_features(untrained, data, feats, nfe=1, sampler="ode", t_mid=0.5, num_samples=400,
                            labels="random", seed=0)
    untrained_fd = frechet_distance(stats, reference_stats(data, "digits", feats, cache))
    assert untrained_fd > 1.5 * max(r["value"] for r in first), (untrained_fd, first)


def test_eval_command_and_its_errors(trained_run, capsys):
    run, cache = trained_run
    assert main(["eval", str(run), "--nfe", "2", "--num-samples", "64", "--labels", "balanced",
                 "--cache", str(cache)]) == 0
    assert read_jsonl(run / "eval.jsonl")[-1]["labels"] == "balanced"
    assert main(["eval", str(run), "--checkpoint", "7", "--cache", str(cache)]) == 2
    assert "no checkpoint at step(s) [7]" in capsys.readouterr().err
    # the run's config gives the defaults; eval.*/sample.* overrides change them, as for train
    assert main(["eval", str(run), "eval.nfe=[1]", "eval.final_samples=64", "sample.t_mid=0.25", "--cache", str(cache)]) == 0
    row = read_jsonl(run / "eval.jsonl")[-1]
    assert (row["nfe"], row["num_samples"], row["t_mid"]) == (1, 64, 0.25)
    assert main(["eval", str(run), "train.steps=5", "--cache", str(cache)]) == 2
    assert "'train.steps=5': only eval.*, sample.* keys can change here" in capsys.readouterr().err
    assert main(["ref-stats", "--data", "digits", "--cache", str(cache)]) == 0
    assert "1797 samples, 64 features" in capsys.readouterr().out
    assert main(["ref-stats", "--data", "toy2d", "--cache", str(cache)]) == 2
