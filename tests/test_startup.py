"""Start-up cost of the command line: what `alphaflow --help` and `alphaflow train` import.

A newcomer runs `--help` first and a short `train` second; neither should wait for pandas, scipy or matplotlib
(a second or more each on a laptop), and `--help` should not wait for torch either."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pandas", "scipy", "matplotlib", "seaborn", "sklearn", "submitit")


def _imported_after(code: str, tmp_path) -> set[str]:
    """The top-level packages imported by running ``code`` in a fresh interpreter."""
    probe = f"""
import sys, json
{code}
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={"ALPHAFLOW_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"})
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["sweep", "--help"], ["report", "--help"],
                                  ["probe", "--help"], ["eval", "--help"], ["doctor", "--help"]])
def test_help_imports_neither_torch_nor_analysis(argv, tmp_path):
    code = f"""
from alphaflow.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
"""
    loaded = _imported_after(code, tmp_path)
    assert not loaded & {*HEAVY, "torch", "numpy"}, sorted(loaded & {*HEAVY, "torch", "numpy"})


@pytest.mark.slow  # writes a whole report or trains: the slow tier
def test_train_reaches_its_first_step_without_analysis_libraries(tmp_path):
    """A two-step run on the embedded digits, then `--dry-run`: torch and numpy, never pandas, scipy, matplotlib."""
    code = f"""
from alphaflow.cli.main import main
assert main(['train', '--out', {str(tmp_path / 'run')!r}, 'train.steps=2', 'model.name=DiT-XT/2',
             'train.sample_every=0']) == 0
assert main(['train', '--out', {str(tmp_path / 'dry')!r}, '--dry-run']) == 0
"""
    loaded = _imported_after(code, tmp_path)
    assert "torch" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_the_suite_keeps_out_of_the_users_cache():
    """conftest points $ALPHAFLOW_CACHE at the repository's .pytest_cache (or $ALPHAFLOW_TEST_CACHE)."""
    import os
    from pathlib import Path

    from alphaflow.metrics.features import default_cache_dir

    expected = os.environ.get("ALPHAFLOW_TEST_CACHE") or Path(__file__).resolve().parents[1] / ".pytest_cache"
    assert Path(expected) in [default_cache_dir(), *default_cache_dir().parents]
    assert default_cache_dir() != Path.home() / ".cache" / "alphaflow"
