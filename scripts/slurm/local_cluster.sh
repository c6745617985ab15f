#!/usr/bin/env bash
# A real one-node Slurm on this machine, for trying srun / sbatch / submitit with main.py (tests/test_slurm.py).
#
#   scripts/slurm/local_cluster.sh start    # installs slurm-wlm and munge if missing (apt-get, root), starts
#                                           # munged, slurmctld and slurmd, waits until the node is idle
#   export SLURM_CONF=/tmp/flatten-slurm/slurm.conf   # what srun, sbatch, sinfo read (`... env` prints it)
#   scripts/slurm/local_cluster.sh status   # exit 0 when the node takes jobs
#   scripts/slurm/local_cluster.sh stop
#
# One node named after this host (`hostname -s`), with `nproc` CPUs (so `--ntasks` up to that), one partition
# `local`. Everything it writes (config, munge key and socket, state, logs, pid files) is under
# $FLATTEN_SLURM_DIR (default /tmp/flatten-slurm); /etc is not touched. The daemons run as root, in the
# background, without systemd. Ports: $FLATTEN_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
set -euo pipefail

DIR=${FLATTEN_SLURM_DIR:-/tmp/flatten-slurm}
CTLD_PORT=${FLATTEN_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
NODE=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # GNU nproc would honour OMP_NUM_THREADS
CONF=$DIR/slurm.conf
SOCKET=$DIR/munge/munge.socket.2
export SLURM_CONF=$CONF

say() { echo "local_cluster: $*"; }
die() { echo "local_cluster: error: $*" >&2; exit 1; }

running() {   # running <pid file>: the process named there is alive
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {   # idle, alloc, mix, down, ... or nothing when slurmctld does not answer
    timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1 | tr -d '*~#!%$@^-' || true
}

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun >/dev/null &&
        command -v munged >/dev/null && return 0
    [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed, and installing them needs root"
    say "installing slurm-wlm and munge (apt-get)"
    # the packages' own services would start through invoke-rc.d: none here, the daemons below are ours
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    cat >"$CONF" <<EOF
# written by scripts/slurm/local_cluster.sh: a one-node cluster for tests; rewritten at every start
ClusterName=flatten-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$SOCKET,cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups needed: processes are tracked through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
# look at the queue every 2 s (a requeued job starts again soon after its wait)
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# finished jobs stay visible to scontrol for 10 minutes; 30 s between a job's SIGTERM and its SIGKILL
MinJobAge=600
KillWait=30
InactiveLimit=0
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    install
    mkdir -p "$DIR"/{munge,state,spool,run,log}
    chmod 755 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
    fi
    if ! running "$DIR/munge/munged.pid"; then
        # --force: munged refuses a root-owned daemon and a key outside /etc/munge without it
        munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/munge/munged.pid" \
            --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
            || die "munged did not start: $(tail -n 3 "$DIR/log/munged.log" 2>/dev/null)"
    fi
    if ! running "$DIR/run/slurmctld.pid"; then
        write_conf
        # -c: no state from an earlier start (jobs of a stopped cluster are gone)
        slurmctld -c || die "slurmctld did not start: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
    fi
    if ! running "$DIR/run/slurmd.pid"; then
        slurmd || die "slurmd did not start: $(tail -n 5 "$DIR/log/slurmd.log" 2>/dev/null)"
    fi
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case $state in
            idle|alloc|mix|comp) break ;;
            down|drain|drng) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle|alloc|mix|comp) ;;
        *) die "node $NODE is '${state:-not reported}' after 60 s; see $DIR/log/slurmctld.log and slurmd.log" ;;
    esac
    say "node $NODE ($CPUS CPUs) is $state; partition local; SLURM_CONF=$CONF"
}

stop() {
    if running "$DIR/run/slurmctld.pid"; then
        timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    fi
    local f
    for f in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"; do
        if running "$f"; then
            kill -TERM "$(cat "$f")" 2>/dev/null || true
        fi
    done
    for _ in $(seq 100); do
        running "$DIR/run/slurmd.pid" || running "$DIR/run/slurmctld.pid" || running "$DIR/munge/munged.pid" ||
            break
        sleep 0.2
    done
    rm -f "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid" "$DIR/munge/munged.pid"
    say "stopped"
}

status() {
    local f name
    for f in munge/munged.pid run/slurmctld.pid run/slurmd.pid; do
        name=$(basename "$f" .pid)
        if running "$DIR/$f"; then say "$name running (pid $(cat "$DIR/$f"))"; else say "$name not running"; fi
    done
    local state
    state=$(node_state)
    say "node $NODE: ${state:-no answer from slurmctld}"
    case $state in idle|alloc|mix|comp) return 0 ;; *) return 1 ;; esac
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
