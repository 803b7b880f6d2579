"""The CUDA path's failure classes, shown on the CPU: collectives on the wrong device, probes and evaluation
in chunks, the preemption window, loading only what a command needs.

None of this needs a GPU. Where a bug only bites on CUDA (NCCL refuses CPU tensors), the test runs the same
code with a run device the CPU tensors cannot match (the meta device) and checks every collective sees it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import alphaflow.train.distributed as D
import alphaflow.train.loop as trainer_module
import alphaflow.train.ticks as ticks
from alphaflow.train.step import LoopState, StepOutput
from alphaflow.data.latent_data import LatentData
from alphaflow.models import build_model
from alphaflow.objectives import MeanFlow
from alphaflow.train.probes import probe_gradients

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")


def fake_rank(device: torch.device = META) -> D.DistInfo:
    """Rank 0 of 2 on ``device``: collectives must carry tensors of that device."""
    return D.DistInfo(rank=0, world_size=2, local_rank=0, device=device)


@pytest.fixture
def recorded_collectives(monkeypatch):
    """Replace the all-reduce by a recorder: the device of every tensor it is given; returns CPU zeros."""
    seen: list[torch.device] = []

    def record(values: torch.Tensor, info: D.DistInfo) -> torch.Tensor:
        D.check_device(values, info, "all_reduce_mean")
        seen.append(values.device)
        return torch.zeros(values.shape, dtype=values.dtype)

    monkeypatch.setattr(D, "all_reduce_mean", record)
    monkeypatch.setattr(D, "all_reduce_max", record)
    return seen


# ----------------------------------------------------------------------------- collectives and devices

def test_a_collective_refuses_a_tensor_off_the_runs_device():
    with pytest.raises(RuntimeError, match="run's device is meta"):
        D.all_reduce_mean(torch.zeros(2), fake_rank())


def test_the_log_tick_reduces_on_the_runs_device(recorded_collectives):
    """The per-tick means were a float64 CPU tensor: NCCL refuses it at the first log step of an 8-GPU run."""
    state = LoopState(step=2, images=32, wall=1.0)
    for _ in range(2):
        terms = type("T", (), {"components": {"mse": torch.tensor([1.0, 3.0])}, "logs": {}})()
        out = StepOutput(terms, torch.tensor(0.5), torch.tensor(2.0), finite=True, stop=False)
        ticks.accumulate(state.tick, out)
    row = ticks.log_row(state, 1e-3, {"alpha": 0.5}, fake_rank(), 16)
    assert recorded_collectives == [META, META]  # the means, then the maxima
    assert {"loss", "loss_mse", "grad_norm", "max_loss", "max_loss_mse", "max_grad_norm"} <= row.keys()


def test_host_numbers_are_reduced_on_the_runs_device(recorded_collectives):
    assert D.mean_over_ranks([1.0, 2.0], fake_rank()) == [0.0, 0.0]  # the recorder's zeros
    assert recorded_collectives == [META]
    assert D.mean_over_ranks([1.0, 2.0], D.DistInfo()) == [1.0, 2.0] and recorded_collectives == [META]


def test_only_the_distributed_module_talks_to_the_process_group():
    """Keeps the rule above complete: a collective called from anywhere else would bypass the device check."""
    offenders = []
    for path in (ROOT / "alphaflow").rglob("*.py"):
        if path.name == "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else [])
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            if "torch.distributed" in (module or "") or any(n.startswith("torch.distributed") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_a_process_group_made_by_the_caller_survives_train(tmp_path, monkeypatch):
    import torch.distributed as dist

    from alphaflow.config import load_config

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cfg = load_config(None, ["model.name=DiT-N/2", "train.steps=2", "train.batch_size=8", "train.log_every=1",
                                 "train.sample_every=0", "sample.num=4", "data.stats_samples=16"])
        trainer_module.train(cfg, tmp_path / "run", log=lambda _: None)
        assert dist.is_initialized(), "train() destroyed a process group it did not create"
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- probes in chunks

@pytest.mark.parametrize("chunk", [3, 5])
def test_a_probe_in_chunks_gives_the_whole_batch_numbers(chunk):
    torch.manual_seed(0)
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=10).double()
    with torch.no_grad():  # leave adaLN-Zero's zeros: every term then has a non-trivial gradient
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=gen)
    training = MeanFlow(ratio_fm=0.25)
    sample = MeanFlow(ratio_fm=0.25).draw(x, y, generator=gen)
    whole = probe_gradients(net, x, sample, training=training, parts=True)
    chunked = probe_gradients(net, x, sample, training=training, parts=True, chunk_size=chunk)
    assert whole.keys() == chunked.keys() and len(whole) > 20
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert -1 < whole["cos_tfm_tcc"] < 1 and whole["gradnorm_tcc"] > 0


def test_a_negative_chunk_size_is_refused():
    net = build_model("DiT-N/2", input_size=8, in_channels=1, num_classes=0)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        probe_gradients(net, x, MeanFlow().draw(x), chunk_size=-1)


# ----------------------------------------------------------------------------- evaluation and loading

def test_latents_are_decoded_in_chunks_with_the_same_images(latents):
    vae_root, _, folder = latents
    data = LatentData(folder)
    data.fit_stats(torch.Generator().manual_seed(0), 16)
    data.attach_decoder(vae_root / "vae", batch_size=7)
    x = torch.randn(10, *data.shape, generator=torch.Generator().manual_seed(2))
    calls = []
    decode = data.decoder.decode
    data.decoder.decode = lambda z: (calls.append(z.shape[0]), decode(z))[1]
    chunked = data.to_images(x)
    data.decode_batch_size = 10
    whole = data.to_images(x)
    assert calls == [7, 3, 10] and torch.allclose(chunked, whole, atol=1e-5)
    with pytest.raises(ValueError, match="decode batch size"):
        data.attach_decoder(vae_root / "vae", batch_size=0)


def test_commands_load_one_state_dict_on_the_cpu(tmp_path):
    from alphaflow.run.checkpoints import load_weights

    path = tmp_path / "c.pt"
    torch.save({"format": 1, "step": 3, "config": {}, "net": {"w": torch.ones(2)}, "ema": {"w": torch.zeros(2)},
                "opt": {"m": torch.ones(3)}, "data_stats": {}, "state": {}, "rng": []}, path)
    state, stats = load_weights(path, "ema")
    assert torch.equal(state["w"], torch.zeros(2)) and state["w"].device.type == "cpu" and stats == {}


# ----------------------------------------------------------------------------- the preemption window

def test_the_signal_delay_leaves_time_to_write_the_largest_checkpoint():
    from alphaflow.launch import executors as launcher
    from alphaflow.config import load_config
    from alphaflow.launch.sweeps import SweepRun

    xl = SweepRun("xl", load_config("imagenet-xl2-cfg"), [])
    tiny = SweepRun("t", load_config(None), [])
    size = launcher.checkpoint_bytes(xl.config)
    assert 10.0e9 < size < 11.5e9  # 675 M parameters × (weights, EMA, two Adam moments) in fp32
    assert launcher.signal_delay_s([tiny]) == launcher.MIN_SIGNAL_DELAY_S
    assert launcher.signal_delay_s([tiny, xl]) >= 2 * size / launcher.CHECKPOINT_WRITE_BYTES_PER_S
    resources = launcher.with_defaults({"timeout_min": 60}, [tiny, xl])
    assert launcher.executor_parameters(resources)["slurm_signal_delay_s"] == launcher.signal_delay_s([xl])
    assert launcher.with_defaults({"signal_delay_s": 30}, [xl])["signal_delay_s"] == 30  # the file's own value
    with pytest.raises(ValueError, match="signal_delay_s"):
        launcher.with_defaults({"signal_delay_s": -1}, [xl])


def test_tf32_is_a_noop_on_the_cpu():
    before = torch.backends.cuda.matmul.allow_tf32
    D.set_tf32(not before, torch.device("cpu"))
    assert torch.backends.cuda.matmul.allow_tf32 == before


# ----------------------------------------------------------------------------- host syncs per training step

def _syncs_of_run(tmp_path, monkeypatch, steps: int, objective: list[str]) -> list[str]:
    """Host syncs of a whole run, less what reads host memory on a GPU run too: the batch loading (indices and
    labels live on the host) and Adam's step counters (``.item()`` of its per-parameter ``step``, which torch
    keeps on the CPU unless ``capturable``). On the CPU the counter cannot tell host tensors from device ones."""
    from alphaflow.train.batches import EpochBatches
    from alphaflow.config import load_config
    from alphaflow.perf.syncs import count_host_syncs

    cfg = load_config(None, ["model.name=DiT-N/2", f"train.steps={steps}", "train.batch_size=8",
                             "train.log_every=1000", "train.ckpt_every=1000", "train.sample_every=0", "sample.num=4",
                             "data.stats_samples=16", *objective])
    load = EpochBatches.__getitem__
    with count_host_syncs() as record:
        def host_side(self, j):
            start = len(record.events)
            out = load(self, j)
            del record.events[start:]
            return out

        monkeypatch.setattr(EpochBatches, "__getitem__", host_side)
        step = torch.optim.Adam.step

        def adam_step(self, *args, **kwargs):
            start = len(record.events)
            out = step(self, *args, **kwargs)
            del record.events[start:]
            return out

        monkeypatch.setattr(torch.optim.Adam, "step", adam_step)
        trainer_module.train(cfg, tmp_path / f"run{steps}", log=lambda _: None)
    monkeypatch.undo()
    return record.events


@pytest.mark.slow
@pytest.mark.parametrize("objective", [["objective.name=meanflow"], ["objective.alpha=0.5"], ["objective.alpha=0.0"],
                                       ["objective.alpha=1.0"]])
def test_one_host_sync_per_training_step(tmp_path, monkeypatch, objective):
    """MeanFlow and α-Flow without guidance: the step's one reduction (loss finite, gradients finite, stop) is its
    only host sync. Two runs that differ only in length do the same set-up and the same last-step maintenance,
    so their difference is the steps' syncs."""
    short = _syncs_of_run(tmp_path, monkeypatch, 3, objective)
    long = _syncs_of_run(tmp_path, monkeypatch, 7, objective)
    per_step = (len(long) - len(short)) / 4
    assert per_step <= 1, f"{per_step} syncs per step; the longer run's extra events: {long[len(short):][:12]}"
