"""How much of a row's test score can a prediction on IS-Net's half-resolution grid reach at all? (docs/results.md)

  python docs/examples/half_resolution_ceiling.py original:isnet_arcs,cpu [--steps 400]

IS-Net's finest features, and so its prediction d1, live on the H/2 grid of its stride-2 stem (sample i centred on
input pixel 2i), bilinearly upsampled to the input size. This script fits, for every test image of the config's
test split, a free logit map on that grid to the image's own mask through the same upsampling
(`jax.image.resize`, half-pixel bilinear, as `lensjax.models.layers.upsample_bilinear`), with Adam on the binary
cross-entropy, and scores the fitted maps under the original's IS-Net definition
(`lensjax.metrics.original_isnet_miou`: per-image min-max normalisation, threshold 0.5, the simulator's lenses
only for the arcs, as `python -m lensjax.evaluate --protocol original` selects them). It also scores two fixed maps for comparison: the mask sampled at the grid's points, and its 3 x 3 mean
there. A fitted score near 1 says the grid is no ceiling: what a network misses, it fails to learn.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lensjax import config as cfg
from lensjax import metrics
from lensjax.data import pipeline


def test_masks(config: cfg.Config) -> tuple[np.ndarray, np.ndarray]:
  """The first target's masks of the config's test split, (N, H, W) float32, and which images are lenses, (N,)."""
  loader = pipeline.make_loader(config, "test", batch_size=64, shuffle=False, num_epochs=1, seed=0, augment=False)
  masks, is_lens = [], []
  for batch in loader:
    valid = batch["valid"] > 0
    masks.append(batch["mask"][valid][..., 0])
    is_lens.append(batch["is_lens"][valid] > 0.5)
  return np.concatenate(masks), np.concatenate(is_lens)


def upsample(half: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(N, h, w) -> (N, *size), half-pixel bilinear."""
  return jax.image.resize(half, (half.shape[0], *size), "bilinear", antialias=False)


def fitted_probabilities(masks: np.ndarray, steps: int) -> np.ndarray:
  """Sigmoid of the upsampled H/2 logits fitted to `masks` (N, H, W): (N, H, W) float32."""
  size = masks.shape[1:]
  target = jnp.asarray(masks)
  optimizer = optax.adam(0.1)

  def loss(logits):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(upsample(logits, size), target))

  @jax.jit
  def step(logits, state):
    updates, state = optimizer.update(jax.grad(loss)(logits), state)
    return optax.apply_updates(logits, updates), state

  logits = jnp.zeros((masks.shape[0], (size[0] + 1) // 2, (size[1] + 1) // 2))
  state = optimizer.init(logits)
  for _ in range(steps):
    logits, state = step(logits, state)
  return np.asarray(jax.nn.sigmoid(upsample(logits, size)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("config", help="an IS-Net config, e.g. original:isnet_arcs,cpu")
  parser.add_argument("--steps", type=int, default=400, help="Adam steps of the fit (default 400)")
  args = parser.parse_args()
  config = cfg.load(args.config)
  masks, is_lens = test_masks(config)
  include = is_lens if config.data.targets[0] == "arcs" else None
  height, width = masks.shape[1:]
  padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))
  grid = ((height + 1) // 2, (width + 1) // 2)
  point = masks[:, ::2, ::2]
  mean3 = sum(padded[:, a:a + 2 * grid[0]:2, b:b + 2 * grid[1]:2] for a in range(3) for b in range(3)) / 9
  print(f"{args.config}: {len(masks)} test masks of {height} x {width}, scored as the original's IS-Net mIoU")
  for name, probabilities in (("mask at the H/2 points, upsampled", upsample(jnp.asarray(point), (height, width))),
                              ("3 x 3 mean at the H/2 points, upsampled", upsample(jnp.asarray(mean3), (height, width))),
                              (f"H/2 logits fitted to each mask ({args.steps} Adam steps)",
                               fitted_probabilities(masks, args.steps))):
    print(f"  {name}: {metrics.original_isnet_miou(np.asarray(probabilities), masks, include):.4f}")


if __name__ == "__main__":
  main()
