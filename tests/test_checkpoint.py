"""Checkpoints keep the newest and the best, restore exactly, skip broken steps; stop signals become a request."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest

from lensjax import checkpoint, parallel
from lensjax import config as cfg
from tests.helpers import tiny_run


def _state(value: float) -> dict[str, jax.Array]:
  return {"kernel": jnp.full((3, 4), value), "count": jnp.asarray(int(value), jnp.int32)}


def _target(mesh):
  state = _state(0.0)
  return checkpoint.abstract_state(state, parallel.state_shardings(state, mesh, fsdp=False))


def _iterator():
  return iter(grain.MapDataset.range(100).to_iter_dataset())


def _save_steps(store, values_by_step, iterator=None, config=None):
  iterator = iterator or _iterator()
  for step, metric in values_by_step.items():
    next(iterator)
    store.save(step, state=_state(step), data_iterator=iterator, rng_key=jax.random.key(step),
               config=config or cfg.Config(), metrics=None if metric is None else {"iou/mean": metric, "loss": -metric})
  store.wait_until_finished()


@pytest.mark.parametrize("mode, best", [("max", 2), ("min", 6)])
def test_keeps_the_newest_and_the_best_by_the_chosen_metric(tmp_path, mode, best):
  options = cfg.CheckpointConfig(keep=2, best_metric="iou/mean", best_mode=mode)
  with checkpoint.Checkpoints(tmp_path / "checkpoints", options) as store:
    # Steps 3, 7 and 8 were not evaluation steps (no metrics): they rank last and go once no longer recent.
    _save_steps(store, {1: 0.1, 2: 0.9, 3: None, 4: 0.3, 5: 0.2, 6: 0.05, 7: None, 8: None})
    assert store.best_step() == (2 if mode == "max" else 6)
    assert sorted(store.steps) == sorted({7, 8, best})
    assert store.metrics(best)["iou/mean"] == pytest.approx({2: 0.9, 6: 0.05}[best])
    assert store.metrics(8) == {}


def test_restore_gives_back_state_key_config_and_the_iterator_position(tmp_path):
  mesh = parallel.make_mesh()
  config = cfg.Config(name="restore-test")
  iterator = _iterator()
  with checkpoint.Checkpoints(tmp_path / "checkpoints", cfg.CheckpointConfig(keep=3)) as store:
    _save_steps(store, {5: 0.5}, iterator, config)
    expected_next = next(iterator)
  fresh = _iterator()
  with checkpoint.Checkpoints(tmp_path / "checkpoints", cfg.CheckpointConfig(keep=3)) as store:
    restored = store.restore_latest(_target(mesh), fresh)
  assert restored.step == 5
  np.testing.assert_array_equal(restored.state["kernel"], np.full((3, 4), 5.0))
  assert int(restored.state["count"]) == 5 and restored.state["kernel"].sharding.is_equivalent_to(
      parallel.replicated(mesh), 2)
  np.testing.assert_array_equal(jax.random.key_data(restored.rng_key), jax.random.key_data(jax.random.key(5)))
  assert restored.config == cfg.to_dict(config)
  assert restored.metrics == {"iou/mean": pytest.approx(0.5), "loss": pytest.approx(-0.5)}
  assert next(fresh) == expected_next


def test_a_save_in_flight_survives_the_process_being_suspended_for_a_day(tmp_path, monkeypatch):
  # Orbax's futures read the wall clock for their deadline. Once the save has started, this clock says a day has
  # passed, as a process suspended during the save (a laptop asleep, `scontrol suspend`) finds on waking.
  from orbax.checkpoint._src.futures import future
  woken = []
  monkeypatch.setattr(future, "time", types.SimpleNamespace(time=lambda: time.time() + 86_400 * len(woken)))
  mesh = parallel.make_mesh()
  with checkpoint.Checkpoints(tmp_path / "checkpoints", cfg.CheckpointConfig(keep=3)) as store:
    store.save(7, state=_state(7), data_iterator=_iterator(), rng_key=jax.random.key(7), config=cfg.Config(),
               metrics={"iou/mean": 0.5})
    woken.append(True)
    store.wait_until_finished()
  monkeypatch.undo()
  with checkpoint.Checkpoints(tmp_path / "checkpoints", cfg.CheckpointConfig(keep=3), read_only=True) as store:
    assert store.restore_latest(_target(mesh)).step == 7


def test_broken_newer_checkpoints_are_skipped_with_a_warning_and_set_aside(tmp_path, capsys):
  directory = tmp_path / "run" / "checkpoints"
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig(keep=5)) as store:
    _save_steps(store, {1: None, 2: None, 3: None, 4: None})
  largest = max((p for p in (directory / "4" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(largest, largest.stat().st_size // 2)           # a file cut short ...
  (directory / "4" / checkpoint.DIGEST_FILE).unlink()         # ... of a step saved before digests: Orbax fails
  (directory / "3" / "commit_success.txt").unlink()           # a step whose save never committed
  shutil.rmtree(directory / "2" / "meta")                     # a step missing an item
  # A save killed mid-way: Orbax's temporary directory, never renamed to its step.
  shutil.copytree(directory / "1", directory / "9.orbax-checkpoint-tmp-1234")
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig(keep=5)) as store:
    assert 9 not in store.steps
    restored = store.restore_latest(_target(parallel.make_mesh()))
    assert restored.step == 1 and store.steps == [1]
    _save_steps(store, {2: None})                             # the step of a set-aside checkpoint is free again
    assert store.steps == [1, 2]
  np.testing.assert_array_equal(restored.state["kernel"], np.full((3, 4), 1.0))
  printed = capsys.readouterr().out
  for step, reason in ((4, "does not restore"), (3, "has no commit_success.txt"), (2, "has no meta/")):
    assert f"checkpoints/{step} {reason}" in printed
    assert (tmp_path / "run" / checkpoint.BROKEN_DIR / str(step)).is_dir()
  assert not list(directory.glob("*orbax-checkpoint-tmp*"))   # removed (in the background) before a save


def _damage(path, how):
  """Flips 64 bytes in the middle of `path` (its size unchanged), or cuts it to half its size."""
  size = path.stat().st_size
  if how == "flip":
    with open(path, "r+b") as f:
      f.seek(size // 2 - 32)
      block = f.read(64)
      f.seek(size // 2 - 32)
      f.write(bytes(b ^ 0xFF for b in block))
    assert path.stat().st_size == size
  else:
    os.truncate(path, size // 2)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_checkpoint_whose_array_file_changed_is_set_aside_for_the_previous_one(tmp_path, capsys, how):
  directory = tmp_path / "run" / "checkpoints"
  big = {"kernel": jnp.arange(64 * 256, dtype=jnp.float32).reshape(64, 256), "count": jnp.asarray(0)}
  mesh = parallel.make_mesh()
  target = checkpoint.abstract_state(big, parallel.state_shardings(big, mesh, fsdp=False))
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig(keep=3)) as store:
    iterator = _iterator()
    for step in (10, 20):
      store.save(step, state=jax.tree.map(lambda a: a + step, big), data_iterator=iterator,
                 rng_key=jax.random.key(step), config=cfg.Config())
    store.wait_until_finished()
  arrays = directory / "20" / "state" / "ocdbt.process_0" / "d"
  largest = max(arrays.iterdir(), key=lambda p: p.stat().st_size)
  assert largest.stat().st_size > 4096
  _damage(largest, how)
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig(keep=3)) as store:
    restored = store.restore_latest(target, _iterator())
    assert restored.step == 10 and store.steps == [10]
  np.testing.assert_array_equal(restored.state["kernel"], np.asarray(big["kernel"]) + 10)
  printed = capsys.readouterr().out
  assert f"warning: checkpoint {directory / '20'} has state/ocdbt.process_0/d/{largest.name}" in printed
  assert ("changed since it was saved" if how == "flip" else "cut short") in printed
  assert (tmp_path / "run" / checkpoint.BROKEN_DIR / "20" / "state" / "ocdbt.process_0" / "d" / largest.name
          ).is_file()
  # Read-only use (evaluate, predict) restores nothing from it either: one error naming the step and the file.
  shutil.copytree(tmp_path / "run" / checkpoint.BROKEN_DIR / "20", directory / "20")
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig(keep=3), read_only=True) as store:
    with pytest.raises(checkpoint.CheckpointError, match=f"checkpoints/20 has state/ocdbt.process_0/d/"):
      store.restore(20, target)


def test_every_file_of_a_saved_step_but_the_commit_markers_has_a_digest(tmp_path):
  directory = tmp_path / "checkpoints"
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig()) as store:
    _save_steps(store, {1: 0.5})
  step_dir = directory / "1"
  listed = json.loads((step_dir / checkpoint.DIGEST_FILE).read_text())["files"]
  on_disk = {p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file()}
  assert set(listed) == on_disk - {"_CHECKPOINT_METADATA", "commit_success.txt", checkpoint.DIGEST_FILE}
  assert any(name.startswith("state/ocdbt.process_0/d/") for name in listed)
  assert any(name.startswith("data_iter/") for name in listed) and "meta/metadata" in listed
  assert checkpoint.verify_digests(step_dir) is None


def test_when_no_checkpoint_restores_nothing_is_moved(tmp_path):
  directory = tmp_path / "checkpoints"
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig()) as store:
    _save_steps(store, {1: None})
  # A different model: the saved arrays do not fit the target.
  wrong = {"kernel": jax.ShapeDtypeStruct((5, 5), jnp.float32), "count": jax.ShapeDtypeStruct((), jnp.int32)}
  with checkpoint.Checkpoints(directory, cfg.CheckpointConfig()) as store:
    with pytest.raises(checkpoint.CheckpointError, match="--restart") as raised:
      store.restore_latest(wrong)
  assert "\n" not in str(raised.value) and "step 1 does not restore" in str(raised.value)
  assert (directory / "1").is_dir()


def test_only_the_closed_loop_errors_of_abandoned_reads_are_dropped(monkeypatch):
  reported = []
  monkeypatch.setattr(sys, "excepthook", lambda *exc: reported.append(("except", exc[1])))
  monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(("unraisable", u.exc_value)))
  checkpoint._silence_abandoned_reads()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as error:
    closed = error
  from_native = closed.__traceback__.tb_next     # as TensorStore's thread sees it: no Python caller
  assert from_native.tb_frame.f_code.co_name == "call_soon_threadsafe"
  sys.excepthook(RuntimeError, closed, from_native)
  sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=closed, exc_traceback=from_native))
  assert not reported
  # The same error from Python code, and any other error, still reach the previous hooks.
  other = ValueError("Event loop is closed")
  sys.excepthook(RuntimeError, closed, closed.__traceback__)
  sys.excepthook(ValueError, other, from_native)
  sys.unraisablehook(types.SimpleNamespace(exc_type=RuntimeError, exc_value=closed, exc_traceback=None))
  assert reported == [("except", closed), ("except", other), ("unraisable", closed)]


def test_bad_options_name_the_field(tmp_path):
  with pytest.raises(cfg.ConfigError, match="checkpoint.keep=0"):
    checkpoint.Checkpoints(tmp_path, cfg.CheckpointConfig(keep=0))
  with pytest.raises(cfg.ConfigError, match="checkpoint.every_steps=-1"):
    checkpoint.Checkpoints(tmp_path, cfg.CheckpointConfig(every_steps=-1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_stop_signal_becomes_a_request_and_the_handlers_are_put_back(signum):
  before = signal.getsignal(signum)
  with checkpoint.StopSignals(parallel.make_mesh()) as stop:
    assert not stop.agreed()
    os.kill(os.getpid(), signum)
    assert stop.agreed() and stop.received == signal.Signals(signum).name
    if signum != signal.SIGINT:   # a second SIGTERM or SIGUSR1 changes nothing (a second Ctrl-C: below)
      os.kill(os.getpid(), signum)
      assert stop.agreed() and stop.received == signal.Signals(signum).name
  assert signal.getsignal(signum) == before


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_a_stop_is_pending_stops_at_once(first, capsys):
  with checkpoint.StopSignals(parallel.make_mesh()) as stop:
    os.kill(os.getpid(), first)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
    assert stop.received == signal.Signals(first).name
  assert ("Ctrl-C again: stop now" in capsys.readouterr().err) == (first == signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


SHARDED_SCRIPT = """
import sys
import grain, jax, jax.numpy as jnp, numpy as np
from lensjax import checkpoint, parallel
from lensjax import config as cfg

mesh = parallel.make_mesh()
state = {"kernel": jnp.arange(4 * 8192, dtype=jnp.float32).reshape(8192, 4), "bias": jnp.ones((3,))}
fsdp = parallel.state_shardings(state, mesh, fsdp=True)
state = jax.device_put(state, fsdp)
assert state["kernel"].sharding.spec == jax.P("data", None) and len(state["kernel"].addressable_shards) == 4
iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
with checkpoint.Checkpoints(sys.argv[1], cfg.CheckpointConfig()) as store:
  store.save(3, state=state, data_iterator=iterator, rng_key=jax.random.key(0), config=cfg.Config())
replicated = jax.tree.map(lambda _: parallel.replicated(mesh), state)
with checkpoint.Checkpoints(sys.argv[1], cfg.CheckpointConfig(), read_only=True) as store:
  for shardings in (fsdp, replicated):
    restored = store.restore_latest(checkpoint.abstract_state(state, shardings)).state
    for name in state:
      assert restored[name].sharding.is_equivalent_to(shardings[name], restored[name].ndim), name
      np.testing.assert_array_equal(restored[name], state[name])
print("restored onto", len(jax.devices()), "devices")
"""


def test_fsdp_sharded_state_restores_sharded_or_replicated_on_four_devices(tmp_path):
  env = dict(tiny_run.command_env(tmp_path / "cache"), JAX_NUM_CPU_DEVICES="4")
  done = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(tmp_path / "checkpoints")], env=env,
                        cwd=tiny_run.ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr[-3000:]
  assert "restored onto 4 devices" in done.stdout


TWO_PROCESS_SCRIPT = """
import sys
import grain, jax, jax.numpy as jnp, numpy as np
from lensjax import checkpoint, parallel
from lensjax import config as cfg

address, process_id, directory, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
parallel.initialize(parallel.DistributedOptions(address, 2, process_id))
mesh = parallel.make_mesh()
state = {"kernel": jnp.arange(4 * 8192, dtype=jnp.float32).reshape(8192, 4), "bias": jnp.ones((3,))}
fsdp = parallel.state_shardings(state, mesh, fsdp=True)
iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
with checkpoint.Checkpoints(directory, cfg.CheckpointConfig(keep=3)) as store:
  if phase == "save":
    for step in (1, 2):
      placed = jax.tree.map(lambda a, sharding: jax.make_array_from_callback(
          a.shape, sharding, lambda index: np.asarray(a + step)[index]), state, fsdp)
      store.save(step, state=placed, data_iterator=iterator, rng_key=jax.random.key(0), config=cfg.Config())
  else:
    restored = store.restore_latest(checkpoint.abstract_state(state, fsdp), iterator)
    kernel = jax.experimental.multihost_utils.process_allgather(restored.state["kernel"], tiled=True)
    np.testing.assert_array_equal(kernel, np.asarray(state["kernel"]) + 1)
    print("process", process_id, "restored step", restored.step, flush=True)
"""


@pytest.mark.slow
def test_two_processes_save_digests_of_both_shards_and_agree_to_skip_a_changed_one(tmp_path):
  directory = tmp_path / "run" / "checkpoints"
  env = {k: v for k, v in tiny_run.command_env(tmp_path / "cache").items() if not k.startswith(("SLURM_", "LENSJAX_"))}

  def run_both(phase):
    address = f"127.0.0.1:{portpicker.pick_unused_port()}"
    processes = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_SCRIPT, address, str(i), str(directory), phase],
                                  cwd=tiny_run.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs):
      assert process.returncode == 0, output[-3000:]
    return outputs

  run_both("save")
  listed = json.loads((directory / "2" / checkpoint.DIGEST_FILE).read_text())["files"]
  for process_id in (0, 1):                       # process 0 hashed the files of both processes
    assert any(name.startswith(f"state/ocdbt.process_{process_id}/d/") for name in listed)
  shard_files = directory / "2" / "state" / "ocdbt.process_1" / "d"
  _damage(max(shard_files.iterdir(), key=lambda p: p.stat().st_size), "flip")
  outputs = run_both("restore")
  assert "process 0 restored step 1" in outputs[0] and "process 1 restored step 1" in outputs[1]
  assert f"warning: checkpoint {directory / '2'} has state/ocdbt.process_1/d/" in outputs[0]
  assert (tmp_path / "run" / checkpoint.BROKEN_DIR / "2").is_dir() and not (directory / "2").exists()
