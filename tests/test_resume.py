"""Runs that survive: SIGTERM and Ctrl-C save and exit 0, kill -9 mid-save loses little, and a resumed run ends with
exactly the losses and parameters of the uninterrupted one; a different config or a broken checkpoint is
handled, never silently."""

import json
import os
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from lensjax import checkpoint, parallel, run_directory, train, train_step
from lensjax import config as cfg
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  return tiny_run.trained_run(tmp_path_factory)


def _last_step(workdir) -> int:
  """The newest training step in metrics.jsonl (a line being written is ignored)."""
  last = 0
  path = workdir / "metrics.jsonl"
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        last = max(last, json.loads(line)["step"])
      except json.JSONDecodeError:
        pass
  return last


def _wait_for(condition, process, log, timeout=900, poll=0.01):
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f"the run ended before the test could interrupt it:\n{log.read_text()[-3000:]}"
    assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
    time.sleep(poll)


def _final_state(workdir):
  """The (model, optimizer) state of the run's newest checkpoint, as a flat list of numpy arrays."""
  config = cfg.config_from_json((workdir / "config.json").read_text())
  mesh = parallel.make_mesh()
  target = train_step.create_train_state(config, mesh, 0, abstract=True).state
  with checkpoint.Checkpoints(workdir / "checkpoints", config.checkpoint, read_only=True) as store:
    restored = store.restore(store.latest_step, target)
  return restored.step, [np.asarray(leaf) for leaf in jax.tree.leaves(restored.state)]


def _tiny_config(*overrides):
  return cfg.load("default", [*tiny_run.TINY, *overrides])


@pytest.mark.slow
def test_sigterm_then_kill_9_mid_save_resume_to_exactly_the_uninterrupted_run(reference, tmp_path,
                                                                               tmp_path_factory):
  cache = tiny_run.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  args = ["--workdir", str(workdir), *tiny_run.TINY]
  checkpoints_dir = workdir / "checkpoints"

  # SIGTERM in the middle of the run: a checkpoint at the next step boundary, then exit 0.
  log = tmp_path / "sigterm.log"
  process = tiny_run.start("lensjax.train", args, cache, log)
  _wait_for(lambda: _last_step(workdir) >= 8, process, log)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
  stopped = int(re.search(r"SIGTERM received: saved the checkpoint of step (\d+)", log.read_text())[1])
  assert 8 <= stopped < tiny_run.NUM_STEPS and (checkpoints_dir / str(stopped)).is_dir()

  # The rerun continues from there; kill -9 it while it writes a checkpoint (or late in the run).
  log = tmp_path / "kill.log"
  process = tiny_run.start("lensjax.train", args, cache, log)

  def saving():
    return _last_step(workdir) > stopped and any(checkpoints_dir.glob("*.orbax-checkpoint-tmp*"))

  _wait_for(lambda: saving() or _last_step(workdir) >= tiny_run.NUM_STEPS - 6, process, log, poll=0.002)
  last_logged = _last_step(workdir)
  process.kill()
  process.wait(timeout=60)
  assert f"resumed from step {stopped} " in log.read_text()

  # The next rerun resumes from the newest complete checkpoint and finishes the run.
  code, output = tiny_run.run("lensjax.train", args, cache, tmp_path / "final.log")
  assert code == 0, output[-3000:]
  resumed = int(re.search(r"resumed from step (\d+)", output)[1])
  # At most the steps since the newest complete save are lost: an interval, plus one more if the kill
  # caught the next save in flight.
  assert stopped <= resumed and last_logged - 2 * tiny_run.EVERY_STEPS <= resumed <= last_logged + 1
  assert not list(checkpoints_dir.glob("*orbax-checkpoint-tmp*"))

  # Same losses, metrics, parameters, BatchNorm statistics and optimizer state as the uninterrupted run.
  assert tiny_run.read_metrics(workdir) == tiny_run.read_metrics(reference)
  step, leaves = _final_state(workdir)
  reference_step, reference_leaves = _final_state(reference)
  assert step == reference_step == tiny_run.NUM_STEPS and len(leaves) == len(reference_leaves)
  for got, want in zip(leaves, reference_leaves):
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_ctrl_c_with_a_grain_worker_saves_and_the_rerun_ends_as_the_uninterrupted_run(reference, tmp_path,
                                                                                    tmp_path_factory):
  # Ctrl-C in a terminal sends SIGINT to the whole process group: the training process and its Grain worker.
  cache = tiny_run.compile_cache(tmp_path_factory)
  workdir = tmp_path / "run"
  args = ["--workdir", str(workdir), *tiny_run.TINY, "--config.data.worker_count=1"]
  log = tmp_path / "ctrl_c.log"
  process = tiny_run.start("lensjax.train", args, cache, log, new_session=True)
  _wait_for(lambda: _last_step(workdir) >= 8, process, log)
  os.killpg(process.pid, signal.SIGINT)
  assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
  text = log.read_text()
  assert "Ctrl-C: saving a checkpoint" in text and "Traceback" not in text, text[-3000:]
  stopped = int(re.search(r"SIGINT received: saved the checkpoint of step (\d+)", text)[1])
  assert 8 <= stopped < tiny_run.NUM_STEPS and (workdir / "checkpoints" / str(stopped)).is_dir()

  code, output = tiny_run.run("lensjax.train", args, cache, tmp_path / "rerun.log")
  assert code == 0 and f"resumed from step {stopped} " in output, output[-3000:]
  assert tiny_run.read_metrics(workdir) == tiny_run.read_metrics(reference)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_of_a_real_run_falls_back_to_the_previous_one(reference, tmp_path, capsys, damage):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  with checkpoint.Checkpoints(workdir / "checkpoints", cfg.CheckpointConfig(), read_only=True) as store:
    newest, previous = store.steps[-1], store.steps[-2]
  # The repro: the largest array file of the newest step, cut to a third or 64 bytes flipped inside.
  array_files = (workdir / "checkpoints" / str(newest) / "state" / "ocdbt.process_0" / "d").iterdir()
  largest = max(array_files, key=lambda p: p.stat().st_size)
  contents = largest.read_bytes()
  if damage == "truncate":
    largest.write_bytes(contents[:len(contents) // 3])
  else:
    middle = len(contents) // 2
    largest.write_bytes(contents[:middle] + bytes(b ^ 0x5A for b in contents[middle:middle + 64])
                        + contents[middle + 64:])
  config = _tiny_config()
  target = train_step.create_train_state(config, parallel.make_mesh(), 0, abstract=True).state
  with checkpoint.Checkpoints(workdir / "checkpoints", config.checkpoint) as store:
    restored = store.restore_latest(target)
  assert restored.step == previous
  name = largest.relative_to(workdir / "checkpoints" / str(newest))
  reason = "cut short" if damage == "truncate" else "changed since it was saved"
  printed = capsys.readouterr().out
  assert f"warning: checkpoint {workdir / 'checkpoints' / str(newest)} has {name} " in printed and reason in printed
  assert (workdir / checkpoint.BROKEN_DIR / str(newest) / name).is_file()


def test_a_run_directory_with_a_different_config_is_refused_naming_the_keys(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  config = _tiny_config("--config.optim.learning_rate=0.01", "--config.model.width=0.125")
  with pytest.raises(run_directory.RunMismatchError) as error:
    train.train_and_evaluate(config, workdir)
  assert "optim.learning_rate: 0.001 there, 0.01 now" in str(error.value)
  assert "model.width: 0.0625 there, 0.125 now" in str(error.value) and "--restart" in str(error.value)
  assert (workdir / "config.json").read_text() == (reference / "config.json").read_text()


def test_settings_that_do_not_change_the_training_may_change_on_resume(reference):
  previous = json.loads((reference / "config.json").read_text())
  changes = run_directory.check_same_run(
      previous, _tiny_config("--config.train.log_every=5", "--config.checkpoint.keep=4"), reference)
  assert changes == ["checkpoint.keep: 2 -> 4", "train.log_every: 1 -> 5"]


def test_restart_says_so_and_deletes_only_the_earlier_runs_outputs(reference, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  (workdir / "notes.txt").write_text("mine\n")
  config = _tiny_config("--config.optim.learning_rate=0.01")
  run_directory.prepare(workdir, config, restart=True)
  assert "--restart: deleting the earlier run" in capsys.readouterr().out
  left = {p.name for p in workdir.iterdir()}
  assert "notes.txt" in left and not left & (set(run_directory.RUN_OUTPUTS) - {"config.json"})
  assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 0.01


def test_metrics_lines_after_the_restored_step_are_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) for s in range(1, 7)]
  path.write_text("\n".join(lines) + '\n{"step": 7, "spl')      # the last line cut short by kill -9
  log = run_directory.MetricsLog(path)
  assert log.keep_until(4) == 3
  assert path.read_text().splitlines() == lines[:4]
