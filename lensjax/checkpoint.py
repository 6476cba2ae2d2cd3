"""Checkpoints of a training run (Orbax), exact resume past broken checkpoints, and the stop signals.

Layout of `<workdir>/checkpoints/` (one directory shared by all processes; on a cluster, a shared file system):

  <step>/state/       the NNX state of (model, optimizer): parameters, BatchNorm statistics, the optimizer's
                      moments and its step count (`ocp.args.StandardSave`; each process writes the shards it holds)
  <step>/data_iter/   the training iterator's position, one `process_<i>-of-<n>.json` per process
                      (`grain.checkpoint.CheckpointSave`)
  <step>/meta/        {"step": N, "rng": {"impl": ..., "key_data": [...]}}: the training step's randomness is
                      `fold_in(key, step)`, so this key and the step are all the random state there is
  <step>/config/      the run's config (`lensjax.config.to_dict`)
  <step>/metrics/     the validation metrics of that step ({} when it was not an evaluation step)
  <step>/_CHECKPOINT_METADATA, commit_success.txt      written by Orbax once the step is complete
  <step>/digests.json {"algorithm": "sha256", "files": {"state/ocdbt.process_0/d/...": {"size": bytes,
                      "sha256": hex}, ...}}: every other file of the step, hashed once all processes have
                      written their files and before the step is committed (see Integrity below)

Saves are asynchronous: `save` returns once the arrays are copied off the devices, and the files are written
in the background while training goes on. The `keep` most recent checkpoints are kept, plus the best by
`best_metric` (Orbax preservation policies `LatestN` + `BestN`).

Crash safety: Orbax writes a step into `<step>.orbax-checkpoint-tmp*` and renames it when complete, so a
process killed mid-save (kill -9, a node failure) leaves only a temporary directory, which is ignored (and
removed in the background once the run restarts): a kill loses at most the steps since the last complete
checkpoint, i.e. one interval, or two if it strikes while the next checkpoint is being written. A step
directory that is incomplete all the same (a missing commit marker or item, e.g. after a partial copy) or
whose files fail to restore (truncated, corrupt) is skipped with a warning for the previous one, and moved
to `<workdir>/broken_checkpoints/` once an older one has restored (so that its step can be saved again).

Integrity: Orbax verifies no array data on restore (a flipped byte inside an array file, even a shortened
file, can restore silently as a wrong weight). So `save` hashes the step: Orbax's post-finalisation
callback runs on process 0 after the barrier at which every process has finished writing its files, and
before the temporary directory is renamed to the step, so a committed step always carries its
`digests.json` (written through a temporary file and a rename). `restore` checks every listed file's size
and SHA-256 first; a mismatch makes the step broken like a truncated one: `restore_latest` warns, uses the
previous step and moves the broken one aside. Steps saved before digests existed restore unverified.

Stop signals: `StopSignals` turns SIGTERM (Slurm preemption, `scancel`), SIGUSR1 (`sbatch --signal`) and the
first Ctrl-C (SIGINT) into a request that every process sees at the same step boundary, where the training loop
saves and exits 0. Ctrl-C while a stop is pending aborts at once, without saving.

Every process must call `save`, `restore` and `restore_latest` (they synchronise); only process 0 prints.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from lensjax import config as cfg
from lensjax import parallel

CHECKPOINTS_DIR = "checkpoints"
BROKEN_DIR = "broken_checkpoints"
# Files Orbax writes into a step directory when (and only when) the step is complete.
COMMIT_MARKERS = ("_CHECKPOINT_METADATA", "commit_success.txt")
# The hashes of a step's files (all but the commit markers, which Orbax may still be writing when they are taken).
DIGEST_FILE = "digests.json"
DIGEST_ALGORITHM = "sha256"
# Orbax writes step N into `<N>` + this suffix and renames it to `<N>` once every process has written its part.
ORBAX_TMP_SUFFIX = ".orbax-checkpoint-tmp"
TRAINING_ITEMS = ("state", "data_iter", "meta", "config")
INFERENCE_ITEMS = ("state", "meta", "config")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# Orbax gives an asynchronous save a wall-clock deadline (20 min by default) and fails the save, and with it the
# training, once the clock has passed it, even when the files are written the moment the process runs again. A
# process that is suspended while a save is in flight (a laptop asleep, Ctrl-Z, Slurm's `scontrol suspend`) wakes
# past any such deadline, so lensjax gives the saves one that no suspension reaches.
SAVE_DEADLINE_S = 30 * 24 * 3600

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
  """No usable checkpoint where one is needed."""


def rng_to_json(key: jax.Array) -> dict[str, Any]:
  """A typed PRNG key as JSON: its implementation name and its raw uint32 data."""
  return {"impl": str(jax.random.key_impl(key)), "key_data": np.asarray(jax.random.key_data(key)).tolist()}


def rng_from_json(value: Mapping[str, Any]) -> jax.Array:
  return jax.random.wrap_key_data(np.asarray(value["key_data"], np.uint32), impl=value["impl"])


def abstract_state(state: Any, shardings: Any) -> Any:
  """The restore target for `state` (arrays or shape structs): shape, dtype and sharding of every leaf."""
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                      state, shardings)


@dataclasses.dataclass
class Restored:
  """What a checkpoint gives back."""
  step: int
  state: Any                       # the (model, optimizer) NNX state, placed as the restore target asked
  rng_key: jax.Array               # the base key of the training step's randomness
  config: dict[str, Any]           # the run's config as saved (`lensjax.config.to_dict`)
  metrics: dict[str, float]        # validation metrics of that step ({} if it was not an evaluation step)
  path: pathlib.Path               # the step directory


class Checkpoints:
  """The checkpoints of one run directory: save, list, restore.

  Args:
    directory: `<workdir>/checkpoints`.
    options: the run's `checkpoint` config section (what to keep).
    read_only: for evaluation and prediction: never create, clean up or move anything.
  """

  def __init__(self, directory: str | pathlib.Path, options: cfg.CheckpointConfig, *, read_only: bool = False):
    options.check()
    self.directory = pathlib.Path(directory).absolute()
    self.options = options
    self.read_only = read_only
    # A checkpoint saved between evaluations carries no metrics: it ranks last and is kept only while recent.
    worst = -math.inf if options.best_mode == "max" else math.inf
    metric = options.best_metric

    def ranking(metrics: Mapping[str, float]) -> float:
      return float(metrics.get(metric, worst))

    self._ranking = ranking
    keep = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=options.keep),
        checkpoint_managers.BestN(get_metric_fn=ranking, reverse=options.best_mode == "min", n=1,
                                  keep_checkpoints_without_metrics=False)])
    # Read-only use is enforced here (no save, no clean-up, no moves) rather than with Orbax's `read_only`,
    # which warns on every start.
    self._saving_step: int | None = None     # the step whose save is in flight (Orbax runs one at a time)
    self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        preservation_policy=keep, best_fn=ranking, best_mode=options.best_mode,
        cleanup_tmp_directories=not read_only, create=not read_only, enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(timeout_secs=SAVE_DEADLINE_S, post_finalization_callback=self._write_digests)))

  # -------------------------------------------------------------------------------------------------
  # Listing.

  @property
  def steps(self) -> list[int]:
    """Steps with a checkpoint directory, oldest first (not checked for completeness)."""
    return list(self._manager.all_steps())

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step whose validation `best_metric` is best; None when no checkpoint has the metric."""
    scored = [step for step in self.steps if self.options.best_metric in self.metrics(step)]
    if not scored:
      return None
    pick = max if self.options.best_mode == "max" else min
    return pick(scored, key=lambda step: self._ranking(self.metrics(step)))

  def metrics(self, step: int) -> dict[str, float]:
    """The validation metrics saved with `step` ({} if none)."""
    return dict(self._manager.metrics(step) or {})

  def step_path(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  # -------------------------------------------------------------------------------------------------
  # Saving.

  def save(self, step: int, *, state: Any, data_iterator: grain.DatasetIterator, rng_key: jax.Array,
           config: cfg.Config, metrics: Mapping[str, float] | None = None) -> pathlib.Path:
    """Starts an asynchronous save of step `step`; returns its directory (complete after `wait_until_finished`).

    Args:
      state: the (model, optimizer) NNX state, sharded or not.
      data_iterator: the training iterator, positioned at the first batch of step `step + 1`.
      rng_key: the base key of the training step's randomness.
      config: the run's config.
      metrics: the validation metrics at this step, if it was an evaluation step.
    """
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only; cannot save step {step}")
    items = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave({"step": step, "rng": rng_to_json(rng_key)}),
        config=ocp.args.JsonSave(cfg.to_dict(config)))
    values = {k: float(v) for k, v in (metrics or {}).items()}
    self._manager.wait_until_finished()       # the digests of the previous save are written by now
    self._saving_step = step
    self._manager.save(step, args=items, metrics=values, force=True)
    return self.step_path(step)

  def _write_digests(self) -> None:
    """Orbax's post-finalisation callback: hashes the step being saved into its DIGEST_FILE.

    Runs in Orbax's background thread on process 0 only, after every process has written its files and
    before the step is committed (its temporary directory renamed; on file systems without an atomic
    rename, Orbax writes in place and then its commit marker).
    """
    step = self._saving_step
    pending = self.directory / f"{step}{ORBAX_TMP_SUFFIX}"
    write_digests(pending if pending.is_dir() else self.step_path(step))

  def wait_until_finished(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -------------------------------------------------------------------------------------------------
  # Restoring.

  def restore(self, step: int, target: Any, data_iterator: grain.DatasetIterator | None = None) -> Restored:
    """Restores checkpoint `step` onto `target` (`abstract_state(...)`: shapes, dtypes and shardings).

    With `data_iterator`, also moves that iterator to the saved position. Raises CheckpointError (one line,
    naming the step and why) for a broken checkpoint; `restore_latest` is the forgiving variant.
    """
    problem = self.unusable(step, with_data=data_iterator is not None)
    if problem:
      raise CheckpointError(f"checkpoint {self.step_path(step)} {problem}")
    try:
      return self._restore_checked(step, target, data_iterator)
    except CheckpointError:
      raise
    except Exception as error:  # pylint: disable=broad-except  # Orbax/TensorStore raise many types
      raise CheckpointError(f"checkpoint {self.step_path(step)} {_restore_failure(error)}: it is damaged, or of "
                            "another model; use another step") from error

  def _restore_checked(self, step: int, target: Any, data_iterator: grain.DatasetIterator | None) -> Restored:
    items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore(),
             "config": ocp.args.JsonRestore()}
    _silence_abandoned_reads()
    if data_iterator is not None:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    meta = restored.meta
    if meta.get("step") != step:
      raise CheckpointError(f"checkpoint {self.step_path(step)} says it is step {meta.get('step')}")
    return Restored(step=step, state=restored.state, rng_key=rng_from_json(meta["rng"]),
                    config=dict(restored.config), metrics=self.metrics(step), path=self.step_path(step))

  def saved_config(self, step: int) -> dict[str, Any]:
    """The run config saved with checkpoint `step` (`lensjax.config.to_dict` form), without its arrays."""
    problem = self.incomplete(step, with_data=False)
    if problem:
      raise CheckpointError(f"checkpoint {self.step_path(step)} {problem}")
    return dict(self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)

  def unusable(self, step: int, *, with_data: bool = True) -> str | None:
    """Why step `step` cannot be restored as saved (a missing file, or one changed since the save), or None."""
    return self.incomplete(step, with_data=with_data) or verify_digests(self.step_path(step))

  def incomplete(self, step: int, *, with_data: bool = True) -> str | None:
    """Why step `step`'s directory cannot be a complete checkpoint (a missing file), or None."""
    path = self.step_path(step)
    for marker in COMMIT_MARKERS:
      if not (path / marker).is_file():
        return f"has no {marker} (Orbax writes it when a save completes)"
    for item in TRAINING_ITEMS if with_data else INFERENCE_ITEMS:
      if not (path / item).is_dir():
        return f"has no {item}/ item"
    return None

  def restore_latest(self, target: Any, data_iterator: grain.DatasetIterator | None = None) -> Restored | None:
    """Restores the newest checkpoint that is complete and readable; None if the run has no checkpoint.

    With `data_iterator` (resuming training), also moves that iterator to the saved position.

    Newer checkpoints that are incomplete, fail their checksums or fail to restore are skipped with a
    warning and, once an older one has restored, moved to `<workdir>/broken_checkpoints/` (so that their
    steps can be saved again). If none restores, raises CheckpointError (one line, naming each step and
    why) and leaves everything in place: a wholesale failure is more likely a changed model or config than
    corruption of every file.
    """
    broken: list[tuple[int, str]] = []
    for step in reversed(self.steps):
      problem = self.unusable(step, with_data=data_iterator is not None)
      restored = None
      if problem is None:
        try:
          restored = self._restore_checked(step, target, data_iterator)
        except Exception as error:  # pylint: disable=broad-except  # Orbax/TensorStore raise many types
          problem = _restore_failure(error)
      if not _all_processes_agree(problem is None):
        problem = problem or "does not restore on another process"
        restored = None
      if restored is not None:
        self._set_aside(broken)
        return restored
      broken.append((step, problem))
      _warn(f"checkpoint {self.step_path(step)} {problem}; trying the previous one")
    if broken:
      listed = "; ".join(f"step {step} {problem}" for step, problem in broken)
      raise CheckpointError(
          f"no checkpoint in {self.directory} restores ({listed}); if the model or config changed since they "
          "were written, start over with --restart (or another --workdir)")
    return None

  def _set_aside(self, broken: list[tuple[int, str]]) -> None:
    if not broken or self.read_only:
      return
    if parallel.is_main_process():
      destination_root = self.directory.parent / BROKEN_DIR
      destination_root.mkdir(exist_ok=True)
      for step, _ in broken:
        destination = destination_root / str(step)
        if destination.exists():
          destination = destination_root / f"{step}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        shutil.move(str(self.step_path(step)), str(destination))
        _warn(f"moved the broken checkpoint of step {step} to {destination}")
    parallel.sync_processes("checkpoint.set_aside")
    self._manager.reload()


def file_digest(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, DIGEST_ALGORITHM).hexdigest()


def write_digests(step_dir: pathlib.Path) -> None:
  """Writes `step_dir/DIGEST_FILE`: the size and hash of every file below `step_dir` but the commit markers."""
  files = {}
  for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
    name = path.relative_to(step_dir).as_posix()
    if name not in COMMIT_MARKERS and name != DIGEST_FILE:
      files[name] = {"size": path.stat().st_size, DIGEST_ALGORITHM: file_digest(path)}
  partial = step_dir / f"{DIGEST_FILE}.partial"
  partial.write_text(json.dumps({"algorithm": DIGEST_ALGORITHM, "files": files}, indent=1) + "\n")
  os.replace(partial, step_dir / DIGEST_FILE)


def verify_digests(step_dir: pathlib.Path) -> str | None:
  """Why the files of `step_dir` do not match its DIGEST_FILE (a file changed, cut short or lost), or None.

  A step without DIGEST_FILE (saved before lensjax wrote them) is not checked.
  """
  digests = step_dir / DIGEST_FILE
  if not digests.is_file():
    return None
  try:
    files = json.loads(digests.read_text())["files"]
  except (ValueError, KeyError, TypeError):
    return f"has an unreadable {DIGEST_FILE}"
  for name, expected in files.items():
    path = step_dir / name
    if not path.is_file():
      return f"has lost {name}"
    size = path.stat().st_size
    if size != expected["size"]:
      return f"has {name} of {size} bytes, {expected['size']} when saved (cut short or overwritten)"
    if file_digest(path) != expected[DIGEST_ALGORITHM]:
      return f"has {name} changed since it was saved (its {DIGEST_ALGORITHM} checksum differs)"
  return None


def _restore_failure(error: BaseException) -> str:
  """'does not restore (<the first line of what Orbax raised, or of its cause>)'."""
  cause = error.__cause__ or error
  text = str(cause).strip().splitlines()
  return f"does not restore ({type(cause).__name__}: {text[0][:300] if text else ''})"


def _silence_abandoned_reads() -> None:
  """Drops the 'Event loop is closed' errors of a failed restore's other reads.

  When one read fails, Orbax closes the restore's event loop while TensorStore still has reads in flight; as
  each finishes, TensorStore's own thread calls `loop.call_soon_threadsafe`, which raises, and reports it
  through `sys.unraisablehook` or `PyErr_Print` (that is, `sys.excepthook`). Each would print a traceback
  under the one line that says what failed. Installed before every restore (a failure's reads can finish
  before the error reaches the caller); only errors raised by a native caller of `call_soon_threadsafe`
  are dropped, everything else reaches the previous hooks.
  """
  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook
  if getattr(previous_unraisable, "drops_abandoned_reads", False):
    return                           # installed by an earlier restore of this process

  def unraisable_hook(unraisable):
    if not _is_abandoned_read(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
      previous_unraisable(unraisable)

  def except_hook(exc_type, exc_value, traceback):
    if not _is_abandoned_read(exc_type, exc_value, traceback):
      previous_except(exc_type, exc_value, traceback)

  unraisable_hook.drops_abandoned_reads = except_hook.drops_abandoned_reads = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def _is_abandoned_read(exc_type, exc_value, traceback) -> bool:
  """True for asyncio's 'Event loop is closed' raised in `call_soon_threadsafe` called from native code
  (the outermost frame of the traceback is `call_soon_threadsafe` itself: no Python code called it)."""
  return (exc_type is RuntimeError and str(exc_value) == "Event loop is closed" and traceback is not None
          and traceback.tb_frame.f_code.co_name == "call_soon_threadsafe")


def _warn(message: str) -> None:
  if parallel.is_main_process():
    print(f"warning: {message}", flush=True)


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (a restore must succeed everywhere or be abandoned everywhere)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


class StopSignals:
  """SIGTERM, SIGUSR1 and Ctrl-C (SIGINT) become a stop request that all processes act on at the same step boundary.

  Use as a context manager around the training loop (it installs the handlers in the main thread and puts
  the previous ones back on exit) and call `agreed()` once per step, on every process. With one process
  the answer is immediate. With several, each step starts a tiny all-reduce (max over processes) of the
  flags and `agreed()` returns the result of the previous step's, which is ready by then: no process
  waits for another, and all see the request at the same step. A second SIGTERM or SIGUSR1 does not hurry
  things up: the save at the boundary is the point. Ctrl-C while a stop is pending does: it raises
  KeyboardInterrupt, as Ctrl-C does outside training (the steps since the last checkpoint are lost).
  """

  def __init__(self, mesh: jax.sharding.Mesh):
    self.received: str | None = None          # the name of the first signal received
    self._previous: dict[int, Any] = {}
    self._in_flight: jax.Array | None = None
    self._sharding = parallel.batch_sharding(mesh)
    self._any = jax.jit(jnp.max, out_shardings=parallel.replicated(mesh))

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    else:
      log.warning("not in the main thread: SIGTERM, SIGUSR1 and Ctrl-C will not trigger a checkpoint")
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if self.received is None:
      self.received = signal.Signals(signum).name
      if signum == signal.SIGINT and jax.process_index() == 0:
        print("Ctrl-C: saving a checkpoint at the end of this step, then stopping (Ctrl-C again: stop now, "
              "without saving)", file=sys.stderr, flush=True)
    elif signum == signal.SIGINT:
      raise KeyboardInterrupt

  def agreed(self) -> bool:
    """Whether the run stops at this step boundary (the same answer on every process)."""
    if jax.process_count() == 1:
      return self.received is not None
    decided = self._in_flight is not None and bool(self._in_flight)
    local = np.full((jax.local_device_count(),), self.received is not None, np.int32)
    self._in_flight = self._any(jax.make_array_from_process_local_data(self._sharding, local))
    return decided


__all__ = ["BROKEN_DIR", "CHECKPOINTS_DIR", "DIGEST_FILE", "CheckpointError", "Checkpoints", "Restored",
           "StopSignals", "abstract_state", "rng_from_json", "rng_to_json", "verify_digests", "write_digests"]
