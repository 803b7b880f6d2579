"""``alphaflow bench``: every variant is measured, and the FLOP counts obey the cost model's arithmetic.

No timing assertions: times on shared CI cores are noise. The FLOP counts are deterministic.
"""

from __future__ import annotations

import json

import pytest
import torch

from alphaflow.perf.bench import (BASE_VARIANTS, CONFLICT_VARIANTS, FAMILY_VARIANTS, count_flops, format_table, peak_memory,
                                  resolve_variants, run_bench)
from alphaflow.cli.main import main
from alphaflow.models import build_for_data

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

MODEL, BATCH, SHAPE = "DiT-N/2", 4, (1, 8, 8)


@pytest.fixture(scope="module")
def results() -> dict:
    return run_bench(MODEL, batch=BATCH, shape=SHAPE, classes=10, device="cpu", rounds=2, warmup=1, threads=1)


def forward_flops(batch: int) -> int:
    """FLOPs of one forward of the bench's model on ``batch`` rows."""
    net = build_for_data(MODEL, SHAPE, 10)
    z, t, y = torch.randn(batch, *SHAPE), torch.rand(batch), torch.randint(0, 10, (batch,))
    return count_flops(lambda: net(z, t, t, y))


def test_every_variant_is_measured(results):
    assert set(BASE_VARIANTS) <= set(results)
    for name in BASE_VARIANTS:
        row = results[name]
        assert {"ratio", "ms", "flops", "peak_mem_bytes"} <= set(row), name
        assert row["ms"] > 0 and row["flops"] > 0 and row["peak_mem_bytes"] > 0, name
    assert results["fm"]["ratio"] == 1.0  # the median of t_fm / t_fm
    assert results["meta"]["optimizer_step"] is True and results["meta"]["threads"] == 1


def test_flops_follow_the_cost_model(results):
    flops = {name: results[name]["flops"] for name in BASE_VARIANTS}
    fwd = forward_flops(BATCH)
    # fwd + bwd = 3 forwards, less one product in the layers whose input needs no gradient (the patch
    # embedding of z, the first Linear of each time embedder): never above 3, and those layers are
    # small (DiT-N/2: 2.98; DiT-T/2 at batch 48: 2.997).
    assert 2.9 * fwd <= flops["fm"] <= 3 * fwd
    # α-Flow = flow matching + one no-grad forward on the r < t half of the batch (per-row cost)
    assert flops["alpha_mid"] - flops["fm"] == pytest.approx(forward_flops(BATCH // 2), rel=1e-6)
    assert flops["mf_p100"] > flops["mf_p25"] > flops["fm"]  # the JVP adds work on its rows
    assert flops["official_p100"] > flops["fm"] + 2 * fwd  # the double-backward JVP: ≥ 2 forwards more
    assert flops["probe"] > flops["mf_p100"]  # one backward per term: one more than training (no update: no FLOPs)


def test_cpu_peak_memory_is_the_running_sum_of_allocations():
    def pattern() -> None:  # 1 MiB, then 2 MiB beside it, free the first, 1 MiB again: 3 MiB at most
        a = torch.ones(1 << 18)
        b = torch.ones(1 << 19)
        del a
        c = torch.ones(1 << 18)
        del b, c

    peak, total = peak_memory(pattern, torch.device("cpu"))
    assert peak == 3 << 20 and total == -1


def test_human_output_has_the_table_and_the_targets(results):
    text = format_table(results)
    assert "threads 1, device cpu" in text and MODEL in text and "the trainer's step" in text
    assert all(f"\n{name} " in text for name in BASE_VARIANTS)
    assert "cost targets:" in text and ("PASS" in text or "FAIL" in text)


def test_cli_json_is_one_object(capsys):
    rc = main(["bench", "--model", MODEL, "--batch", "2", "--rounds", "1", "--warmup", "0", "--threads", "1",
               "--device", "cpu", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert all({"ratio", "ms", "flops", "peak_mem_bytes"} <= set(data[name]) for name in BASE_VARIANTS)


@pytest.mark.parametrize("argv, message", [
    (["--model", "DiT-N/3"], "did you mean"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--shape", "1", "9", "9"], "divisible"),
    (["--device", "cuda"], "CUDA is not available"),
])
def test_bad_inputs_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_conflict_variants_cost_one_more_backward_and_reuse_amortises_it():
    """An exact rule adds one backward (2/3 of a flow-matching step in FLOPs) to the MeanFlow step; reused
    every 10 steps, it adds a tenth of that."""
    variants = resolve_variants("conflict")
    assert variants == ("fm", "mf_p100", *CONFLICT_VARIANTS)
    r = run_bench(MODEL, batch=BATCH, shape=SHAPE, classes=10, device="cpu", rounds=1, warmup=0, threads=1,
                  variants=variants)
    fm, mf = r["fm"]["flops"], r["mf_p100"]["flops"]
    for name in ("mf_pcgrad", "mf_project_tcc", "mf_balance", "mf_cagrad", "mf_pcgrad_groups"):
        assert r[name]["flops"] - mf == pytest.approx(2 / 3 * fm, rel=0.02), name
    assert r["mf_pcgrad_k10"]["flops"] == pytest.approx(mf + (r["mf_pcgrad"]["flops"] - mf) / 10, rel=0.01)
    assert [t["target"] for t in r["meta"]["targets"]][-2:] == ["mf_pcgrad time", "mf_pcgrad peak memory"]


def test_family_variants_cost_what_their_targets_need():
    """SplitMeanFlow adds two no-grad forwards on every row to a flow-matching step; Modular MeanFlow at λ = 1
    costs more than MeanFlow's step (its JVP is differentiated); iMF one forward more than MeanFlow's."""
    variants = resolve_variants("family")
    assert variants == ("fm", "mf_p100", *FAMILY_VARIANTS)
    r = run_bench(MODEL, batch=BATCH, shape=SHAPE, classes=10, device="cpu", rounds=1, warmup=0, threads=1,
                  variants=variants)
    assert r["smf_p100"]["flops"] - r["fm"]["flops"] == pytest.approx(2 * forward_flops(BATCH), rel=1e-6)
    assert r["modular_p100"]["flops"] > r["mf_p100"]["flops"]
    assert r["modular_p100"]["peak_mem_bytes"] > 0 and r["smf_p100"]["ms"] > 0
    # iMF: one no-grad forward for the tangent, plus its second final layer (forward and backward): a few % more
    extra = r["imf_p100"]["flops"] - r["mf_p100"]["flops"]
    assert forward_flops(BATCH) < extra < 1.1 * forward_flops(BATCH)
