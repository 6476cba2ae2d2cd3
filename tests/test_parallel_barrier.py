"""`parallel.sync_processes` holds every process until the last one arrives: two real processes on localhost."""

import subprocess
import sys
import textwrap

import portpicker

from tests.helpers import tiny_run

LATE_S = 5.0
PROCESS = textwrap.dedent("""
    import sys, time
    from lensjax import parallel
    address, process_id, late_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    parallel.initialize(parallel.DistributedOptions(address, 2, process_id))
    time.sleep(late_s * process_id)
    arrived = time.time()
    parallel.sync_processes("test.late_arrival")
    print(f"arrived {arrived} left {time.time()}", flush=True)
""")


def test_the_early_process_leaves_the_barrier_only_after_the_late_one_arrives(tmp_path):
  address = f"127.0.0.1:{portpicker.pick_unused_port()}"
  env = {k: v for k, v in tiny_run.command_env(tmp_path).items() if not k.startswith(("SLURM_", "LENSJAX_"))}
  processes = [subprocess.Popen([sys.executable, "-c", PROCESS, address, str(i), str(LATE_S)], cwd=tiny_run.ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in processes]
  times = []
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith("arrived")]
    times.append([float(word) for word in line.split()[1::2]])
  (early_arrived, early_left), (late_arrived, _) = times
  assert late_arrived - early_arrived > LATE_S - 1
  assert early_left >= late_arrived
