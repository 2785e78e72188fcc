#!/usr/bin/env bash
# Stop what scripts/slurm/start.sh started, by PID file (jobs first). --purge also deletes its state.
set -uo pipefail
BASE=${SLURM_BASE:-/tmp/astrodenoise-slurm}
RUN=$BASE/run
stop() { # stop NAME PIDFILE
  [ -s "$2" ] || return 0
  local pid; pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    echo "[slurm stop] $1 (pid $pid)"
    kill "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$2"
}
if [ -s "$RUN/slurmctld.pid" ] && kill -0 "$(cat "$RUN/slurmctld.pid")" 2>/dev/null; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] && { timeout 10 scancel $jobs || true; sleep 2; }
fi
stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop munged "$RUN/munge/munged.pid"
[ "${1:-}" = "--purge" ] && rm -rf "$BASE"/{state,spool,log,run}
exit 0
