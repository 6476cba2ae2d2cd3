"""The train state and the jitted training and evaluation steps: pure functions compiled with explicit shardings.

The model and optimizer live as one NNX state pytree (`nnx.split((model, optimizer))`), created on the devices
by `create_train_state` (a jitted initialisation with `out_shardings`, so an FSDP state is never whole on one
host). A step merges it inside the jitted function, runs the network, the loss its registry entry names
(`lensjax.registry`, `lensjax.losses`) and the optax update, and returns the new state with donated input
buffers. Networks follow the convention of `lensjax.models`: `input_keys` names the batch entries they take,
`prediction(outputs)` picks the final logits. `lensjax.step_loop` runs the training step over batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lensjax import config as cfg
from lensjax import checkpoint, data, losses, metrics, models, parallel, registry
from lensjax.data import sources

LossFn = Callable[[Any, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def learning_rate_schedule(optim: cfg.OptimConfig, num_steps: int) -> optax.Schedule:
  """Constant, or linear warm-up then cosine decay to 0 at `num_steps`."""
  if optim.schedule == "constant":
    return optax.constant_schedule(optim.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=optim.warmup_steps,
      decay_steps=max(num_steps, optim.warmup_steps + 1), end_value=0.0)


def make_optimizer(optim: cfg.OptimConfig, num_steps: int) -> optax.GradientTransformation:
  """The optax transformation named by the config, with optional global-norm clipping."""
  lr = learning_rate_schedule(optim, num_steps)
  if optim.name == "adam":
    tx = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  elif optim.name == "adamw":
    tx = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  elif optim.name == "rmsprop":   # Keras RMSprop: eps inside the sqrt, zero initial scale (docs/networks.md)
    tx = optax.rmsprop(lr, decay=optim.decay, eps=optim.eps, momentum=optim.momentum or None)
  else:
    tx = optax.sgd(lr, momentum=optim.momentum or None)
  if optim.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx


def make_loss_fn(config: cfg.Config, name: str | None = None) -> LossFn:
  """(outputs, batch) -> (loss, terms) for network `name` (default: the config's model), as its registry entry
  says: IS-Net and its ground-truth encoder, deep supervision over the side outputs (with
  `train.isnet_dice_weight` x (1 - soft Dice) added to each side's BCE); MSRF-Net, its four-output
  loss against the masks and their Canny edges (`batch['mask_edge']`), weighted by `train.msrf_output_weights`, or
  with `train.msrfnet_targets='input'` against its own input (`losses.input_as_targets`, the original's mistake)."""
  network = registry.network(name or config.model.name)
  target_weights = config.train.target_weights or None
  output_weights = config.train.msrf_output_weights if network.output_weights else None
  loss = network.loss
  if network.loss is losses.isnet_batch_loss:
    loss = functools.partial(loss, dice_weight=config.train.isnet_dice_weight)
  targets_are_input = network.name == "msrfnet" and config.train.msrfnet_targets == "input"
  num_targets = len(config.data.targets)

  def loss_fn(outputs, batch):
    if targets_are_input:
      batch = losses.input_as_targets(batch, num_targets)
    return loss(outputs, batch, target_weights, output_weights)

  return loss_fn


def build_model_and_optimizer(config: cfg.Config, seed: int, *, name: str | None = None,
                              num_steps: int | None = None) -> tuple[nnx.Module, nnx.Optimizer]:
  """The network `name` (default: the config's model) sized as `config.model` says, and its optimizer over
  `num_steps` (default `train.num_steps`; parameters only, `wrt=nnx.Param`). A network that takes the masks (the
  ground-truth encoder) gets one input channel per target."""
  name = name or config.model.name
  targets = len(config.data.targets)
  in_channels = targets if registry.network(name).input_keys[0] == "mask" else data.input_channels(config)
  # The ground-truth encoder shares IS-Net's width and depth; the refinement head is IS-Net's alone.
  refine_channels = config.model.refine_channels if registry.network(name).refines else 0
  model = models.build(name, in_channels=in_channels, out_channels=targets, width=config.model.width,
                       depth=config.model.depth, wiring=config.model.wiring, refine_channels=refine_channels,
                       dtype=config.model.dtype, seed=seed)
  tx = make_optimizer(config.optim, num_steps or config.train.num_steps)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


@dataclasses.dataclass
class TrainState:
  """The (model, optimizer) state of a training run on the mesh, with what it takes to merge and place it."""
  graphdef: Any                    # nnx.GraphDef of (model, optimizer)
  state: Any                       # its nnx.State: arrays, or shape structs with their shardings (abstract)
  shardings: Any                   # the NamedSharding of every leaf (FSDP or replicated, `train.fsdp`)


def create_train_state(config: cfg.Config, mesh: jax.sharding.Mesh, seed: int, *, name: str | None = None,
                       num_steps: int | None = None, abstract: bool = False) -> TrainState:
  """The initialised (model, optimizer) state of `build_model_and_optimizer`, created on the mesh.

  The initialisation runs under `jax.jit` with `out_shardings`, so every device creates only its shards: an
  FSDP state is never built whole on one host. `abstract`: compute nothing and return the restore target
  (`jax.ShapeDtypeStruct`s carrying their shardings) for `lensjax.checkpoint`.
  """
  def build():
    return build_model_and_optimizer(config, seed, name=name, num_steps=num_steps)

  graphdef, shapes = nnx.split(nnx.eval_shape(build))
  shardings = parallel.state_shardings(shapes, mesh, config.train.fsdp)
  if abstract:
    state = checkpoint.abstract_state(shapes, shardings)
  else:
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=shardings)()
  return TrainState(graphdef, state, shardings)


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
  """A trained ground-truth encoder whose features are the feature-synchronisation targets (IS-Net stage 2)."""
  graphdef: Any
  state: Any
  weight: float = 1.0


def apply_network(model, batch: dict[str, jax.Array], rngs: nnx.Rngs | None = None):
  """The network's outputs on the batch arrays it takes (`model.input_keys`: `image`, and `edge` for MSRF-Net)."""
  return model(*(batch[k] for k in model.input_keys), rngs=rngs)


TTA_VIEWS = {"none": 1, "hflip": 2, "d4": 8}   # test-time augmentation: how many views' probabilities are averaged


def _view(array: jax.Array, rotations: int, flip: bool) -> jax.Array:
  """(B, H, W, C) rotated `rotations` x 90 degrees in (H, W), then mirrored left-right if `flip` (what
  `data.transforms.d4` does to one image)."""
  array = jnp.rot90(array, rotations, axes=(1, 2))
  return jnp.flip(array, 2) if flip else array


def _unview(array: jax.Array, rotations: int, flip: bool) -> jax.Array:
  """The inverse of `_view`: a view's map back in the image's orientation."""
  array = jnp.flip(array, 2) if flip else array
  return jnp.rot90(array, -rotations, axes=(1, 2))


def predicted_probabilities(model, batch: dict[str, jax.Array], tta: str = "none") -> jax.Array:
  """(B, H, W, K) float32 probabilities of `model` (in inference mode) on `batch`'s inputs.

  `tta` (test-time augmentation): 'none' one pass; 'hflip' the mean over the image and its left-right mirror;
  'd4' the mean over its 8 rotations and mirrors, each view's map turned back first. Simulated lenses are
  isotropic, so each view is as likely a scene as the image itself (docs/results.md, "Test-time augmentation").
  """
  if tta not in TTA_VIEWS:
    raise ValueError(f"tta={tta!r}: expected one of {', '.join(TTA_VIEWS)}")
  height, width = batch[model.input_keys[0]].shape[1:3]
  if tta == "d4" and height != width:
    raise ValueError(f"tta='d4' rotates the images: they must be square, not {height} x {width}")
  views = [(rotations, flip) for rotations in range(4) for flip in (False, True)][:TTA_VIEWS[tta]]
  total = 0.0
  for rotations, flip in views:
    logits = model.prediction(apply_network(model, {k: _view(batch[k], rotations, flip) for k in model.input_keys}))
    total = total + jax.nn.sigmoid(_unview(logits, rotations, flip).astype(jnp.float32))
  return total / len(views)


def _encoder_features(frozen: FrozenEncoder, state, batch):
  encoder = nnx.merge(frozen.graphdef, state)
  encoder.eval()     # running statistics: the targets depend on each mask alone, not on the batch
  _, features = encoder(batch["mask"])
  return features


def train_step_fn(graphdef, loss_fn: LossFn, frozen: FrozenEncoder | None = None):
  """The pure step (state, frozen_state, batch, rng) -> (state, metrics) before jit."""

  def step(state, frozen_state, batch, rng):
    model, optimizer = nnx.merge(graphdef, state)

    def objective(model):
      outputs = apply_network(model, batch, nnx.Rngs(dropout=rng))
      loss, terms = loss_fn(outputs, batch)
      if frozen is not None:
        sync = losses.feature_sync_loss(outputs[1], _encoder_features(frozen, frozen_state, batch))
        terms = dict(terms, **{"loss/feature_sync": sync})
        loss = loss + frozen.weight * sync
      return loss, (terms, model.prediction(outputs))

    (loss, (terms, logits)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
    optimizer.update(model, grads)
    step_metrics = {"loss": loss, **terms, "grad_norm": optax.tree.norm(grads),
                    "sums": metrics.batch_sums(logits, batch["mask"])}
    return nnx.state((model, optimizer)), step_metrics

  return step


def compile_train_step(graphdef, loss_fn: LossFn, mesh, state_sharding, frozen: FrozenEncoder | None = None):
  """`train_step_fn` under `jax.jit`: batch split on `data`, state as `state_sharding`, state donated."""
  repl = parallel.replicated(mesh)
  frozen_sharding = None if frozen is None else jax.tree.map(lambda _: repl, frozen.state)
  return jax.jit(train_step_fn(graphdef, loss_fn, frozen),
                 in_shardings=(state_sharding, frozen_sharding, parallel.batch_sharding(mesh), repl),
                 out_shardings=(state_sharding, repl), donate_argnums=0)


def inference_network(graphdef, state) -> nnx.Module:
  """The network of a split state, in inference mode (BatchNorm on running statistics): the state is
  (model, optimizer) for a training run, the model alone for imported weights."""
  merged = nnx.merge(graphdef, state)
  model = merged[0] if isinstance(merged, tuple) else merged
  model.eval()
  return model


def eval_step_fn(graphdef, loss_fn: LossFn, panel_images: int = 0, maps: bool = False, tta: str = "none"):
  """The pure evaluation step (state, batch) -> outputs, with BatchNorm on running statistics.

  Outputs: the losses; `sums` (`metrics.batch_sums`, padding rows excluded); `per_image`: `iou` (B, K) at
  the 0.5 threshold, `valid` (B,), `index` (B,) and the simulation parameters the batch carries (B,); when
  `panel_images` > 0, `panel` (panel_images, H, W, K): the probabilities of the first rows; and with `maps`,
  `maps`: the whole batch's `probabilities` (B, H, W, K), `mask` (B, H, W, K) and `image` (B, H, W, 1) (its
  first channel), for metrics computed on the host over a whole split. With `tta` other than 'none', every
  output but the losses comes from the probabilities averaged over views (`predicted_probabilities`).
  """

  def step(state, batch):
    model = inference_network(graphdef, state)
    outputs = apply_network(model, batch)
    loss, terms = loss_fn(outputs, batch)
    logits = model.prediction(outputs)
    if tta != "none":   # the averaged map as logits, for the metrics that threshold logits at 0
      logits = jax.scipy.special.logit(jnp.clip(predicted_probabilities(model, batch, tta), 1e-7, 1 - 1e-7))
    per_image = {"iou": metrics.per_image_iou(logits, batch["mask"]), "valid": batch["valid"],
                 "index": batch["index"], **{k: batch[k] for k in sources.SIM_METADATA if k in batch}}
    out = {"loss": loss, **terms, "sums": metrics.batch_sums(logits, batch["mask"], batch["valid"]),
           "per_image": per_image}
    if panel_images:
      out["panel"] = jax.nn.sigmoid(logits[:panel_images].astype(jnp.float32))
    if maps:
      out["maps"] = {"probabilities": jax.nn.sigmoid(logits.astype(jnp.float32)), "mask": batch["mask"],
                     "image": batch["image"][..., :1]}
    return out

  return step


def compile_eval_step(graphdef, loss_fn: LossFn, mesh, state_sharding, panel_images: int = 0, maps: bool = False,
                      tta: str = "none"):
  """`eval_step_fn` under `jax.jit`: batch split on `data`, every output replicated (readable anywhere)."""
  return jax.jit(eval_step_fn(graphdef, loss_fn, panel_images, maps, tta),
                 in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def host_scalars(step_metrics: dict[str, jax.Array]) -> dict[str, float]:
  """The scalar entries of a step's metrics (losses, gradient norm) as Python floats."""
  scalars = {k: v for k, v in step_metrics.items() if k != "sums"}
  return {k: float(v) for k, v in jax.device_get(scalars).items()}
