"""The slurm/ job scripts, submitted unchanged to a real local Slurm cluster (two emulated Perlmutter GPU nodes).

The only switch is LENSJAX_PLATFORM=cpu (slurm/env.sh: JAX_PLATFORMS=cpu, one fake JAX device per task, as a
task stands for one GPU). The jobs train and benchmark a tiny IS-Net on a tiny npy dataset.

The cluster: `.ci/slurm-local-up.sh` (Debian's slurm-wlm and munge as background daemons; needs root and apt),
`.ci/slurm-local-down.sh` (stops them by PID file). A cluster already up (CI starts it in `.ci/run`) is used as
is and left running; otherwise this module starts one and always stops it at the end. Without root the tests
skip with the reason, except when LENSJAX_REQUIRE_SLURM=1 (CI), where a cluster that cannot be had fails them.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from benchmarks import report
from tests.helpers import tiny_run

ROOT = pathlib.Path(__file__).resolve().parents[1]
UP, DOWN = ROOT / ".ci" / "slurm-local-up.sh", ROOT / ".ci" / "slurm-local-down.sh"
REQUIRED = os.environ.get("LENSJAX_REQUIRE_SLURM") == "1"

pytestmark = pytest.mark.slow



def _perlmutter_cluster_answers() -> bool:
  """Whether a local Slurm with GPU-feature nodes (the perlmutter mode of slurm-local-up.sh) answers."""
  if not shutil.which("sinfo"):
    return False
  result = subprocess.run(["sinfo", "-h", "-o", "%f %t"], capture_output=True, text=True, timeout=30)
  return result.returncode == 0 and "gpu" in result.stdout


def _cannot_start_reason() -> str | None:
  if os.geteuid() != 0:
    return "the local Slurm cluster needs root (.ci/slurm-local-up.sh installs slurm-wlm and munge with apt)"
  if not shutil.which("apt-get") and not shutil.which("slurmctld"):
    return "the local Slurm cluster needs Debian's apt-get (or slurm-wlm and munge already installed)"
  return None


@pytest.fixture(scope="module")
def slurm_cluster():
  if _perlmutter_cluster_answers():
    yield                                   # someone else (CI's .ci/run) owns it
    return
  reason = _cannot_start_reason()
  if reason:
    if REQUIRED:
      pytest.fail(f"LENSJAX_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)
  try:
    started = subprocess.run(["bash", str(UP)], env=dict(os.environ, MODE="perlmutter"), capture_output=True,
                             text=True, timeout=600)
    if started.returncode != 0:
      pytest.fail(f"{UP} failed (exit {started.returncode}):\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    yield
  finally:
    subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=300)


def _job_env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
  """The submitting environment (sbatch exports it to the job): the CPU switch and where things go."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "JAX_", "XLA_FLAGS", "LENSJAX_"))}
  env.update(LENSJAX_PLATFORM="cpu", LENSJAX_ROOT=str(ROOT), LENSJAX_VENV=sys.prefix, SCRATCH=str(tmp_path))
  env.update(extra)
  return env


def _sbatch(script: str, args: list[str], env: dict[str, str], cwd: pathlib.Path, *options: str) -> str:
  """Submits slurm/SCRIPT from `cwd` (its log lands there); returns the job id."""
  result = subprocess.run(["sbatch", "--parsable", *options, str(ROOT / "slurm" / script), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, f"sbatch {script} failed: {result.stderr}"
  return result.stdout.strip().split(";")[0]


def _job(job_id: str) -> dict[str, str]:
  """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once the record is gone."""
  result = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
  if result.returncode != 0:
    return {}
  return dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)


def _wait(condition, timeout: float, what: str, job_id: str, log: pathlib.Path):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(1)
  subprocess.run(["scancel", job_id], timeout=30)
  text = log.read_text() if log.exists() else "(no log)"
  pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; job {job_id}: {_job(job_id)}\n{text[-4000:]}")


def _finished(job_id: str) -> dict[str, str] | None:
  job = _job(job_id)
  return job if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY") \
      else None


def test_preemptible_training_checkpoints_on_the_signal_is_requeued_and_resumes(slurm_cluster, tmp_path):
  run_dir = tmp_path / "run"
  num_steps = 40   # enough that the steps left after the signal outlast its delivery (about 2 s)
  train_args = [*tiny_run.write_tiny_npy_job(tmp_path / "data"), "--config.model.depth=3",
                "--config.train.batch_size=4",
                "--config.train.eval_batch_size=8", f"--config.train.num_steps={num_steps}",
                "--config.train.log_every=1", f"--config.train.eval_every={num_steps}",
                "--config.checkpoint.every_steps=1000"]
  env = _job_env(tmp_path, LENSJAX_RUN_DIR=str(run_dir))
  job_id = _sbatch("train_preemptible.sbatch", train_args, env, tmp_path)
  log = tmp_path / f"lensjax-preemptible-{job_id}.out"
  metrics = run_dir / "metrics.jsonl"

  # 1. training runs: process 0 has logged a training step
  _wait(lambda: metrics.exists() and '"split": "train"' in metrics.read_text(), 600,
        "the first logged training step", job_id, log)
  # 2. what --signal=B:USR1@120 does before the time limit: SIGUSR1 to the batch shell only
  subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=30)
  # 3. the job checkpoints, exits its step with 0 and requeues itself
  _wait(lambda: (j := _job(job_id)).get("Restarts", "0") != "0" and j.get("JobState") == "PENDING", 300,
        "the requeue", job_id, log)
  # A requeued job waits for its begin time (about 2 minutes): the node revoked the first run's credential, in whole
  # seconds, and refuses a relaunch within that second ("Job N already killed, do not launch batch job", and the
  # job FAILS with exit 1). Release it early, but only once it is PENDING (the end of the first run is processed)
  # and a couple of seconds later.
  time.sleep(2)
  subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
  # 4. the second run resumes and finishes
  final = _wait(lambda: _finished(job_id), 900, "the requeued job to finish", job_id, log)
  text = log.read_text()
  assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0", f"{final}\n{text[-4000:]}"
  assert final["Restarts"] == "1"
  assert "SIGUSR1" in text and "training exited with status 0" in text
  assert "run 1 on 1 node(s)" in text and "run 2 on 1 node(s)" in text     # the log is appended across runs
  resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", text)]
  assert len(resumed) == 1 and 1 <= resumed[0] < num_steps, text[-4000:]
  logged = [line for line in metrics.read_text().splitlines() if '"split": "train"' in line]
  steps = [int(re.search(r'"step": (\d+)', line)[1]) for line in logged]
  assert steps[-1] == num_steps
  assert any(step > resumed[0] for step in steps) and min(steps) <= resumed[0]
  assert '"split": "val"' in metrics.read_text()


def test_scaling_sweep_on_one_node_writes_records_that_the_report_turns_into_a_table(slurm_cluster, tmp_path):
  sweep_dir = tmp_path / "sweep"
  args = [*tiny_run.write_tiny_npy_job(tmp_path / "data"), "--config.model.depth=1", "--batch-size", "2",
          "--input-batches", "3"]
  env = _job_env(tmp_path, LENSJAX_SWEEP_DIR=str(sweep_dir), LENSJAX_SWEEP_GPUS="1 2")
  # -N 1: the sweep skips node counts above its allocation (the script asks for 16 Perlmutter nodes). Points:
  # 1 and 2 GPUs of one node, then the node loop's 1 node x 4 GPUs (no 4-GPU point came before it).
  job_id = _sbatch("scaling_sweep.sbatch", args, env, tmp_path, "-N", "1")
  log = tmp_path / f"lensjax-scaling-{job_id}.out"
  final = _wait(lambda: _finished(job_id), 900, "the sweep to finish", job_id, log)
  text = log.read_text()
  assert final["JobState"] == "COMPLETED" and final["ExitCode"] == "0:0", f"{final}\n{text[-4000:]}"
  assert "skipping 2 nodes" in text

  records = report.load_records([sweep_dir / "records"])
  points = sorted((p for r in records for p in r["points"]), key=lambda p: p["processes"])
  assert [(p["processes"], p["devices"], p["nodes"]) for p in points] == [(1, 1, 1), (2, 2, 1), (4, 4, 1)]
  assert all(r["scaling"] == "weak" for r in records)
  assert [p["global_batch"] for p in points] == [2, 4, 8]                   # 2 images per device
  assert [len(p["train"]["per_process_median_s"]) for p in points] == [1, 2, 4]   # every process timed its part
  assert points[0]["train"]["collectives"]["all-reduce"]["count"] == 0 < points[1]["train"]["collectives"][
      "all-reduce"]["count"]
  table = (sweep_dir / "report" / "report.md").read_text()
  assert len([line for line in table.splitlines() if line.startswith("| 1 | ")]) == 3
  assert (sweep_dir / "report" / "scaling_devices.png").exists()
