#!/bin/bash
# Sample on one SLURM allocation with local worker processes (no nested submission).
#
#   sbatch [--cpus-per-task C] [--partition P] slurm/sample.sh CHECKPOINT CONTEXT OUT [sample args...]
#
# For many shards across nodes use `mobscale sample --nodes N` (a submitit array) instead.
#SBATCH --job-name=mobscale-sample
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
CHECKPOINT=${1:?usage: sbatch slurm/sample.sh CHECKPOINT CONTEXT OUT [mobscale sample args...]}
CONTEXT=${2:?usage: sbatch slurm/sample.sh CHECKPOINT CONTEXT OUT [mobscale sample args...]}
OUT=${3:?usage: sbatch slurm/sample.sh CHECKPOINT CONTEXT OUT [mobscale sample args...]}
shift 3
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi
exec python -m mobscale.launch sample --checkpoint "$CHECKPOINT" --context "$CONTEXT" --out "$OUT" \
  --local --workers "${SLURM_CPUS_PER_TASK:-1}" "$@"
