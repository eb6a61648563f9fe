#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munge, mariadb + slurmdbd accounting, slurmctld, slurmd) on this
# machine, as root, without systemd. Writes slurm.conf/slurmdbd.conf for this host (name, CPUs and memory
# from `slurmd -C`). Install first: apt-get install -y slurmctld slurmd slurm-client munge slurmdbd mariadb-server
# Pids of what it started go to $SLURM_STATE_DIR (default /tmp/fmsweep-slurm) for stop.sh.
set -euo pipefail
state=${SLURM_STATE_DIR:-/tmp/fmsweep-slurm}
mkdir -p "$state" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

wait_for() {  # wait_for <seconds> <what> <command...>
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "slurm/start.sh: $what did not come up in ${limit}s" >&2; exit 1
}

# 1. munge (authentication)
mkdir -p /run/munge && chown munge:munge /run/munge
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$state/munged.pid"
fi

# 2. accounting: mariadb + slurmdbd (submitit needs sacct to see cancelled jobs)
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mariadb -e 'select 1' >/dev/null 2>&1; then
  /usr/sbin/mariadbd --user=mysql >"$state/mariadbd.log" 2>&1 &
  echo $! >"$state/mariadbd.pid"
  wait_for 60 mariadb mariadb -e 'select 1'
fi
mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpass';
            CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpass
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
if ! pgrep -x slurmdbd >/dev/null; then
  rm -f /run/slurmdbd.pid
  /usr/sbin/slurmdbd
  wait_for 60 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  cp /run/slurmdbd.pid "$state/slurmdbd.pid"
fi

# 3. controller and node, configured for this machine
host=$(hostname)
node=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=fmsweep
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# requeued jobs start again within seconds instead of minutes
SchedulerParameters=sched_interval=5,bf_interval=5
AuthInfo=cred_expire=10
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
if ! pgrep -x slurmctld >/dev/null; then
  rm -f /run/slurmctld.pid
  /usr/sbin/slurmctld
  wait_for 60 slurmctld bash -c 'scontrol ping | grep -q UP'
  cp /run/slurmctld.pid "$state/slurmctld.pid"
fi
if ! pgrep -x slurmd >/dev/null; then
  rm -f /run/slurmd.pid
  /usr/sbin/slurmd
  wait_for 30 slurmd test -s /run/slurmd.pid
  cp /run/slurmd.pid "$state/slurmd.pid"
fi
wait_for 60 "node $host idle" bash -c "sinfo -h -o %T | grep -qx idle"
echo "slurm/start.sh: cluster up ($node)"
