"""Layers shared by the networks. All tensors are NHWC: (batch, height, width, channels)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def upsample_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes (B, h, w, C) to (B, *size, C) with half-pixel bilinear interpolation.

  This is PyTorch's `F.interpolate(..., mode='bilinear', align_corners=False)` and Keras's
  `UpSampling2D(interpolation='bilinear')` when upsampling, to an exact size (63 -> 125 included).
  """
  if x.shape[1:3] == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear", antialias=False)


def max_pool_ceil(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and ceil mode: (B, h, w, C) -> (B, ceil(h/2), ceil(w/2), C).

  PyTorch's `MaxPool2d(2, 2, ceil_mode=True)`: an odd edge is padded with -inf on the high side.
  """
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
      ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


class PointwiseConv(nnx.Module):
  """A 1x1 convolution written as a matmul over channels.

  XLA on CPU runs `nnx.Conv` with a 1x1 kernel several times slower than the same matmul (docs/cpu-speed.md
  has the figures and the command). The kernel is stored as (in, out): a (1, 1, in, out) conv kernel reshaped.
  """

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               kernel_init=nnx.initializers.lecun_normal(), bias_init=nnx.initializers.zeros_init(),
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, out_features, use_bias=use_bias, kernel_init=kernel_init,
                             bias_init=bias_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear(x)


def torch_default_kernel_init() -> nnx.Initializer:
  """PyTorch's default `Conv2d`/`Linear` weight init: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).

  PyTorch draws `kaiming_uniform_(a=sqrt(5))`, whose bound sqrt(6 / ((1 + 5) fan_in)) is 1/sqrt(fan_in); a
  uniform variance scaling with scale 1/3 has bound sqrt(3 * (1/3) / fan_in), the same. fan_in = kh * kw * C_in
  for an HWIO kernel and C_in for an (in, out) matrix.
  """
  return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
  """PyTorch's default bias init for a layer with `fan_in` inputs per output: U(-1/sqrt(fan_in), +1/sqrt(fan_in))."""
  if fan_in < 1:
    raise ValueError(f"torch_default_bias_init: fan_in must be >= 1, got {fan_in}")
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
