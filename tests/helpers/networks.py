"""A tiny network's loss as a function of its state, for the tests that compare CPU fast paths with the plain ones."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lensjax.models import build

# (name, build options, inputs) of the tiny networks; MSRF-Net's case is marked slow where it is used.
ISNET = ("isnet", {"width": 0.125, "depth": 3}, ("image",))
MSRFNET = ("msrfnet", {"width": 0.125}, ("image", "edge"))


def tiny_network_loss(name: str, options: dict, inputs: tuple[str, ...]):
  """(loss(state), state): the mean squared distance of the first output's logits from 0.5 on a fixed random
  batch of two 24 x 24 images, train mode, dropout key 0."""
  model = build(name, in_channels=1, out_channels=2, seed=0, **options)
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(2)
  batch = {"image": rng.standard_normal((2, 24, 24, 1)).astype(np.float32),
           "edge": (rng.random((2, 24, 24, 1)) < 0.1).astype(np.float32)}

  def loss(state):
    outputs = nnx.merge(graphdef, state)(*(batch[k] for k in inputs), rngs=nnx.Rngs(dropout=0))
    logits = outputs[0] if name == "msrfnet" else outputs[0][0]
    return jnp.mean(jnp.square(logits - 0.5))

  return loss, state


def gradient_pairs(expected, actual):
  """(path, expected leaf, actual leaf) over two gradient trees of the same structure."""
  for (path, want), (_, got) in zip(jax.tree_util.tree_leaves_with_path(expected),
                                    jax.tree_util.tree_leaves_with_path(actual), strict=True):
    yield jax.tree_util.keystr(path), want, got
