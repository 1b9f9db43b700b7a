#!/usr/bin/env bash
# Create .venv and install mobscale with pinned dependencies. Idempotent: a second run only checks.
# torch==2.13.0 must come first (the CPU wheel on this machine); everything else is installed against
# constraints.txt, which pins torch so pip never swaps in a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import mobscale, torch, deepspeed, ray, zarr" >/dev/null 2>&1 || [ "${MOBSCALE_REINSTALL:-0}" = 1 ]; then
  python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  python -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
  python -m pip install -q -c constraints.txt -r requirements.txt 2>&1 | grep -v "is ignored" || true
  python -m pip install -q --no-deps -e . 2>&1 | grep -v "is ignored" || true
fi
python -c "import mobscale, torch; print(f'mobscale ready: torch {torch.__version__}')"
