"""Small real file systems for the full-disk tests: a tmpfs of a given size (it needs root, which CI has;
``ALPHAFLOW_REQUIRE_TMPFS=1`` makes a machine where mounting fails an error instead of a skip)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(path: Path, size: str) -> Path:
    """Mount a tmpfs of ``size`` (e.g. '5m') at ``path``; pytest-skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip()}); the full-disk tests need root"
        if os.environ.get("ALPHAFLOW_REQUIRE_TMPFS"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def remount(path: Path, options: str) -> None:
    """Change a mounted tmpfs in place, e.g. 'size=20m' to free space or 'ro' to make it read-only."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int = 0) -> Path:
    """Take all but ``leave`` bytes of the file system at ``path`` with one file; returns it."""
    filler = path / "filler"
    with open(filler, "ab") as f:
        free = shutil.disk_usage(path).free - leave
        if free > 0:
            os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), free)
    return filler


@pytest.fixture
def tmpfs(tmp_path):
    """A factory of small tmpfs mounts under tmp_path, all unmounted at the end."""
    mounted: list[Path] = []

    def make(size: str, name: str = "fs") -> Path:
        mounted.append(mount_tmpfs(tmp_path / name, size))
        return mounted[-1]

    yield make
    for path in mounted:
        unmount(path)
