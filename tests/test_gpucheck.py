"""``alphaflow doctor``: the CPU rehearsal runs every section end to end, failures stay in their section,
and the GPU script's plumbing (one process per section, timeouts, merging) works on this machine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from alphaflow.perf.gpucheck import helpers, memory, sections
from alphaflow.cli import main
from alphaflow.perf.gpucheck import CPU_REHEARSAL, SECTIONS, jsonable, run_doctor

ROOT = Path(__file__).resolve().parents[1]
NON_FINITE = ("NaN", "Infinity", "-Infinity")
# What the CPU rehearsal cannot run, and must say why: NCCL needs two GPUs; the memory plan may not exist yet.
MAY_SKIP = {"ddp", "memory"}


def numbers(value, path: str = ""):
    """Every (path, number) in a JSON value; non-finite floats come back as the strings jsonable writes."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, float(value)
    elif isinstance(value, str) and value in NON_FINITE:
        yield path, float(value.replace("Infinity", "inf"))


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[int, dict]:
    out = tmp_path_factory.mktemp("doctor") / "report.json"
    rc = main(["doctor", "--cpu-rehearsal", "--out", str(out)])
    return rc, json.loads(out.read_text())  # strict JSON: allow_nan=False when written


def test_cpu_rehearsal_reports_every_section(rehearsal):
    rc, report = rehearsal
    assert list(report["sections"]) == list(SECTIONS)
    assert report["meta"]["mode"] == "cpu-rehearsal" and report["meta"]["torch"]
    for name, entry in report["sections"].items():
        assert entry["status"] in ("ok", "skipped"), f"{name}: {entry['error']}\n{entry['traceback']}"
        assert entry["seconds"] >= 0
        if entry["status"] == "skipped":
            assert name in MAY_SKIP and entry["reason"], name
        bad = [p for p, v in numbers(entry["results"]) if not math.isfinite(v)]
        assert not bad, f"{name}: non-finite {bad}"
    assert rc == 0
    assert report["sections"]["ddp"]["status"] == "skipped"  # no CUDA here, whatever else is present


def test_cpu_rehearsal_measures_what_each_section_promises(rehearsal):
    _, report = rehearsal
    r = {name: entry["results"] for name, entry in report["sections"].items()}
    assert r["environment"]["torch"] and r["environment"]["matmul_bf16"]["tflops"] > 0
    model, _ = CPU_REHEARSAL.bench[0]
    variants = r["bench"][model]["variants"]
    assert variants["fm"]["images_per_s"] > 0 and variants["fm"]["ratio"] == 1.0
    assert {g["bound"] for g in r["bench"]["goals"]} == {0.40, 1.45}
    for run in helpers.TRAIN_RUNS:
        row = r["train"][run]
        assert len(row["bf16"]["losses_at_step"]) >= 2 and row["max_rel_diff_mse"] >= 0
        assert row["bf16"]["grads_finite"] and row["fp32"]["params_missing_grad"] == 0
    backends = r["attention"]["backends"]
    assert set(backends) == set(helpers.FUSED_BACKENDS)
    for name, row in backends.items():  # the CPU has a flash kernel; the CUDA-only ones skip with torch's reason
        assert row["status"] == "ok" or (row["status"] == "skipped" and row["reason"]), name
    assert backends["efficient"]["status"] == backends["cudnn"]["status"] == "skipped"
    for case in ("all_rows", "row_subset"):
        assert r["attention"]["tangent"][case]["du_rel"] < 1e-3  # fp32 tangent mode against stock torch.func.jvp
    assert "cos_tfm_tcc" in r["probe"]["cosines"] and r["probe"]["peak_mem_bytes"] > 0
    assert r["compile"]["unique_graphs"] >= 1 and r["compile"]["max_rel_diff_loss"] < 1e-3


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(settings, out):
        out["measured_before_failing"] = 1.5
        raise RuntimeError("the kernel fell over")

    monkeypatch.setitem(sections.SECTION_FUNCTIONS, "train", broken)
    out = tmp_path / "report.json"
    rc = main(["doctor", "--cpu-rehearsal", "--only", "environment,train", "--only", "probe", "--out", str(out)])
    report = json.loads(out.read_text())["sections"]
    assert rc == 1 and list(report) == ["environment", "train", "probe"]
    assert report["train"]["status"] == "fail"
    assert report["train"]["error"] == "RuntimeError: the kernel fell over"
    assert "broken" in report["train"]["traceback"]
    assert report["train"]["results"] == {"measured_before_failing": 1.5}  # what it measured is kept
    assert report["environment"]["status"] == report["probe"]["status"] == "ok"


def test_memory_section_compares_a_plan_with_measured_peaks(tmp_path, monkeypatch):
    """The measurement half of the memory section, against a stand-in plan (the real one may not exist)."""
    @dataclass
    class Phase:
        peak_bytes: int

    @dataclass
    class Plan:
        phases: dict

    fake = types.ModuleType("alphaflow.perf.memplan")
    fake.plan_memory = lambda cfg, *, world_size, device="cuda": Plan(
        {k: Phase(123_456_789) for k in ("train", "online_probe", "offline_probe", "eval")})
    monkeypatch.setitem(sys.modules, "alphaflow.perf.memplan", fake)
    report = run_doctor(CPU_REHEARSAL, tmp_path / "report.json", only=["memory"], log=lambda _m: None)
    entry = report["sections"]["memory"]
    assert entry["status"] == "ok", entry["error"]
    res = entry["results"]
    assert res["plan_attribute"]["train"] == "peak_bytes"
    for phase in ("train", "online_probe", "offline_probe"):
        assert res["measured_bytes"][phase] > 0
        assert res["planned_over_measured"][phase] == pytest.approx(123_456_789 / res["measured_bytes"][phase])


def test_ddp_launch_runs_the_trainer_on_two_gloo_ranks(tmp_path):
    """The ddp section's launcher (spawned ranks, torchrun variables, the trainer) with gloo instead of NCCL."""
    result = memory.run_ddp(tmp_path / "run", device="cpu", model_name="DiT-N/2", steps=4, batch_size=8,
                                       extra=("train.threads=1",))
    assert result["done"] and [row["step"] for row in result["rows"]] == [2, 4]
    assert all(math.isfinite(row["probe_cos_tfm_tcc"]) for row in result["rows"])


def test_script_records_a_section_killed_by_its_timeout(tmp_path):
    """scripts/gpu_check.sh: one process per section under `timeout`; a killed one is a reasoned fail."""
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_SECTIONS": "environment:1"}  # no import fits in 1 s
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    entry = json.loads(out.read_text())["sections"]["environment"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert entry["status"] == "fail" and entry["error"].startswith("timed out"), entry


def test_non_finite_numbers_are_written_as_strings():
    assert jsonable({"a": float("nan"), "b": (1, float("inf")), "c": -float("inf"), "d": True}) == \
        {"a": "NaN", "b": [1, "Infinity"], "c": "-Infinity", "d": True}
