#!/usr/bin/env bash
# Start a real SLURM cluster with accounting on this machine, in seconds, for CI and local tests.
#
#   bash ci/start_slurm.sh DIR [NODES]      then   export SLURM_CONF=DIR/slurm.conf
#
# DIR holds everything (config, state, spool, logs, pid files); nothing is written to /etc. Daemons: munged,
# mariadb (started only if not already up), slurmdbd, slurmctld and one slurmd per node. NODES=1 (default): one
# node named after this host. NODES>1: fake nodes n1..nNODES, all on 127.0.0.1 with their own slurmd port,
# each advertising this machine's CPUs (so `--nodes 2` jobs run for real on one machine).
# The accounting database is dropped and recreated at every start: job ids restart at 1 in a new state dir,
# and stale records with the same ids would confuse sacct (and submitit, which reads job states from it).
# Needs: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge mariadb-server slurmdbd
# Stop with ci/stop_slurm.sh DIR.
set -euo pipefail
D=$(mkdir -p "${1:?usage: start_slurm.sh DIR [NODES]}" && cd "$1" && pwd)
NODES=${2:-1}
H=$(hostname -s)
CPUS=$(getconf _NPROCESSORS_ONLN)  # not nproc: it honours OMP_NUM_THREADS, which CI sets to 1
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 2048 ))
mkdir -p "$D"/{state,spool} /run/munge

if [ "$NODES" -gt 1 ]; then
  # Fake nodes share this machine; memory is not a consumable resource here (CR_Core), so each node advertises
  # half of it whatever their number: jobs asking for a few GB per node (the sampler asks 4) fit on 8 nodes too.
  NODE_MEM=$(( MEM / 2 ))
  NODE_LINES="SlurmdParameters=config_overrides
SlurmdPidFile=$D/slurmd-%n.pid
SlurmdLogFile=$D/slurmd-%n.log
SlurmdSpoolDir=$D/spool/%n
NodeName=n[1-$NODES] NodeHostname=$H NodeAddr=127.0.0.1 Port=[17001-$((17000 + NODES))] CPUs=$CPUS RealMemory=$NODE_MEM State=UNKNOWN
PartitionName=debug Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP"
else
  NODE_LINES="SlurmdPidFile=$D/slurmd.pid
SlurmdLogFile=$D/slurmd.log
SlurmdSpoolDir=$D/spool
NodeName=$H NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$H Default=YES MaxTime=INFINITE State=UP"
fi

cat > "$D/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$D/state
SlurmctldPidFile=$D/slurmctld.pid
SlurmctldLogFile=$D/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# CR_Core, not CR_Core_Memory: without DefMemPerCPU the latter gives every job all the memory (one job at a time)
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.txt
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
$NODE_LINES
CONF
export SLURM_CONF=$D/slurm.conf

chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done

if ! mariadb-admin ping >/dev/null 2>&1; then
  /etc/init.d/mariadb start >/dev/null
  touch "$D/mariadb.started"     # stop_slurm.sh shuts down only a mariadb this script started
fi
mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db; CREATE DATABASE slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
printf '%s\n' AuthType=auth/munge DbdHost=localhost SlurmUser=root "PidFile=$D/slurmdbd.pid" "LogFile=$D/slurmdbd.log" \
  StorageType=accounting_storage/mysql StorageHost=localhost StorageUser=slurm StoragePass=slurmpw StorageLoc=slurm_acct_db > "$D/slurmdbd.conf"
chmod 600 "$D/slurmdbd.conf"          # slurmdbd refuses a readable config (it holds the DB password)
/usr/sbin/slurmdbd
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -i add cluster ci >/dev/null 2>&1 || true

/usr/sbin/slurmctld -f "$SLURM_CONF"  # daemonizes; pid in $D
if [ "$NODES" -gt 1 ]; then
  for i in $(seq "$NODES"); do mkdir -p "$D/spool/n$i"; /usr/sbin/slurmd -f "$SLURM_CONF" -N "n$i"; done
else
  /usr/sbin/slurmd -f "$SLURM_CONF"
fi
for _ in $(seq 120); do
  [ "$(sinfo -h -o %T 2>/dev/null | sort -u)" = idle ] && break
  sleep 0.5
done
sinfo
[ "$(sinfo -h -o %T | sort -u)" = idle ] || { echo "start_slurm.sh: nodes not idle; see $D/*.log" >&2; exit 1; }
