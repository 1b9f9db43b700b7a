#!/bin/bash
# Train on a SLURM allocation: start a Ray cluster over the allocated nodes, run `mobscale train` on it, stop Ray.
#
#   sbatch [--nodes N] [--gpus-per-node G] [--cpus-per-task C] [--partition P] slurm/train.sh CONFIG RUN [train args...]
#
# Workers: one per GPU (N*G, C/G CPUs each) or, without GPUs, one per node using all of its C CPUs.
# Re-submitting the same command resumes RUN. Ray is told its CPUs/GPUs explicitly (it ignores SLURM's limits).
#SBATCH --job-name=mobscale-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
CONFIG=${1:?usage: sbatch slurm/train.sh CONFIG RUN [mobscale train args...]}
RUN=${2:?usage: sbatch slurm/train.sh CONFIG RUN [mobscale train args...]}
shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then source .venv/bin/activate; fi

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
cpus=${SLURM_CPUS_PER_TASK:-1}
gpus=${SLURM_GPUS_ON_NODE:-0}
port=$((20000 + SLURM_JOB_ID % 10000))     # jobs sharing a host must not share a GCS port
export RAY_AUTH_MODE=token                   # else the CLI cannot talk to the token-protected head
if [ ${#nodes[@]} -eq 1 ]; then
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 # single node: keep Ray on loopback
  ip=127.0.0.1
else
  export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 # nodes must reach the head: bind to the head's address
  ip=$(srun -N1 -n1 -w "$head" hostname -I | awk '{print $1}')
fi
export RAY_ADDRESS=$ip:$port

srun -N1 -n1 -w "$head" ray start --head --node-ip-address="$ip" --port="$port" --num-cpus="$cpus" --num-gpus="$gpus" \
  --include-dashboard=false --disable-usage-stats --block &
ray_steps=($!)
for _ in $(seq 120); do ray status 2>/dev/null | grep -q "Active:" && break; sleep 1; done
for n in "${nodes[@]:1}"; do
  srun -N1 -n1 -w "$n" ray start --address="$RAY_ADDRESS" --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats --block &
  ray_steps+=($!)
done

if [ "$gpus" -gt 0 ]; then
  workers=$(( ${#nodes[@]} * gpus )); per_worker=$(( cpus / gpus > 0 ? cpus / gpus : 1 ))
  extra=(--set distributed.use_gpu=true --set "distributed.cpus_per_worker=$per_worker")
else
  workers=${#nodes[@]}
  extra=(--set "distributed.cpus_per_worker=$cpus")
fi
rc=0
python -m mobscale.launch train --config "$CONFIG" --out "$RUN" --engine ray --workers "$workers" "${extra[@]}" "$@" || rc=$?

# `ray stop` alone does not end the `ray start --block` steps (the job would hang): end the steps themselves
kill -TERM "${ray_steps[@]}" 2>/dev/null || true
wait "${ray_steps[@]}" 2>/dev/null || true
ray stop --force >/dev/null 2>&1 || true
exit "$rc"
