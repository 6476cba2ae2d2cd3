"""The deep-supervision losses of IS-Net and MSRF-Net, on logits.

Shapes: logits and masks are (B, H, W, K), one channel per target (lens, arcs, organs ...), masks in [0, 1].
Per-target losses are means over (B, H, W); a multi-label loss is the `target_weights`-weighted mean over the K
targets, so with K = 1 every loss equals the original single-target one.

IS-Net (docs/networks.md): the sum of BCE over the six side outputs, all weights 1; d1's BCE is logged apart
because it is the term that says whether the model learns. `train.isnet_dice_weight` > 0 adds that weight times
(1 - soft Dice) to each side's term (not the original's loss: an option, docs/results.md). With intermediate
supervision, the MSE between the network's decoder features and those of a frozen ground-truth encoder is added
(DIS "feature synchronisation").

MSRF-Net (docs/networks.md): 2·(BCE + Dice)(x) + BCE(edge_out, Canny of the mask) + (BCE + Dice)(pred4) +
(BCE + Dice)(pred2), with the real masks as targets (the original trained its lens models on the input by mistake).
Its Dice is soft and global over the batch, with smoothing 1. The weights 2, 1, 1, 1 of its outputs are the
registry's default (`lensjax.registry`, config `train.msrf_output_weights`).

`isnet_batch_loss` and `msrfnet_batch_loss` are the networks' losses on a batch as the training step calls them,
`(outputs, batch, target_weights, output_weights) -> (loss, terms)`; the registry names which one a network uses.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

def _weighted_mean(per_target: jax.Array, target_weights: Sequence[float] | None) -> jax.Array:
  """Mean over the last axis (targets), weighted by `target_weights` (equal weights if None)."""
  if target_weights is None or len(target_weights) == 0:
    return jnp.mean(per_target, axis=-1)
  weights = jnp.asarray(target_weights, jnp.float32)
  if weights.shape[0] != per_target.shape[-1]:
    raise ValueError(f"target_weights has {weights.shape[0]} entries but there are {per_target.shape[-1]} "
                     "targets; give one weight per target")
  return jnp.sum(per_target * weights, axis=-1) / jnp.sum(weights)


def bce_per_target(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Binary cross-entropy with logits, averaged over (B, H, W): (B, H, W, K) -> (K,)."""
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets.astype(jnp.float32))
  return jnp.mean(bce, axis=(0, 1, 2))


def soft_dice_per_target(logits: jax.Array, targets: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Soft Dice over the whole batch, (2·Σyp + s) / (Σy + Σp + s): (B, H, W, K) -> (K,)."""
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  targets = targets.astype(jnp.float32)
  intersection = jnp.sum(probs * targets, axis=(0, 1, 2))
  total = jnp.sum(probs, axis=(0, 1, 2)) + jnp.sum(targets, axis=(0, 1, 2))
  return (2.0 * intersection + smooth) / (total + smooth)


def bce(logits: jax.Array, targets: jax.Array, target_weights: Sequence[float] | None = None) -> jax.Array:
  """Scalar BCE-with-logits: per-target pixel means, weighted over targets."""
  return _weighted_mean(bce_per_target(logits, targets), target_weights)


def bce_dice(logits: jax.Array, targets: jax.Array, target_weights: Sequence[float] | None = None,
             dice_weight: float = 1.0) -> jax.Array:
  """BCE + dice_weight · (1 - soft Dice), per target, weighted over targets; dice_weight 1 is the original
  MSRF-Net `seg_loss`."""
  per_target = bce_per_target(logits, targets) + dice_weight * (1.0 - soft_dice_per_target(logits, targets))
  return _weighted_mean(per_target, target_weights)


def isnet_loss(side_logits: Sequence[jax.Array], mask: jax.Array, target_weights: Sequence[float] | None = None,
               dice_weight: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """IS-Net deep supervision: the sum of the side outputs' BCE (+ dice_weight · (1 - soft Dice)); returns
  (loss, terms).

  `side_logits` are the D side outputs (B, H, W, K), d1 first; `mask` is (B, H, W, K). The terms hold `loss/d1` ...
  `loss/dD` (each side's term).
  """
  side_loss = functools.partial(bce_dice, dice_weight=dice_weight) if dice_weight else bce
  terms = {f"loss/d{i + 1}": side_loss(logits, mask, target_weights) for i, logits in enumerate(side_logits)}
  return sum(terms.values()), terms


def feature_sync_loss(features: Sequence[jax.Array], target_features: Sequence[jax.Array]) -> jax.Array:
  """DIS feature synchronisation: the sum over levels of the mean squared error between feature maps.

  `features` are the network's decoder features [hx1d, ..., hx5d, hx6]; `target_features` the ground-truth
  encoder's [hx1, ..., hx6] for the same masks (same shapes, level by level). The targets get no gradient.
  """
  if len(features) != len(target_features):
    raise ValueError(f"feature synchronisation needs as many encoder levels ({len(target_features)}) as "
                     f"decoder levels ({len(features)}); build both networks with the same depth")
  return sum(jnp.mean(jnp.square(f.astype(jnp.float32) - jax.lax.stop_gradient(t).astype(jnp.float32)))
             for f, t in zip(features, target_features))


def msrfnet_loss(outputs: Sequence[jax.Array], mask: jax.Array, mask_edge: jax.Array,
                 target_weights: Sequence[float] | None, output_weights: Sequence[float]
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MSRF-Net's loss; returns (loss, terms).

  `outputs` = [x, edge_out, pred2, pred4] logits, each (B, H, W, K); `mask` (B, H, W, K) the masks and
  `mask_edge` (B, H, W, K) the Canny edge maps of the masks (the edge-stream target); `output_weights` the
  weights of the four terms (the registry's default is 2, 1, 1, 1).
  """
  x, edge_out, pred2, pred4 = outputs
  terms = {
      "loss/x": bce_dice(x, mask, target_weights),
      "loss/edge": bce(edge_out, mask_edge, target_weights),
      "loss/pred2": bce_dice(pred2, mask, target_weights),
      "loss/pred4": bce_dice(pred4, mask, target_weights),
  }
  total = sum(w * t for w, t in zip(output_weights, terms.values()))
  return total, terms


def input_as_targets(batch: dict[str, jax.Array], num_targets: int) -> dict[str, jax.Array]:
  """The original MSRF-Net's mistaken targets: `batch` with `mask` replaced by the input image (its first channel,
  in [0, 1], once per target) and `mask_edge` by the input's Canny edges (`batch['edge']`), each (B, H, W, K)."""
  def per_target(x):
    return jnp.repeat(x[..., :1], num_targets, axis=-1)
  return {**batch, "mask": per_target(batch["image"]), "mask_edge": per_target(batch["edge"])}


def isnet_batch_loss(outputs, batch: dict[str, jax.Array], target_weights: Sequence[float] | None,
                     output_weights: Sequence[float] | None = None, dice_weight: float = 0.0
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`isnet_loss` of IS-Net's (or its ground-truth encoder's) `(side_logits, features)` on `batch['mask']`."""
  del output_weights   # every side output weighs 1
  side_logits, _ = outputs
  return isnet_loss(side_logits, batch["mask"], target_weights, dice_weight)


def msrfnet_batch_loss(outputs, batch: dict[str, jax.Array], target_weights: Sequence[float] | None,
                       output_weights: Sequence[float]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`msrfnet_loss` of MSRF-Net's outputs on `batch['mask']` and `batch['mask_edge']`."""
  return msrfnet_loss(outputs, batch["mask"], batch["mask_edge"], target_weights, output_weights)
