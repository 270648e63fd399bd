#!/usr/bin/env bash
# Stop the two-node SLURM cluster started by .ci/slurm/setup.sh, each daemon by the pid
# in its pid file (never by name), in reverse start order, then remove the nodes' network
# (namespaces n1, n2, their veth pairs, the bridge) and their /etc/hosts block. Safe to run
# twice or when nothing runs. Jobs still queued are cancelled first so slurmd leaves no strays.
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
for pidfile in /run/slurm/slurmd-*.pid /run/slurm/slurmd.pid; do
    [[ -e $pidfile ]] && stop "$pidfile" slurmd
done
stop /run/slurm/slurmctld.pid slurmctld
stop /run/slurm/slurmdbd.pid slurmdbd
stop /run/munge/munged.pid munged
stop /run/mysqld/mysqld.pid mariadbd

# The nodes' network (names as in setup.sh).
BRIDGE=${SLURM_CI_BRIDGE:-slurmbr0}
for node in n1 n2; do
    if [[ -e /run/netns/$node ]]; then
        ip netns delete "$node" && log "network namespace $node deleted"
    fi
    ip link del "v$node" 2>/dev/null || true   # gone with its peer, unless left alone
done
if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE" && log "bridge $BRIDGE deleted"
fi
HOSTS_BEGIN="# >>> stagerun slurm CI nodes (.ci/slurm/setup.sh)"
HOSTS_END="# <<< stagerun slurm CI nodes"
if grep -qxF "$HOSTS_BEGIN" /etc/hosts; then
    # In place: /etc/hosts may be a bind mount.
    hosts=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {s = 1} !s {print} $0 == e {s = 0}' /etc/hosts)
    printf '%s\n' "$hosts" > /etc/hosts
    log "nodes removed from /etc/hosts"
fi
