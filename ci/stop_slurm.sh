#!/usr/bin/env bash
# Stop the cluster started by ci/start_slurm.sh DIR: cancel jobs, stop slurmd(s), slurmctld, slurmdbd, the
# mariadb it started (if any) and munged. Reads each pid before killing and waits for the process itself
# (slurmctld removes its pid file before it has finished exiting, so the file is no signal).
set -uo pipefail
D=$(cd "${1:?usage: stop_slurm.sh DIR}" && pwd) || exit 1
export SLURM_CONF=$D/slurm.conf

stop_pid() {  # stop_pid PIDFILE
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "stop_slurm.sh: pid $pid ($1) still alive after 30 s; sending KILL" >&2
  kill -9 "$pid" 2>/dev/null || true
}

scancel --user="$(id -un)" 2>/dev/null || true
for f in "$D"/slurmd.pid "$D"/slurmd-*.pid; do stop_pid "$f"; done
stop_pid "$D/slurmctld.pid"
stop_pid "$D/slurmdbd.pid"
if [ -f "$D/mariadb.started" ]; then
  mariadb-admin shutdown 2>/dev/null || true
  rm -f "$D/mariadb.started"
fi
stop_pid /run/munge/munged.pid
exit 0
