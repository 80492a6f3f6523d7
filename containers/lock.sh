#!/usr/bin/env bash
# Regenerate the hashed lock files of the images from requirements-{cpu,gpu}.in:
#   pip install pip-tools && bash containers/lock.sh
# Run it with CPython 3.11 on Linux x86_64 (the images' interpreter and platform).
# pip-compile keeps the versions already in a lock file; delete the file, or pass
# --upgrade-package NAME (appended to both commands), to move a pin.
# TORCH_CPU_LINKS: where pip-compile finds the CPU-only torch wheel (a mirror or folder).
set -euo pipefail
cd "$(dirname "$0")"
python - <<'PY'
import platform, sys
if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux":
    sys.exit("containers/lock.sh: run with CPython 3.11 on Linux x86_64, like the images")
PY
export CUSTOM_COMPILE_COMMAND="bash containers/lock.sh"
common=(
    --quiet --generate-hashes --allow-unsafe --strip-extras
    --no-emit-index-url --no-emit-find-links --no-config
    --index-url https://pypi.org/simple
)
pip-compile "${common[@]}" \
    --find-links "${TORCH_CPU_LINKS:-https://download.pytorch.org/whl/cpu/torch/}" \
    --output-file requirements-cpu.lock requirements-cpu.in "$@"
pip-compile "${common[@]}" --output-file requirements-gpu.lock requirements-gpu.in "$@"
