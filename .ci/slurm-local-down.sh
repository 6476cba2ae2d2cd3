#!/usr/bin/env bash
# Stop the local Slurm cluster that .ci/slurm-local-up.sh started: its jobs, then slurmd, slurmctld and munged,
# each by its PID file (never by process name: other people's processes may share the machine). A PID file whose
# process is gone, or whose PID now belongs to another program, is removed without signalling anything.
#   PURGE=1 also removes the packages, configuration, state, logs and the /etc/hosts alias.
set -uo pipefail

stop_pidfile() {     # $1 PID file, $2 expected process name: TERM, wait up to 15 s, then KILL
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" != "$name" ]; then rm -f "$file"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 1 75); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then echo "slurm-local-down.sh: SIGKILL $pid ($file)"; kill -KILL "$pid"; fi
  rm -f "$file"
}

if [ -s /run/slurmctld.pid ] && command -v scancel >/dev/null; then
  scancel --user=root 2>/dev/null && sleep 1     # running steps die with their slurmstepd
fi
for file in /run/slurmd.pid /run/slurmd-*.pid; do stop_pidfile "$file" slurmd; done
stop_pidfile /run/slurmctld.pid slurmctld
stop_pidfile /run/munge/munged.pid munged

if [ "${PURGE:-0}" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get purge -y -qq --autoremove slurm-wlm munge >/dev/null
  rm -rf /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /var/lib/slurm \
         /etc/munge /var/lib/munge /var/log/munge /run/munge
  sed -i '/# slurm-local-ci$/d' /etc/hosts
fi
exit 0
