#!/usr/bin/env bash
# Install and start a real two-node SLURM cluster (with accounting) on this machine.
#
# For CI and for trying the SLURM profile on a laptop/VM. Debian 12 (bookworm), run as root.
# No systemd and no cgroups are needed: every daemon is started in the background with a
# pid file under $RUN_DIR, and .ci/slurm/teardown.sh stops them by those pid files.
#
#   mariadb   (accounting database)       pid: /run/mysqld/mysqld.pid
#   munged    (authentication)            pid: /run/munge/munged.pid
#   slurmdbd  (accounting daemon -> sacct) pid: /run/slurm/slurmdbd.pid
#   slurmctld (controller)                pid: /run/slurm/slurmctld.pid
#   slurmd    (compute nodes n1, n2)      pid: /run/slurm/slurmd-n1.pid, slurmd-n2.pid
#
# Two compute nodes, each a real slurmd in its own network namespace (/run/netns/n1, n2) with
# its own address on a bridge (veth pairs; $BRIDGE, $SUBNET.0/24) and its own UTS namespace
# (`hostname` inside a job says n1 / n2). slurmctld, slurmdbd, munged and mariadb run in the root
# namespace; slurmctld listens on the bridge address $SUBNET.1. /etc/hosts gets n1 and n2 (a
# marked block), so the node names resolve everywhere (MASTER_ADDR, gloo). munge's socket is a
# file, so every namespace shares the one munged. Enter a node with
# `nsenter --net=/run/netns/n1` (not `ip netns exec`: it remounts /sys and slurmd then finds no
# /sys/fs/cgroup).
#
# Each node has $SLURM_CI_GPUS fake GPUs (gres "gpu", files symlinked to /dev/null), so
# `sbatch --partition=gpu --gpus=1` jobs get CUDA_VISIBLE_DEVICES set and two jobs get
# different GPUs. Partitions: `cpu` (default) and `gpu`, both on n1 and n2, each using at most
# $REAL_CPUS CPUs of a node (the machine's cores: jobs run side by side as they would without the
# declared extra CPUs); `shapes` (MaxTime 2 hours) may use all $SLURM_CI_CPUS CPUs of a node: it
# is for `sbatch --test-only` of every resource shape (nodes x GPUs x CPUs) and the time-limit cut
# of group jobs, not for running jobs.
#
# Idempotent: a second run rewrites the configuration and restarts only the SLURM daemons
# whose configuration changed; running daemons are kept.
#
# Environment (all optional):
#   SLURM_CI_GPUS=4          number of fake GPUs on each node
#   SLURM_CI_CPUS=8          CPUs each node advertises (at least nproc; partitions cpu/gpu use nproc)
#   SLURM_CI_CLUSTER=stagerun-ci
#   SLURM_CI_WAIT=90         seconds to wait for the node to become idle / sacct to answer
#   SLURM_CI_SKIP_APT=1      do not run apt-get (packages already installed)
#   SLURM_CI_USERS="a b"     users besides root (and $SUDO_USER) given the account "stagerun"
#   SLURM_CI_SUBNET=10.77.0  the bridge is .1, node nK is .(10+K)
#   SLURM_CI_BRIDGE=slurmbr0
set -euo pipefail

START_SECONDS=$SECONDS
GPUS=${SLURM_CI_GPUS:-4}
REAL_CPUS=$(nproc)
CPUS=${SLURM_CI_CPUS:-$((REAL_CPUS > 8 ? REAL_CPUS : 8))}
CLUSTER=${SLURM_CI_CLUSTER:-stagerun-ci}
WAIT=${SLURM_CI_WAIT:-90}
HOST=$(hostname -s)             # the controller's host (root namespace)
NODES=(n1 n2)                   # compute nodes, each in its own network namespace
SUBNET=${SLURM_CI_SUBNET:-10.77.0}
BRIDGE=${SLURM_CI_BRIDGE:-slurmbr0}
CTL_ADDR=$SUBNET.1
HOSTS_BEGIN="# >>> stagerun slurm CI nodes (.ci/slurm/setup.sh)"
HOSTS_END="# <<< stagerun slurm CI nodes"
CONF_DIR=/etc/slurm
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
STATE_DIR=/var/lib/slurm
FAKE_GPU_DIR=$STATE_DIR/fakegpu
DB_PASS=stagerun-ci-slurmdbd   # local socket-only database of a throwaway CI cluster

log() { echo "[slurm-setup $((SECONDS - START_SECONDS))s] $*"; }
die() { echo "[slurm-setup] ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
[[ -r /etc/debian_version ]] || die "written for Debian 12; /etc/debian_version not found"

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
all_installed() {
    local s
    s=$(dpkg-query -W -f='${db:Status-Status}\n' "${PKGS[@]}" 2>/dev/null) || return 1
    ! grep -qvx installed <<<"$s"
}
if [[ -n ${SLURM_CI_SKIP_APT:-} ]]; then
    log "SLURM_CI_SKIP_APT set: not installing packages"
elif all_installed; then
    log "packages already installed: ${PKGS[*]}"
else
    log "installing ${PKGS[*]}"
    # Keep the packages' maintainer scripts from starting daemons (we start them ourselves,
    # with our configuration); only if the machine has no policy of its own.
    own_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/tmp/slurm-ci-apt.log 2>&1 \
        || { tail -30 /tmp/slurm-ci-apt.log >&2; die "apt-get install ${PKGS[*]} failed (log above)"; }
    if [[ -n $own_policy ]]; then rm -f /usr/sbin/policy-rc.d; fi
    log "packages installed"
fi
for cmd in ip nsenter unshare munged slurmctld slurmd slurmdbd sinfo sacct sacctmgr mariadbd mariadb; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found after installing ${PKGS[*]}"
done
id slurm >/dev/null 2>&1 || die "user 'slurm' missing (the slurm packages create it)"
id munge >/dev/null 2>&1 || die "user 'munge' missing (the munge package creates it)"

# ---------------------------------------------------------------- helpers
# pid_alive PIDFILE NAME: the pid file names a live process whose command is NAME
pid_alive() {
    local pidfile=$1 name=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(cat "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -d /proc/$pid ]] || return 1
    [[ $(cat /proc/"$pid"/comm 2>/dev/null) == "$name"* ]]
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME
    local pidfile=$1 name=$2 pid i
    pid_alive "$pidfile" "$name" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
wait_for() {
    local secs=$1 what=$2 i
    shift 2
    for ((i = 0; i < secs * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# write_if_changed PATH MODE OWNER: content on stdin; returns 0 when the file changed
write_if_changed() {
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"; chmod "$mode" "$path"; chown "$owner" "$path"; return 1
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
    return 0
}

node_addr() { echo "$SUBNET.$((10 + ${1#n}))"; }   # node_addr n1 -> $SUBNET.11

mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR"/slurmctld "$FAKE_GPU_DIR" /run/munge /run/mysqld
for node in "${NODES[@]}"; do mkdir -p "$STATE_DIR/slurmd-$node"; done
chown slurm:slurm "$RUN_DIR" "$LOG_DIR" "$STATE_DIR" "$STATE_DIR"/slurmctld
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

# ---------------------------------------------------------------- configuration
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$((MEM_MB * 85 / 100))          # below the machine's, or slurmd drains the node
DEF_MEM_PER_CPU=$((REAL_MB / REAL_CPUS / 2)) # jobs without --mem do not take the whole node
MAX_GPU_INDEX=$((GPUS - 1))

# Fake GPU device files: gres needs File= (without it the node drains) and the files must
# be device nodes (regular files are rejected), so point them at /dev/null.
for ((g = 0; g < GPUS; g++)); do ln -sfn /dev/null "$FAKE_GPU_DIR/gpu$g"; done

changed_slurm=0
write_if_changed "$CONF_DIR/slurm.conf" 644 root:root <<EOF && changed_slurm=1 || true
# Written by .ci/slurm/setup.sh: two-node CI cluster "$CLUSTER". Do not edit by hand.
ClusterName=$CLUSTER
# The controller runs in the root namespace; the nodes reach it on the bridge.
SlurmctldHost=$HOST($CTL_ADDR)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# No systemd/cgroups on CI machines and containers: track processes via /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Requeue (scontrol requeue, preemption, sbatch --requeue) is allowed.
JobRequeue=1
ReturnToService=2
# Keep finished jobs visible to squeue for 5 minutes (the executor plugin checks this).
MinJobAge=300
# Seconds between SIGTERM and SIGKILL when a job is cancelled/requeued/times out.
KillWait=15
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/slurmctld
# Per-node files (%n: the node name): several slurmd on one machine.
SlurmdSpoolDir=$STATE_DIR/slurmd-%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# The node is defined by this file, not by probing (allows SLURM_CI_CPUS > nproc).
SlurmdParameters=config_overrides
# Accounting through slurmdbd (MariaDB): sacct works, AllocTRES records gres/gpu.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# Store the job comment: the Snakemake executor puts "rule_<rule>_wildcards_<...>" there.
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
DefMemPerCPU=$DEF_MEM_PER_CPU
$(for node in "${NODES[@]}"; do
    echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$CPUS RealMemory=$REAL_MB Gres=gpu:$GPUS State=UNKNOWN"
done)
PartitionName=cpu Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE MaxCPUsPerNode=$REAL_CPUS State=UP
PartitionName=gpu Nodes=$(IFS=,; echo "${NODES[*]}") Default=NO MaxTime=INFINITE MaxCPUsPerNode=$REAL_CPUS State=UP
PartitionName=shapes Nodes=$(IFS=,; echo "${NODES[*]}") Default=NO MaxTime=02:00:00 State=UP
EOF

write_if_changed "$CONF_DIR/gres.conf" 644 root:root <<EOF && changed_slurm=1 || true
# Written by .ci/slurm/setup.sh: $GPUS fake GPUs (symlinks to /dev/null).
AutoDetect=off
NodeName=$(IFS=,; echo "${NODES[*]}") Name=gpu File=$FAKE_GPU_DIR/gpu[0-$MAX_GPU_INDEX]
EOF

# No cgroup plugin is configured; this file only keeps slurmd from probing cgroups.
write_if_changed "$CONF_DIR/cgroup.conf" 644 root:root <<EOF && changed_slurm=1 || true
# Written by .ci/slurm/setup.sh: no cgroups (proctrack/linuxproc, task/none).
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

changed_dbd=0
write_if_changed "$CONF_DIR/slurmdbd.conf" 600 slurm:slurm <<EOF && changed_dbd=1 || true
# Written by .ci/slurm/setup.sh (must be mode 600, owned by SlurmUser).
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

write_if_changed /etc/mysql/mariadb.conf.d/99-slurm-ci.cnf 644 root:root <<EOF || true
# Written by .ci/slurm/setup.sh: settings slurmdbd asks for; local socket only.
[mysqld]
innodb_buffer_pool_size=256M
innodb_lock_wait_timeout=900
innodb_log_file_size=64M
skip-networking
EOF

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if pid_alive /run/munge/munged.pid munged; then
    log "munged already running"
else
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid \
        || die "munged failed to start (see /var/log/munge/munged.log)"
    wait_for 10 munge bash -c 'munge -n | unmunge' || die "munge -n | unmunge fails"
fi

# ---------------------------------------------------------------- mariadb
db_ping() { mariadb-admin --socket=/run/mysqld/mysqld.sock ping; }
if db_ping >/dev/null 2>&1; then
    log "mariadb already running"
else
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising /var/lib/mysql"
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/slurm-ci-mariadb-install.log 2>&1 \
            || { tail -20 /tmp/slurm-ci-mariadb-install.log >&2; die "mariadb-install-db failed"; }
    fi
    log "starting mariadb"
    nohup /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
        --pid-file=/run/mysqld/mysqld.pid --socket=/run/mysqld/mysqld.sock \
        --log-error=$LOG_DIR/mariadb.log </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadb db_ping || { tail -20 $LOG_DIR/mariadb.log >&2; die "mariadb did not answer within 60 s (log above)"; }
fi
mariadb --socket=/run/mysqld/mysqld.sock <<EOF || die "creating the slurm_acct_db database/user failed"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF

# ---------------------------------------------------------------- slurmdbd
if [[ $changed_dbd -eq 1 ]]; then stop_pidfile $RUN_DIR/slurmdbd.pid slurmdbd; fi
if pid_alive $RUN_DIR/slurmdbd.pid slurmdbd; then
    log "slurmdbd already running"
else
    log "starting slurmdbd"
    slurmdbd || die "slurmdbd failed to start (see $LOG_DIR/slurmdbd.log)"
    wait_for 30 slurmdbd sacctmgr -n show cluster \
        || { tail -20 $LOG_DIR/slurmdbd.log >&2; die "slurmdbd did not answer sacctmgr within 30 s (log above)"; }
fi
if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    log "registering cluster $CLUSTER and account stagerun"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
fi
if ! sacctmgr -n -P show account format=account | grep -qx stagerun; then
    sacctmgr -i add account stagerun cluster="$CLUSTER" description="stagerun CI" organization=stagerun >/dev/null \
        || die "sacctmgr add account stagerun failed"
fi
# Users allowed to submit with account "stagerun" (the CI profile sets slurm_account).
for user in root ${SUDO_USER:-} ${SLURM_CI_USERS:-}; do
    if ! sacctmgr -n -P show assoc user="$user" format=account | grep -qx stagerun; then
        sacctmgr -i add user "$user" account=stagerun cluster="$CLUSTER" >/dev/null \
            || die "sacctmgr add user $user account=stagerun failed"
    fi
done

# ---------------------------------------------------------------- node network
# A bridge with the controller's address, and per node a network namespace joined to it by a
# veth pair (root side v<node>, eth0 inside). Each piece is created only when missing.
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($CTL_ADDR/24)"
    ip link add "$BRIDGE" type bridge || die "ip link add $BRIDGE type bridge failed"
fi
# (grep on a here-string, not a pipe: grep -q exits early and pipefail would fail the pipe)
grep -qw "inet $CTL_ADDR/24" <<<"$(ip addr show dev "$BRIDGE")" || ip addr add "$CTL_ADDR/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for node in "${NODES[@]}"; do
    addr=$(node_addr "$node")
    [[ -e /run/netns/$node ]] || { log "creating network namespace $node ($addr)"; ip netns add "$node"; }
    if ! ip -n "$node" link show eth0 >/dev/null 2>&1; then
        ip link del "v$node" 2>/dev/null || true   # a root-side end left without its peer
        ip link add "v$node" type veth peer name "v${node}p" || die "veth pair for $node failed"
        ip link set "v${node}p" netns "$node"
        ip -n "$node" link set "v${node}p" name eth0
    fi
    grep -qw "inet $addr/24" <<<"$(ip -n "$node" addr show dev eth0)" || ip -n "$node" addr add "$addr/24" dev eth0
    ip -n "$node" link set lo up
    ip -n "$node" link set eth0 up
    ip link set "v$node" master "$BRIDGE"
    ip link set "v$node" up
done
# Node names resolve on every namespace (one /etc/hosts): MASTER_ADDR=n1 and gloo's host lookup.
hosts_block() {
    echo "$HOSTS_BEGIN"
    for node in "${NODES[@]}"; do echo "$(node_addr "$node") $node"; done
    echo "$HOSTS_END"
}
if ! grep -qxF "$HOSTS_BEGIN" /etc/hosts || [[ $(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {p = 1} p {print} $0 == e {p = 0}' /etc/hosts) != "$(hosts_block)" ]]; then
    log "writing the nodes' addresses to /etc/hosts"
    # /etc/hosts may be a bind mount (containers): rewrite it in place, never replace the file.
    hosts=$(awk -v b="$HOSTS_BEGIN" -v e="$HOSTS_END" '$0 == b {s = 1} !s {print} $0 == e {s = 0}' /etc/hosts)
    printf '%s\n%s\n' "$hosts" "$(hosts_block)" > /etc/hosts
fi

# ---------------------------------------------------------------- slurmctld, slurmd
# The single node of earlier versions of this script (slurmd.pid, the machine's host name).
stop_pidfile $RUN_DIR/slurmd.pid slurmd
if [[ $changed_slurm -eq 1 ]]; then
    for node in "${NODES[@]}"; do stop_pidfile "$RUN_DIR/slurmd-$node.pid" slurmd; done
    stop_pidfile $RUN_DIR/slurmctld.pid slurmctld
fi
if pid_alive $RUN_DIR/slurmctld.pid slurmctld; then
    log "slurmctld already running"
else
    log "starting slurmctld"
    # -c: start from a clean state (no jobs or node states from an earlier run).
    slurmctld -c || die "slurmctld failed to start (see $LOG_DIR/slurmctld.log)"
    wait_for 30 slurmctld scontrol ping \
        || { tail -20 $LOG_DIR/slurmctld.log >&2; die "slurmctld did not answer 'scontrol ping' within 30 s (log above)"; }
fi
for node in "${NODES[@]}"; do
    if pid_alive "$RUN_DIR/slurmd-$node.pid" slurmd; then
        log "slurmd $node already running"
    else
        log "starting slurmd $node ($(node_addr "$node"), network namespace $node)"
        # nsenter, not `ip netns exec` (keeps /sys/fs/cgroup); unshare --uts: hostname = node.
        nsenter --net="/run/netns/$node" unshare --uts sh -c 'hostname "$1" && exec slurmd -N "$1"' sh "$node" \
            || die "slurmd $node failed to start (see $LOG_DIR/slurmd-$node.log)"
    fi
done

node_states() { sinfo -h -N -p cpu -o '%N %T' 2>/dev/null | sort -u; }
nodes_ready() { [[ $(node_states | grep -cE ' (idle|mixed|allocated)$') -eq ${#NODES[@]} ]]; }
if ! wait_for "$WAIT" nodes nodes_ready; then
    for node in "${NODES[@]}"; do
        state=$(sinfo -h -N -n "$node" -o '%T' | head -1)
        if [[ $state =~ drain|down ]]; then   # e.g. left drained by an earlier configuration
            log "node $node is '$state' ($(sinfo -h -R -n "$node" -o '%E' | head -1)); resuming it"
            scontrol update nodename="$node" state=resume || true
        fi
    done
    wait_for 20 nodes nodes_ready || true
fi
if ! nodes_ready; then
    echo "--- sinfo -R" >&2; sinfo -R >&2 || true
    for node in "${NODES[@]}"; do echo "--- $LOG_DIR/slurmd-$node.log" >&2; tail -20 "$LOG_DIR/slurmd-$node.log" >&2 || true; done
    echo "--- $LOG_DIR/slurmctld.log" >&2; tail -20 $LOG_DIR/slurmctld.log >&2 || true
    die "nodes not all idle after ${WAIT}s: $(node_states | tr '\n' ' ') (logs above)"
fi
wait_for "$WAIT" sacct sacct -n -X --starttime now-1hours \
    || die "sacct does not answer after ${WAIT}s (slurmdbd log: $LOG_DIR/slurmdbd.log)"
# Jobs submitted right away must be recorded: slurmctld must be registered with slurmdbd.
wait_for "$WAIT" registration bash -c "sacctmgr -n -P show cluster format=cluster,controlhost | grep -q '^$CLUSTER|.\+'" \
    || die "slurmctld did not register with slurmdbd within ${WAIT}s (see $LOG_DIR/slurmctld.log)"

log "cluster $CLUSTER up: nodes ${NODES[*]} ($(for n in "${NODES[@]}"; do printf '%s ' "$(node_addr "$n")"; done)), each $CPUS CPUs, ${REAL_MB} MB, $GPUS fake GPUs; partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"
sinfo
echo "slurm CI cluster ready in $((SECONDS - START_SECONDS)) s"
