#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, from the working directory
# (the root of this repository): install the emsrflow package without touching the pins.
set -euo pipefail
python -m pip install --no-deps "${EMSRFLOW_SOURCE:-$PWD}"
