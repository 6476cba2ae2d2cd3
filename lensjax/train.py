"""`python -m lensjax.train`: train a network on the configured data, evaluating and checkpointing as it goes.

  python -m lensjax.train                                   # configs/default.py into ./runs/default
  python -m lensjax.train --config isnet_sim:arcs --workdir runs/arcs --config.train.batch_size=16
  python -m lensjax.train --workdir runs/arcs               # again: resumes from the newest checkpoint
  python -m lensjax.train --workdir runs/arcs --restart     # or starts over, deleting the earlier run
  python -m lensjax.train --coordinator-address 127.0.0.1:12345 --num-processes 2 --process-id 0   # and id 1

The run directory (`--workdir`, default runs/<config name>) gets:
  config.json        the resolved config
  metrics.jsonl      one JSON object per line: `step`, `split` ('train' or 'val') and the metric names
                     (`loss`, `loss/d1`, `iou/arcs`, `dice/mean`, ...; see `lensjax.metrics`)
  checkpoints/       Orbax checkpoints (`lensjax.checkpoint`): every `checkpoint.every_steps`, at the end and
                     when stopped by a signal; the newest `checkpoint.keep` and the best by
                     `checkpoint.best_metric` are kept
  curves.png, predictions.png   figures refreshed at each evaluation (`lensjax.plots`)
  tensorboard/       TensorBoard event files, with `--config.train.tensorboard=true`
  gt_encoder/        IS-Net's trained ground-truth encoder, with `--config.train.feature_sync=true`

Resuming: rerunning with the same run directory continues from its newest complete checkpoint and prints
`resumed from step N`; the result is the same as an uninterrupted run (same batches, same random keys, same
parameters). Lines of metrics.jsonl after step N are dropped, so the curves stay continuous. A run directory
holding a run with a different config is refused (the differing keys are named) unless `--restart` is given,
which deletes the earlier run's checkpoints, metrics and figures first.

Stopping: SIGTERM (Slurm preemption, `scancel`) or SIGUSR1 (`sbatch --signal=B:USR1@120`) makes every process
save a checkpoint at the next step boundary and exit 0, so a requeued job continues where it stopped. A hard
kill (kill -9, a node failure) loses at most the steps since the last complete checkpoint (one interval, two
if it strikes while a checkpoint is being written) and never leaves a checkpoint that restores wrongly.

Only process 0 writes files and prints; every process runs the same steps (see `lensjax.parallel` for launch
modes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from lensjax import checkpoint, data, feature_sync, metrics, models, parallel, plots, progress, train_step
from lensjax import config as cfg

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# What a run writes into its directory; `--restart` deletes these (and nothing else).
RUN_OUTPUTS = (CONFIG_FILE, METRICS_FILE, plots.CURVES_FILE, plots.PREDICTIONS_FILE, TENSORBOARD_DIR,
               checkpoint.CHECKPOINTS_DIR, checkpoint.BROKEN_DIR, feature_sync.ENCODER_DIR)
# Config keys that may change when a run resumes: they change what is logged, kept or how fast data are read,
# not the batches, the parameters or the optimizer.
RESUMABLE_CHANGES = frozenset({
    "name", "train.log_every", "train.eval_every", "train.eval_batch_size", "train.figure_images",
    "train.tensorboard", "checkpoint.every_steps", "checkpoint.keep", "data.read_threads",
    "data.prefetch_batches", "data.worker_buffer_size"})


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


class RunMismatchError(ValueError):
  """The run directory holds a run with a different config."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, cfg.Config]:
  parser = argparse.ArgumentParser(
      prog="python -m lensjax.train", description=__doc__.split("\n\n")[0],
      epilog="Any config field can be overridden: --config.SECTION.FIELD=VALUE (e.g. --config.train.num_steps=200).")
  parser.add_argument("--config", default="default", help="config name in configs/ or a path (default: default)")
  parser.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
  parser.add_argument("--restart", action="store_true",
                      help="start over: delete the checkpoints, metrics and figures of an earlier run in --workdir")
  parser.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0, for multi-process runs")
  parser.add_argument("--num-processes", type=int, default=None)
  parser.add_argument("--process-id", type=int, default=None)
  parser.add_argument("--heartbeat-timeout", type=int, default=None,
                      help="seconds after which a silent process counts as dead (default 60)")
  args, overrides = cfg.parse_command_line(parser, argv)
  config = cfg.load_module_config(args.config)
  cfg.parse_overrides(config, overrides)
  return args, config


def say(message: str) -> None:
  """Prints a line about the run (process 0 only), at once."""
  if parallel.is_main_process():
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------
# The run directory.


class MetricsLog:
  """Appends one JSON object per line to `metrics.jsonl`, and optionally to TensorBoard (process 0 only)."""

  def __init__(self, path: pathlib.Path, tensorboard_dir: pathlib.Path | None = None, start_step: int = 0):
    self.path = path
    self.enabled = parallel.is_main_process()
    self._tensorboard = None
    if self.enabled and tensorboard_dir is not None:
      # TensorBoard drops the events of an earlier attempt from `purge_step` on, as this log drops its lines.
      self._tensorboard = _tensorboard_writer()(str(tensorboard_dir), purge_step=start_step + 1 if start_step
                                                else None)

  def keep_until(self, step: int) -> int:
    """Drops the lines after `step` (those of an attempt that did not reach a checkpoint); returns how many."""
    if not self.enabled or not self.path.is_file():
      return 0
    lines = [line for line in self.path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if _logged_step(line) <= step]
    if len(kept) < len(lines):
      _write_text_atomically(self.path, "".join(line + "\n" for line in kept))
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


def _tensorboard_writer():
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  # optional dependency
  except ImportError:
    raise ValueError("train.tensorboard=true needs the optional tensorboardX package: pip install "
                     "'lensjax[tensorboard]' (or tensorboardX), or set train.tensorboard=false") from None
  return SummaryWriter


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

  Returns the lines describing the harmless changes (RESUMABLE_CHANGES), to be printed.
  """
  changes = config_differences(previous, cfg.to_dict(config))
  blocking = [c for c in changes if c[0] not in RESUMABLE_CHANGES]
  if blocking:
    listed = "\n".join(f"  {key}: {old!r} there, {new!r} now" for key, old, new in blocking)
    raise RunMismatchError(
        f"{where} holds a run with a different config:\n{listed}\nResuming it would not continue the same "
        "training. Pass --restart to delete that run and start over, or choose another --workdir.")
  return [f"{key}: {old!r} -> {new!r}" for key, old, new in changes]


def _write_text_atomically(path: pathlib.Path, text: str) -> None:
  """Writes through a temporary file and a rename, so a reader (another process) never sees half of it."""
  temporary = path.with_name(f".{path.name}.tmp")
  temporary.write_text(text)
  os.replace(temporary, path)


def prepare_run_directory(workdir: pathlib.Path, config: cfg.Config, restart: bool) -> None:
  """Deletes an earlier run (`restart`) or checks that it has the same config; writes config.json.

  Every process checks (they read the same files); once all have, process 0 deletes and writes.
  """
  found = [name for name in RUN_OUTPUTS if (workdir / name).exists()]
  if restart and found:
    say(f"--restart: deleting the earlier run in {workdir} ({', '.join(found)})")
  elif (workdir / CONFIG_FILE).is_file():
    try:
      previous = json.loads((workdir / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
      raise RunMismatchError(f"{workdir / CONFIG_FILE} is not valid JSON ({error}); pass --restart to start "
                             "over, or choose another --workdir") from None
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
    _write_text_atomically(workdir / CONFIG_FILE, json.dumps(cfg.to_dict(config), indent=2) + "\n")
  parallel.sync_processes("train.run_directory_written")


# ---------------------------------------------------------------------------------------------------
# Model, evaluation.


def build_model_and_optimizer(config: cfg.Config, seed: int) -> tuple[nnx.Module, nnx.Optimizer]:
  """The configured network and its optimizer (parameters only, `wrt=nnx.Param`)."""
  model = models.build_from_config(config.model, in_channels=data.input_channels(config),
                                   out_channels=len(config.data.targets), seed=seed)
  tx = train_step.make_optimizer(config.optim, config.train.num_steps)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@dataclasses.dataclass
class Evaluation:
  """One pass over a split."""
  metrics: dict[str, float]               # `metrics.summarize` plus the losses (averaged over images)
  per_image: dict[str, np.ndarray]        # the per_image outputs, real images only, in the split's order
  panel: dict[str, np.ndarray] | None     # `image`, `mask`, `probabilities` of the first images (process 0's)


def evaluate_split(eval_step, state, loader, mesh, targets) -> Evaluation:
  """Runs `eval_step` (from `train_step.compile_eval_step`) over every batch of `loader` (a finite loader)."""
  totals, loss_sums, parts, panel = None, {}, [], None
  for local_batch in loader:
    out = eval_step(state, parallel.global_batch(local_batch, mesh))
    sums, per_image, probabilities = out.pop("sums"), out.pop("per_image"), out.pop("panel", None)
    batch_images = float(sums["images"])
    totals = metrics.accumulate(totals, sums)
    for k, v in train_step.host_scalars(out).items():
      loss_sums[k] = loss_sums.get(k, 0.0) + v * batch_images
    parts.append(jax.device_get(per_image))
    if panel is None and probabilities is not None:
      count = probabilities.shape[0]
      panel = {"image": np.asarray(local_batch["image"][:count]), "mask": np.asarray(local_batch["mask"][:count]),
               "probabilities": np.asarray(probabilities)}
  if totals is None:
    raise ValueError("the evaluation loader yielded no batch")
  images = float(totals["images"])
  summary = metrics.summarize(totals, targets)
  summary.update({k: v / images for k, v in loss_sums.items()})
  per_image = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
  real = per_image["valid"] > 0
  return Evaluation(summary, {k: v[real] for k, v in per_image.items()}, panel)


# ---------------------------------------------------------------------------------------------------
# Training.


def _check_train_config(config: cfg.Config) -> None:
  train = config.train
  for name in ("num_steps", "log_every", "eval_every"):
    if getattr(train, name) < 1:
      raise ValueError(f"train.{name}={getattr(train, name)}: expected a positive number of steps")
  if train.figure_images < 0:
    raise ValueError(f"train.figure_images={train.figure_images}: expected a number of images >= 0")
  _, _, target = config.checkpoint.best_metric.partition("/")
  if target and target not in (*config.data.targets, "mean"):
    raise ValueError(f"checkpoint.best_metric={config.checkpoint.best_metric!r}: no target '{target}'; the "
                     f"targets are {', '.join(config.data.targets)} (or 'mean')")
  checkpoint.check_config(config.checkpoint)
  if train.tensorboard:
    _tensorboard_writer()


def _refresh_figures(workdir: pathlib.Path, config: cfg.Config, evaluation: Evaluation | None, step: int) -> None:
  if not parallel.is_main_process():
    return
  plots.plot_curves(plots.read_metrics(workdir / METRICS_FILE), config.data.targets, workdir / plots.CURVES_FILE,
                    title=f"{workdir.name}: step {step}")
  if evaluation is not None and evaluation.panel is not None:
    plots.plot_predictions(evaluation.panel["image"], evaluation.panel["mask"], evaluation.panel["probabilities"],
                           config.data.targets, workdir / plots.PREDICTIONS_FILE,
                           title=f"{workdir.name}: validation images at step {step}")


def _last_validation(path: pathlib.Path) -> dict[str, float]:
  records = [r for r in plots.read_metrics(path) if r.get("split") == "val"]
  return {k: v for k, v in records[-1].items() if k not in ("step", "split")} if records else {}


class TrainingWindow:
  """The training metrics between two log lines.

  A step's metrics are fetched to the host one step late (when the next step has been dispatched), so the
  host never stalls the device; `fetch` fetches the held step at once (before a log line or a checkpoint).
  """

  def __init__(self, targets: tuple[str, ...]):
    self.targets = targets
    self._held: tuple[int, dict[str, Any]] | None = None
    self.restart_clock()
    self._images, self._sums, self._scalars = 0, None, []

  def restart_clock(self) -> None:
    """Starts timing anew (after an evaluation, which is not training time)."""
    self._start = time.perf_counter()

  def add(self, step: int, step_metrics: dict[str, Any], images: int) -> None:
    """Holds step `step`'s device metrics, fetching the previously held step's."""
    self.fetch()
    self._held = (step, step_metrics)
    self._images += images

  def fetch(self) -> None:
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


def train_and_evaluate(config: cfg.Config, workdir: str | pathlib.Path, *, restart: bool = False) -> dict[str, float]:
  """Trains `config` into `workdir`, resuming an earlier run there; returns the last validation metrics.

  See the module docstring for what the run directory holds, resuming, `restart` and stop signals. A run
  stopped by a signal returns the last validation metrics it computed ({} if none).
  """
  workdir = pathlib.Path(workdir)
  cfg.validate(config)
  _check_train_config(config)
  mesh = parallel.make_mesh()
  num_devices = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    size = getattr(config.train, name)
    if size % num_devices:
      raise ValueError(f"train.{name}={size} must be a multiple of the number of devices ({num_devices})")
  prepare_run_directory(workdir, config, restart)

  # The model's shapes first: a resumed run restores onto them without computing an initialisation.
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model_and_optimizer(config, config.train.seed)))
  state_sharding = parallel.state_shardings(abstract, mesh, config.train.fsdp)
  loss_fn = train_step.make_loss_fn(config)
  # IS-Net feature synchronisation: stage 1 trains (or, resuming, reloads) the ground-truth encoder.
  frozen = feature_sync.train_gt_encoder(config, mesh, workdir) if config.train.feature_sync else None
  frozen_state = None if frozen is None else frozen.state
  train = train_step.compile_train_step(graphdef, loss_fn, mesh, state_sharding, frozen)
  per_process_eval = config.train.eval_batch_size // jax.process_count()
  panel_images = min(config.train.figure_images, per_process_eval)
  evaluation_step = train_step.compile_eval_step(graphdef, loss_fn, mesh, state_sharding, panel_images)

  needs_edge = data.needs_edge(config)
  train_iter = iter(data.make_loader(config, "train", batch_size=config.train.batch_size // jax.process_count(),
                                     shuffle=True, num_epochs=None, seed=config.train.seed, with_edge=needs_edge))
  # Built once: its source (and the simulator's compiled renderer) serves every evaluation.
  val_loader = data.make_loader(config, "val", batch_size=per_process_eval, shuffle=False, num_epochs=1, seed=0,
                                with_edge=needs_edge)
  masks, mask_warnings = data.mask_source(config)
  say(f"data: {config.data.source} {config.data.path or ''}".rstrip() + f", masks: {masks}")
  for warning in mask_warnings:
    say(f"warning: {warning}")

  checkpoints = checkpoint.Checkpoints(workdir / checkpoint.CHECKPOINTS_DIR, config.checkpoint)
  restored = checkpoints.restore_latest(checkpoint.abstract_state(abstract, state_sharding), train_iter)
  if restored is not None:
    check_same_run(restored.config, config, restored.path)   # the changes allowed were printed above
    state, base_key, start_step = restored.state, restored.rng_key, restored.step
    say(f"resumed from step {start_step} ({restored.path})")
  else:
    _, state = nnx.split(build_model_and_optimizer(config, seed=config.train.seed))
    state = jax.device_put(state, state_sharding)
    base_key, start_step = jax.random.key(config.train.seed), 0
    say(f"starting a new run in {workdir}")
  log = MetricsLog(workdir / METRICS_FILE, workdir / TENSORBOARD_DIR if config.train.tensorboard else None,
                   start_step)
  dropped = log.keep_until(start_step)
  if dropped:
    say(f"dropped {dropped} lines of {log.path} written after step {start_step} by the interrupted attempt")
  if start_step >= config.train.num_steps:
    say(f"the run in {workdir} is complete (step {start_step} of {config.train.num_steps}); nothing to do. "
        "Pass --restart to train it again")
    checkpoints.close()
    log.close()
    return _last_validation(log.path)

  bar = progress.TrainingProgress(config.train.num_steps, enabled=parallel.is_main_process(),
                                  start_step=start_step)
  window = TrainingWindow(config.data.targets)
  last = {}

  def log_window(step):
    values = window.close()
    log.write(step, "train", values)
    bar.update(step, values)

  with checkpoints, checkpoint.StopSignals(mesh) as stop, bar:
    try:
      if start_step == 0:     # the untrained model: where the validation curves start
        evaluation = evaluate_split(evaluation_step, state, val_loader, mesh, config.data.targets)
        last = evaluation.metrics
        log.write(0, "val", last)
        bar.report(0, last, config.data.targets)
        _refresh_figures(workdir, config, evaluation, 0)
      for step in range(start_step + 1, config.train.num_steps + 1):
        batch = parallel.global_batch(next(train_iter), mesh)
        state, step_metrics = train(state, frozen_state, batch, jax.random.fold_in(base_key, step))
        window.add(step, step_metrics, config.train.batch_size)
        last_step = step == config.train.num_steps

        if step % config.train.log_every == 0 or last_step:
          log_window(step)

        evaluation = None
        if step % config.train.eval_every == 0 or last_step:
          evaluation = evaluate_split(evaluation_step, state, val_loader, mesh, config.data.targets)
          last = evaluation.metrics
          log.write(step, "val", last)
          bar.report(step, last, config.data.targets)
          _refresh_figures(workdir, config, evaluation, step)
          window.restart_clock()

        stopping = stop.agreed()
        every = config.checkpoint.every_steps
        if (every and step % every == 0) or last_step or stopping:
          window.fetch()    # checks the loss first: a state whose loss is not finite is never saved
          path = checkpoints.save(step, state=state, data_iterator=train_iter, rng_key=base_key, config=config,
                                  metrics=evaluation.metrics if evaluation else None)
        if stopping:
          if not window.empty:
            log_window(step)
          _refresh_figures(workdir, config, None, step)
          checkpoints.wait_until_finished()
          received = f"{stop.received} received" if stop.received else "a stop signal reached another process"
          say(f"{received}: saved the checkpoint of step {step} to {path}; run the same command again to resume")
          break
    finally:
      log.close()
  return last


def _check_finite(step: int, step_metrics: dict[str, Any]) -> dict[str, float]:
  scalars = train_step.host_scalars(step_metrics)
  if not math.isfinite(scalars["loss"]):
    raise NonFiniteLossError(
        f"the training loss is {scalars['loss']} at step {step}; lower optim.learning_rate, set "
        "optim.grad_clip_norm, or check the data with `python -m lensjax.data check`")
  return scalars


def main(argv: list[str] | None = None) -> int:
  args, config = parse_args(sys.argv[1:] if argv is None else argv)
  parallel.initialize(parallel.options_from_env(
      coordinator_address=args.coordinator_address, num_processes=args.num_processes,
      process_id=args.process_id, heartbeat_timeout=args.heartbeat_timeout))
  workdir = args.workdir or str(pathlib.Path("runs") / config.name)
  try:
    train_and_evaluate(config, workdir, restart=args.restart)
  except (RunMismatchError, checkpoint.CheckpointError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
