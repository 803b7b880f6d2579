#!/usr/bin/env python3
"""A throwaway single-node SLURM cluster on loopback, to try a sweep before sending it to a real cluster.

    sudo scripts/install_slurm.sh                 # once: Debian's slurm-wlm and munge
    scripts/slurm_cluster.py start                # munged + slurmctld + slurmd, returns when the node is idle
    eval "$(scripts/slurm_cluster.py env)"        # SLURM_CONF, and PATH with a sacct stand-in (no accounting)
    alphaflow sweep ... (partition "local")       # submitit jobs now run here; `squeue`, `scancel` work too
    scripts/slurm_cluster.py stop                 # cancels jobs, stops exactly the daemons it started
State dir: --state-dir DIR, else $ALPHAFLOW_SLURM_DIR, else /tmp/alphaflow-slurm. Runs as root; stdlib only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DIR = "/tmp/alphaflow-slurm"
PARTITION = "local"
NODE = "localhost"
SCRIPTS = Path(__file__).resolve().parent
DAEMONS = ("munged", "slurmctld", "slurmd")  # start order; stopped in reverse
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class Layout:
    """Every path the cluster uses, all under one state dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keydir = root / "munge-key"  # 0700: munged refuses a key others can reach
        self.key = self.keydir / "munge.key"
        self.mungedir = root / "munge"  # 0755: the socket's folder must be searchable by clients
        self.socket = self.mungedir / "munge.socket"
        self.seed = self.mungedir / "munged.seed"
        self.etc = root / "etc"  # 0700: slurm.conf, found through SLURM_CONF
        self.conf = self.etc / "slurm.conf"
        self.plugstack = self.etc / "plugstack.conf"
        self.ctld_state = root / "state"
        self.spool = root / "spool"
        self.logdir = root / "log"
        self.rundir = root / "run"
        self.bin = root / "bin"  # on PATH: the sacct stand-in
        self.pidfile = {d: self.rundir / f"{d}.pid" for d in DAEMONS}
        self.log = {d: self.logdir / f"{d}.log" for d in DAEMONS}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env


def state_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("ALPHAFLOW_SLURM_DIR") or DEFAULT_DIR).resolve()


def which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None, daemon: str) -> bool:
    """Whether pid runs `daemon` (guards against a recycled pid: never signal someone else's process)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie is not running
        return False
    return bool(cmdline) and os.path.basename(cmdline[0].decode(errors="replace")) == daemon


def running(lay: Layout) -> dict[str, int]:
    """The daemons of this state dir that are alive, by the pid in their own pid file."""
    out = {}
    for d in DAEMONS:
        pid = read_pid(lay.pidfile[d])
        if alive(pid, d):
            out[d] = pid
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def write_conf(lay: Layout) -> None:
    """slurm.conf: one node, one default partition, no accounting, fast scheduler and requeue."""
    cpus = len(os.sched_getaffinity(0))
    mem = max(256, int(memory_mb() * 0.9))  # slurmd drains a node that reports less memory than configured
    ctld_port, slurmd_port = free_port(), free_port()
    while slurmd_port == ctld_port:
        slurmd_port = free_port()
    lay.plugstack.write_text("")  # isolates us from /etc/slurm/plugstack.conf
    lay.conf.write_text(f"""\
# Written by scripts/slurm_cluster.py: a throwaway single-node cluster on loopback.
ClusterName=alphaflow
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={lay.socket},cred_expire=10
StateSaveLocation={lay.ctld_state}
SlurmdSpoolDir={lay.spool}
SlurmctldPidFile={lay.pidfile['slurmctld']}
SlurmdPidFile={lay.pidfile['slurmd']}
SlurmctldLogFile={lay.log['slurmctld']}
SlurmdLogFile={lay.log['slurmd']}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={lay.plugstack}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=5
MinJobAge=3600
KillWait=5
ReturnToService=2
MailProg=/bin/true
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")


def prepare(lay: Layout) -> None:
    for d in (lay.root, lay.mungedir, lay.ctld_state, lay.spool, lay.logdir, lay.rundir, lay.bin):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    for d in (lay.keydir, lay.etc):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    if not lay.key.exists():
        fd = os.open(lay.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
    for p in list(lay.pidfile.values()) + [lay.socket, Path(f"{lay.socket}.lock")]:
        p.unlink(missing_ok=True)  # stale files from a run that died
    for d in (lay.ctld_state, lay.spool):  # a fresh cluster every start: no jobs left from before
        shutil.rmtree(d)
        d.mkdir(mode=0o755)
    sacct = lay.bin / "sacct"
    sacct.unlink(missing_ok=True)
    sacct.symlink_to(SCRIPTS / "sacct")
    write_conf(lay)


def run_daemon(lay: Layout, daemon: str, args: list[str]) -> None:
    """Start a daemon that forks into the background; wait until its pid file names a live process."""
    exe = which(daemon)
    if exe is None:
        raise RuntimeError(f"{daemon} not found: run scripts/install_slurm.sh")
    with open(lay.log[daemon], "ab") as log:  # what it prints before its own log opens
        rc = subprocess.run([exe, *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            env=lay.env(), timeout=30).returncode
    if rc != 0:
        raise RuntimeError(f"{daemon} exited with status {rc}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if alive(read_pid(lay.pidfile[daemon]), daemon):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{daemon} did not write a live pid to {lay.pidfile[daemon]}")


def node_state(lay: Layout) -> str:
    r = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], capture_output=True, text=True,
                       env=lay.env(), timeout=15)
    return r.stdout.strip() if r.returncode == 0 else f"(sinfo: {r.stderr.strip()})"


def tail_logs(lay: Layout, n: int = 25) -> None:
    for d in DAEMONS:
        try:
            lines = lay.log[d].read_text(errors="replace").splitlines()[-n:]
        except OSError:
            lines = ["(no log)"]
        print(f"----- {lay.log[d]} (last {n} lines) -----", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)


def start(lay: Layout) -> int:
    t0 = time.monotonic()
    up = running(lay)
    if len(up) == len(DAEMONS):
        print(f"slurm_cluster: already running in {lay.root} (pids {up})")
        return 0
    if os.geteuid() != 0:
        print("slurm_cluster: start must run as root (SlurmUser=root; slurmd launches the jobs)", file=sys.stderr)
        return 1
    missing = [b for b in (*DAEMONS, "sinfo", "squeue", "sbatch", "scancel") if which(b) is None]
    if missing:
        print(f"slurm_cluster: not installed: {', '.join(missing)}; run scripts/install_slurm.sh", file=sys.stderr)
        return 1
    if len(str(lay.socket)) > 100:
        print(f"slurm_cluster: state dir path too long for a unix socket: {lay.socket}", file=sys.stderr)
        return 1
    if up:
        print(f"slurm_cluster: partly running in {lay.root} ({up}); stopping it first", file=sys.stderr)
        stop(lay)
    try:
        prepare(lay)
        run_daemon(lay, "munged", [f"--socket={lay.socket}", f"--key-file={lay.key}",
                                   f"--pid-file={lay.pidfile['munged']}", f"--log-file={lay.log['munged']}",
                                   f"--seed-file={lay.seed}", "--force"])
        check = subprocess.run(f"munge -n -S {shlex.quote(str(lay.socket))} | unmunge -S {shlex.quote(str(lay.socket))}",
                               shell=True, capture_output=True, text=True, timeout=15)
        if check.returncode != 0:
            raise RuntimeError(f"munge round trip failed: {check.stderr.strip()}")
        run_daemon(lay, "slurmctld", ["-f", str(lay.conf)])
        run_daemon(lay, "slurmd", ["-f", str(lay.conf), "-N", NODE])
        deadline = time.monotonic() + START_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = node_state(lay)
            if state == "idle":
                break
            if not all(alive(read_pid(lay.pidfile[d]), d) for d in DAEMONS):
                raise RuntimeError(f"a daemon died while the node was {state!r}")
            time.sleep(0.25)
        else:
            raise RuntimeError(f"node not idle after {START_TIMEOUT_S:.0f} s (sinfo says {state!r})")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        print(f"slurm_cluster: start failed: {e}", file=sys.stderr)
        tail_logs(lay)
        stop(lay)
        return 1
    print(f"slurm_cluster: up in {time.monotonic() - t0:.1f} s, state in {lay.root}, partition {PARTITION!r}, "
          f"pids {running(lay)}")
    print(f'slurm_cluster: eval "$({shlex.quote(sys.argv[0])} env --state-dir {shlex.quote(str(lay.root))})"')
    return 0


def stop(lay: Layout) -> int:
    """Cancel every job of this cluster, wait for the queue to drain, SIGTERM each daemon by its pid file."""
    up = running(lay)
    if not up:
        print(f"slurm_cluster: not running in {lay.root}")
        return 0
    env = lay.env()
    if "slurmctld" in up:
        try:
            q = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, env=env, timeout=15)
            jobs = sorted(set(q.stdout.split()))
            if jobs:
                subprocess.run(["scancel", *jobs], env=env, timeout=15, capture_output=True)
                deadline = time.monotonic() + STOP_TIMEOUT_S
                while time.monotonic() < deadline:
                    q = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, env=env,
                                       timeout=15)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.5)
                else:
                    print(f"slurm_cluster: jobs still queued after {STOP_TIMEOUT_S:.0f} s: {q.stdout.split()}",
                          file=sys.stderr)
        except subprocess.SubprocessError as e:
            print(f"slurm_cluster: could not cancel jobs: {e}", file=sys.stderr)
    failed = []
    for d in reversed(DAEMONS):
        pid = up.get(d)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while alive(pid, d) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid, d):
            print(f"slurm_cluster: {d} (pid {pid}) ignored SIGTERM; sending SIGKILL", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
            if alive(pid, d):
                failed.append(f"{d}:{pid}")
    if failed:
        print(f"slurm_cluster: still alive: {failed}", file=sys.stderr)
        return 1
    print(f"slurm_cluster: stopped {up}")
    return 0


def print_env(lay: Layout) -> int:
    print(f"export SLURM_CONF={shlex.quote(str(lay.conf))}")
    print(f'export PATH={shlex.quote(str(lay.bin))}:"$PATH"')
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("start", "stop", "env", "status"))
    parser.add_argument("--state-dir", help=f"default: $ALPHAFLOW_SLURM_DIR or {DEFAULT_DIR}")
    args = parser.parse_args(argv)
    lay = Layout(state_dir(args.state_dir))
    if args.command == "start":
        return start(lay)
    if args.command == "stop":
        return stop(lay)
    if args.command == "env":
        return print_env(lay)
    up = running(lay)
    print(f"slurm_cluster: {'running' if len(up) == len(DAEMONS) else 'not running'} in {lay.root} ({up})")
    return 0 if len(up) == len(DAEMONS) else 3


if __name__ == "__main__":
    sys.exit(main())
