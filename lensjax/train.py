"""`python -m lensjax.train`: train a network on the configured data, evaluating and checkpointing as it goes.

  python -m lensjax.train                                   # configs/default.py into ./runs/default
  python -m lensjax.train --config isnet_sim:arcs --workdir runs/arcs --config.train.batch_size=16
  python -m lensjax.train --workdir runs/arcs               # again: resumes from the newest checkpoint
  python -m lensjax.train --workdir runs/arcs --restart     # or starts over, deleting the earlier run
  python -m lensjax.train --coordinator-address 127.0.0.1:12345 --num-processes 2 --process-id 0   # and id 1

The run directory (`--workdir`, default runs/<config name>) gets:
  config.json        the resolved config (it marks the directory as a lensjax run)
  run.lock           locked while a training uses the directory: a second one is refused, naming the holder
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
which deletes the earlier run's checkpoints, metrics and figures first (and refuses a directory that holds no
lensjax run). The config, the device count, the model and the datasets are all checked before anything is
written, so a start that fails leaves the run directory as it was (`lensjax.run_directory`).

Stopping: SIGTERM (Slurm preemption, `scancel`), SIGUSR1 (`sbatch --signal=B:USR1@120`) or Ctrl-C makes every
process save a checkpoint at the next step boundary and exit 0, so a requeued job continues where it stopped
(a second Ctrl-C stops at once, without saving). A hard
kill (kill -9, a node failure) loses at most the steps since the last complete checkpoint (one interval, two
if it strikes while a checkpoint is being written) and never leaves a checkpoint that restores wrongly.

Only process 0 writes files and prints; every process runs the same steps (see `lensjax.parallel` for launch
modes).
"""

from __future__ import annotations

import pathlib
import sys

import jax

from lensjax import checkpoint, cli, data, evaluation, feature_sync, parallel, plots, progress, registry
from lensjax import config as cfg
from lensjax import host_memory, run_directory, step_loop, train_step
from lensjax.run_directory import say


def _refresh_figures(workdir: pathlib.Path, config: cfg.Config, result: evaluation.Evaluation | None,
                     step: int) -> None:
  if not parallel.is_main_process():
    return
  plots.plot_curves(plots.read_metrics(workdir / run_directory.METRICS_FILE), config.data.targets,
                    workdir / plots.CURVES_FILE, title=f"{workdir.name}: step {step}")
  if result is not None and result.panel is not None:
    plots.plot_predictions(result.panel["image"], result.panel["mask"], result.panel["probabilities"],
                           config.data.targets, workdir / plots.PREDICTIONS_FILE,
                           title=f"{workdir.name}: validation images at step {step}")


def _last_validation(path: pathlib.Path) -> dict[str, float]:
  records = [r for r in plots.read_metrics(path) if r.get("split") == "val"]
  return {k: v for k, v in records[-1].items() if k not in ("step", "split")} if records else {}


def evaluations_without_improvement(records: list[dict], options: cfg.CheckpointConfig) -> tuple[int, dict | None]:
  """(validations since the best one by `options.best_metric`, that best record) over `records` (metrics.jsonl);
  (0, None) before the first validation. A tie is no improvement: the earliest best counts."""
  rows = [r for r in records if r.get("split") == "val" and options.best_metric in r]
  if not rows:
    return 0, None
  values = [r[options.best_metric] for r in rows]
  best = (max if options.best_mode == "max" else min)(range(len(values)), key=values.__getitem__)
  return len(rows) - 1 - best, rows[best]


def _early_stop_reason(config: cfg.Config, validations: list[dict]) -> str | None:
  """Why the run stops early (`train.early_stop_evals` validations without a better best metric), or None."""
  patience = config.train.early_stop_evals
  stale, best = evaluations_without_improvement(validations, config.checkpoint)
  if not patience or stale < patience:
    return None
  return (f"validation {config.checkpoint.best_metric} has not improved for {stale} evaluations (best "
          f"{best[config.checkpoint.best_metric]:.4f} at step {best['step']}; train.early_stop_evals={patience})")


def _restore_or_initialise(config: cfg.Config, mesh, target: train_step.TrainState,
                           checkpoints: checkpoint.Checkpoints, train_iter, workdir: pathlib.Path):
  """(state, base random key, step) of the newest checkpoint that restores (also repositioning `train_iter`),
  or of a new run."""
  restored = checkpoints.restore_latest(target.state, train_iter)
  if restored is None:
    say(f"starting a new run in {workdir}")
    return train_step.create_train_state(config, mesh, config.train.seed).state, jax.random.key(config.train.seed), 0
  run_directory.check_same_run(restored.config, config, restored.path)   # the allowed changes were printed
  say(f"resumed from step {restored.step} ({restored.path})")
  return restored.state, restored.rng_key, restored.step


def train_and_evaluate(config: cfg.Config, workdir: str | pathlib.Path, *, restart: bool = False) -> dict[str, float]:
  """Trains `config` into `workdir`, resuming an earlier run there; returns the last validation metrics.

  See the module docstring for what the run directory holds, resuming, `restart` and stop signals. A run
  stopped by a signal returns the last validation metrics it computed ({} if none).
  """
  workdir, train = pathlib.Path(workdir), config.train
  # Everything that can be checked is checked before the run directory is touched.
  cfg.validate(config)
  config.check_devices(jax.device_count())
  mesh = parallel.make_mesh()
  target = train_step.create_train_state(config, mesh, train.seed, abstract=True)
  loss_fn = train_step.make_loss_fn(config)
  per_process_eval = train.eval_batch_size // jax.process_count()
  needs_edge = data.needs_edge(config)
  train_iter = iter(data.make_loader(config, "train", batch_size=train.batch_size // jax.process_count(),
                                     shuffle=True, num_epochs=None, seed=train.seed, with_edge=needs_edge))
  # Built once: its source (and the simulator's compiled renderer) serves every evaluation.
  val_loader = data.make_loader(config, "val", batch_size=per_process_eval, shuffle=False, num_epochs=1, seed=0,
                                with_edge=needs_edge)
  masks, mask_warnings = data.mask_source(config)
  say(f"data: {config.data.source} {config.data.path or ''}".rstrip() + f", masks: {masks}")
  for warning in mask_warnings:
    say(f"warning: {warning}")
  say(f"host memory: {host_memory.status()}")

  with run_directory.locked(workdir), checkpoint.StopSignals(mesh) as stop:
    run_directory.prepare(workdir, config, restart)
    # IS-Net feature synchronisation: stage 1 trains (or, resuming, reloads) the ground-truth encoder.
    frozen = feature_sync.train_gt_encoder(config, mesh, workdir, stop) if train.feature_sync else None
    if train.feature_sync and frozen is None:
      say(f"{stop.received or 'a stop signal'} during the ground-truth encoder stage; run the same command again "
          "to start it again")
      return {}
    train_fn = train_step.compile_train_step(target.graphdef, loss_fn, mesh, target.shardings, frozen)
    eval_fn = train_step.compile_eval_step(target.graphdef, loss_fn, mesh, target.shardings,
                                           min(train.figure_images, per_process_eval))
    with checkpoint.Checkpoints(workdir / checkpoint.CHECKPOINTS_DIR, config.checkpoint) as checkpoints:
      state, base_key, start_step = _restore_or_initialise(config, mesh, target, checkpoints, train_iter, workdir)
      log = run_directory.MetricsLog(workdir / run_directory.METRICS_FILE,
                                     workdir / run_directory.TENSORBOARD_DIR if train.tensorboard else None,
                                     start_step)
      dropped = log.keep_until(start_step)
      if dropped:
        say(f"dropped {dropped} lines of {log.path} written after step {start_step} by the interrupted attempt")
      # The validation history, kept in memory by every process (the metrics are global, so all agree on when
      # to stop early); on resume, the records up to the restored step.
      validations = [r for r in plots.read_metrics(log.path) if r.get("split") == "val" and r["step"] <= start_step]
      stopped_early = _early_stop_reason(config, validations) if start_step else None
      if start_step >= train.num_steps or stopped_early:
        say(f"the run in {workdir} is complete (step {start_step} of {train.num_steps}"
            + (f", stopped early: {stopped_early}" if stopped_early else "")
            + "); nothing to do. Pass --restart to train it again")
        log.close()
        return _last_validation(log.path)

      bar = progress.TrainingProgress(train.num_steps, enabled=parallel.is_main_process(), start_step=start_step,
                                      main_loss=registry.network(config.model.name).main_loss)
      last = {}

      def validate_at(step: int, state) -> evaluation.Evaluation:
        nonlocal last
        result = evaluation.evaluate_split(eval_fn, state, val_loader, mesh, config.data.targets)
        last = result.metrics
        validations.append({"step": step, "split": "val", **last})
        log.write(step, "val", last)
        bar.report(step, last, config.data.targets)
        _refresh_figures(workdir, config, result, step)
        return result

      def after_step(event: step_loop.StepEvent) -> bool:
        """Evaluates and checkpoints; returns True to stop early (the same answer on every process, since the
        validation metrics are global)."""
        result, stop_early = None, False
        if event.step % train.eval_every == 0 or event.last:
          result = validate_at(event.step, event.state)
          event.window.restart_clock()
          stop_early = not event.last and _early_stop_reason(config, validations) is not None
        every = config.checkpoint.every_steps
        if (every and event.step % every == 0) or event.last or event.stopping or stop_early:
          event.window.fetch()    # checks the loss first: a state whose loss is not finite is never saved
          checkpoints.save(event.step, state=event.state, data_iterator=train_iter, rng_key=base_key, config=config,
                           metrics=result.metrics if result else None)
        return stop_early

      try:
        with bar:
          if start_step == 0:     # the untrained model: where the validation curves start
            validate_at(0, state)
          outcome = step_loop.run_steps(
              train_fn, state, (parallel.global_batch(b, mesh) for b in train_iter), base_key,
              steps=range(start_step + 1, train.num_steps + 1), batch_size=train.batch_size,
              targets=config.data.targets, log_every=train.log_every, bar=bar,
              log=lambda step, values: log.write(step, "train", values),
              frozen_state=None if frozen is None else frozen.state, stop=stop, after_step=after_step)
          if outcome.ended_by_hook:
            say(f"stopped early at step {outcome.step}: {_early_stop_reason(config, validations)}")
          if outcome.stopped:
            _refresh_figures(workdir, config, None, outcome.step)
            checkpoints.wait_until_finished()
            received = f"{stop.received} received" if stop.received else "a stop signal reached another process"
            say(f"{received}: saved the checkpoint of step {outcome.step} to {checkpoints.step_path(outcome.step)}; "
                "run the same command again to resume")
      finally:
        log.close()
  return last


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m lensjax.train", description=__doc__.split("\n\n")[0])
  cli.add_config_argument(parser)
  parser.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
  parser.add_argument("--restart", action="store_true",
                      help="start over: delete the checkpoints, metrics and figures of an earlier run in --workdir")
  cli.add_process_arguments(parser)
  args, config = cli.parse_with_config(parser, argv)
  parallel.initialize(cli.distributed_options(args))
  train_and_evaluate(config, args.workdir or str(pathlib.Path("runs") / config.name), restart=args.restart)
  return 0


if __name__ == "__main__":
  sys.exit(main())
