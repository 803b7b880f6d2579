"""The standard report of a sweep root: tables, a markdown summary and figures in one folder.

    write_report("runs/demo")        # → runs/demo/report/

writes runs.csv (``Runs.runs``), summary.csv (``summarize_runs``), variants.csv (``summarize_variants``
of every final_*/best_* column), quality.csv (``tables.quality_table``: 1-/2-NFE Fréchet distances per
variant with 95 % intervals over seeds, from eval.jsonl), conflict.csv (``tables.conflict_by_variant``),
conflict_online.csv (the same from the online probes, when offline probes exist too), conflict_ticks.csv
(``conflict_ticks.ticks_by_variant``: what the conflict interventions logged per tick), third_parts.csv
(``family.third_parts_by_variant``, where an objective's gradient has a third part), compare.csv (every variant
against the baseline, paired by seed: final quality, the quality curves' AUC, the mean cosines;
``compare.paired_table``), compare_steps.csv (the same at every ``eval.every`` step), quality_curves.csv and
quality_curves.png (``curves``: quality against step per variant, seed range shaded), summary.md (those tables,
failed runs and problems), problems.txt (one per line: a torn file, a variant split by its config), headline.md
(just the quality and conflict tables, what the command line prints with the problems) and
figures: loss.png, schedules.png (α and ratio_fm as logged),
samples.png (the last 1- and 2-NFE grids per variant) and, where runs hold gradient probes,
fig2a/2b/2c/6.png (``plots.save_figures``), conflict_panels.png (``family.fig_conflict_panels``: Fig. 2a with one panel
per variant), and conflict.png (``conflict_ticks.fig_conflict``) where runs logged
the probes' norm ratio or conflict-intervention ticks. The figures' curves come from probes.jsonl where some run
was probed at two or more checkpoints, else from the online ``probe_*`` keys of metrics.jsonl; the
conflict table prefers probes.jsonl (the paper's protocol) whenever it exists. The headline leads with the table
over training: the offline one where runs were probed at two or more checkpoints, else the online one (after the
first tenth of training), with the offline probe of the last checkpoint below it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alphaflow.run.errors import UsageError, WriteFailed

from .compare import baseline_of, comparison_cells, headline_per_run, paired_table, steps_table
from .conflict_ticks import fig_conflict, ticks_by_variant
from .curves import area_under_curve, at_each_step, fig_quality_curves, quality_curves
from .family import fig_conflict_panels, third_parts_by_variant
from .plots import save_figures
from .probe_frames import (checkpoints_per_run, markdown_table, offline_makes_curves, online_probes, pool_seeds,
                           summarize_conflict)
from .records import STATUSES
from .runplots import fig_metric
from .loading import Runs, load_runs
from .samples import fig_sample_grids, final_grids, sample_index
from .schedules import fig_schedules
from .summary import summarize_runs, summarize_variants
from .tables import conflict_by_variant, interval_table, quality_table, run_quality

LOSS = ("loss_mse", "loss")  # the first one any run logs is plotted


def probe_frames(runs: Runs, online: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, table): the probe frame the figures draw and the one the conflict table summarises.

    Offline probes (probes.jsonl; raw weights where present) draw the curves when some run has two or more
    checkpoints, else the online ``probe_*`` values do, pooled over seeds (``pool_seeds``); the table uses
    offline probes whenever there are any. ``online`` is ``online_probes(runs)``.
    """
    offline = runs.probes
    if not offline.empty and "weights" in offline.columns and (offline["weights"] == "raw").any():
        offline = offline[offline["weights"] == "raw"]
    curves = offline if offline_makes_curves(offline, online) else pool_seeds(online)
    return curves, (offline if not offline.empty else online)


CONFLICT_TEXT = ("mean cos(∇L_TFM, ∇L_TCC) and cos(∇L_FM′, ∇L_TCC) per run, then mean over seeds [95 % t-interval, "
                 "clipped to [−1, 1]; a variant with one run: (band) of its points' 2.5–97.5 %]; "
                 "the share of probe points with cos(∇L_TFM, ∇L_TCC) < −0.4 and with FM′ above TFM, pooled over the "
                 "seeds [95 % Wilson interval].")
ONLINE_SKIP = 0.1  # the online table leaves out the first tenth of training, where every curve leaves initialisation
TICKS_TEXT = ("Conflict interventions during training (docs/conflict.md#metrics; runs with a conflict.mode): per run "
              "the mean over its ticks of cos(g_TFM, g_TCC) on the training batch, the norm ratio "
              "‖g_TFM + g_TCC‖ / (‖g_TFM‖ + ‖g_TCC‖), the share of steps the rule changed and the relative size of "
              "the change, then mean over seeds [95 % t-interval, clipped to each quantity's range].")


THIRD_TEXT = ("The third part X of the loss's gradient where an objective has one (Modular MeanFlow's d, Decoupled "
              "MeanFlow's lv, improved MeanFlow's aux), from the online probes after the first tenth of training: "
              "cos(∇L_TFM, ∇X), cos(∇L_TCC, ∇X) and ‖∇X‖ / ‖∇L_TFM‖, mean over seeds [95 % t-interval, clipped to "
              "each quantity's range].")


COMPARE_TEXT = ("Versus the baseline **{baseline}**, paired by seed (run s of each variant shares its initial weights "
                "and data order with run s of the baseline): the mean of variant − baseline over the seeds both have, "
                "its 95 % t-interval and a percentile bootstrap beside it, the seeds on which the variant is better "
                "(lower, for a distance), and how many seeds an interval at this spread needs to exclude 0. "
                "`auc_` is the quality curve's mean height over training (eval.every).")


STEPS_TEXT = ("During training: {metric} of each variant minus the baseline's (**{baseline}**), paired by seed, at "
              "evaluated steps (eval.every; small-sample distances): mean difference [95 % t-interval], then the "
              "seeds on which the variant is lower. All steps: compare_steps.csv.")


def headline(root: Path, quality: pd.DataFrame, conflict: list[tuple[str, pd.DataFrame]],
             ticks: pd.DataFrame | None = None, third: pd.DataFrame | None = None,
             compare: pd.DataFrame | None = None, compare_steps: pd.DataFrame | None = None) -> str:
    """The tables a reader wants first: few-step quality, the paired comparison with the baseline
    (``compare.paired_table``), then each (source, table) of gradient conflict per variant, the third gradient
    parts (``family.third_parts_by_variant``) and the conflict interventions' tick means
    (``conflict_ticks.ticks_by_variant``) where there are any."""
    parts = [f"# {root}: the headline\n"]
    if quality.empty:
        parts.append("No eval.jsonl rows: run `alphaflow eval RUN_DIR` (or train with eval.final=true).\n")
    else:
        parts += ["Few-step quality per variant: Fréchet distance (lower is better) of EMA samples at 1 and 2 NFE, "
                  "mean over seeds [95 % t-interval, clipped at 0; none with one seed].\n",
                  markdown_table(interval_table(quality), floatfmt=".4g")]
    if compare is not None and not compare.empty:
        parts += [COMPARE_TEXT.format(baseline=compare["baseline"].iloc[0]) + "\n",
                  markdown_table(comparison_cells(compare))]
    if compare_steps is not None and not compare_steps.empty:
        for metric in sorted(compare_steps["metric"].unique()):
            parts += [STEPS_TEXT.format(metric=metric, baseline=compare_steps["baseline"].iloc[0]) + "\n",
                      markdown_table(steps_table(compare_steps, metric))]
    for source, table in conflict:
        if not table.empty:
            parts += [f"Gradient conflict per variant ({source}): {CONFLICT_TEXT}\n",
                      markdown_table(interval_table(table), floatfmt=".3g")]
    if third is not None and not third.empty:
        parts += [THIRD_TEXT + "\n", markdown_table(interval_table(third, digits=3), floatfmt=".3g")]
    if ticks is not None and not ticks.empty:
        parts += [TICKS_TEXT + "\n", markdown_table(interval_table(ticks, digits=3), floatfmt=".3g")]
    return "\n".join(parts)


def _markdown(root: Path, runs: Runs, summary: pd.DataFrame, variants: pd.DataFrame, value_cols: list[str],
              figures: list[str]) -> str:
    counts = runs.runs["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES)
    parts = [f"# Sweep report: {root}\n", f"{len(runs.runs)} runs: {status}.\n",
             "## Runs\n", "Final value (at the last step it was logged) and best (minimum) per run; "
             "config keys that differ between runs.\n", markdown_table(summary, floatfmt=".4g"),
             "## Variants\n", "Mean over the seeds of each variant with a 95 % Student-t interval "
             "(mean ± t₀.₉₇₅,ₙ₋₁·sd/√n, clipped to the quantity's range: a squared error ≥ 0); a variant with "
             "one run has no interval.\n",
             markdown_table(interval_table(variants, value_cols), floatfmt=".4g")]
    for name, what in (("spike_skipped", "updates skipped by train.spike_guard"),
                       ("nonfinite", "non-finite steps (no update)")):
        if name in summary.columns and summary[name].sum() > 0:
            hit = summary[summary[name] > 0]
            parts.append(f"{what}: {int(hit[name].sum())} in {len(hit)} run(s): "
                         + ", ".join(f"{r} ({int(k)})" for r, k in zip(hit["run"], hit[name])) + "\n")
    failed = runs.runs[runs.runs["status"] == "failed"]
    if len(failed):
        parts.append("## Failed runs\n")
        parts += [f"- {r.run}: {str(r.error).splitlines()[-1] if isinstance(r.error, str) else 'no error.txt'}"
                  for r in failed.itertuples()]
        parts.append("")
    parts += ["## Problems\n"] + ([f"- {p}" for p in runs.problems] or ["none"]) + [""]
    if figures:
        parts += ["## Figures\n"] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(parts)


def _offline_source(probes: pd.DataFrame) -> str:
    """How the headline names the offline probes: the checkpoint protocol, or just the last checkpoint."""
    if checkpoints_per_run(probes) < 2:
        return "offline probes of each run's last checkpoint, probes.jsonl"
    return "offline probes, probes.jsonl"


def comparisons(runs: Runs, probes: pd.DataFrame, curves: pd.DataFrame,
                baseline: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(compare, compare_steps): every variant against the baseline (``compare.baseline_of``), paired by seed, on
    the final quality, the quality curves' AUC and the probes' mean cosines; then on the quality at every
    evaluated step (a ``step`` column first). Empty frames where there is nothing to pair."""
    variants = runs.runs["variant"].dropna().astype(str)
    if variants.empty:
        return pd.DataFrame(), pd.DataFrame()
    ref = baseline_of(list(variants), runs.baselines, baseline)
    seeds = runs.runs.set_index(runs.runs["run"].astype(str))["cfg.seed"] if "cfg.seed" in runs.runs else pd.Series()
    cos = ["run", "variant", "mean_cos_tfm_tcc", "mean_cos_fmb_tcc"]
    per_probe = summarize_conflict(probes) if not probes.empty and "run" in probes else pd.DataFrame()
    if not per_probe.empty:
        if "weights" in per_probe.columns and per_probe["weights"].nunique() > 1:
            per_probe = per_probe[per_probe["weights"] == "raw"]
        per_probe = per_probe.assign(variant=per_probe["run"].map(runs.runs.set_index("run")["variant"]))
        per_probe = per_probe[[c for c in cos if c in per_probe.columns]]
    per_run, values = headline_per_run(run_quality(runs.evals), area_under_curve(curves), per_probe, seeds)
    compare = paired_table(per_run, values, baseline=ref)
    steps = [paired_table(frame, [c for c in frame.columns if c not in ("run", "variant", "seed")], baseline=ref)
             .assign(step=step) for step, frame in at_each_step(curves).items()]
    steps = [s for s in steps if not s.empty]
    by_step = pd.concat(steps, ignore_index=True) if steps else pd.DataFrame()
    return compare, by_step[["step", *[c for c in by_step.columns if c != "step"]]] if not by_step.empty else by_step


def report_folder(root: Path, out: str | Path | None) -> Path:
    """The report's folder (``root/report`` unless ``out``), checked before any work: an empty ``out`` or one that
    is a file is refused in one line (``UsageError``). It is created when the report is written."""
    if out is not None and not str(out).strip():
        raise UsageError("--out is empty (an unset shell variable?): give the report's folder, or drop --out "
                         f"for {root / 'report'}")
    folder = Path(out) if out is not None else root / "report"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file: give a folder (it is created if missing)")
    return folder


def _write_files(root: Path, out: Path, runs: Runs, tables: dict[str, pd.DataFrame | None], value_cols: list[str],
                 curves: pd.DataFrame, curves_q: pd.DataFrame, online: pd.DataFrame, ticks: pd.DataFrame,
                 top: str) -> None:
    """Every table as CSV, the figures that have data, headline.md, summary.md and problems.txt into ``out``."""
    for name, frame in tables.items():
        if frame is not None:
            frame.to_csv(out / f"{name}.csv", index=False)
    loss = next((c for c in LOSS if c in runs.metrics.columns), LOSS[0])
    fig_metric(runs.metrics, loss, path=out / "loss.png", title=f"training {loss}")
    fig_schedules(runs.metrics, path=out / "schedules.png")
    figures = ["loss.png", "schedules.png"]
    if not final_grids(sample_index(root)).empty:  # no grids, no figure (not a blank one)
        fig_sample_grids(root, evals=runs.evals, path=out / "samples.png")
        figures.append("samples.png")
    if not curves_q.empty:
        fig_quality_curves(curves_q, path=out / "quality_curves.png")
        figures.append("quality_curves.png")
    if not curves.empty:
        figures += [p.name for p in save_figures(curves, out).values()]
        fig_conflict_panels(curves, path=out / "conflict_panels.png")  # Fig. 2a, one panel per variant
        figures.append("conflict_panels.png")
    if not ticks.empty:  # some run used conflict.mode (the probe panels alone are conflict_panels.png)
        fig_conflict(runs, online=online, path=out / "conflict.png")
        figures.append("conflict.png")
    summary, variants = tables["summary"], tables["variants"]
    (out / "headline.md").write_text(top)
    (out / "summary.md").write_text(top + "\n" + _markdown(root, runs, summary, variants, value_cols, figures))
    (out / "problems.txt").write_text("".join(f"{p}\n" for p in runs.problems))  # what the command prints


def write_report(root: str | Path, out: str | Path | None = None, *, baseline: str | None = None) -> Path:
    """Load ``root`` (cached), write the tables, summary.md, headline.md and figures into ``out`` (default
    ``root/report``); returns ``out``. ``baseline``: the variant the others are compared with (default: the
    sweep's, as run.json records it, else the first by name)."""
    root = Path(root)
    out = report_folder(root, out)  # refused before the work, not after it
    runs = load_runs(root)
    summary = summarize_runs(runs)
    value_cols = [c for c in summary.columns if c.startswith(("final_", "best_"))]
    variants = summarize_variants(summary, value_cols)
    quality = quality_table(runs.evals)
    online = online_probes(runs)
    curves, probes = probe_frames(runs, online)
    offline = not runs.probes.empty
    conflict = conflict_by_variant(probes, skip=0.0 if offline else ONLINE_SKIP)
    online_source = "online probes after the first tenth of training"
    both = offline and not online.empty  # the checkpoint protocol and the curve over training
    conflict_online = conflict_by_variant(online, skip=ONLINE_SKIP) if both else None
    sections = [(_offline_source(runs.probes) if offline else online_source, conflict)]
    if conflict_online is not None:  # over training first where the offline probes are one point per run
        sections.insert(0 if checkpoints_per_run(runs.probes) < 2 else 1, (online_source, conflict_online))
    ticks = ticks_by_variant(runs.metrics)
    third = third_parts_by_variant(online)
    curves_q = quality_curves(runs)
    compare, compare_steps = comparisons(runs, runs.probes, curves_q, baseline)
    tables = {"runs": runs.runs, "summary": summary, "variants": variants, "quality": quality, "conflict": conflict,
              "conflict_online": conflict_online, "conflict_ticks": ticks,
              "third_parts": third if not third.empty else None, "compare": compare,
              "compare_steps": compare_steps if not compare_steps.empty else None,
              "quality_curves": curves_q if not curves_q.empty else None}
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_files(root, out, runs, tables, value_cols, curves, curves_q, online, ticks,
                     headline(root, quality, sections, ticks, third, compare, compare_steps))
    except OSError as exc:
        raise WriteFailed("the report (--out FOLDER writes it elsewhere)", out, exc) from exc
    return out
