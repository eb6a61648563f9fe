#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munge, mariadb + slurmdbd accounting, slurmctld, slurmd) on this
# machine, as root, without systemd, configured as a shared cluster: two GPUs as GRES (faked on /dev/tty0-1, as
# SLURM's own test suite does), MaxArraySize=100, enforced associations and QOS limits (the QOS `normal`:
# MaxSubmitJobsPerUser=20; `capped`: 8), a `short` partition (MaxTime=30), a `gresonly` partition whose job
# submit filter (job_submit.lua) takes GPUs only as --gres, and preemption by QOS (`high` requeues `low`, which
# gets SIGTERM and 60 s of GraceTime, and `lowterm`, requeued at once). Writes slurm.conf, gres.conf and
# slurmdbd.conf for this host (name, CPUs and memory from `slurmd -C`).
# Install first: apt-get install -y slurmctld slurmd slurm-client munge slurmdbd mariadb-server
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
cluster=fmsweep
host=$(hostname)
node=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
cat >/etc/slurm/gres.conf <<CONF
NodeName=$host Name=gpu File=/dev/tty[0-1]
CONF
cp "$(dirname "$0")/job_submit.lua" /etc/slurm/job_submit.lua
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=$cluster
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
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu
GresTypes=gpu
MaxArraySize=100
JobSubmitPlugins=lua
PreemptType=preempt/qos
PreemptMode=REQUEUE
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
$node Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$host MaxTime=30 State=UP
PartitionName=gresonly Nodes=$host MaxTime=INFINITE State=UP
CONF
# 4. the cluster's associations and QOS: with enforcement on, a user without an association cannot submit
user=$(id -un)
sacctmgr -i add cluster "$cluster" >/dev/null || true
sacctmgr -i add account lab cluster="$cluster" >/dev/null || true
sacctmgr -i add user "$user" account=lab cluster="$cluster" >/dev/null || true
for qos in capped low lowterm high; do sacctmgr -i add qos "$qos" >/dev/null || true; done
sacctmgr -i modify qos normal set MaxSubmitJobsPerUser=20 >/dev/null
sacctmgr -i modify qos capped set MaxSubmitJobsPerUser=8 >/dev/null
sacctmgr -i modify qos low set GraceTime=60 >/dev/null
sacctmgr -i modify qos lowterm set GraceTime=0 >/dev/null
sacctmgr -i modify qos high set Preempt=low,lowterm Priority=100 >/dev/null
sacctmgr -i modify user "$user" set qos=normal,capped,low,lowterm,high defaultqos=normal >/dev/null

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
