"""The loopback SLURM cluster as pytest fixtures (scripts/slurm_cluster.py), shared by every SLURM test.

One cluster per test session. Skips when SLURM is not installed, unless ALPHAFLOW_REQUIRE_SLURM is set
(CI sets it: there a missing SLURM fails)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "scripts" / "slurm_cluster.py"
DAEMONS = ("munged", "slurmctld", "slurmd")
BINARIES = (*DAEMONS, "sbatch", "squeue", "sinfo", "scancel", "scontrol", "srun")
PARTITION = "local"


def _require_slurm() -> None:
    """Skip when SLURM is absent, except where ALPHAFLOW_REQUIRE_SLURM is set: then fail."""
    missing = [b for b in BINARIES if shutil.which(b, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None]
    if not missing:
        return
    message = f"SLURM not installed (missing {', '.join(missing)}): run scripts/install_slurm.sh"
    if os.environ.get("ALPHAFLOW_REQUIRE_SLURM", "") not in ("", "0"):
        pytest.fail(f"{message}; ALPHAFLOW_REQUIRE_SLURM is set, so this fails instead of skipping")
    pytest.skip(message)


def _cluster(command: str, state_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(CLUSTER), command, "--state-dir", str(state_dir)],
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        pytest.fail(f"slurm_cluster.py {command} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def _pids(state_dir: Path) -> dict[str, int]:
    return {d: int((state_dir / "run" / f"{d}.pid").read_text().split()[0]) for d in DAEMONS}


def _alive(pid: int) -> bool:
    """Running and not a zombie (a daemon's parent may be a pid 1 that never reaps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclasses.dataclass
class SlurmCluster:
    state_dir: Path
    env: dict[str, str]  # SLURM_CONF and PATH (sacct stand-in first) to run SLURM clients against this cluster
    pids: dict[str, int]
    partition: str = PARTITION

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=60, check=True, **kwargs)

    def wait_state(self, job_id: str, states: set[str], timeout: float = 60.0) -> str:
        """Wait until squeue shows every row of job_id (an array expands to its tasks) in one of states."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").stdout.split()
            if seen and set(seen) <= states:
                return seen[0]
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {seen}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    _require_slurm()
    state_dir = tmp_path_factory.mktemp("slurm")
    t0 = time.monotonic()
    _cluster("start", state_dir)
    print(f"slurm cluster up in {time.monotonic() - t0:.1f} s")
    pids = _pids(state_dir)
    env = {"SLURM_CONF": str(state_dir / "etc" / "slurm.conf"),
           "PATH": f"{state_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        yield SlurmCluster(state_dir, env, pids)
    finally:
        r = _cluster("stop", state_dir, check=False)
        left = {d: pid for d, pid in pids.items() if _alive(pid)}
        for pid in left.values():  # exactly the daemons this fixture started, by their pid files
            os.kill(pid, signal.SIGKILL)
        assert r.returncode == 0, f"stop exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        assert not left, f"daemons still alive after stop: {left}"


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """os.environ pointed at the cluster: submitit runs sbatch/sacct/scancel with the caller's environment."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster
