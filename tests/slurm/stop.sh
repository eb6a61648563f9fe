#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started, in reverse order, by the pids it saved.
set -u
state=${SLURM_STATE_DIR:-/tmp/fmsweep-slurm}
for name in slurmd slurmctld slurmdbd mariadbd munged; do
  pidfile="$state/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$pidfile"
done
echo "slurm/stop.sh: stopped"
