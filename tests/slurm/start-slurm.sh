#!/usr/bin/env bash
# Start a single-node Slurm cluster on localhost (Debian slurm-wlm + munge, no accounting).
# Usage: start-slurm.sh STATE_DIR   -> writes STATE_DIR/slurm.conf; export SLURM_CONF to use it.
# Prints "ready" when the node accepts jobs; exits non-zero with a reason otherwise.
set -euo pipefail
state=$(realpath -m "$1")
mkdir -p "$state"/{spool,ctld,log}
for tool in munged slurmctld slurmd sbatch squeue scontrol; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install slurm-wlm munge)"; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "starting slurmd needs root"; exit 3; }

# munge: reuse a running daemon, else start one (the package creates /etc/munge/munge.key)
if ! munge -n >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || { echo "no /etc/munge/munge.key"; exit 3; }
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- /usr/sbin/munged || /usr/sbin/munged --force
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n >/dev/null 2>&1 || { echo "munged did not start"; exit 3; }
fi

host=$(hostname -s)
node=$(slurmd -C | head -1)  # "NodeName=<host> CPUs=.. Boards=.. ... RealMemory=.."
cat > "$state/slurm.conf" <<CONF
ClusterName=langfield4d-test
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
AuthType=auth/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
# Nested `srun` inside a job (the Snakemake jobstep plugin drops SLURM_* variables) reads only
# the default /etc/slurm/slurm.conf: install ours there, but never over a real cluster's file.
default=/etc/slurm/slurm.conf
if [ -e "$default" ] && ! grep -q '^ClusterName=langfield4d-test$' "$default"; then
  echo "$default belongs to another Slurm cluster; not touching it"; exit 3
fi
mkdir -p /etc/slurm && cp "$state/slurm.conf" "$default"
export SLURM_CONF="$state/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)'; then echo ready; exit 0; fi
  sleep 0.5
done
echo "slurm did not become ready: $(sinfo 2>&1 | tail -1)"; tail -5 "$state/log/slurmctld.log" "$state/log/slurmd.log" || true
exit 4
