"""``alphaflow sweep``: the command behind ``alphaflow.cli.main``'s thin ``sweep`` entry (imported only when it runs).

The order is the command's promise: read and check the file (``load_sweep``: structure, name, resources), check
the runs (``preflight``) and the executor (``--executor slurm`` needs a controller that answers), and only then
create the root and submit. A dry run and ``--status`` write nothing; ``--smoke`` rehearses here
(``alphaflow.launch.smoke``), on made-up latents where a latents recipe has no ``data.path``
(``alphaflow.launch.smoke_data``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alphaflow.run.errors import Interrupted, UsageError
from alphaflow.launch.sweeps import Sweep, SweepRun, load_sweep


def preflight_runs(runs: list[SweepRun]) -> None:
    """Refuse a sweep whose runs cannot start (a missing data path, an unknown model) before submitting any."""
    from alphaflow.train.build import preflight

    for r in runs:
        try:
            preflight(r.config)
        except ValueError as exc:
            raise ValueError(f"run {r.name}: {exc} (give it on the command line, e.g. data.path=/datasets/...)") from None


def make_root(root: Path) -> None:
    """Create the sweep's root folder; a folder that cannot be created is a bad ``--root``."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"--root {root} is a file: give the folder of the sweep's runs (it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--root {root}: cannot create this folder ({exc.strerror or exc})") from None


def sweep_command(args: argparse.Namespace) -> int:
    """``alphaflow sweep FILE``: submit, list (--dry-run), show states (--status) or rehearse (--smoke)."""
    sweep = load_sweep(args.file, args.overrides)
    if args.smoke:
        return smoke_command(args, sweep)
    if args.smoke_steps is not None:
        raise UsageError("--smoke-steps sets the steps of a rehearsal; add --smoke")
    if not args.wait_every > 0:
        raise UsageError(f"--wait-every is the seconds between progress lines: a number > 0, got {args.wait_every:g}")
    root = Path(args.root or f"runs/{sweep.name}")
    if args.status:
        return listing(args, sweep, root, "")
    from alphaflow.launch import executors as launcher
    from alphaflow.launch.cluster import probe_controller

    if not args.dry_run:
        preflight_runs(sweep.runs)
    kind, why = launcher.choose_executor(args.executor)
    if args.executor == "auto":
        print(f"executor auto: {kind} ({why})", flush=True)
    elif kind == "slurm" and not args.dry_run:
        answered, why = probe_controller()
        if not answered:
            raise UsageError(f"--executor slurm: {why}; nothing was submitted or written. Submit from a machine of "
                             "the cluster, or use --executor local (--dry-run prints the batch script anywhere)")
    if kind != "inline":
        sweep.resources = launcher.with_defaults(sweep.resources, sweep.runs)
    if args.dry_run:
        return listing(args, sweep, root, kind)
    make_root(root)
    try:
        jobs = launcher.submit(sweep.runs, root, executor=kind, resources=sweep.resources, name=sweep.name,
                               retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        raise Interrupted(f"the runs under {root} keep their checkpoints; run the same command again to resume "
                          "them") from None
    if args.wait and jobs:
        try:
            return 1 if launcher.wait(jobs, sweep.runs, root, every=args.wait_every) else 0
        except KeyboardInterrupt:
            raise Interrupted(f"stopped waiting; `alphaflow sweep {args.file} --root {root} --status` shows each "
                              "run's state, and the same command resumes any run that stopped") from None
    return 0


def listing(args: argparse.Namespace, sweep: Sweep, root: Path, kind: str) -> int:
    """--dry-run (the runs and their overrides; for slurm the batch script) or --status (each run's state)."""
    from alphaflow.launch import executors as launcher
    from alphaflow.run.folder import RunFolder, run_status

    state = launcher.scheduler_state(root) if args.status else None
    print(f"{'state':<11} {'step':>7}  run")
    for r in sweep.runs:
        st = run_status(root / r.name, state)
        extra = f"   [{st.detail}]" if st.detail else ("" if args.status else "   " + " ".join(r.overrides))
        print(f"{st.state:<11} {RunFolder(root / r.name).last_step():>7}  {r.name}{extra}")
    if args.dry_run and kind == "slurm":
        print("\n# the batch script of the job array:\n" + launcher.sbatch_script(root, sweep.resources, sweep.name,
                                                                                len(sweep.runs)))
        print(f"# --dry-run: this script was not submitted, and nothing was written under {root}")
    return 0


def smoke_command(args: argparse.Namespace, real: Sweep) -> int:
    """``sweep FILE --smoke``: every run shrunk and trained here for a few CPU steps (``alphaflow.launch.smoke``);
    a latents run without ``data.path`` on made-up latents (``alphaflow.launch.smoke_data``)."""
    from alphaflow.launch import smoke
    from alphaflow.launch.smoke_data import describe_made_up, stand_ins, with_made_up_latents, write_made_up

    if args.executor not in ("auto", "inline"):
        raise UsageError(f"--smoke trains every run in this process on this CPU; --executor {args.executor} is for "
                         "the real sweep (the rehearsal prints its batch script)")
    if args.retry_failed or args.wait:
        raise UsageError("--smoke retries failed runs and waits for every run by itself; drop --retry-failed/--wait")
    steps = smoke.SMOKE_STEPS if args.smoke_steps is None else args.smoke_steps
    root = Path(args.root or f"runs/{real.name}-smoke")
    fed, made_up = with_made_up_latents(real, root)
    sweep, shrunk = smoke.smoke_sweep(fed, steps)
    if args.status:
        return listing(args, sweep, root, "inline")
    if not args.dry_run:
        with stand_ins(made_up) as stand_in:  # checked on made-up data in a temporary folder: nothing written yet
            preflight_runs([stand_in(r) for r in fed.runs])  # the real configs too: a check shrinking could hide
            preflight_runs([stand_in(r) for r in sweep.runs])
    print(smoke.describe(args.file, sweep, shrunk, root, steps))
    if made_up:
        print(describe_made_up(made_up))
    print(resources_summary(real, Path(f"runs/{real.name}")), flush=True)  # the real sweep's default root
    if args.dry_run:
        return listing(args, sweep, root, "inline")
    make_root(root)
    for m in made_up:
        write_made_up(m)
    return 1 if smoke.rehearse(sweep, root) else 0


def resources_summary(real: Sweep, root: Path) -> str:
    """The file's resources, checked and completed as the real submission of ``real`` (the unshrunk sweep) under
    ``root`` would (``executor_parameters``, ``with_defaults``), and the ``#SBATCH`` lines of its batch script."""
    from alphaflow.launch import executors  # imports submitit: the launcher's job

    executors.executor_parameters(real.resources)
    resources = executors.with_defaults(real.resources, real.runs)
    script = executors.sbatch_script(root, resources, real.name, len(real.runs))
    header = [line for line in script.splitlines() if line.startswith(("#SBATCH", "# requeued"))]
    given = " ".join(f"{k}={v}" for k, v in resources.items())
    return "\n".join([f"resources (checked, not used here): {given or '(defaults)'}",
                      f"the real submission's batch script (--executor slurm, --root {root}):",
                      *(f"  {h}" for h in header)])
