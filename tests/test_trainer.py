"""The trainer end to end on tiny runs: run folder, every objective, exact resume, fallbacks, DDP."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp

import alphaflow.train.loop as trainer_module
from alphaflow.config import load_config, to_dict
from alphaflow.run.folder import RunFolder
from alphaflow.train.loop import NonFiniteLossError, train

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

TINY = ["model.name=DiT-N/2", "train.steps=6", "train.batch_size=16", "train.log_every=2", "train.ckpt_every=3",
        "train.sample_every=0", "sample.num=8", "ema.halflife_steps=2", "data.stats_samples=64"]
TIMING_KEYS = {"wall", "images_per_sec"}  # the only metrics that may differ between identical runs


def tiny(*extra: str):
    return load_config(None, [*TINY, *extra])


def deterministic(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("objective", ["fm", "tfm", "meanflow", "shortcut", "alphaflow"])
def test_every_objective_trains_and_leaves_a_full_run_folder(tmp_path, objective):
    extra = ["objective.alpha.k_end=0.5"] if objective == "alphaflow" else []
    cfg = tiny(f"objective.name={objective}", *extra)
    result = train(cfg, tmp_path, log=lambda _: None)
    run = RunFolder(tmp_path)
    assert result.finished and result.step == 6 and run.is_done()
    assert json.loads(run.config_path.read_text()) == to_dict(cfg)
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("images", "wall", "lr", "alpha", "ratio_fm", "loss", "loss_mse", "grad_norm", "images_per_sec"):
        assert key in rows[-1], key
    assert rows[-1]["images"] == 6 * 16
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert [s for s, _ in run.checkpoints()] == [6, 3]
    for nfe in (1, 2):
        assert run.sample_path(6, nfe).stat().st_size > 0
    if objective == "alphaflow":  # the curriculum went from α = 1 to the JVP phase α = 0
        assert rows[0]["alpha"] > 0.9 and rows[-1]["alpha"] == 0.0 and "loss_mf" in rows[-1]


def test_resume_is_exact(tmp_path):
    cfg = tiny("objective.alpha.k_end=0.6")
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    first = train(cfg, tmp_path / "resumed", stop_at=3, log=lambda _: None)  # stops mid log-tick (log_every=2)
    assert not first.finished and not RunFolder(tmp_path / "resumed").is_done()
    messages: list[str] = []
    resumed = train(cfg, tmp_path / "resumed", log=messages.append)
    assert any("resuming" in m and "step 3" in m for m in messages), messages
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_state(straight.ema.state_dict(), resumed.ema.state_dict())
    a, b = RunFolder(tmp_path / "straight").read_metrics(), RunFolder(tmp_path / "resumed").read_metrics()
    assert deterministic(a) == deterministic(b)


def test_corrupt_latest_checkpoint_falls_back_and_nothing_is_duplicated(tmp_path):
    cfg = tiny("train.ckpt_every=2")
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    train(cfg, tmp_path / "run", stop_at=5, log=lambda _: None)  # checkpoints at 4 and 5, metrics at 2 and 4
    run = RunFolder(tmp_path / "run")
    newest_step, newest = run.checkpoints()[0]
    assert newest_step == 5
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    messages: list[str] = []
    resumed = train(cfg, tmp_path / "run", log=messages.append)
    assert any("unreadable" in m and newest.name in m for m in messages), messages
    assert any("resuming" in m and "step 4" in m for m in messages), messages
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    steps = [r["step"] for r in run.read_metrics()]
    assert steps == [2, 4, 6]
    assert deterministic(run.read_metrics()) == deterministic(RunFolder(tmp_path / "straight").read_metrics())


def test_torn_metrics_line_is_cut_on_resume(tmp_path):
    cfg = tiny()
    train(cfg, tmp_path, stop_at=4, log=lambda _: None)
    run = RunFolder(tmp_path)
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 6, "loss": 0.')  # a crash in the middle of a write
    train(cfg, tmp_path, log=lambda _: None)
    assert [r["step"] for r in run.read_metrics()] == [2, 4, 6]
    assert all(line.startswith("{") and line.endswith("}") for line in run.metrics_path.read_text().splitlines())


def test_nonfinite_losses_stop_the_run_and_keep_what_was_saved(tmp_path, monkeypatch):
    real_build = trainer_module.build_dataset

    def poisoned(*args, **kwargs):
        data = real_build(*args, **kwargs)
        calls = {"n": 0}
        prepare = data.prepare

        def prepare_with_nan(raw, generator):
            calls["n"] += 1
            x = prepare(raw, generator)
            return x if calls["n"] <= 3 else x * float("nan")

        data.prepare = prepare_with_nan
        return data

    monkeypatch.setattr(trainer_module, "build_dataset", poisoned)
    cfg = tiny("train.max_nonfinite=2", "train.steps=20")
    with pytest.raises(NonFiniteLossError, match="non-finite for 2 consecutive steps"):
        train(cfg, tmp_path, log=lambda _: None)
    run = RunFolder(tmp_path)
    assert [s for s, _ in run.checkpoints()] == [3] and not run.is_done()
    assert [r["step"] for r in run.read_metrics()] == [2, 4]
    assert run.read_metrics()[-1]["nonfinite"] == 1


def test_a_resume_with_another_config_is_refused(tmp_path):
    train(tiny(), tmp_path, stop_at=2, log=lambda _: None)
    with pytest.raises(ValueError, match="optim.lr"):
        train(tiny("optim.lr=0.5"), tmp_path, log=lambda _: None)


# ----------------------------------------------------------------------------- two processes, gloo

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, overrides: list[str]) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(load_config(None, overrides), out, log=lambda _: None)
    torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    overrides = [*TINY, "objective.alpha.k_end=0.5", "train.threads=1", "probe.every=2"]  # ends in the JVP phase
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), overrides), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert_same_state(rank0, rank1)
    run = RunFolder(tmp_path)
    assert run.is_done() and [r["step"] for r in run.read_metrics()] == [2, 4, 6]
    assert all(-1 <= r["probe_cos_tfm_tcc"] <= 1 for r in run.read_metrics())  # probes ran on both ranks
    saved = torch.load(run.checkpoints()[0][1], weights_only=False)
    assert_same_state(saved["net"], rank0)
    assert len(saved["rng"]) == 2  # both ranks' random streams, for an exact resume
    single = train(load_config(None, overrides), tmp_path / "single", log=lambda _: None)
    changed = any(not torch.equal(single.model.state_dict()[k], rank0[k]) for k in rank0)
    assert changed, "two ranks see different data shards and noise than one process, so weights should differ"


# ----------------------------------------------------------------------------- other data and precision

def test_latents_run_decodes_its_samples_through_the_vae(tmp_path, latents):
    vae_root, _, folder = latents
    cfg = tiny("data.name=latents", f"data.path={folder}", f"data.vae_path={vae_root / 'vae'}", "train.batch_size=8")
    result = train(cfg, tmp_path, log=lambda _: None)
    ckpt = torch.load(result.run.checkpoints()[0][1], weights_only=False)
    assert set(ckpt["data_stats"]) == {"latent_mean", "latent_std"}  # normalisation travels with the weights
    from PIL import Image

    with Image.open(result.run.sample_path(6, 1)) as image:
        assert image.mode == "RGB"  # decoded pixels, not latent channels


def test_latents_without_a_vae_keep_raw_samples(tmp_path, latents):
    _, _, folder = latents
    cfg = tiny("data.name=latents", f"data.path={folder}", "train.batch_size=8")
    result = train(cfg, tmp_path, log=lambda _: None)
    raw = torch.load(result.run.sample_path(6, 2, suffix=".pt"))
    assert raw.shape == (8, 4, 8, 8)


def test_toy2d_with_an_mlp_writes_scatter_plots(tmp_path):
    cfg = tiny("data.name=toy2d", "data.toy=gaussians8", "data.toy_size=256", "model.name=MLP-S")
    result = train(cfg, tmp_path, log=lambda _: None)
    assert result.finished and result.run.sample_path(6, 1).stat().st_size > 0


def test_bf16_autocast_trains_with_fp32_losses(tmp_path):
    """CPU autocast stands in for CUDA here: the JVP runs under it and the logged losses stay finite."""
    cfg = tiny("train.precision=bf16", "objective.alpha.k_end=0.3")
    result = train(cfg, tmp_path, log=lambda _: None)
    rows = result.run.read_metrics()
    assert rows[-1]["alpha"] == 0.0 and all(torch.isfinite(torch.tensor(r["loss_mf"])) for r in rows if "loss_mf" in r)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_should_stop_checkpoints_at_that_step_and_resumes_exactly(tmp_path):
    cfg = tiny()
    straight = train(cfg, tmp_path / "straight", log=lambda _: None)
    polls = {"n": 0}

    def preempted_during_step_5() -> bool:
        polls["n"] += 1
        return polls["n"] >= 5

    stopped = train(cfg, tmp_path / "run", should_stop=preempted_during_step_5, log=lambda _: None)
    assert (stopped.step, stopped.finished) == (5, False)
    assert RunFolder(tmp_path / "run").checkpoints()[0][0] == 5  # a checkpoint at the boundary, not at ckpt_every
    resumed = train(cfg, tmp_path / "run", log=lambda _: None)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert deterministic(RunFolder(tmp_path / "run").read_metrics()) == deterministic(
        RunFolder(tmp_path / "straight").read_metrics())
