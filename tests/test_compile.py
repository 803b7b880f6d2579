"""``train.compile=true`` trains like eager: same losses and weights up to float32 reassociation.

The embedded default shrunk (DiT-N/2 on the digits, batch 8, 4 steps), once eager and once compiled,
through the public ``train``. α-Flow runs a linear α = 1, 2/3, 1/3, 0: α changes every step and the
TFM, discrete and MeanFlow targets all run, yet each kind of call through the model compiles once.

CI time: a cold inductor compile of DiT-N/2 costs ~30–60 s on 2 cores, once per graph, and the
three objectives make three graphs (flow matching calls the net with r = t, one tensor twice; the
DiT's tangent mode is another). So the MeanFlow run, whose tangent-mode graph holds the primal
forward, its JVP and the backward, goes through inductor (the numerics); α-Flow and flow matching
use the ``aot_eager`` backend (TorchDynamo capture and AOTAutograd, no code generation), which checks
what their runs add: the capture, the recompiles as α moves, the r = t call. The runs share one
process in this order, as in an inline sweep: flow matching after MeanFlow needs the trainer's reset.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from alphaflow.build import preflight
from alphaflow.config import ConfigError, load_config
from alphaflow.train.loop import train

if not torch._dynamo.is_dynamo_supported():  # e.g. a Python that TorchDynamo does not support yet
    pytest.skip("torch.compile is unavailable on this Python", allow_module_level=True)

STEPS = 4


def run(tmp_path, objective: str, compile: bool):
    alpha = ["objective.alpha.kind=linear", "objective.alpha.k_end=0.75"] if objective == "alphaflow" else []
    cfg = load_config(None, [*alpha, f"objective.name={objective}", "model.name=DiT-N/2", "train.batch_size=8",
                             f"train.steps={STEPS}", "train.log_every=1", f"train.ckpt_every={STEPS}",
                             "train.sample_every=0", "sample.num=4", "sample.nfe=[1]", "train.device=cpu",
                             "train.threads=1", f"train.compile={str(compile).lower()}"])
    preflight(cfg)
    result = train(cfg, tmp_path / f"{objective}-{compile}", log=lambda _msg: None)
    return result.model, result.run.read_metrics()


# The most graphs a run may compile: one per kind of call through the model (α-Flow: the plain
# forward while α > 0, the tangent-mode forward at α = 0), never one per step.
@pytest.mark.parametrize("objective, backend, max_graphs", [("meanflow", "inductor", 1),
                                                            ("alphaflow", "aot_eager", 2),
                                                            ("fm", "aot_eager", 1)])
def test_compiled_training_equals_eager(tmp_path, monkeypatch, objective, backend, max_graphs):
    eager_net, eager_rows = run(tmp_path, objective, compile=False)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    counters.clear()  # the trainer drops earlier runs' graphs: fm after meanflow in one process works
    net, rows = run(tmp_path, objective, compile=True)

    assert 1 <= counters["stats"]["unique_graphs"] <= max_graphs
    if objective == "alphaflow":
        assert [round(r["alpha"], 3) for r in rows] == [1.0, 0.667, 0.333, 0.0]
    # Fused kernels reorder float32 sums: losses move by ~1e-7 relative. Adam's step is ~lr = 1e-3 per
    # weight whatever the gradient's size, so a wrong graph moves weights by ~1e-3; reassociation moves
    # them by ≤ 1e-6 in 4 steps (measured ≈ 1e-7), hence 1e-5.
    for key in ("loss", "loss_mse", "grad_norm"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in eager_rows], rel=1e-4, abs=1e-6), key
    for (name, p), q in zip(net.named_parameters(), eager_net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_compile_without_a_cpu_compiler_is_refused_at_preflight(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "no-such-c++-compiler"))
    cfg = load_config(None, ["train.compile=true", "train.device=cpu"])
    with pytest.raises(ConfigError, match=r"train\.compile=true on the CPU needs the C\+\+ compiler"):
        preflight(cfg)
    preflight(load_config(None, ["train.device=cpu"]))  # eager needs no compiler
