"""`python -m lensjax.train`: train a network on the configured data, evaluating as it goes.

  python -m lensjax.train                                   # configs/default.py into ./runs/default
  python -m lensjax.train --config isnet_sim_arcs --workdir runs/arcs --config.train.batch_size=16
  python -m lensjax.train --coordinator-address 127.0.0.1:12345 --num-processes 2 --process-id 0   # and id 1

The run directory gets `config.json` (the resolved config), `metrics.jsonl` (one JSON object per line with `step`,
`split` and the metric names, e.g. `iou/arcs`) and, from the checkpointing code, checkpoints and figures. Only
process 0 writes files and prints; every process runs the same steps (see `lensjax.parallel` for launch modes).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from lensjax import config as cfg
from lensjax import data, feature_sync, metrics, models, parallel, progress, train_step


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, cfg.Config]:
  parser = argparse.ArgumentParser(
      prog="python -m lensjax.train", description=__doc__.split("\n\n")[0],
      epilog="Any config field can be overridden: --config.SECTION.FIELD=VALUE (e.g. --config.train.num_steps=200).")
  parser.add_argument("--config", default="default", help="config name in configs/ or a path (default: default)")
  parser.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
  parser.add_argument("--coordinator-address", default=None, help="HOST:PORT of process 0, for multi-process runs")
  parser.add_argument("--num-processes", type=int, default=None)
  parser.add_argument("--process-id", type=int, default=None)
  parser.add_argument("--heartbeat-timeout", type=int, default=None,
                      help="seconds after which a silent process counts as dead (default 60)")
  args, rest = parser.parse_known_args(argv)
  config = cfg.load_module_config(args.config)
  unknown = cfg.parse_overrides(config, rest)
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)}")
  return args, config


class MetricsLog:
  """Appends one JSON object per line to `metrics.jsonl` (process 0 only)."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.enabled = parallel.is_main_process()

  def write(self, step: int, split: str, values: dict[str, float]) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, "split": split, **values}) + "\n")


def build_model_and_optimizer(config: cfg.Config, seed: int) -> tuple[nnx.Module, nnx.Optimizer]:
  """The configured network and its optimizer (parameters only, `wrt=nnx.Param`)."""
  model = models.build_from_config(config.model, in_channels=data.input_channels(config),
                                   out_channels=len(config.data.targets), seed=seed)
  tx = train_step.make_optimizer(config.optim, config.train.num_steps)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def evaluate(eval_step, state, config: cfg.Config, mesh, split: str = "val") -> dict[str, float]:
  """Metrics over one pass of `split`: losses averaged over images, confusion metrics summed exactly."""
  needs_edge = config.model.name == "msrfnet"
  per_process = config.train.eval_batch_size // jax.process_count()
  loader = data.make_loader(config, split, batch_size=per_process, shuffle=False, num_epochs=1, seed=0,
                            with_edge=needs_edge)
  totals, loss_sums = None, {}
  for local_batch in loader:
    out = eval_step(state, parallel.global_batch(local_batch, mesh))
    sums = out.pop("sums")
    batch_images = float(sums["images"])
    totals = metrics.accumulate(totals, sums)
    for k, v in train_step.host_scalars(out).items():
      loss_sums[k] = loss_sums.get(k, 0.0) + v * batch_images
  images = float(totals["images"])
  summary = metrics.summarize(totals, config.data.targets)
  summary.update({k: v / images for k, v in loss_sums.items()})
  return summary


def train_and_evaluate(config: cfg.Config, workdir: str | pathlib.Path) -> dict[str, float]:
  """Trains `config` into `workdir`; returns the final validation metrics."""
  workdir = pathlib.Path(workdir)
  cfg.validate(config)
  mesh = parallel.make_mesh()
  num_devices = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    size = getattr(config.train, name)
    if size % num_devices:
      raise ValueError(f"train.{name}={size} must be a multiple of the number of devices ({num_devices})")
  if parallel.is_main_process():
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(cfg.to_dict(config), indent=2) + "\n")
  log = MetricsLog(workdir / "metrics.jsonl")

  model, optimizer = build_model_and_optimizer(config, seed=config.train.seed)
  graphdef, state = nnx.split((model, optimizer))
  state, state_sharding = train_step.place_state(state, mesh, config.train.fsdp)
  loss_fn = train_step.make_loss_fn(config)
  frozen = feature_sync.train_gt_encoder(config, mesh, workdir) if config.train.feature_sync else None
  frozen_state = None if frozen is None else frozen.state
  train = train_step.compile_train_step(graphdef, loss_fn, mesh, state_sharding, frozen)
  evaluate_step = train_step.compile_eval_step(graphdef, loss_fn, mesh, state_sharding)

  needs_edge = "edge" in model.input_keys
  per_process = config.train.batch_size // jax.process_count()
  train_loader = data.make_loader(config, "train", batch_size=per_process, shuffle=True, num_epochs=None,
                                  seed=config.train.seed, with_edge=needs_edge)
  train_iter = iter(train_loader)
  base_key = jax.random.key(config.train.seed)

  bar = progress.TrainingProgress(config.train.num_steps, enabled=parallel.is_main_process())
  window_start, window_images, window_sums, window_scalars = time.perf_counter(), 0, None, []
  pending = None       # the previous step's metrics: fetched one step late, so the host never stalls the device
  final = evaluate(evaluate_step, state, config, mesh)      # the untrained model: where the curves start
  log.write(0, "val", final)
  with bar:
    bar.report(0, final, config.data.targets)
    for step in range(1, config.train.num_steps + 1):
      batch = parallel.global_batch(next(train_iter), mesh)
      state, step_metrics = train(state, frozen_state, batch, jax.random.fold_in(base_key, step))
      if pending is not None:
        window_scalars.append(_check_finite(*pending))
        window_sums = metrics.accumulate(window_sums, pending[1]["sums"])
      pending = (step, step_metrics)
      window_images += config.train.batch_size

      if step % config.train.log_every == 0 or step == config.train.num_steps:
        window_scalars.append(_check_finite(*pending))
        window_sums = metrics.accumulate(window_sums, pending[1]["sums"])
        pending = None
        elapsed = time.perf_counter() - window_start
        values = {k: float(np.mean([s[k] for s in window_scalars])) for k in window_scalars[0]}
        values.update({k: v for k, v in metrics.summarize(window_sums, config.data.targets).items()
                       if k.startswith("iou/")})
        values["images_per_sec"] = window_images / elapsed
        log.write(step, "train", values)
        bar.update(step, values)
        window_start, window_images, window_sums, window_scalars = time.perf_counter(), 0, None, []

      if step % config.train.eval_every == 0 or step == config.train.num_steps:
        final = evaluate(evaluate_step, state, config, mesh)
        log.write(step, "val", final)
        bar.report(step, final, config.data.targets)
        window_start = time.perf_counter()
  return final


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
  train_and_evaluate(config, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
