"""Gradient probes: the cosines mean what they say, the terms add up, training is untouched."""

from __future__ import annotations

import json

import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.config import load_config
from alphaflow.models import build_model
from alphaflow.objectives import MeanFlow, Sample
from alphaflow.evaluate.offline_probe import probe_run
from alphaflow.train.probes import EXTRA_TERMS, TERMS, gram_matrices, gram_summary, parameter_groups, probe_gradients, term_losses
from alphaflow.run.folder import RunFolder
from alphaflow.train.loop import train

SIX = ("cos_tfm_tcc", "cos_fmb_tcc", "cos_tfm_fmb", "cos_tfm_mf", "cos_fmb_mf", "cos_tcc_mf")


def pair_sample(x, y, seed=3):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(x.shape[0], generator=g, dtype=x.dtype), torch.rand(x.shape[0], generator=g, dtype=x.dtype)
    return Sample(torch.maximum(a, b), torch.minimum(a, b), torch.randn(x.shape, generator=g, dtype=x.dtype), y)


def test_cosine_is_one_for_identical_and_minus_one_for_negated_terms(tiny_net, batch):
    x, y = batch
    loss = MeanFlow()(tiny_net, x, sample=pair_sample(x, y)).components["tfm"].mean()
    params = list(tiny_net.named_parameters())
    gram = gram_matrices({"a": loss, "b": loss, "c": -2 * loss}, params)["all"]
    out = gram_summary(gram, ["a", "b", "c"], {})
    assert out["cos_a_b"] == pytest.approx(1.0, abs=1e-12)
    assert out["cos_a_c"] == pytest.approx(-1.0, abs=1e-12)
    assert out["gradnorm_c"] == pytest.approx(2 * out["gradnorm_a"], rel=1e-12)


def test_term_gradients_add_up_to_the_meanflow_gradient(tiny_net, batch):
    """‖∇L_MF − ∇L_TFM − ∇L_TCC‖² from the Gram matrix of the probe's own gradients is 0."""
    x, y = batch
    terms = term_losses(tiny_net, x, pair_sample(x, y))
    keys = ["tfm", "tcc", "mf"]
    g = gram_matrices({k: terms[k] for k in keys}, list(tiny_net.named_parameters()))["all"]
    residual = g[2, 2] + g[0, 0] + g[1, 1] - 2 * g[2, 0] - 2 * g[2, 1] + 2 * g[0, 1]
    assert abs(float(residual)) < 1e-12 * float(g[2, 2])
    assert float(g[0, 1]) != 0.0  # the two parts are not orthogonal: the identity is not vacuous


def test_probe_names_values_and_parts_on_a_dit():
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)
    out = probe_gradients(net, x, pair_sample(x, y), training=MeanFlow(adaptive_p=0.0), parts=True)
    for name in SIX + ("loss_tfm", "loss_tcc", "loss_fmb", "loss_mf", "gradnorm_tcc", "cos_mf_loss"):
        assert name in out, name
    assert all(-1.0 - 1e-9 <= out[k] <= 1.0 + 1e-9 for k in SIX)
    assert out["cos_mf_loss"] == pytest.approx(1.0, abs=1e-9)  # the unweighted MeanFlow loss is L_MF itself
    # ∇mf = ∇tfm + ∇tcc, so the norm ratio is ‖∇mf‖/(‖∇tfm‖ + ‖∇tcc‖) (float32 gradients: to 1e-6)
    assert out["ratio_tfm_tcc"] == pytest.approx(out["gradnorm_mf"] / (out["gradnorm_tfm"] + out["gradnorm_tcc"]),
                                                 rel=1e-6)
    assert 0 <= out["part.blocks.0.ratio_tfm_tcc"] <= 1
    groups = parameter_groups(net)
    assert set(groups) == {"x_embedder", "t_embedder", "d_embedder", "y_embedder", "blocks.0", "blocks.1", "final_layer"}
    squared = sum(out[f"part.{g}.gradnorm_tfm"] ** 2 for g in groups)
    assert squared == pytest.approx(out["gradnorm_tfm"] ** 2, rel=1e-9)  # the parts partition the gradient
    assert all(p.grad is None for p in net.parameters()), "a probe must not touch .grad"


TINY = ["model.name=DiT-N/2", "train.steps=6", "train.batch_size=16", "train.log_every=2", "train.ckpt_every=2",
        "train.sample_every=0", "sample.num=8", "data.stats_samples=64", "objective.alpha.k_end=0.5"]


def test_probes_leave_training_unchanged(tmp_path):
    plain = train(load_config(None, TINY), tmp_path / "plain", log=lambda _: None)
    probed = train(load_config(None, [*TINY, "probe.every=2", "probe.parts=true"]), tmp_path / "probed",
                   log=lambda _: None)
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, probed.model.state_dict()[key]), key
    rows_plain, rows_probed = RunFolder(tmp_path / "plain").read_metrics(), RunFolder(tmp_path / "probed").read_metrics()
    assert all("probe_cos_tfm_tcc" in r and "probe_part.blocks.0.cos_tfm_tcc" in r for r in rows_probed)
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("probe_") and k not in ("wall", "images_per_sec")}  # noqa: E731
    assert [strip(r) for r in rows_plain] == [strip(r) for r in rows_probed]


def test_online_probe_averages_its_batches_and_leaves_training_unchanged(tmp_path, monkeypatch):
    """probe.online_batches = 3: the step's batch and two fresh ones, each probed alone, the row holds their mean."""
    from alphaflow.train.callbacks import OnlineProbe

    seen: list[tuple[int, torch.Tensor, dict]] = []
    probe_one = OnlineProbe._probe

    def recording(self, ctx, x, y, gen):
        values = probe_one(self, ctx, x, y, gen)
        seen.append((ctx.step, x.clone(), values))
        return values

    monkeypatch.setattr(OnlineProbe, "_probe", recording)
    one = train(load_config(None, [*TINY, "probe.every=2"]), tmp_path / "one", log=lambda _: None)
    firsts = {step: values for step, _, values in seen}
    seen.clear()
    three = train(load_config(None, [*TINY, "probe.every=2", "probe.online_batches=3"]), tmp_path / "three",
                  log=lambda _: None)
    for key, value in one.model.state_dict().items():
        assert torch.equal(value, three.model.state_dict()[key]), key
    rows = [r for r in RunFolder(tmp_path / "three").read_metrics() if "probe_cos_tfm_tcc" in r]
    assert [r["step"] for r in rows] == [2, 4, 6] and len(seen) == 9
    for row in rows:
        batches = [(x, values) for step, x, values in seen if step == row["step"]]
        assert len(batches) == 3 and not torch.equal(batches[0][0], batches[1][0])
        assert batches[0][1] == firsts[row["step"]], "the first batch is the step's own, probed as with one batch"
        for key in ("cos_tfm_tcc", "cos_fmb_tcc", "gradnorm_tfm", "loss_tcc"):
            assert row[f"probe_{key}"] == pytest.approx(sum(v[key] for _, v in batches) / 3, rel=1e-12)


def test_offline_probe_writes_every_column(tmp_path):
    train(load_config(None, [*TINY, "train.keep_every=2"]), tmp_path, log=lambda _: None)
    lines: list[str] = []
    path = probe_run(tmp_path, batches=3, batch_size=8, log=lines.append)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    # every term but the third parts that only some objectives have (Modular, Decoupled, improved MeanFlow)
    wanted = [*SIX, "loss_tfm", "loss_tcc", "loss_fmb", "loss_mf",
              *(f"gradnorm_{t}" for t in TERMS if t not in EXTRA_TERMS)]
    for row in rows:
        for name in wanted:
            assert name in row and f"{name}_p05" in row and f"{name}_p95" in row, name
            assert row[f"{name}_p05"] <= row[name] + 1e-12 and row[name] <= row[f"{name}_p95"] + 1e-12, name
        assert (row["weights"], row["batches"], row["batch_size"]) == ("raw", 3, 8)
    probe_run(tmp_path, batches=3, batch_size=8, log=lines.append)  # same settings: nothing recomputed
    assert len(path.read_text().splitlines()) == 3 and sum("skipped" in m for m in lines) == 3
    probe_run(tmp_path, batches=3, batch_size=8, checkpoints="last", weights="ema", log=lines.append)
    assert json.loads(path.read_text().splitlines()[-1])["weights"] == "ema"
    with pytest.raises(ValueError, match=r"no checkpoint at step\(s\) \[5\]"):
        probe_run(tmp_path, checkpoints="2,5", batch_size=8)
    with pytest.raises(ValueError, match="checkpoints must be all, last or a comma list"):
        probe_run(tmp_path, checkpoints="first", batch_size=8)
    # the command takes its defaults from the run's probe section, changed by probe.* overrides
    assert main(["probe", str(tmp_path), "probe.batches=2", "probe.batch_size=4", "--checkpoints", "last"]) == 0
    assert {k: json.loads(path.read_text().splitlines()[-1])[k] for k in ("batches", "batch_size")} == \
        {"batches": 2, "batch_size": 4}
    assert main(["probe", str(tmp_path), "objective.name=fm"]) == 2
