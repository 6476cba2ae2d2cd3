"""A training run's directory: what it holds, its lock, its config file, `--restart`, and its metrics log.

  config.json        the resolved config; its presence marks a lensjax run (`--restart` deletes nothing else)
  run.lock           held (an OS file lock) by process 0 of the training that uses the directory
  metrics.jsonl      one JSON object per line: `step`, `split` and the metric names
  checkpoints/, broken_checkpoints/, gt_encoder/, curves.png, predictions.png, tensorboard/

The lock: a second training on the same directory (two jobs, or a Slurm requeue overlapping a job still running)
is refused with the holder's process id and host. It is an `flock` on `run.lock`, which the operating system
releases when the holder exits, however it exits (kill -9 included), so a dead run never blocks the next one.
The file itself stays; only the lock on it counts.

Every check happens before anything is written, so a start that fails leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import pathlib
import shutil
import socket
from collections.abc import Iterator
from typing import Any

from lensjax import checkpoint, parallel, plots
from lensjax import config as cfg

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
ENCODER_DIR = "gt_encoder"     # IS-Net's trained ground-truth encoder (`lensjax.feature_sync`)
LOCK_FILE = "run.lock"
# What a run writes into its directory; `--restart` deletes these (and nothing else).
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, plots.CURVES_FILE, plots.PREDICTIONS_FILE, TENSORBOARD_DIR,
               checkpoint.CHECKPOINTS_DIR, checkpoint.BROKEN_DIR, ENCODER_DIR)


class RunDirectoryError(ValueError):
  """The run directory cannot be used as asked."""


class RunMismatchError(RunDirectoryError):
  """The run directory holds a run with a different config."""


class RunLockedError(RunDirectoryError):
  """Another training holds the run directory."""


def say(message: str) -> None:
  """Prints a line about the run (process 0 only), at once."""
  if parallel.is_main_process():
    print(message, flush=True)


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
  """Holds the run directory's lock (process 0; the others share its run) for the `with` block.

  Creates `workdir` if needed. Raises RunLockedError naming the holder if another process holds it.
  """
  if not parallel.is_main_process():
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  descriptor = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(descriptor, 1024, 0).decode(errors="replace").strip() or "another process"
      raise RunLockedError(f"{workdir} is in use by a training run ({holder}); wait for it to end or stop it, "
                           "or choose another --workdir") from None
    os.ftruncate(descriptor, 0)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
    yield
  finally:
    os.close(descriptor)     # releases the lock


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'train': {'seed': 0}} -> {'train.seed': 0}."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(flat_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(key, old value, new value) for every dotted key whose value differs between two `cfg.to_dict` trees."""
  old_flat, new_flat = flat_config(old), flat_config(new)
  return [(key, old_flat.get(key, "<absent>"), new_flat.get(key, "<absent>"))
          for key in sorted(set(old_flat) | set(new_flat)) if old_flat.get(key) != new_flat.get(key)]


def check_same_run(previous: dict[str, Any], config: cfg.Config, where: pathlib.Path) -> list[str]:
  """Raises RunMismatchError if `config` differs from `previous` in a key that changes the training.

  Returns the lines describing the harmless changes (fields declared `resumable` in `lensjax.config`).
  """
  changes = config_differences(previous, cfg.to_dict(config))
  allowed = cfg.resumable_keys()
  blocking = [c for c in changes if c[0] not in allowed]
  if blocking:
    listed = "; ".join(f"{key}: {old!r} there, {new!r} now" for key, old, new in blocking)
    raise RunMismatchError(
        f"{where} holds a run with a different config ({listed}); resuming it would not continue the same "
        "training. Pass --restart to delete that run and start over, or choose another --workdir")
  return [f"{key}: {old!r} -> {new!r}" for key, old, new in changes]


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  """Writes through a temporary file and a rename, so a reader (another process) never sees half of it."""
  temporary = path.with_name(f".{path.name}.tmp")
  temporary.write_text(text)
  os.replace(temporary, path)


def read_config(workdir: pathlib.Path) -> dict[str, Any] | None:
  """The run's saved config as written (`cfg.to_dict`), None without one; RunDirectoryError if unreadable."""
  path = workdir / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    saved = error
  sections = {f.name for f in dataclasses.fields(cfg.Config)} - {"name"}
  if not isinstance(saved, dict) or not sections <= set(saved):
    raise RunDirectoryError(f"{path} is not a lensjax config (not JSON with the sections {', '.join(sorted(sections))})"
                            "; it was not written by python -m lensjax.train: choose another --workdir")
  return saved


def prepare(workdir: pathlib.Path, config: cfg.Config, restart: bool) -> None:
  """Deletes an earlier run (`restart`) or checks that it has the same config; then writes config.json.

  Call with the lock held. `--restart` deletes only a lensjax run's outputs, and only in a directory whose
  config.json marks it as one. Every process checks (they read the same files); once all have, process 0
  deletes and writes.
  """
  found = [name for name in RUN_OUTPUTS if (workdir / name).exists()]
  previous = read_config(workdir)
  if restart and found:
    if previous is None:
      raise RunDirectoryError(f"--restart: {workdir} has {', '.join(found)} but no lensjax {CONFIG_FILE}, so it "
                              "is not a lensjax run; nothing was deleted. Choose another --workdir")
    say(f"--restart: deleting the earlier run in {workdir} ({', '.join(found)})")
  elif previous is not None:
    for line in check_same_run(previous, config, workdir):
      say(f"resuming with a changed setting: {line}")
  parallel.sync_processes("train.run_directory_checked")   # nothing changes while a process still reads
  if parallel.is_main_process():
    if restart:
      for name in found:
        path = workdir / name
        if path.is_dir():
          shutil.rmtree(path)
        else:
          path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(workdir / CONFIG_FILE, json.dumps(cfg.to_dict(config), indent=2) + "\n")
  parallel.sync_processes("train.run_directory_written")


class MetricsLog:
  """Appends one JSON object per line to `metrics.jsonl`, and optionally to TensorBoard (process 0 only)."""

  def __init__(self, path: pathlib.Path, tensorboard_dir: pathlib.Path | None = None, start_step: int = 0):
    self.path = path
    self.enabled = parallel.is_main_process()
    self._tensorboard = None
    if self.enabled and tensorboard_dir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  # optional; the config checks it
      # TensorBoard drops the events of an earlier attempt from `purge_step` on, as this log drops its lines.
      self._tensorboard = SummaryWriter(str(tensorboard_dir), purge_step=start_step + 1 if start_step else None)

  def keep_until(self, step: int) -> int:
    """Drops the lines after `step` (those of an attempt that did not reach a checkpoint); returns how many."""
    if not self.enabled or not self.path.is_file():
      return 0
    lines = [line for line in self.path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) < len(lines):
      write_text_atomically(self.path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    if self._tensorboard is not None:
      for name, value in values.items():
        self._tensorboard.add_scalar(f"{split}/{name}", value, step)
      self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _logged_step(line: str) -> float:
  """The step of a metrics.jsonl line; infinite for a line cut short by a hard kill (so it is dropped)."""
  try:
    return json.loads(line)["step"]
  except (json.JSONDecodeError, KeyError, TypeError):
    return math.inf
