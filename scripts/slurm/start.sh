#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian 12, as root, no systemd), for
# testing the workflow's SLURM profile: munged, slurmctld and slurmd, all on loopback.
# Idempotent; stop it with scripts/slurm/stop.sh (by PID file).
#   SLURM_BASE   state, spool, logs and PID files (default /tmp/astrodenoise-slurm)
# No accounting database: run Snakemake with `--slurm-status-command squeue`
# (config/profiles/slurm-ci does), otherwise the executor plugin waits on sacct for ever.
set -euo pipefail
BASE=${SLURM_BASE:-/tmp/astrodenoise-slurm}
NODE=$(hostname -s)
RUN=$BASE/run
LOG=$BASE/log
say() { echo "[slurm start $(date +%T)] $*"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
retry() { # retry SECONDS COMMAND...
  local seconds=$1; shift
  for _ in $(seq "$seconds"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "[slurm start] gave up waiting for: $*" >&2; return 1
}
mkdir -p "$BASE"/{state,spool,run,log}

# Packages. policy-rc.d stops their post-install scripts from starting the daemons.
needed=""
for pkg in munge slurmctld slurmd slurm-client; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || needed="$needed $pkg"
done
if [ -n "$needed" ]; then
  say "installing$needed"
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $needed >"$LOG/apt.log" 2>&1 \
    || { cat "$LOG/apt.log"; rm -f /usr/sbin/policy-rc.d; exit 1; }
  rm -f /usr/sbin/policy-rc.d
fi

# slurmd names itself after `hostname -s`, which must resolve.
getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts

# munge: no systemd here, so the runtime directory and the daemon are ours to make.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge "$RUN/munge"
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged --pid-file="$RUN/munge/munged.pid"
  retry 20 sh -c 'munge -n | unmunge'
fi

# One node with all CPUs and 80% of the memory slurmd sees; no cgroups, no accounting.
CPUS=$(nproc)
MEM=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 80 / 100 ))
cat >"$BASE/slurm.conf" <<CONF
ClusterName=astrodenoise
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
if ! cmp -s "$BASE/slurm.conf" /etc/slurm/slurm.conf; then
  cp "$BASE/slurm.conf" /etc/slurm/slurm.conf
  for pidfile in "$RUN/slurmd.pid" "$RUN/slurmctld.pid"; do
    running "$pidfile" && { kill "$(cat "$pidfile")"; sleep 2; rm -f "$pidfile"; }
  done
fi

running "$RUN/slurmctld.pid" || { say "starting slurmctld"; slurmctld; }
retry 60 scontrol ping
running "$RUN/slurmd.pid" || { say "starting slurmd"; slurmd; }

for _ in $(seq 90); do
  state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
  case "$state" in
    idle|mix|alloc) say "node $NODE is $state ($CPUS CPUs, $MEM MB)"; exit 0 ;;
    drain*|down*|fail*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "[slurm start] node $NODE never became idle (state '$state'); logs in $LOG" >&2
tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2
exit 1
