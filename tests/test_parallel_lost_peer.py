"""A process of a multi-process job killed with SIGKILL: every other one stops within the heartbeat timeout with
one error line and exit status 6, not a C++ stack trace and SIGABRT. Two real processes on localhost."""

import subprocess
import sys
import textwrap
import time

import portpicker
import pytest

from tests.helpers import tiny_run

HEARTBEAT_TIMEOUT_S = 5
PROCESS = textwrap.dedent("""
    import sys, time
    from lensjax import parallel
    address, process_id, heartbeat_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    parallel.initialize(parallel.DistributedOptions(address, 2, process_id, heartbeat_timeout=heartbeat_s))
    parallel.sync_processes("test.both_started")
    print("working", flush=True)
    print("a line on standard error", file=sys.stderr, flush=True)
    time.sleep(300)
""")


@pytest.mark.parametrize("killed", [1, 0])        # a worker; process 0, which hosts the coordination service
def test_a_killed_process_stops_the_other_with_one_error_line(tmp_path, killed):
  address = f"127.0.0.1:{portpicker.pick_unused_port()}"
  env = {k: v for k, v in tiny_run.command_env(tmp_path).items() if not k.startswith(("SLURM_", "LENSJAX_"))}
  # Unbuffered pipes: what is read before the kill is exactly what `early` holds, nothing is read ahead.
  processes = [subprocess.Popen([sys.executable, "-c", PROCESS, address, str(i), str(HEARTBEAT_TIMEOUT_S)],
                                cwd=tiny_run.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                bufsize=0) for i in range(2)]
  survivor = 1 - killed
  try:
    early = {}
    for i, process in enumerate(processes):
      early[i] = b""
      while b"working\n" not in early[i]:
        line = process.stdout.readline()
        assert line, f"process {i} ended before working: {early[i].decode()[-3000:]}"
        early[i] += line
    processes[killed].kill()
    killed_at = time.monotonic()
    output = (early[survivor] + processes[survivor].communicate(timeout=120)[0]).decode()
    stopped_after = time.monotonic() - killed_at
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
      process.wait()
      process.stdout.close()
  assert processes[survivor].returncode == 6, output[-3000:]
  assert stopped_after < HEARTBEAT_TIMEOUT_S + 10
  assert "a line on standard error" in output                  # the rest of standard error passes through
  last = output.strip().splitlines()[-1]
  assert last.startswith(f"error: process {survivor} of 2 stops: another process of this job died or stopped "
                         "answering (the coordination service says: UNAVAILABLE"), output[-3000:]
  assert last.endswith("rerun the job to resume from it")
  assert "Check failure stack trace" not in output and "Terminating process" not in output
