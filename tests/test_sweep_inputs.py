"""What a user may give ``alphaflow sweep`` (and the path flags of the other commands), each refused in one line
before anything is submitted or written: empty paths, sweep names, the structure of a sweep file, resources;
how ``--executor auto`` picks SLURM (only when a controller answers, with fake ``sbatch``/``scontrol`` on PATH);
the batch script without SLURM; rehearsals without data; and the small CLI promises of probe, sample and eval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alphaflow.cli.main import build_parser, main
from alphaflow.config import load_config, to_dict
from alphaflow.launch import cluster
from alphaflow.launch.sweeps import load_sweep
from alphaflow.run.folder import RunFolder, run_status

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml")) + sorted((ROOT / "sweeps" / "imagenet").glob("*.yaml"))
TINY = """name: tiny
base: {model: {name: DiT-N/2}, train: {steps: 2, batch_size: 8, log_every: 1, ckpt_every: 2, sample_every: 0},
       sample: {num: 4}, data: {stats_samples: 16}}
variants: {fm: {objective.name: fm}, mf: {objective.name: meanflow}}
resources: {timeout_min: 5, cpus_per_task: 1}
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A folder of executable shell scripts ``name: body`` that PATH will hold alone."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


UP = 'echo "Slurmctld(primary) at ctl is UP"'
DOWN = 'echo "Slurmctld(primary) at ctl is DOWN"; exit 1'
REFUSED = 'echo "sbatch: error: Batch job submission failed: Invalid account" >&2; exit 1'


# ----------------------------------------------------------------------------- 1. empty path flags

@pytest.mark.parametrize("argv", [
    ["train", "--out", "", "--dry-run"], ["train", "--out", "  ", "--dry-run"],
    ["sample", "RUN", "--out", ""], ["import-official", "snap.pt", "--out", " "],
    ["extract-latents", "images", "--vae", "vae", "--out", ""], ["sweep", "SWEEP", "--root", "", "--dry-run"],
])
def test_an_empty_out_or_root_is_refused_in_one_line(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    argv = [str(write(tmp_path, TINY)) if a == "SWEEP" else a for a in argv]
    flag = "--root" if "--root" in argv else "--out"
    err = one_line_error(capsys, argv)
    assert f"{flag} is empty" in err and "unset shell variable" in err
    assert {p.name for p in tmp_path.iterdir()} <= {"sweep.yaml"}, "nothing written in the current folder"


# ----------------------------------------------------------------------------- 2. the sweep's name

@pytest.mark.parametrize("name", ["../../evil", "a/b", "''", ".hidden", "'a b'", "5"])
def test_a_name_that_is_not_a_plain_folder_name_is_refused(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, TINY.replace("name: tiny", f"name: {name}"))
    err = one_line_error(capsys, ["sweep", str(path), "--dry-run", "--executor", "local"])
    assert f"{path}: 'name' must be a plain folder name" in err and "runs/<name>" in err
    assert not (tmp_path / "runs").exists()


def test_a_stem_that_is_not_a_plain_name_asks_for_a_name_key(tmp_path):
    with pytest.raises(ValueError, match=r"has no 'name' and its stem 'my sweep' is not a plain folder name"):
        load_sweep(write(tmp_path, "seeds: [0]\n", "my sweep.yaml"))
    assert load_sweep(write(tmp_path, "seeds: [0]\n", "ok_1.2-x.yaml")).name == "ok_1.2-x"


# ----------------------------------------------------------------------------- 3. the file's structure
# (already refused before, and tested in tests/test_sweeps.py: seeds: 3, unknown keys, a baseline naming no
# variant; grid: {x: 3} and grid: [1] were refused too)

@pytest.mark.parametrize("text,message", [
    ("variants: [a, b]\n", "'variants' must map variant names to mappings of dotted overrides"),
    ("variants: {a: 3}\n", "variant 'a' must be a mapping of dotted overrides"),
    ("variants: {1: {}}\n", "variant names are strings, got 1"),
    ("variants: {a: {5: 1}}\n", "variant 'a': 5 is not a dotted config key"),
    ("seeds: [a]\n", "'seeds' holds whole numbers (e.g. [0, 1, 2]), got 'a'"),
    ("variants: {a: {}}\nseeds: {a: [true]}\n", "'seeds' holds whole numbers (e.g. [0, 1, 2]), got True"),
    ("base: 5\n", "'base' must be a (partial) config mapping"),
    ("base: [train]\n", "'base' must be a (partial) config mapping"),
    ("recipe: 5\n", "'recipe' must be a recipe name or a YAML file"),
    ("zip: {3: [1]}\n", "zip axis 3 is not a dotted config key"),
    ("resources: [1]\n", "'resources' must be a mapping such as"),
    ("variants: {a: {}}\nbaseline:\n", "'baseline' must name one of the variants, got None"),
])
def test_every_section_has_its_documented_shape(capsys, tmp_path, text, message):
    path = write(tmp_path, "name: x\n" + text)
    err = one_line_error(capsys, ["sweep", str(path), "--dry-run", "--executor", "local",
                                  "--root", str(tmp_path / "r")])
    assert err.startswith(f"alphaflow sweep: {path}: ") and message in err, err
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 4. resources

BAD_RESOURCES = [
    ("mem_gb: abc", "resources.mem_gb must be a number of GB > 0 (e.g. 32 or 0.5), got 'abc'"),
    ("mem_gb: 0", "resources.mem_gb must be a number of GB > 0"),
    ("timeout_min: -5", "resources.timeout_min must be a whole number of minutes >= 1, got -5"),
    ("cpus_per_task: 0", "resources.cpus_per_task must be a whole number of CPUs >= 1, got 0"),
    ("nodes: 1.5", "resources.nodes must be a whole number of nodes >= 1, got 1.5"),
    ("tasks_per_node: true", "resources.tasks_per_node must be a whole number of tasks >= 1, got True"),
    ("gpus_per_node: -1", "resources.gpus_per_node must be a whole number of GPUs >= 0, got -1"),
    ("array_parallelism: 0", "resources.array_parallelism must be a whole number of array tasks >= 1, got 0"),
    ("signal_delay_s: -1", "resources.signal_delay_s must be a whole number of seconds >= 0, got -1"),
    ("max_num_timeout: -1", "resources.max_num_timeout must be a whole number of requeues >= 0, got -1"),
    ("partition: 3", "resources.partition must be a SLURM partition name (a non-empty string), got 3"),
    ("slurm: [account]", "resources.slurm must be a mapping of sbatch options to strings"),
    ("slurm: {account: {a: 1}}", "resources.slurm.account must be a string (or a number, or true for a bare flag)"),
    ("slurm: {'a b': x}", "resources.slurm: 'a b' is not an sbatch option name"),
    ("gpus: 8", "unknown resources ['gpus'] (did you mean 'gpus_per_node'?); expected some of ['array_parallelism', "),
]


@pytest.mark.parametrize("mode", [["--dry-run", "--executor", "local"], ["--executor", "inline"],
                                  ["--smoke", "--dry-run"], ["--smoke"]])
@pytest.mark.parametrize("entry,message", BAD_RESOURCES, ids=[e for e, _ in BAD_RESOURCES])
def test_resources_are_checked_before_anything_is_written(capsys, tmp_path, mode, entry, message):
    path = write(tmp_path, TINY.replace("resources: {timeout_min: 5, cpus_per_task: 1}", f"resources: {{{entry}}}"))
    err = one_line_error(capsys, ["sweep", str(path), *mode, "--root", str(tmp_path / "r")])
    assert err.startswith(f"alphaflow sweep: {path}: {message}"), err
    assert not (tmp_path / "r").exists()


def test_good_resources_at_the_edges_of_their_ranges_pass(capsys, tmp_path):
    path = write(tmp_path, TINY.replace("{timeout_min: 5, cpus_per_task: 1}",
                                        "{timeout_min: 1, gpus_per_node: 0, mem_gb: 0.5, signal_delay_s: 0, "
                                        "max_num_timeout: 0, partition: p, slurm: {account: a, exclusive: true, "
                                        "nice: 10}}"))
    assert main(["sweep", str(path), "--smoke", "--dry-run", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --mem=512MB" in out and "#SBATCH --exclusive" in out and "#SBATCH --signal=USR2@0" in out


# ----------------------------------------------------------------------------- 5. auto picks SLURM only when asked

def test_auto_without_sbatch_is_local_and_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path)))
    assert main(["sweep", str(write(tmp_path, TINY)), "--dry-run", "--root", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "executor auto: local (no sbatch on PATH)"


@pytest.mark.parametrize("scontrol,why", [
    (DOWN, "sbatch is on PATH but no SLURM controller answered `scontrol ping` (Slurmctld(primary) at ctl is DOWN)"),
    ("exec /bin/sleep 30", "sbatch is on PATH but no SLURM controller answered `scontrol ping` within 0.3 s"),
    (None, "sbatch is on PATH but scontrol is not, so no SLURM controller can be asked"),
])
def test_auto_with_sbatch_but_no_controller_is_local(capsys, tmp_path, monkeypatch, scontrol, why):
    scripts = {"sbatch": REFUSED} if scontrol is None else {"sbatch": REFUSED, "scontrol": scontrol}
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path, **scripts)))
    monkeypatch.setattr(cluster, "PING_TIMEOUT_S", 0.3)
    assert main(["sweep", str(write(tmp_path, TINY)), "--dry-run", "--root", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"executor auto: local ({why})"


def test_auto_with_a_controller_is_slurm_and_shows_the_script_without_srun(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path, sbatch=REFUSED, scontrol=UP)))
    assert main(["sweep", str(write(tmp_path, TINY)), "--dry-run", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("executor auto: slurm (the SLURM controller answered `scontrol ping`: "
                                   "Slurmctld(primary) at ctl is UP)")
    assert "#SBATCH --array=0-1%2" in out and not (tmp_path / "r").exists()


def test_executor_slurm_without_a_controller_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path, sbatch=REFUSED, scontrol=DOWN)))
    err = one_line_error(capsys, ["sweep", str(write(tmp_path, TINY)), "--executor", "slurm",
                                  "--root", str(tmp_path / "r")])
    assert err.startswith("alphaflow sweep: --executor slurm: sbatch is on PATH but no SLURM controller answered")
    assert "nothing was submitted or written" in err and not (tmp_path / "r").exists()


def test_a_refused_submission_is_one_line_and_leaves_the_folders_as_they_were(capsys, tmp_path, monkeypatch):
    path = write(tmp_path, TINY)
    fm, mf = load_sweep(path).runs
    root = tmp_path / "r"
    failed = RunFolder(root / fm.name)  # a run whose last attempt failed: --retry-failed submits it again
    failed.write_config(to_dict(fm.config))
    failed.write_error("Traceback (most recent call last):\nRuntimeError: boom\n")
    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path, sbatch=REFUSED, scontrol=UP, srun='exit 1')}")
    err = one_line_error(capsys, ["sweep", str(path), "--executor", "slurm", "--retry-failed", "--root", str(root)],
                         code=1)
    assert err.startswith("alphaflow sweep: the slurm submission of 2 run(s) failed (sbatch: error: Batch job "
                          "submission failed: Invalid account); nothing was submitted")
    assert not (root / mf.name).exists(), "the new run's folder is gone again"
    assert failed.read_error() == "RuntimeError: boom" and not failed.job_path.exists() and \
        not failed.info_path.exists()
    assert run_status(root / fm.name).state == "failed"


# ----------------------------------------------------------------------------- 6. the batch script without SLURM

def test_dry_run_slurm_prints_the_script_on_a_machine_without_slurm(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path)))
    assert main(["sweep", str(write(tmp_path, TINY)), "--dry-run", "--executor", "slurm",
                 "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --job-name=tiny" in out and "#SBATCH --signal=USR2@120" in out
    assert out.rstrip().endswith(f"# --dry-run: this script was not submitted, and nothing was written under "
                                 f"{tmp_path / 'r'}")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 7. rehearsals without data

def test_a_latents_rehearsal_without_data_path_says_it_uses_made_up_latents(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path)))  # and no srun: the rehearsal shows the script anyway
    path = ROOT / "sweeps" / "imagenet" / "fm_baseline_b2.yaml"
    assert main(["sweep", str(path), "--smoke", "--dry-run", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "r" / ".smoke-latents" / "4x32x32-1000c"
    assert (f"data: no data.path given, so the latents runs train on made-up latents of the recipe's shape (4x32x32 "
            f"with 1000 classes in {folder})") in out
    assert "#SBATCH --gpus-per-node=8" in out and not (tmp_path / "r").exists()
    assert main(["sweep", str(path), "--smoke", "--dry-run", "--root", str(tmp_path / "r"),
                 f"data.path={tmp_path}"]) == 0
    assert "made-up latents" not in capsys.readouterr().out


def test_made_up_latents_are_a_latents_folder_of_the_recipes_shape(tmp_path):
    from alphaflow.data import build_dataset
    from alphaflow.launch.smoke_data import MADE_UP_ROWS, with_made_up_latents, write_made_up

    sweep, made = with_made_up_latents(load_sweep(ROOT / "sweeps" / "imagenet" / "table2b_ratio.yaml"), tmp_path)
    assert len(made) == 1 and {r.config.data.path for r in sweep.runs} == {str(made[0].folder)}
    data = build_dataset("latents", path=write_made_up(made[0]))
    assert data.shape == (4, 32, 32) and data.num_classes == 1000 and len(data) == MADE_UP_ROWS
    assert data.meta["made_up"] is True and data.source_resolution(0) == 256


def one_run_per_shape(sweep):
    """The first run (in the file's order) of each distinct shape of the step: objective, conflict rule, model,
    data, a start from another run. The runs of a file that differ only in a schedule's numbers, a seed or a
    learning rate train the same code; the CI budget rehearses one of each (the seed-0 source of a
    ``train.init_from`` run comes first in every committed file)."""
    seen: dict[tuple, object] = {}
    for r in sweep.runs:
        c = r.config
        seen.setdefault((c.objective.name, c.conflict.mode, c.model.name, c.data.name, bool(c.train.init_from)), r)
    sweep.runs = list(seen.values())
    return sweep


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_sweep_file_rehearses_from_a_fresh_state(capsys, tmp_path, monkeypatch, path):
    """`--smoke` of each committed file from a fresh root, without SLURM or data, through the command line; each
    distinct shape of its runs once (``one_run_per_shape``; `alphaflow sweep FILE --smoke` trains them all)."""
    import alphaflow.cli.sweep as command

    monkeypatch.setenv("PATH", f"{fake_bin(tmp_path)}{os.pathsep}/usr/bin:/bin")  # no SLURM, no data
    monkeypatch.setattr(command, "load_sweep", lambda *a, **k: one_run_per_shape(load_sweep(*a, **k)))
    assert main(["sweep", str(path), "--smoke", "--smoke-steps", "2", "--root", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    n = len(one_run_per_shape(load_sweep(path)).runs)
    assert f"smoke: {n}/{n} runs finished under {tmp_path / 'r'}" in out


# ----------------------------------------------------------------------------- 8. CLI polish

def test_help_texts_and_one_pair_of_weight_names(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["probe", "--help"])
    text = capsys.readouterr().out
    assert "%%" not in text and "5/95 % percentiles" in text and "all (default" in text
    for command in ("sample", "import-official"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--weights {ema,raw}" in capsys.readouterr().out
    assert parser.parse_args(["sample", "r", "--out", "x.png", "--weights", "net"]).weights == "raw"
    assert parser.parse_args(["import-official", "s.pt", "--out", "r", "--weights", "raw"]).weights == "raw"
    assert parser.parse_args(["eval", "r", "--weights", "raw"]).weights == "raw"


@pytest.mark.parametrize("command,verb", [("eval", "evaluate"), ("sample", "sample")])
def test_eval_and_sample_of_a_run_without_checkpoints_say_so(capsys, tmp_path, command, verb):
    RunFolder(tmp_path / "run").write_config(to_dict(load_config(None)))
    argv = [command, str(tmp_path / "run")] + (["--out", str(tmp_path / "x.png")] if command == "sample" else [])
    err = one_line_error(capsys, argv)
    assert f"has no checkpoint to {verb} yet" in err and "train.ckpt_every" in err and "probe" not in err
