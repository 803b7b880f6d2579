"""The headline numbers of a GPU-check report, and ``gpu_check.md``: a short human summary (standard library only).

``headline(report)`` joins the sections (the trainer's images/s with the plans' FLOPs per step into MFU, its
peak memory with the plan); ``render(report)`` writes them as tables. Both are rebuilt after every section, so
they only read what is there: a missing or failed section leaves "–" in its cells, never an error.
"""

from __future__ import annotations

import math
from typing import Any

from alphaflow.perf.gpucheck.settings import H100_BF16_PEAK, MFU_GOAL, RATIO_GOALS

GIB = 2 ** 30


def _results(report: dict[str, Any], section: str) -> dict[str, Any]:
    return (report.get("sections", {}).get(section) or {}).get("results") or {}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _base_key(key: str) -> str:
    """The trainer run whose FLOPs and plan a variant shares (math attention, the same run compiled)."""
    return key[:-len("_math")] if key.endswith("_math") else key


def _run_row(key: str, run: dict[str, Any], plans: dict[str, Any], peak: float) -> dict[str, Any]:
    base = _base_key(key)
    flops, memory = plans.get("flops") or {}, plans.get("memory") or {}
    worst = _num(((plans.get("plan_memory") or {}).get(base) or {}).get("peak_bytes"))
    f = _num((flops.get(base) or {}).get("flops_per_step"))
    ips, batch = _num(run.get("images_per_s")), _num(run.get("batch"))
    plan = memory.get(base) or {}
    measured, planned = _num(run.get("peak_allocated_bytes")), _num(plan.get("peak_bytes"))
    return {"status": run.get("status"), "model": run.get("model"), "batch": run.get("batch"),
            "alpha": run.get("alpha"), "attention": run.get("attention"), "images_per_s": ips,
            "step_ms": _num(run.get("step_ms")), "flops_per_step": f,
            "mfu": f * ips / batch / peak if f and ips and batch else None,
            "peak_gib": measured / GIB if measured else None, "plan_peak_gib": planned / GIB if planned else None,
            "plan_total_gib": (_num(plan.get("total_bytes")) or 0) / GIB or None,
            "plan_memory_peak_gib": worst / GIB if worst else None,
            "peak_over_plan": measured / planned if measured and planned else None,
            "loss_finite": run.get("finite"), "error": run.get("error") or run.get("reason")}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth reading first, joined across sections (see the module docstring)."""
    env, plans = _results(report, "environment"), _results(report, "plans")
    peak = _num(env.get("bf16_peak_flops_reference")) or H100_BF16_PEAK
    gpus = env.get("gpus") or []
    out: dict[str, Any] = {"gpu": gpus[0].get("name") if gpus else None, "torch": env.get("torch"),
                           "cuda": env.get("cuda_build"), "peak_flops": peak,
                           "matmul_bf16_tflops": _num((env.get("matmul_bf16") or {}).get("tflops")),
                           "copy_gb_per_s": _num((env.get("copy") or {}).get("gb_per_s"))}
    runs = {}
    for section in ("trainer", "xl128"):
        for key, run in _results(report, section).items():
            if isinstance(run, dict) and "status" in run and not key.endswith("_resume"):
                runs[key] = _run_row(key, run, plans, peak)
    out["runs"] = runs
    resume = next((v for k, v in _results(report, "trainer").items() if k.endswith("_resume")), None)
    out["resume"] = None if resume is None else {
        "status": resume.get("status"), "from_step": resume.get("resumed_from_step"),
        "final_step": resume.get("final_step"), "loss_finite": resume.get("finite"),
        "error": resume.get("error") or resume.get("reason")}
    table = _results(report, "ratios").get("table") or {}
    out["ratios"] = {v: _num((table.get(v) or {}).get("ratio")) for v in ("alpha_mid", "mf_p100", "mf_p25",
                                                                          "official_p100", "probe")}
    out["ratio_goals"] = {v: {"goal": g, "ratio": out["ratios"].get(v),
                              "met": None if out["ratios"].get(v) is None else out["ratios"][v] <= g}
                          for v, g in RATIO_GOALS.items()}
    fm_mfu = _num((table.get("fm") or {}).get("mfu"))
    out["bench_fm_mfu"] = {"mfu": fm_mfu, "goal": MFU_GOAL, "met": None if fm_mfu is None else fm_mfu >= MFU_GOAL}
    kernel = _results(report, "kernel")
    out["kernel"] = {name: {"bf16_do_rel": _num((row.get("bf16") or {}).get("do_rel")),
                            "fp32_do_rel": _num((row.get("fp32") or {}).get("do_rel")),
                            "speedup": _num((row.get("timing") or {}).get("speedup_vs_sdpa_plus_math")),
                            "kernel_ms": _num((row.get("timing") or {}).get("kernel_ms"))}
                     for name, row in kernel.items() if isinstance(row, dict) and "G" in row}
    tangent = {}
    for name, row in _results(report, "tangent").items():
        if isinstance(row, dict) and "batch" in row:
            for case, res in row.items():
                if isinstance(res, dict) and "all_rows" in res:
                    rels = [_num(res[c].get("du_rel")) or 0.0 for c in ("all_rows", "row_subset")
                            if isinstance(res.get(c), dict)]
                    tangent[f"{name} {case}"] = max(rels)
    out["tangent_du_rel"] = tangent
    out["precision_max_rel_diff_mse"] = {k: _num(v.get("max_rel_diff_mse")) for k, v in
                                         _results(report, "precision").items() if isinstance(v, dict) and "steps" in v}
    compile_rows = {}
    for key, row in _results(report, "compile").items():
        if isinstance(row, dict) and isinstance(row.get("compiled"), dict):
            c = row["compiled"]
            eager, compiled = _num((runs.get(key) or {}).get("images_per_s")), _num(c.get("images_per_s"))
            compile_rows[key] = {"status": c.get("status"), "compile_s": _num(c.get("compile_s")),
                                 "images_per_s": compiled, "speedup": _num(row.get("speedup")),
                                 "speedup_vs_trainer_eager": compiled / eager if eager and compiled else None,
                                 "unique_graphs": c.get("unique_graphs"), "recompiles": c.get("recompiles"),
                                 "graph_breaks": c.get("graph_breaks"), "error": c.get("error") or c.get("reason")}
    out["compile"] = compile_rows
    return out


def _f(value: Any, fmt: str = "{:.3g}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _status(row: dict[str, Any]) -> str:
    return _f(row.get("status")) + (f": {str(row['error'])[:80]}" if row.get("error") else "")


def _cells(row: dict[str, Any], spec: tuple[tuple[str, str], ...]) -> list[str]:
    return [_f(row.get(key), fmt) for key, fmt in spec]


RUN_COLUMNS = (("model", "{}"), ("batch", "{}"), ("alpha", "{:g}"), ("images_per_s", "{:.0f}"), ("step_ms", "{:.1f}"),
               ("mfu", "{:.1%}"), ("peak_gib", "{:.1f}"), ("plan_peak_gib", "{:.1f}"), ("peak_over_plan", "{:.2f}"),
               ("plan_memory_peak_gib", "{:.1f}"), ("loss_finite", "{}"))
COMPILE_COLUMNS = (("compile_s", "{:.0f}"), ("images_per_s", "{:.0f}"), ("speedup", "{:.2f}"),
                   ("speedup_vs_trainer_eager", "{:.2f}"), ("unique_graphs", "{}"), ("recompiles", "{}"),
                   ("graph_breaks", "{}"))


def render(report: dict[str, Any]) -> str:
    """``gpu_check.md``: the sections' status, then the headline numbers as tables."""
    meta, h = report.get("meta", {}), report.get("headline") or headline(report)
    seconds = _f(report.get("summary", {}).get("seconds"), "{:.0f}")
    lines = [f"# GPU check ({meta.get('mode')}): {h.get('gpu') or 'no GPU'}, torch {h.get('torch')}, "
             f"CUDA {h.get('cuda')}", "",
             f"Started {meta.get('started')}; sections so far {seconds} s of a {meta.get('budget_s')} s budget. Every "
             "number is in gpu_check.json; this file is rewritten after each section and measurement.", ""]
    rows = []
    for name, e in report.get("sections", {}).items():
        note = (e.get("error") or e.get("reason") or e.get("warning") or "").replace("|", "/").replace("\n", " ")
        rows.append([name, e.get("status", "?"), _f(e.get("seconds"), "{:.0f}"), note[:160]])
    lines += _table(["section", "status", "s", "error / reason"], rows)
    lines += ["", f"bf16 matmul {_f(h.get('matmul_bf16_tflops'), '{:.0f}')} TFLOP/s; device copy "
                  f"{_f(h.get('copy_gb_per_s'), '{:.0f}')} GB/s (read + write); MFU against "
                  f"{_f(h.get('peak_flops', 0) / 1e12, '{:.0f}')} TFLOP/s.", "",
              "## Real trainer on made-up latents", ""]
    rows = [[k, *_cells(r, RUN_COLUMNS), _status(r)] for k, r in (h.get("runs") or {}).items()]
    lines += _table(["run", "model", "batch", "α", "img/s", "ms/step", "MFU", "peak GiB", "plan GiB", "peak/plan",
                     "`alphaflow plan` GiB", "finite", "status"], rows)
    lines += ["", "peak: `torch.cuda.max_memory_allocated` over the run; plan: the run's own step on fake tensors "
                  "(same α and micro-batch); `alphaflow plan`: its train phase, the worst α; both without the 10 % "
                  "margin and the 1.5 GiB context."]
    res = h.get("resume")
    if res:
        lines += ["", f"Checkpoint and resume: {_status(res)} (resumed at step {_f(res['from_step'])}, ended at "
                      f"{_f(res['final_step'])}, finite losses {_f(res['loss_finite'])})"]
    lines += ["", "## Step cost against flow matching (bench, B/2 × 32)", ""]
    goals = h.get("ratio_goals") or {}
    lines += _table(["variant", "time ratio", "goal", "met"],
                    [[v, _f(r, "{:.2f}"), _f((goals.get(v) or {}).get("goal")), _f((goals.get(v) or {}).get("met"))]
                     for v, r in (h.get("ratios") or {}).items()])
    fm = h.get("bench_fm_mfu") or {}
    lines += ["", f"Bench fm MFU {_f(fm.get('mfu'), '{:.1%}')} (goal {_f(fm.get('goal'), '{:.0%}')}: "
                  f"{_f(fm.get('met'))})."]
    if h.get("kernel"):
        lines += ["", "## JVP-attention kernel", ""]
        spec = (("bf16_do_rel", "{:.3g}"), ("fp32_do_rel", "{:.3g}"), ("kernel_ms", "{:.3f}"), ("speedup", "{:.2f}"))
        lines += _table(["shape", "bf16 ȯ rel err", "fp32 ȯ rel err", "kernel ms", "speed-up vs SDPA + math"],
                        [[k, *_cells(r, spec)] for k, r in h["kernel"].items()])
    checks = [*([f"tangent {k} (du vs torch.func.jvp)", _f(v)] for k, v in h.get("tangent_du_rel", {}).items()),
              *([f"precision {k} (bf16 vs fp32 mse, max over steps)", _f(v)]
                for k, v in h.get("precision_max_rel_diff_mse", {}).items())]
    if checks:
        lines += ["", "## Numerics", "", *_table(["check", "relative error"], checks)]
    if h.get("compile"):
        lines += ["", "## train.compile=true", ""]
        lines += _table(["run", "compile s", "img/s", "speed-up", "vs trainer eager", "graphs", "recompiles", "breaks",
                         "status"], [[k, *_cells(r, COMPILE_COLUMNS), _status(r)] for k, r in h["compile"].items()])
    return "\n".join(lines) + "\n"
