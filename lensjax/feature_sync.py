"""DIS intermediate supervision for IS-Net: train a ground-truth encoder, then synchronise features to it.

Stage 1 (`train_gt_encoder`) trains `ISNetGTEncoder` to autoencode the training masks with IS-Net's deep
supervision loss (the DIS authors overfit it on purpose: it only has to represent masks). Stage 2 is the normal
IS-Net training with, added to its loss, the MSE between each decoder feature map [hx1d .. hx5d, hx6] and the
frozen encoder's [hx1 .. hx6] for the same masks (`lensjax.losses.feature_sync_loss`, weight
`train.feature_sync_weight`). The encoder is evaluated with its running BatchNorm statistics, so its targets
depend on each mask alone (upstream left it in train mode). The original project's path for this was broken
(reference/isnet.md §2); here it runs with `--config.train.feature_sync=true`.

The trained encoder is saved in `<workdir>/gt_encoder` (an Orbax checkpoint of its NNX state) and reused when the
run is resumed.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx

from lensjax import config as cfg
from lensjax import data, models, parallel, progress, train_step

ENCODER_DIR = "gt_encoder"


def build_gt_encoder(config: cfg.Config, seed: int) -> nnx.Module:
  """The ground-truth encoder matching the configured IS-Net (same width and depth; masks in, masks out)."""
  if config.model.name != "isnet":
    raise ValueError(f"train.feature_sync applies to IS-Net only, not model.name={config.model.name!r}")
  num_targets = len(config.data.targets)
  return models.build("isnet_gt_encoder", in_channels=num_targets, out_channels=num_targets,
                      width=config.model.width, depth=config.model.depth, dtype=config.model.dtype, seed=seed)


def train_gt_encoder(config: cfg.Config, mesh, workdir: str | pathlib.Path) -> train_step.FrozenEncoder:
  """Stage 1: trains (or reloads from `workdir`) the ground-truth encoder; returns it frozen, on the mesh."""
  directory = pathlib.Path(workdir).resolve() / ENCODER_DIR
  seed = config.train.seed + 1
  encoder = build_gt_encoder(config, seed)
  encoder_graphdef, encoder_state = nnx.split(encoder)
  checkpointer = ocp.StandardCheckpointer()
  if directory.exists():
    encoder_state = checkpointer.restore(directory, target=encoder_state)
  else:
    steps = config.train.gt_encoder_steps
    optimizer = nnx.Optimizer(encoder, train_step.make_optimizer(config.optim, steps), wrt=nnx.Param)
    graphdef, state = nnx.split((encoder, optimizer))
    state, shardings = train_step.place_state(state, mesh, config.train.fsdp)
    step_fn = train_step.compile_train_step(
        graphdef, train_step.make_loss_fn(config, "isnet_gt_encoder"), mesh, shardings)
    loader = data.make_loader(config, "train", batch_size=config.train.batch_size // jax.process_count(),
                              shuffle=True, num_epochs=None, seed=seed, with_edge=False)
    batches, key = iter(loader), jax.random.key(seed)
    bar = progress.TrainingProgress(steps, enabled=parallel.is_main_process(), label="gt encoder")
    with bar:
      for step in range(1, steps + 1):
        state, step_metrics = step_fn(state, None, parallel.global_batch(next(batches), mesh),
                                      jax.random.fold_in(key, step))
        if step % config.train.log_every == 0 or step == steps:
          bar.update(step, train_step.host_scalars(step_metrics))
    encoder_state = nnx.state(nnx.merge(graphdef, state)[0])
    checkpointer.save(directory, encoder_state)
    checkpointer.wait_until_finished()
  placed = jax.device_put(encoder_state, parallel.replicated(mesh))
  return train_step.FrozenEncoder(encoder_graphdef, placed, config.train.feature_sync_weight)
