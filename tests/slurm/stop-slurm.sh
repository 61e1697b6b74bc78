#!/usr/bin/env bash
# Stop the cluster started by start-slurm.sh STATE_DIR.
state=$(realpath -m "$1")
for pid in "$state/slurmd.pid" "$state/slurmctld.pid"; do
  [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
done
exit 0
