"""The run directory: its lock (real processes), checks before any write, and a `--restart` that deletes only
lensjax runs."""

import json
import os
import signal
import subprocess
import sys

import pytest

from lensjax import checkpoint, run_directory, train
from lensjax import config as cfg
from tests.helpers import tiny_run

# Holds the lock of the directory argv[1] until killed; says so on stdout once it holds it.
HOLDER = """
import pathlib, sys, time
from lensjax import run_directory
with run_directory.locked(pathlib.Path(sys.argv[1])):
  print("locked", flush=True)
  time.sleep(600)
"""


def _hold_lock(workdir, tmp_path) -> subprocess.Popen:
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True,
                            env=tiny_run.command_env(tmp_path / "cache"), cwd=tiny_run.ROOT)
  assert holder.stdout.readline().strip() == "locked"
  return holder


def _train(workdir, tmp_path, *args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "lensjax.train", "--workdir", str(workdir), *tiny_run.TINY, *args],
                        capture_output=True, text=True, timeout=600, cwd=tiny_run.ROOT,
                        env=tiny_run.command_env(tmp_path / "cache"))


def test_a_second_training_on_a_locked_directory_is_refused_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  holder = _hold_lock(workdir, tmp_path)
  try:
    result = _train(workdir, tmp_path)
  finally:
    holder.kill()
    holder.wait()
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and f"in use by a training run (pid {holder.pid} on " in lines[0]
  assert sorted(p.name for p in workdir.iterdir()) == [run_directory.LOCK_FILE]    # nothing else written


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
  workdir = tmp_path / "run"
  holder = _hold_lock(workdir, tmp_path)
  os.kill(holder.pid, signal.SIGKILL)
  holder.wait()
  assert (workdir / run_directory.LOCK_FILE).is_file()         # the file stays; the lock died with its holder
  with run_directory.locked(workdir):
    # Taken at once; while this process holds it, another process is refused naming this one.
    second = subprocess.run([sys.executable, "-c", HOLDER, str(workdir)], capture_output=True, text=True,
                            env=tiny_run.command_env(tmp_path / "cache"), cwd=tiny_run.ROOT, timeout=120)
  assert second.returncode != 0 and f"RunLockedError: {workdir} is in use by a training run (pid {os.getpid()}" \
      in second.stderr


@pytest.mark.slow
def test_a_failed_start_writes_nothing_and_the_corrected_command_runs(tmp_path):
  workdir = tmp_path / "run"
  failed = _train(workdir, tmp_path, "--config.train.batch_size=0")
  assert failed.returncode == 2 and "config.train.batch_size=0: expected >= 1" in failed.stderr
  assert not workdir.exists()
  fixed = _train(workdir, tmp_path, "--config.train.num_steps=2", "--config.train.eval_every=2")
  assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
  assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == 2


def test_a_missing_dataset_is_found_before_the_run_directory_is_touched(tmp_path):
  config = cfg.load("default", [*tiny_run.TINY, "--config.data.source=npy",
                                f"--config.data.path={tmp_path / 'no_such_data'}"])
  with pytest.raises(Exception, match="no_such_data"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_restart_refuses_a_directory_that_is_not_a_lensjax_run(tmp_path):
  workdir = tmp_path / "other_tool"
  (workdir / checkpoint.CHECKPOINTS_DIR).mkdir(parents=True)
  (workdir / checkpoint.CHECKPOINTS_DIR / "model.bin").write_bytes(b"not ours")
  config = cfg.load("default", tiny_run.TINY)
  with pytest.raises(run_directory.RunDirectoryError, match="not a lensjax run; nothing was deleted"):
    run_directory.prepare(workdir, config, restart=True)
  assert (workdir / checkpoint.CHECKPOINTS_DIR / "model.bin").read_bytes() == b"not ours"
  (workdir / run_directory.CONFIG_FILE).write_text('{"tool": "something else"}')
  with pytest.raises(run_directory.RunDirectoryError, match="is not a lensjax config"):
    run_directory.prepare(workdir, config, restart=True)
  assert (workdir / checkpoint.CHECKPOINTS_DIR / "model.bin").is_file()


def test_an_out_of_range_value_is_refused_before_anything_is_written(tmp_path):
  config = cfg.load("default", tiny_run.TINY)
  config.optim.learning_rate = -1.0          # set after loading: the trainer checks again
  with pytest.raises(cfg.ConfigError, match="config.optim.learning_rate=-1.0: expected > 0"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()
