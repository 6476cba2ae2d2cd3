"""DIS intermediate supervision for IS-Net: train a ground-truth encoder, then synchronise features to it.

Stage 1 (`train_gt_encoder`) trains `ISNetGTEncoder` to autoencode the training masks with IS-Net's deep
supervision loss (the DIS authors overfit it on purpose: it only has to represent masks). Stage 2 is the normal
IS-Net training with, added to its loss, the MSE between each decoder feature map [hx1d .. hx5d, hx6] and the
frozen encoder's [hx1 .. hx6] for the same masks (`lensjax.losses.feature_sync_loss`, weight
`train.feature_sync_weight`). The encoder is evaluated with its running BatchNorm statistics, so its targets
depend on each mask alone (upstream left it in train mode). The original project's path for this was broken
(docs/networks.md); here it runs with `--config.train.feature_sync=true`.

The trained encoder is saved in `<workdir>/gt_encoder` (an Orbax checkpoint of its NNX state) and reused when the
run is resumed.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx

from lensjax import config as cfg
from lensjax import data, parallel, progress, registry, run_directory, step_loop, train_step


def train_gt_encoder(config: cfg.Config, mesh, workdir: str | pathlib.Path, stop=None
                     ) -> train_step.FrozenEncoder | None:
  """Stage 1: trains (or reloads from `workdir`) the ground-truth encoder; returns it frozen, on the mesh.

  `stop`: the run's `checkpoint.StopSignals`; a stop signal during this stage returns None, saving nothing (the
  stage starts again when the run is resumed).
  """
  directory = pathlib.Path(workdir).resolve() / run_directory.ENCODER_DIR
  seed = config.train.seed + 1
  name = registry.network(config.model.name).gt_encoder
  steps = config.train.gt_encoder_steps
  encoder = train_step.create_train_state(config, mesh, seed, name=name, num_steps=steps, abstract=True)
  model_only = lambda state: nnx.state(nnx.merge(encoder.graphdef, state)[0])
  checkpointer = ocp.StandardCheckpointer()
  if directory.exists():
    encoder_state = checkpointer.restore(directory, target=model_only(encoder.state))
  else:
    encoder = train_step.create_train_state(config, mesh, seed, name=name, num_steps=steps)
    step_fn = train_step.compile_train_step(encoder.graphdef, train_step.make_loss_fn(config, name), mesh,
                                            encoder.shardings)
    loader = data.make_loader(config, "train", batch_size=config.train.batch_size // jax.process_count(),
                              shuffle=True, num_epochs=None, seed=seed, with_edge=False)
    bar = progress.TrainingProgress(steps, enabled=parallel.is_main_process(), label="gt encoder",
                                    main_loss=registry.network(name).main_loss)
    with bar:
      result = step_loop.run_steps(step_fn, encoder.state, (parallel.global_batch(b, mesh) for b in loader),
                                   jax.random.key(seed), steps=range(1, steps + 1),
                                   batch_size=config.train.batch_size, targets=config.data.targets,
                                   log_every=config.train.log_every, bar=bar, stop=stop)
    if result.stopped:
      return None
    encoder_state = model_only(result.state)
    checkpointer.save(directory, encoder_state)
    checkpointer.wait_until_finished()
  return _frozen(config, mesh, encoder, encoder_state)


def untrained_gt_encoder(config: cfg.Config, mesh) -> train_step.FrozenEncoder:
  """A freshly initialised ground-truth encoder, frozen: stage 2's step costs the same with it (benchmarks)."""
  name = registry.network(config.model.name).gt_encoder
  encoder = train_step.create_train_state(config, mesh, config.train.seed + 1, name=name,
                                          num_steps=config.train.gt_encoder_steps)
  return _frozen(config, mesh, encoder, nnx.state(nnx.merge(encoder.graphdef, encoder.state)[0]))


def _frozen(config: cfg.Config, mesh, encoder: train_step.TrainState, model_state) -> train_step.FrozenEncoder:
  """The encoder model of `encoder`'s (model, optimizer) with the state `model_state`, replicated on the mesh."""
  graphdef, _ = nnx.split(nnx.merge(encoder.graphdef, encoder.state)[0])
  placed = jax.device_put(model_state, parallel.replicated(mesh))
  return train_step.FrozenEncoder(graphdef, placed, config.train.feature_sync_weight)
