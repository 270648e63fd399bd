#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm/setup.sh, each daemon by the pid
# in its pid file (never by name), in reverse start order. Safe to run twice or when
# nothing runs. Jobs still queued are cancelled first so slurmd leaves no strays.
set -uo pipefail

log() { echo "[slurm-teardown] $*"; }

# stop PIDFILE NAME: SIGTERM, wait up to 20 s, then SIGKILL
stop() {
    local pidfile=$1 name=$2 pid i
    if [[ ! -s $pidfile ]]; then log "$name: no pid file $pidfile"; return 0; fi
    pid=$(cat "$pidfile")
    if ! [[ $pid =~ ^[0-9]+$ ]] || [[ ! -d /proc/$pid ]] \
            || [[ $(cat /proc/"$pid"/comm 2>/dev/null) != "$name"* ]]; then
        log "$name: pid $pid from $pidfile is not running"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
    if [[ -d /proc/$pid ]]; then
        log "$name (pid $pid) ignored SIGTERM for 20 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
    log "$name (pid $pid) stopped"
}

if command -v scancel >/dev/null && [[ -s /run/slurm/slurmctld.pid ]]; then
    scancel --user=root --quiet 2>/dev/null || true
fi
stop /run/slurm/slurmd.pid slurmd
stop /run/slurm/slurmctld.pid slurmctld
stop /run/slurm/slurmdbd.pid slurmdbd
stop /run/munge/munged.pid munged
stop /run/mysqld/mysqld.pid mariadbd
