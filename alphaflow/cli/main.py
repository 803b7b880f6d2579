"""The ``alphaflow`` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType
from typing import Callable, Sequence

from alphaflow.run.errors import Interrupted, UsageError, run_command

def _cmd_models(args: argparse.Namespace) -> int:
    from alphaflow.models import MODELS, parameter_count
    from alphaflow.models.registry import SIZES

    for flag, value, least in (("--input-size", args.input_size, 1), ("--in-channels", args.in_channels, 1),
                               ("--num-classes", args.num_classes, 0)):
        if value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")
    print(f"{'name':<10} {'depth':>5} {'width':>5} {'heads':>5} {'params':>14}   "
          f"(input {args.in_channels}x{args.input_size}x{args.input_size}, {args.num_classes} classes)")
    for name in MODELS:
        size, patch = name[4:].split("/")
        if args.input_size % int(patch):
            continue
        depth, width, heads = SIZES[size]
        n = parameter_count(name, input_size=args.input_size, in_channels=args.in_channels,
                            num_classes=args.num_classes)
        print(f"{name:<10} {depth:>5} {width:>5} {heads:>5} {n:>14,}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from alphaflow.cli.evaluate import checked_path

    checked_path("--out", args.out)
    from alphaflow.train.build import preflight
    from alphaflow.config import dump_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    objective = preflight(cfg)
    if args.dry_run:
        print(dump_yaml(cfg), end="")
        print("# peak GPU memory per rank of this config: alphaflow plan with the same --config and overrides "
              "(--world-size N)")
        return 0
    from alphaflow.launch.training import train_run as train

    asked: list[int] = []  # a Ctrl-C seen: the loop also stops at its next step boundary, with a checkpoint

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        asked.append(signum)
        raise KeyboardInterrupt  # it can land in a callback that swallows it (a weakref's): the flag stays

    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)  # an ignored SIGINT stays ignored
    if ours:
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        train(cfg, args.out, objective=objective, should_stop=lambda: bool(asked))
    except KeyboardInterrupt:
        raise Interrupted(resume_hint(args.out)) from None
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if asked:
        raise Interrupted(resume_hint(args.out))
    return 0


def resume_hint(run_dir: str | Path) -> str:
    """Where an interrupted run stands: its last logged step and its newest checkpoint, which the same command
    resumes from."""
    from alphaflow.run.folder import RunFolder

    run = RunFolder(run_dir)
    saved, logged = run.checkpoints(), run.last_step()
    at = f"after step {logged} (the last logged); " if logged else ""
    if not saved:
        return f"{at}{run_dir} holds no checkpoint yet: the same command starts it again at step 0"
    return f"{at}{run_dir} keeps its checkpoint of step {saved[0][0]}: the same command resumes from there"


def _cmd_plan(args: argparse.Namespace) -> int:
    import json
    import warnings

    from alphaflow.objectives import objective_from_options
    from alphaflow.config import load_config
    from alphaflow.perf.memplan import plan_memory, propose_micro_batch
    from alphaflow.models import check_model_name

    if args.world_size < 1:
        raise UsageError(f"--world-size must be >= 1, got {args.world_size}")
    cfg = load_config(args.config, args.overrides)
    objective_from_options(cfg.objective, cfg.train.steps)  # the plan needs no data: paths are not checked
    check_model_name(cfg.model.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fake tensors make diffusers' VAE warn about data pointers
        plan = plan_memory(cfg, world_size=args.world_size, device=args.device)
    print(json.dumps(plan.to_dict(), indent=1) if args.json else plan.table(args.limit_gb))
    if not plan.fits(args.limit_gb * 1e9):
        hints = []
        if plan.phases["train"].total_bytes > args.limit_gb * 1e9:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                micro = propose_micro_batch(cfg, world_size=args.world_size, limit_bytes=args.limit_gb * 1e9,
                                            device=args.device)
            hints.append(f"train.micro_batch={micro} (gradient accumulation: the same global batch, {micro} rows "
                         "per forward)" if micro else "a smaller model: not even one row per forward fits")
        if any(p.total_bytes > args.limit_gb * 1e9 for n, p in plan.phases.items() if n != "train" and p.used):
            hints.append("lower probe.chunk_size, eval.batch_size or eval.decode_batch_size")
        print(f"does not fit {args.limit_gb:g} GB: use {' and '.join(hints)}, or more ranks")
        return 1
    return 0


def _cmd_extract_latents(args: argparse.Namespace) -> int:
    from alphaflow.cli.evaluate import checked_path

    checked_path("--out", args.out)
    from alphaflow.data.latents import extract_latents

    path = extract_latents(args.images, args.vae, args.out, resolution=args.resolution, batch_size=args.batch_size,
                           device=args.device)
    print(f"latents written to {path}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from alphaflow.evaluate.offline_probe import probe_run

    from alphaflow.cli.evaluate import run_config_with

    p = run_config_with(args.run_dir, args.overrides, ("probe",)).probe
    # a flag beats the config
    pick: Callable[[int | None, int], int] = lambda flag, value: value if flag is None else flag  # noqa: E731
    path = probe_run(args.run_dir, batches=pick(args.batches, p.batches), batch_size=pick(args.batch_size, p.batch_size),
                     checkpoints=args.checkpoints, weights=args.weights, parts=args.parts or p.parts,
                     seed=pick(args.seed, p.seed), device=args.device, chunk_size=pick(args.chunk_size, p.chunk_size))
    print(f"probes written to {path}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from alphaflow.cli.evaluate import checked_path

    checked_path("--root", args.root)
    from alphaflow.cli.sweep import sweep_command  # the launcher: imported when a sweep runs

    return sweep_command(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from alphaflow.perf.bench import format_table, resolve_variants, run_bench

    if args.census:
        from alphaflow.perf.census import format_census, run_census

        variants = tuple(v for v in resolve_variants(args.variants) if v not in ("probe", "official_p100"))
        census = run_census(args.model, batch=args.batch, shape=tuple(args.shape), classes=args.classes,
                            precision=args.precision, variants=variants, gpu=args.gpu,
                            model_options={"attention": args.attention})
        print(json.dumps(census) if args.json else format_census(census))
        return 0
    results = run_bench(args.model, batch=args.batch, shape=tuple(args.shape), classes=args.classes,
                        variants=resolve_variants(args.variants), device=args.device, precision=args.precision,
                        rounds=args.rounds, warmup=args.warmup, threads=args.threads, seed=args.seed,
                        **({} if args.peak_flops is None else {"peak_flops": args.peak_flops}))
    print(json.dumps(results) if args.json else format_table(results))
    return 0  # the targets are information, not a verdict on the exit code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphaflow", description="α-Flow / MeanFlow / flow matching research framework")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from alphaflow.cli.evaluate import add_evaluation_commands

    for add in (_add_training_commands, _add_probe_and_sweep_commands, add_evaluation_commands, _add_tool_commands):
        add(sub)
    from alphaflow.perf.gpucheck import add_parser as add_doctor_parser  # stdlib-only at import; options live there

    add_doctor_parser(sub)
    add_plugin_commands(sub)
    return parser


def _add_training_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """train, plan, extract-latents."""
    p = sub.add_parser("train", help="train a model into a run folder (resumes if the folder has checkpoints)",
                       description="Train FM / MeanFlow / α-Flow. Config: defaults in code (the embedded digits "
                                   "recipe), then --config FILE.yaml (or a recipe name), then key=value overrides.")
    p.add_argument("--out", required=True, help="run folder; re-running the same command resumes it")
    p.add_argument("--config", default=None, help="YAML file or recipe name (digits, cifar10, imagenet-b2, ...)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.steps=500")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("plan", help="peak GPU memory per rank of a config's training step, probes and evaluation",
                       description="Runs each phase on fake tensors (nothing is allocated) and prints the peak per "
                                   "rank, plus fragmentation and the CUDA context; exit 1 if a phase does not fit.")
    p.add_argument("--config", default=None, help="YAML file or recipe name (as for train)")
    p.add_argument("--world-size", type=int, default=1, help="ranks sharing train.batch_size (default 1)")
    p.add_argument("--limit-gb", type=float, default=80.0, help="GPU memory to fit in, in GB (default 80)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="what precision=auto means (bf16 on cuda)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. probe.chunk_size=8")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("extract-latents", help="encode an image folder with a local SD-VAE into a latents folder")
    p.add_argument("images", help="image folder in ImageNet layout (one sub-folder per class)")
    p.add_argument("--vae", required=True, help="local diffusers AutoencoderKL folder (e.g. the SD-VAE ft-EMA)")
    p.add_argument("--out", required=True, help="output latents folder (data.path for data.name=latents)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_extract_latents)


def _add_probe_and_sweep_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """probe, sweep."""
    p = sub.add_parser("probe", help="gradient-conflict probes on a run's checkpoints (writes RUN_DIR/probes.jsonl)",
                       description="The paper's protocol (arXiv 2510.20771 Appendix E; docs/probes.md#offline-probes): "
                                   "per checkpoint, N batches with r < t; mean and 5/95 % percentiles of every "
                                   "term's loss, gradient norm and pairwise cosine.")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="probe.* keys, e.g. probe.batches=50")
    p.add_argument("--batches", type=int, default=None, help="batches per checkpoint (default: probe.batches)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per batch (default: probe.batch_size)")
    p.add_argument("--checkpoints", default="all", help="all (default: every saved checkpoint), last, or a comma "
                                                         "list of steps")
    p.add_argument("--weights", choices=("raw", "ema"), default="raw", help="raw training weights (default) or EMA")
    p.add_argument("--parts", action="store_true", help="also per DiT block / embedder / final layer")
    p.add_argument("--chunk-size", type=int, default=None, metavar="ROWS",
                   help="rows per forward/backward chunk (same numbers, less memory; default: the run's probe.chunk_size)")
    p.add_argument("--seed", type=int, default=None, help="default: probe.seed")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("sweep", help="expand a sweep file and submit its runs as one submitit job array",
                       description="Runs are named <description>-<config hash> under --root; finished, pending and "
                                   "running runs are skipped, incomplete ones resume from their checkpoints.")
    p.add_argument("file", help="sweep YAML (see sweeps/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="applied to every run, e.g. data.path=/datasets/imagenet-latents")
    p.add_argument("--executor", choices=("auto", "local", "slurm", "inline"), default="auto",
                   help="auto: slurm when a SLURM controller answers `scontrol ping`, else submitit's local "
                        "executor (it says which, and why); inline: train one after another in this process")
    p.add_argument("--root", default=None, help="folder of the runs (default: runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs (and, for slurm, the batch script)")
    p.add_argument("--status", action="store_true", help="each run's state from disk and the scheduler")
    p.add_argument("--retry-failed", action="store_true",
                   help="also resubmit runs whose last attempt failed (inline always trains them again)")
    p.add_argument("--wait", action="store_true", help="stay until every submitted job has ended, showing progress; "
                                                         "exit 1 if any run did not finish")
    p.add_argument("--wait-every", type=float, default=30.0, help="seconds between progress lines with --wait")
    p.add_argument("--smoke", action="store_true",
                   help="rehearse every run here for a few CPU steps: model size, batches, steps and intervals shrunk "
                        "(listed), the rest as in the file; into runs/<sweep>-smoke unless --root")
    p.add_argument("--smoke-steps", type=int, default=None, metavar="N", help="steps per run with --smoke (default 4)")
    p.set_defaults(func=_cmd_sweep)


def _add_tool_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """models, bench, unlock."""
    p = sub.add_parser("unlock", help="clear the lock record of a run folder whose trainer has gone (another host)",
                       description="A trainer holds RUN_DIR/.lock while it runs (docs/locking.md). A lock left by a "
                                   "dead process on this host is taken over by the next trainer by itself; use this "
                                   "for one held from another host, once that process is known to have stopped.")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_unlock)

    p = sub.add_parser("models", help="list the DiT size registry with parameter counts")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--in-channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("bench", help="time one training step of FM, α-Flow, MeanFlow, the official code, a probe",
                       description="Round-robin timing (median ms and median per-round ratio to flow matching), "
                                   "FLOPs and peak memory of one step (forward + backward, no optimiser step) "
                                   "per variant; see alphaflow/perf/bench.py. Default: the digits recipe's DiT-T/2.")
    p.add_argument("--model", default="DiT-T/2", help="a registry model (see `alphaflow models`)")
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--shape", type=int, nargs="+", default=[1, 8, 8], metavar="N",
                   help="sample shape: C H W for a DiT (default 1 8 8, the digits; 4 32 32 for latents), D for an MLP")
    p.add_argument("--classes", type=int, default=10, help="number of classes (0: unconditional)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on cuda, fp32 on cpu")
    p.add_argument("--rounds", type=int, default=10, help="timed rounds over all variants")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s for the MFU (default 989e12: H100 bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="base", metavar="LIST",
                   help="comma list of variants or groups: base (default), conflict (fm, mf_p100 and the "
                        "conflict.mode steps), family (SplitMeanFlow, Modular MeanFlow), all")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--census", action="store_true",
                   help="count one trainer step per variant on fake tensors (FLOPs by dtype, bytes, kernels, the "
                        "largest no-grad tensor) and estimate its time and MFU on --gpu; runs on any laptop")
    p.add_argument("--gpu", choices=("h100", "h200"), default="h100", help="the roofline of --census (default h100)")
    p.add_argument("--attention", choices=("auto", "math", "triton"), default="auto",
                   help="--census: the DiT's attention tangent (auto: the fused kernel where Triton is importable, "
                        "as on a GPU; math: the N×N form)")
    p.set_defaults(func=_cmd_bench)


def add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands other installed packages register under the entry-point group ``alphaflow.commands``: each
    entry is a function ``(subparsers) -> None`` that adds its parser. ``analysis`` adds ``alphaflow report``
    this way (pyproject.toml), so the library never imports the analysis layer."""
    for entry in sorted(entry_points(group="alphaflow.commands"), key=lambda e: e.name):
        entry.load()(sub)


def _cmd_unlock(args: argparse.Namespace) -> int:
    from alphaflow.run.lock import break_lock

    print(break_lock(args.run_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. A bad input ends with one line on stderr and exit code 2, a file that could not be
    written with one line and exit code 1 (``alphaflow.run.errors.run_command``); ``--debug`` anywhere on the line,
    or ``ALPHAFLOW_DEBUG=1``, shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("ALPHAFLOW_DEBUG", "") not in ("", "0")
    parser = build_parser()
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    # key=value after a flag (`sweep FILE --smoke data.path=X`): argparse has closed the overrides by then
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    return run_command(f"alphaflow {args.command}", lambda: args.func(args), debug=debug,
                       resumable=args.command in ("train", "sweep"))
