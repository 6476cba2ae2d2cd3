"""The one training-step loop: batches -> jitted step -> metrics (NaN check) -> log lines -> hooks -> stop signals.

Training (`lensjax.train`), IS-Net's ground-truth encoder stage (`lensjax.feature_sync`), the throughput benchmark
and the parallel tests all run their steps through `run_steps`. Step `s` of a run uses the random key
`fold_in(base_key, s)`, so a resumed run repeats exactly the keys of an uninterrupted one.

A step's metrics are fetched to the host one step late (when the next step has been dispatched), so the host
never stalls the device; a loss that is not finite stops the loop with `NonFiniteLossError` naming the step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from lensjax import checkpoint, metrics, progress, train_step


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def _check_finite(step: int, step_metrics: dict[str, Any]) -> dict[str, float]:
  scalars = train_step.host_scalars(step_metrics)
  if not math.isfinite(scalars["loss"]):
    raise NonFiniteLossError(
        f"the training loss is {scalars['loss']} at step {step}; lower optim.learning_rate, set "
        "optim.grad_clip_norm, or check the data with `python -m lensjax.data check`")
  return scalars


class TrainingWindow:
  """The training metrics between two log lines: mean losses, IoU per target, images per second."""

  def __init__(self, targets: tuple[str, ...]):
    self.targets = targets
    self._held: tuple[int, dict[str, Any]] | None = None
    self.restart_clock()
    self._images, self._sums, self._scalars = 0, None, []

  def restart_clock(self) -> None:
    """Starts timing anew (after an evaluation, which is not training time)."""
    self._start = time.perf_counter()

  def add(self, step: int, step_metrics: dict[str, Any], images: int) -> None:
    """Holds step `step`'s device metrics, fetching (and checking) the previously held step's."""
    self.fetch()
    self._held = (step, step_metrics)
    self._images += images

  def fetch(self) -> None:
    """Fetches and checks the held step's metrics now (before a log line or a checkpoint)."""
    if self._held is not None:
      self._scalars.append(_check_finite(*self._held))
      self._sums = metrics.accumulate(self._sums, self._held[1]["sums"])
      self._held = None

  @property
  def empty(self) -> bool:
    return self._held is None and not self._scalars

  def close(self) -> dict[str, float]:
    """The window's log line: mean losses, IoU per target over its batches, images per second; then resets."""
    self.fetch()
    values = {k: float(np.mean([s[k] for s in self._scalars])) for k in self._scalars[0]}
    values.update({k: v for k, v in metrics.summarize(self._sums, self.targets).items() if k.startswith("iou/")})
    values["images_per_sec"] = self._images / (time.perf_counter() - self._start)
    self._images, self._sums, self._scalars = 0, None, []
    self.restart_clock()
    return values


@dataclasses.dataclass
class StepEvent:
  """What `run_steps` tells its `after_step` hook after each step."""
  step: int
  state: Any
  last: bool                       # the loop's last step
  stopping: bool                   # every process agreed to stop after this step (a stop signal)
  window: TrainingWindow           # `window.fetch()` checks the loss before the state is saved


@dataclasses.dataclass
class LoopResult:
  state: Any
  step: int                        # the last step run
  stopped: bool                    # ended early by a stop signal
  ended_by_hook: bool = False      # ended early because `after_step` returned True (early stopping)


def run_steps(step_fn: Callable, state: Any, batches: Iterator[dict[str, jax.Array]], base_key: jax.Array, *,
              steps: range, batch_size: int, targets: tuple[str, ...], log_every: int,
              bar: progress.TrainingProgress | None = None, log: Callable[[int, dict[str, float]], None] | None = None,
              frozen_state: Any = None, stop: checkpoint.StopSignals | None = None,
              after_step: Callable[[StepEvent], None] | None = None) -> LoopResult:
  """Runs `step_fn(state, frozen_state, batch, fold_in(base_key, step))` for every step of `steps`.

  Args:
    batches: global batches (`parallel.global_batch`), one per step.
    batch_size: images per global batch (for images/s).
    log_every: a training log line (mean losses, IoU, images/s) every this many steps and at the last step,
      passed to `log(step, values)` and shown on `bar`.
    stop: stop signals; once every process has one, the loop ends after that step's hook.
    after_step: called after each step (and its log line): evaluation, checkpoints, timing. It returns True to
      end the loop after that step (early stopping; every process must return the same).
  Returns:
    The state after the last step run, that step, and whether a stop signal or the hook ended the loop.
  """
  window = TrainingWindow(targets)

  def write_log(step: int) -> None:
    values = window.close()
    if log is not None:
      log(step, values)
    if bar is not None:
      bar.update(step, values)

  step = steps.start - 1
  for step in steps:
    state, step_metrics = step_fn(state, frozen_state, next(batches), jax.random.fold_in(base_key, step))
    window.add(step, step_metrics, batch_size)
    last = step == steps[-1]
    if step % log_every == 0 or last:
      write_log(step)
    stopping = stop is not None and stop.agreed()
    ends = after_step is not None and bool(after_step(StepEvent(step, state, last, stopping, window)))
    if stopping or (ends and not last):
      if not window.empty:
        write_log(step)
      return LoopResult(state, step, stopping, ended_by_hook=not stopping)
  window.fetch()
  return LoopResult(state, step, False)
