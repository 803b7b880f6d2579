"""``alphaflow bench --census``: the op census of the trainer's step on fake tensors, and its roofline arithmetic."""

from __future__ import annotations

import json

import pytest
import torch

from alphaflow.cli.main import main
from alphaflow.models import build_for_data
from alphaflow.objectives import FlowMatching, MeanFlow
from alphaflow.perf.bench import count_flops, step_objectives
from alphaflow.perf.census import ROOFLINES, Census, OpRecord, _Counter, count_step, run_census
from alphaflow.train.distributed import DistInfo
from alphaflow.train.optim import EMA, build_optimizer
from alphaflow.train.step import LoopState, StepParts, training_step

MODEL, SHAPE = "DiT-N/2", (1, 8, 8)


def build() -> torch.nn.Module:
    return build_for_data(MODEL, SHAPE, 10)


def real_step_flops(objective, batch: int) -> int:
    """FlopCounterMode's count of the second real trainer step (same model, batch, objective)."""
    torch.manual_seed(0)
    net = build()
    opt = build_optimizer(net.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    parts = StepParts(net, net, objective, opt, EMA(net, 500.0, None), DistInfo(), False, 16.0)
    x, gen = torch.randn(batch, *SHAPE), torch.Generator().manual_seed(0)
    training_step(parts, LoopState(step=0), x, None, lr=1e-4, generator=gen)
    return count_flops(lambda: training_step(parts, LoopState(step=1), x, None, lr=1e-4, generator=gen))


@pytest.mark.parametrize("name", [pytest.param("fm", marks=pytest.mark.slow),
                                  pytest.param("alpha_mid", marks=pytest.mark.slow), "mf_p100"])
def test_census_flops_equal_the_real_steps_flop_count(name):
    """The fake count and FlopCounterMode on real tensors see the same matrix products (fp32, one process);
    the census also counts the CPU's fused attention (with the CUDA kernels' formulas), which FlopCounterMode
    does not know: 4·N²·d per head and row forward, 2.5 times that backward (flash attention's recompute)."""
    objective = step_objectives()[name]
    census = count_step(build, objective, 8, SHAPE, bf16=False, tokens=16)
    matmul = sum(r.flops for r in census.records if r.kind == "matmul")
    assert matmul == real_step_flops(objective, 8)
    net = build()
    d, depth = net.blocks[0].attn.qkv.in_features, len(net.blocks)
    fused_forwards = {"fm": 8, "alpha_mid": 8 + 4, "mf_p100": 8}[name]  # α-Flow's target pass: the r < t half
    attention = sum(r.flops for r in census.records if r.kind == "attention")
    assert attention == 4 * 16 * 16 * d * depth * (fused_forwards + 8 * 2.5)


def test_views_move_nothing_and_an_add_moves_its_operands():
    counter = _Counter(tokens=0)
    with counter:
        a, b = counter.fake((10, 100)), counter.fake((10, 100))
        counter.recording = True
        c = a + b             # reads 2 × 4000 bytes, writes 4000: one kernel
        c.t().reshape(-1)[:5]  # views (reshape of a non-contiguous tensor copies: one kernel, 4000 + 4000)
        torch.mm(a, b.t())    # 2·10·100·10 FLOPs
    ops = [(r.op, r.kind, r.flops, r.nbytes, r.kernels) for r in counter.census.records]
    assert ops[0] == ("add", "memory", 0, 12000, 1)
    assert ("clone", "memory", 0, 8000, 1) in ops and all(op[0] not in ("t", "view", "slice") for op in ops)
    assert ops[-1][:3] == ("mm", "matmul", 2 * 10 * 100 * 10)


def test_the_roofline_takes_each_ops_slowest_resource():
    h100 = ROOFLINES["h100"]
    census = Census(records=[OpRecord("mm", "forward", "matmul", "bfloat16", int(650e9), 0, 1),          # 1 ms
                             OpRecord("add", "forward", "memory", "float32", 0, int(2.8e9), 1),         # 1 ms
                             OpRecord("neg", "backward", "memory", "float32", 0, 8, 4)])                # 4 floors
    s = census.summary(h100)
    assert s["gpu_ms"] == pytest.approx(2 + 4 * h100.kernel_s * 1e3)
    assert s["ms"] == pytest.approx(max(s["gpu_ms"], 6 * h100.dispatch_s * 1e3))
    assert s["mfu"] == pytest.approx(650e9 / (s["ms"] / 1e3) / h100.peak)
    assert s["regions"]["backward"]["kernels"] == 4


@pytest.mark.slow
def test_meanflow_adds_no_grad_work_that_flow_matching_has_not():
    fm = run_census(MODEL, batch=8, shape=SHAPE, classes=10, variants=("fm", "mf_p100"))
    assert "targets" not in fm["fm"]["regions"] and fm["mf_p100"]["regions"]["targets"]["ms"] > 0
    assert fm["fm"]["ratio"] == 1.0 and fm["mf_p100"]["ratio"] > 1.0
    assert fm["meta"]["tokens"] == 16 and fm["meta"]["precision"] == "bf16"


@pytest.mark.slow
def test_cli_census_json_and_bad_inputs(capsys):
    assert main(["bench", "--census", "--model", MODEL, "--batch", "4", "--variants", "fm,mf_p25", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"fm", "mf_p25", "meta"} and data["mf_p25"]["kernels"] > 0
    with pytest.raises(ValueError, match="must include fm"):
        run_census(MODEL, batch=4, shape=SHAPE, classes=10, variants=("mf_p25",))
    with pytest.raises(ValueError, match="--gpu must be one of"):
        run_census(MODEL, batch=4, shape=SHAPE, classes=10, gpu="a100")
