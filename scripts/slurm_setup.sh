#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the SLURM tier of the tests (tests/test_slurm.py).
#
#   1. slurm-wlm and munge from apt (Debian's packages; ~15 s, skipped when installed).
#   2. A munge key (1 KiB of random bytes, munge:munge, 0400) and munged running as munge.
#   3. /etc/slurm/slurm.conf for one node named after this host, a `debug` partition, no
#      accounting database (job states come from scontrol while the controller remembers them:
#      MinJobAge), no cgroups (proctrack/linuxproc, task/none: works in containers and VMs).
#      The node's cores may be shared by up to 4 jobs (OverSubscribe=FORCE:4): a 2-core CI box
#      then runs 4 small jobs at once, as a real cluster runs them on 4 cores. A conf this script
#      did not write is never touched (exit 3: use that cluster as it is).
#   4. slurmctld and slurmd started (each only when not already answering); the node resumed if
#      an earlier run left it down/drained.
# A second run takes about a second. Daemons outlive this script (their own sessions).
#
# Exit status: 0 ready (`sinfo` shows the node idle); 3 this machine cannot (not root, no apt,
# another cluster's slurm.conf): scripts/test.sh then lets the SLURM tests skip with the reason.
set -euo pipefail

CACHE="${HYPERBENCH_CACHE:-$HOME/.cache/hyperbench}"
CONF=/etc/slurm/slurm.conf
MARK="# written by hyperbench scripts/slurm_setup.sh"
log() { echo "slurm_setup: $*" >&2; }
cannot() { log "$*"; exit 3; }
t0=$(date +%s)

[[ "$(id -u)" == 0 ]] || cannot "needs root to install and start slurmctld/slurmd/munged"
if [[ -f "$CONF" ]] && ! grep -qF "$MARK" "$CONF"; then
    cannot "$CONF exists and was not written by this script: leaving that cluster alone"
fi

# 1. packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || cannot "needs apt to install slurm-wlm and munge"
    log "apt-get install slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; } \
        || cannot "apt-get install slurm-wlm munge failed"
fi

# 2. munge ------------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    munge -n | unmunge >/dev/null || { log "munged does not answer"; exit 1; }
fi

# 3. slurm.conf -------------------------------------------------------------------------------
host="$(hostname -s)"
mem_mib=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$CACHE"
new="$(mktemp)"
cat > "$new" <<EOF
$MARK
ClusterName=hyperbench
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
# scancel and time limits: SIGTERM, then SIGKILL after KillWait seconds
KillWait=10
# finished jobs stay visible to scontrol for 10 minutes (no accounting database here)
MinJobAge=600
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName=$host CPUs=$(nproc) RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
restart=0
if ! cmp -s "$new" "$CONF"; then
    mv "$new" "$CONF" && chmod 644 "$CONF"
    restart=1
else
    rm -f "$new"
fi

# 4. the daemons --------------------------------------------------------------------------------
if [[ $restart == 1 ]] && scontrol ping 2>/dev/null | grep -q UP; then
    log "slurm.conf changed: scontrol reconfigure"
    scontrol reconfigure || true
fi
if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
    log "starting slurmctld (log: /var/log/slurm/slurmctld.log)"
    setsid slurmctld </dev/null >/dev/null 2>&1
fi
if ! pgrep -x slurmd >/dev/null; then
    log "starting slurmd (log: /var/log/slurm/slurmd.log)"
    setsid slurmd </dev/null >/dev/null 2>&1
fi
state=""
for _ in $(seq 60); do
    state="$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1)"
    case "$state" in
        idle|mixed|allocated) break ;;
        down*|drain*|fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated) ;;
    *) log "node $host is '$state', not idle:"; tail -5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2; exit 1 ;;
esac
log "ready in $(( $(date +%s) - t0 )) s (node $host $state, $(sinfo -V))"
