"""The GPU check (``scripts/gpu_check.sh``, ``alphaflow doctor``): the CPU rehearsal runs the whole script end to
end, every section reports ok or a reasoned skip, a section killed by its timeout or raising costs only its own
numbers, and the JSON and markdown reports are always there. The rehearsal is the slow tier (~2–3 minutes on 2
cores); the report plumbing is tested fast, without torch work."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import alphaflow.perf.gpucheck as gpucheck
from alphaflow.cli.main import main as cli_main
from alphaflow.models.jvp_attention import interpreter_problem
from alphaflow.perf.gpucheck import CPU_REHEARSAL, GPU, SECTIONS, jsonable, run_doctor
from alphaflow.perf.gpucheck.live import Results, attempt, set_deadline
from alphaflow.perf.gpucheck.markdown import headline, render
from alphaflow.perf.gpucheck.report import merge_entries, read_report, record, report_path
from alphaflow.perf.gpucheck.settings import BACKGROUND, FOREGROUND, Skip

pytestmark = pytest.mark.slow  # trains, submits, compiles or executes: left out of `make test-fast`

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
NON_FINITE = ("NaN", "Infinity", "-Infinity")
# What the CPU rehearsal cannot run, and must say why
CUDA_ONLY = {"ddp"}


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


def run_script(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args, str(out)], env=environ, cwd=out.parent, capture_output=True,
                          text=True, timeout=900)


# ----------------------------------------------------------------------------- the whole script, rehearsed

# The check must run on a bare GPU image (PyTorch, Triton, NumPy, PyYAML, Pillow, tqdm): it imports the training
# path only, never the launcher's, the analysis', the trackers' or the evaluation models' packages. The rehearsal
# runs with those made unimportable (a sitecustomize puts None in sys.modules, which `import` refuses).
ABSENT = ("submitit", "pandas", "matplotlib", "seaborn", "scipy", "sklearn", "wandb", "tensorboard", "diffusers",
          "transformers")


def without_packages(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The environment of an interpreter to which the packages ``names`` look absent (checked here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", f"import {names[0]}"], env={**os.environ, **env},
                           capture_output=True, text=True)
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, probe.stderr
    return env


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    base = tmp_path_factory.mktemp("gpucheck")
    out = base / "out"
    proc = run_script(out, "--rehearse", **without_packages(base / "absent", ABSENT))
    return proc, out, json.loads((out / "gpu_check.json").read_text())  # strict JSON: allow_nan=False when written


@pytest.mark.slow
def test_rehearsal_reports_every_section_ok_or_skipped_with_a_reason(rehearsal):
    proc, out, report = rehearsal
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md",
                                                     "gpu_check_plans.log"]  # a runner brings back at most 8
    assert list(report["sections"]) == list(SECTIONS)
    assert report["meta"]["mode"] == "cpu-rehearsal"
    for name, entry in report["sections"].items():
        assert entry["status"] in ("ok", "skipped"), f"{name}: {entry['error']}\n{entry.get('traceback')}"
        assert entry["seconds"] >= 0
        if entry["status"] == "skipped" and name == "kernel" and interpreter_problem():
            assert entry["reason"] == interpreter_problem()  # an interpreter that cannot run it here, said so
        elif entry["status"] == "skipped":
            assert name in CUDA_ONLY and "CUDA" in entry["reason"], (name, entry["reason"])
        bad = [p for p, v in numbers(entry["results"]) if not math.isfinite(v)]
        assert not bad, f"{name}: non-finite {bad}"
        for key, sub in entry["results"].items():  # each measurement ok, or skipped with its reason
            if isinstance(sub, dict) and "status" in sub:
                assert sub["status"] in ("ok", "skipped"), (name, key, sub.get("error"))
                assert sub["status"] == "ok" or sub["reason"], (name, key)


@pytest.mark.slow
def test_rehearsal_measures_what_each_section_promises(rehearsal):
    _, out, report = rehearsal
    r = {name: entry["results"] for name, entry in report["sections"].items()}
    assert r["environment"]["matmul_bf16"]["tflops"] > 0 and r["environment"]["copy"]["gb_per_s"] > 0
    for run in CPU_REHEARSAL.trainer_runs:  # the real trainer: speed after a warm-up tick, finite losses
        row = r["trainer"][run.key]
        assert row["status"] == "ok" and row["images_per_s"] > 0 and row["finite"], (run.key, row)
        assert row["steps"] == (run.stop_at or run.steps)
    resume = r["trainer"]["b2_cfg_a1_resume"]
    assert resume["resumed_from_step"] == 12 and resume["final_step"] == 14 and resume["finite"]
    plans = r["plans"]
    for key in CPU_REHEARSAL.plan_keys:
        assert plans["flops"][key]["flops_per_step"] > 0 and plans["memory"][key]["peak_bytes"] > 0
    table = r["ratios"]["table"]
    assert table["fm"]["ratio"] == 1.0 and table["mf_p100"]["ratio"] > 0 and table["official_p100"]["ratio"] > 0
    assert {g["variant"]: g["goal"] for g in r["ratios"]["goals"]} == {"mf_p100": 1.45, "mf_p25": 1.15}
    if r["kernel"].get("B/2"):  # Triton importable here: the kernel ran under the interpreter
        assert r["kernel"]["B/2"]["fp32"]["do_rel"] < 1e-4 and r["kernel"]["XL/2"]["bf16"]["do_rel"] < 5e-2
        assert r["kernel"]["B/2"]["timing"]["status"] == "skipped"  # CUDA only
    model, _ = CPU_REHEARSAL.tangent_models[0]
    fp32 = next(v for k, v in r["tangent"][model].items() if k.endswith("_fp32"))
    assert fp32["all_rows"]["du_rel"] < 1e-3 and fp32["row_subset"]["du_rel"] < 1e-3
    assert r["precision"]["alphaflow_a0"]["max_rel_diff_mse"] >= 0
    compiled = r["compile"]["b2_cfg_a1"]["compiled"]
    assert compiled["status"] == "ok" and compiled["unique_graphs"] >= 1 and compiled["images_per_s"] > 0
    assert r["xl128"]["xl2_cfg_128"]["micro_batch"] == CPU_REHEARSAL.xl128.micro_batch
    assert "NCCL" in report["sections"]["ddp"]["reason"]
    # the headline joins the trainer's speed with the plans' FLOPs, and the markdown shows it
    head = report["headline"]
    assert head["runs"]["b2_cfg_a1"]["mfu"] > 0 and head["resume"]["status"] == "ok"
    md = (out / "gpu_check.md").read_text()
    assert "Real trainer on made-up latents" in md and "Checkpoint and resume: ok" in md


@pytest.mark.slow
def test_a_section_killed_by_its_timeout_is_a_reasoned_fail_and_the_next_still_runs(tmp_path):
    """The trainer section hangs (an interpreter that sleeps when asked to run it) and is killed at its 3 s limit;
    ddp after it still runs and reports."""
    hanging = tmp_path / "python"
    hanging.write_text(f"#!/bin/sh\ncase \"$*\" in *'--only trainer --out'*) sleep 60;; esac\nexec {sys.executable} \"$@\"\n")
    hanging.chmod(0o755)
    out = tmp_path / "out"
    proc = run_script(out, "--rehearse", GPU_CHECK_SECTIONS="trainer:3 ddp:120", PYTHON=str(hanging))
    report = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert list(report) == ["trainer", "ddp"]
    assert report["trainer"]["status"] == "fail" and report["trainer"]["error"].startswith("timed out"), report
    assert report["ddp"]["status"] == "skipped"
    md = (out / "gpu_check.md").read_text()
    assert "| trainer | fail |" in md and "timed out" in md


@pytest.mark.slow
def test_a_raising_section_keeps_the_other_sections_numbers(tmp_path, monkeypatch):
    real = gpucheck.section_function

    def broken(settings, out):
        out["measured_before_failing"] = 1.5
        out.flush()
        raise RuntimeError("the kernel fell over")

    monkeypatch.setattr(gpucheck, "section_function", lambda name: broken if name == "trainer" else real(name))
    report = run_doctor(CPU_REHEARSAL, tmp_path, only=["environment", "trainer", "ddp"], log=lambda _m: None)
    sections = report["sections"]
    assert list(sections) == ["environment", "trainer", "ddp"]
    assert sections["trainer"]["status"] == "fail"
    assert sections["trainer"]["error"] == "RuntimeError: the kernel fell over"
    assert "broken" in sections["trainer"]["traceback"]
    assert sections["trainer"]["results"] == {"measured_before_failing": 1.5}  # what it measured is kept
    assert sections["environment"]["status"] == "ok" and sections["environment"]["results"]["matmul_bf16"]["tflops"] > 0
    assert sections["ddp"]["status"] == "skipped"
    assert "| trainer | fail |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_ddp_launch_runs_the_trainer_on_two_gloo_ranks(tmp_path):
    """The ddp section's launcher (spawned ranks, torchrun variables, the trainer) with gloo instead of NCCL."""
    from alphaflow.perf.gpucheck.ddp import run_ddp

    result = run_ddp(tmp_path / "run", device="cpu", model_name="DiT-N/2", steps=4, batch_size=8,
                     extra=("train.threads=1",))
    assert result["done"] and [row["step"] for row in result["rows"]] == [2, 4]
    assert all(math.isfinite(row["probe_cos_tfm_tcc"]) for row in result["rows"])


# ----------------------------------------------------------------------------- the plumbing, fast

@pytest.mark.fast
def test_sections_fit_the_budget_and_list_for_the_script(capsys):
    assert gpucheck.main(["--list"]) == 0
    lines = capsys.readouterr().out.split()
    assert [line.split(":")[0] for line in lines] == list(SECTIONS)
    kinds = {line.split(":")[0]: line.split(":")[3] for line in lines}
    assert [n for n, k in kinds.items() if k == "bg"] == list(BACKGROUND)
    assert sum(GPU.limits[n][1] for n in FOREGROUND) <= GPU.budget_s  # every section can start at its least
    assert FOREGROUND[-2:] == ("compile", "ddp") and FOREGROUND[:2] == ("environment", "trainer")
    assert cli_main(["doctor", "--list"]) == 0  # the alphaflow subcommand takes the same options
    assert report_path("x/check.json") == Path("x/check.json") and report_path("x") == Path("x/gpu_check.json")


@pytest.mark.fast
def test_the_gpu_runs_are_valid_trainer_configs(tmp_path):
    """What the rehearsal cannot show for the GPU sizes: every GPU trainer run (and its compiled twin) is a config
    the trainer accepts, at the recipe's guidance, the asked batch, α and micro-batch."""
    from alphaflow.train.build import preflight
    from alphaflow.perf.gpucheck.trainer import run_config

    data = tmp_path / "latents"
    data.mkdir()
    for run in (*GPU.trainer_runs, GPU.xl128):
        for compile in (False, True):
            cfg = run_config(GPU, run, data, compile=compile)
            preflight(cfg)
            assert (cfg.model.name, cfg.train.batch_size, cfg.train.device) == (run.model, run.batch, "cuda")
            assert cfg.data.resolution == 256 and cfg.train.compile == compile and cfg.data.vae_path is None
            if run.alpha is not None:
                assert cfg.objective.alpha.kind == "constant" and cfg.objective.alpha.start == run.alpha
            assert getattr(cfg.train, "micro_batch", 0) == run.micro_batch
            assert cfg.train.steps // cfg.train.log_every >= 2  # a warm-up tick and at least one timed tick
    assert set(GPU.compile_runs) <= {r.key for r in GPU.trainer_runs}


@pytest.mark.fast
def test_a_killed_section_keeps_what_it_had_written(tmp_path):
    path = tmp_path / "gpu_check.json"
    merge_entries(path, CPU_REHEARSAL, {"trainer": {"status": "running", "seconds": 3.0,
                                                    "results": {"b2_cfg_a1": {"status": "ok", "images_per_s": 10.0}}}})
    record(path, CPU_REHEARSAL, ["trainer"], "fail", "timed out: killed after the section's 5 s limit", 5)
    record(path, CPU_REHEARSAL, ["kernel"], "skipped", "the budget ran out", 0)
    entry = read_report(path)["sections"]["trainer"]
    assert entry["status"] == "fail" and entry["error"].startswith("timed out") and entry["seconds"] == 5
    assert entry["results"]["b2_cfg_a1"]["images_per_s"] == 10.0
    merge_entries(path, CPU_REHEARSAL, {"ratios": {"status": "ok", "seconds": 1, "results": {}}})
    record(path, CPU_REHEARSAL, ["ratios"], "fail", "timed out")  # killed on its way out: keeps its status
    report = read_report(path)
    assert report["sections"]["ratios"]["status"] == "ok" and "timed out" in report["sections"]["ratios"]["warning"]
    assert report["summary"]["fail"] == ["trainer"] and report["summary"]["skipped"] == ["kernel"]
    assert "| trainer | fail |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.fast
def test_attempt_keeps_each_measurement_apart():
    out = Results()
    attempt(out, "good", lambda: {"x": 1.0}, log=lambda _m: None)
    attempt(out, "bad", lambda: 1 / 0, log=lambda _m: None)
    attempt(out, "skip", lambda: (_ for _ in ()).throw(Skip("needs CUDA")), log=lambda _m: None)
    set_deadline(0.0)  # long past: a measurement that needs time is skipped
    try:
        attempt(out, "late", lambda: {"x": 2.0}, need_s=10, log=lambda _m: None)
    finally:
        set_deadline(None)
    assert out["good"]["status"] == "ok" and out["good"]["x"] == 1.0
    assert out["bad"]["status"] == "fail" and out["bad"]["error"].startswith("ZeroDivisionError")
    assert out["skip"] == {"status": "skipped", "reason": "needs CUDA", "seconds": out["skip"]["seconds"]}
    assert out["late"]["status"] == "skipped" and "time ran out" in out["late"]["reason"]
    assert out.failures == ["bad: ZeroDivisionError: division by zero"]


@pytest.mark.fast
def test_headline_joins_speed_with_flops_and_plans():
    report = {"meta": {"mode": "gpu"}, "sections": {
        "environment": {"status": "ok", "results": {"gpus": [{"name": "NVIDIA H100"}],
                                                    "bf16_peak_flops_reference": 1e15}},
        "trainer": {"status": "ok", "results": {
            "b2_cfg_a0": {"status": "ok", "batch": 32, "images_per_s": 1000.0, "peak_allocated_bytes": 2 ** 31},
            "b2_cfg_a0_math": {"status": "fail", "error": "CUDA out of memory"}}},
        "plans": {"status": "running", "results": {"flops": {"b2_cfg_a0": {"flops_per_step": 6.4e12}},
                                                   "memory": {"b2_cfg_a0": {"peak_bytes": 2 ** 32}}}}}}
    h = headline(report)
    assert h["runs"]["b2_cfg_a0"]["mfu"] == pytest.approx(0.2)
    assert h["runs"]["b2_cfg_a0"]["peak_over_plan"] == 0.5
    assert h["runs"]["b2_cfg_a0_math"]["mfu"] is None  # failed: no speed, its cells stay empty
    text = render(report)
    assert "NVIDIA H100" in text and "CUDA out of memory" in text and "20.0%" in text
    assert render({"sections": {}}).startswith("# GPU check")  # an empty report renders too


@pytest.mark.fast
def test_non_finite_numbers_are_written_as_strings():
    assert jsonable({"a": float("nan"), "b": (1, float("inf")), "c": -float("inf"), "d": True}) == \
        {"a": "NaN", "b": [1, "Infinity"], "c": "-Infinity", "d": True}


def test_recompiles_count_frames_compiled_again_not_a_second_compiled_module():
    """Two compiled functions (the prediction and the target pass) are two first compiles, not a recompile; a
    dtype change of one of them is one recompile."""
    import torch
    from torch._dynamo.utils import counters

    from alphaflow.perf.gpucheck.compiling import _dynamo_counts, _frame_compiles

    torch._dynamo.reset()
    counters.clear()
    before = _frame_compiles()
    f = torch.compile(lambda x: x.sin() * 2, backend="eager")
    g = torch.compile(lambda x: x.cos() + 1, backend="eager")
    f(torch.ones(3)), g(torch.ones(3))
    assert _dynamo_counts(before)["recompiles"] == 0
    f(torch.ones(3, dtype=torch.float64))
    assert _dynamo_counts(before)["recompiles"] == 1
