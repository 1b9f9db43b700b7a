#!/usr/bin/env bash
# Install everything from nothing and run the whole test suite: apt packages (SLURM + accounting), the venv,
# the DeepSpeed JIT warm-up, a local SLURM cluster with fake nodes (stopped on exit), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadb >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge mariadb-server slurmdbd >/dev/null
  fi
fi
bash ci/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=1 MPLBACKEND=Agg RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=token
# DeepSpeed JIT-compiles its CPU shared-memory op on first use (~30-45 s); build it once here
python -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 || echo "warning: DeepSpeed op warm-up failed"
if [ -f ci/start_slurm.sh ] && command -v slurmctld >/dev/null; then
  SL="$PWD/.slurm"
  bash ci/start_slurm.sh "$SL" "${SLURM_FAKE_NODES:-8}"
  trap 'bash ci/stop_slurm.sh "$SL" >/dev/null 2>&1 || true' EXIT
  export SLURM_CONF="$SL/slurm.conf"
fi
lint-imports pyproject.toml
python -m pytest -q -p no:cacheprovider tests "$@"
