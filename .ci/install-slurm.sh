#!/usr/bin/env bash
# Install a single-node SLURM (slurm-wlm) and munge from the distribution, for
# tests/test_slurm.py. Idempotent; a no-op (with a message) without root or apt-get,
# in which case that test skips itself.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    echo "install-slurm: slurm-wlm and munge already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm: not root, skipping (tests/test_slurm.py will be skipped)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-slurm: no apt-get, skipping (tests/test_slurm.py will be skipped)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
echo "install-slurm: installed $(slurmctld -V) and $(munged --version 2>&1 | head -n 1)"
