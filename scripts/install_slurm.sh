#!/usr/bin/env bash
# Install the system packages for the throwaway loopback SLURM cluster (scripts/slurm_cluster.sh):
# Debian's slurm-wlm (slurmctld, slurmd, sbatch, squeue, ...) and munge. Idempotent: does nothing when
# slurmctld and munged are already on PATH. Needs root and apt-get (Debian/Ubuntu). Used by CI and by hand:
#   sudo scripts/install_slurm.sh
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

if have slurmctld && have slurmd && have munged && have sbatch; then
    echo "install_slurm: slurm-wlm and munge already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: must run as root to install slurm-wlm and munge (try: sudo $0)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: apt-get not found; install slurm-wlm and munge with this system's package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
for b in slurmctld slurmd munged sbatch squeue sinfo scancel; do
    have "$b" || { echo "install_slurm: $b still missing after apt-get install" >&2; exit 1; }
done
echo "install_slurm: installed slurm-wlm and munge in $(( $(date +%s) - start )) s"
