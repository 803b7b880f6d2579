"""``train.compile=true`` trains like eager: same losses and weights up to float32 reassociation.

The embedded default shrunk (DiT-N/2 on the digits, batch 8, 4 steps), once eager and once compiled with
inductor, through the public ``train``: flow matching (the r = t call), MeanFlow (the tangent-mode graph: the
primal forward, its JVP and the backward) and α-Flow with guidance, whose α runs 1, 2/3, 1/3, 0 so that the
plain prediction, the no-grad jump and guidance passes (through ``jvp.target_module``) and the tangent-mode
prediction all run compiled. Each kind of call compiles once, never once per step (counted).

CI time: a cold inductor compile of a DiT-N/2 graph costs ~30–60 s on 2 cores; the α-Flow run's tangent
graph is MeanFlow's, which inductor's on-disk cache serves. The runs share one process in this order, as in
an inline sweep: flow matching after MeanFlow needs the trainer's reset.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from alphaflow.train.build import preflight
from alphaflow.config import ConfigError, load_config
from alphaflow.train.loop import train

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

if not torch._dynamo.is_dynamo_supported():  # e.g. a Python that TorchDynamo does not support yet
    pytest.skip("torch.compile is unavailable on this Python", allow_module_level=True)

STEPS = 4


# α-Flow: α = 1, 2/3, 1/3, 0 over the 4 steps; guidance with κ ≠ 0 runs both guidance passes (window: all rows)
ALPHA_GUIDED = ["objective.alpha.kind=linear", "objective.alpha.k_end=0.75", "objective.guidance.omega=1.0",
                "objective.guidance.kappa=0.5"]


def run(tmp_path, objective: str, compile: bool):
    alpha = ALPHA_GUIDED if objective == "alphaflow" else []
    cfg = load_config(None, [*alpha, f"objective.name={objective}", "model.name=DiT-N/2", "train.batch_size=8",
                             f"train.steps={STEPS}", "train.log_every=1", f"train.ckpt_every={STEPS}",
                             "train.sample_every=0", "sample.num=4", "sample.nfe=[1]", "train.device=cpu",
                             "train.threads=1", f"train.compile={str(compile).lower()}"])
    preflight(cfg)
    result = train(cfg, tmp_path / f"{objective}-{compile}", log=lambda _msg: None)
    return result.model, result.run.read_metrics()


# The graphs each run compiles: one per kind of call, never one per step. Flow matching and MeanFlow: the
# prediction. α-Flow with guidance: the plain prediction (α > 0), the guidance passes at B rows and the jump at
# the r < t rows (no-grad, through jvp.target_module), the tangent-mode prediction at α = 0.
@pytest.mark.parametrize("objective, graphs", [("meanflow", 1), ("alphaflow", 4), ("fm", 1)])
def test_compiled_training_equals_eager(tmp_path, objective, graphs):
    eager_net, eager_rows = run(tmp_path, objective, compile=False)
    net, rows = run(tmp_path, objective, compile=True)  # the trainer clears TorchDynamo's counters

    assert counters["stats"]["unique_graphs"] == graphs
    assert rows[-1]["compiled_graphs"] == graphs and "compiled_graphs" not in eager_rows[-1]
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
