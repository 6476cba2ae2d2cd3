#!/usr/bin/env bash
# Bring up a throw-away Slurm 22.05 cluster on this machine, for the Slurm tests (tests/test_slurm.py).
# Needs root and apt (Debian 12: slurm-wlm + munge); no systemd, no cgroups: the daemons run in the background
# and write PID files under /run, which .ci/slurm-local-down.sh stops them by (never by name).
#
#   MODE=perlmutter bash .ci/slurm-local-up.sh   # (default) two emulated Perlmutter GPU nodes pm1, pm2:
#                                                # 128 CPUs, 4 fake GPUs (gres gpu:4), feature "gpu" each, so the
#                                                # slurm/ scripts' #SBATCH -C gpu --gpus-per-node=4 -c 32 lines run
#                                                # unmodified; two slurmd on this machine serve them
#   MODE=basic bash .ci/slurm-local-up.sh        # one node named after `hostname -s`, the real CPUs and memory
#
# Idempotent: packages already installed are kept; a cluster already up is restarted from empty state.
# How the Slurm tests use it: docs/perlmutter.md, "Testing the scripts without Perlmutter".
set -euo pipefail
MODE=${MODE:-perlmutter}
case "$MODE" in basic|perlmutter) ;; *) echo "MODE=$MODE: expected basic or perlmutter" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "slurm-local-up.sh needs root (it installs packages and starts daemons)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

# 1. packages; --no-install-recommends keeps it to 9 small packages. Their services do not auto-start
#    (no systemd; policy-rc.d).
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create

# 2. a cluster left running by an earlier call is stopped first (by its PID files)
bash "$here/slurm-local-down.sh" >/dev/null

# 3. config
node=$(hostname -s)
hardware=$(slurmd -C | head -1 | sed 's/^NodeName=[^ ]* //')   # CPUs=.. Boards=.. ... RealMemory=..
mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm
{
cat <<CONF
ClusterName=localci
SlurmctldHost=${node}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
EnforcePartLimits=ALL
CONF
if [ "$MODE" = basic ]; then
cat <<CONF
SlurmdSpoolDir=/var/spool/slurmd
SlurmdPidFile=/run/slurmd.pid
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${node} NodeAddr=127.0.0.1 ${hardware} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
else
cat <<CONF
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=pm[1-2] NodeHostname=${node} NodeAddr=127.0.0.1 Port=[6818-6819] CPUs=128 Boards=1 SocketsPerBoard=1 CoresPerSocket=64 ThreadsPerCore=2 RealMemory=16000 Features=gpu Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
fi
} > /etc/slurm/slurm.conf

if [ "$MODE" = perlmutter ]; then
  # slurmd drops a GPU without File=, and File= must be a character device: four aliases of /dev/null
  mkdir -p /var/lib/slurm/fakegpu
  for i in 0 1 2 3; do
    [ -c /var/lib/slurm/fakegpu/nvidia$i ] || mknod -m 666 /var/lib/slurm/fakegpu/nvidia$i c 1 3
  done
  echo "NodeName=pm[1-2] Name=gpu File=/var/lib/slurm/fakegpu/nvidia[0-3]" > /etc/slurm/gres.conf
  mkdir -p /var/spool/slurmd/pm1 /var/spool/slurmd/pm2
  # jax.distributed dials the first node of SLURM_STEP_NODELIST (pm1) as its coordinator
  grep -q '# slurm-local-ci$' /etc/hosts || echo "127.0.0.1 pm1 pm2  # slurm-local-ci" >> /etc/hosts
else
  rm -f /etc/slurm/gres.conf
  mkdir -p /var/spool/slurmd
fi

# 4. daemons, in the background, PID files under /run
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged                # -> /run/munge/munged.pid
munge -n | unmunge >/dev/null                        # authentication works
/usr/sbin/slurmctld -c                               # -c: empty state (no node left drained by an earlier run)
if [ "$MODE" = basic ]; then
  /usr/sbin/slurmd                                   # -> /run/slurmd.pid
else
  /usr/sbin/slurmd -N pm1
  /usr/sbin/slurmd -N pm2                            # -> /run/slurmd-pm1.pid, /run/slurmd-pm2.pid
fi

# 5. wait until every node is idle
for _ in $(seq 1 120); do
  states=$(sinfo -h -o %t 2>/dev/null || true)
  if [ -n "$states" ] && ! grep -vqx idle <<<"$states"; then
    sinfo
    exit 0
  fi
  sleep 0.5
done
echo "slurm-local-up.sh: the nodes did not become idle in 60 s:" >&2
sinfo >&2 || true
tail -n 20 /var/log/slurm/*.log >&2 || true
exit 1
