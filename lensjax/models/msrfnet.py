"""MSRF-Net (Srivastava et al., IEEE JBHI 2022) as the original Keras `model.py::msrf()` executes it.

`docs/networks.md` describes the network as the original code runs it. Keras builds a Model from its output
graph only, so layers whose outputs are never used have no parameters there; this port builds the live graph and
nothing else:

  encoder     four levels of two 3x3 convs + ReLU, BatchNorm, squeeze-excite (not on the deepest level),
              2x2 max pooling and dropout 0.2 between levels; features n11..n41 at H, H/2, H/4, H/8.
  sub-network dual-scale dense fusion (DSDF) blocks on the pairs (n11, n21), (n21, n31), (n31, n41).
              `wiring="original"`: the 7 blocks `model.py` keeps alive (18,591,821 parameters at 1 -> 1);
              `wiring="paper"`: all 10 blocks of the paper's Fig. 2b (24,593,789).
  shape       a full-resolution boundary stream gated by n33 and n43, giving `edge_out`, then fused with the
  stream      binary Canny map of the image into a 1-channel edge prior for the last decoder conv.
  decoder     attention gate + dual attention (squeeze-excite and spatial) at H/4 and H/2, a plain stage at H.

All tensors are NHWC. Every output is a logit (the original applies sigmoid inside the graph; losses here
take logits). The auxiliary heads `pred2`/`pred4` upsample their logits bilinearly to full resolution,
where the original upsampled the sigmoid probabilities: the maps differ only where the upsampling
blends neighbouring pixels, and logits keep the losses numerically stable.

Keras conventions kept: BatchNorm momentum 0.99 and epsilon 1e-3 (1e-5 in the attention gate);
`he_normal` for the encoder and the last stage, `glorot_uniform` elsewhere, N(0, 0.02) for the attention
gate's psi conv, zero biases; 'same' padding of strided convs (TF pads (0, 1) on even sizes, as lax 'SAME')
and of transposed convs (`KerasConvTranspose`).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from lensjax.models.layers import (PointwiseConv, conv_general_dilated, conv_transpose, max_pool_ceil,
                                   upsample_bilinear)
from lensjax.registry import scaled_channels

# Channels of the four encoder levels at width 1; the decoder stage at each scale has the same width.
ENCODER_CHANNELS = (32, 64, 128, 256)
# Channels of the shape stream's three residual stages and its last hidden 1x1 conv, at width 1.
SHAPE_STREAM_CHANNELS = (32, 16, 8, 4)
# DSDF blocks in the order `model.py` calls them: (name as numbered in the reference, scale pair), where
# pair p fuses encoder scales p and p + 1 (0: H and H/2, 1: H/2 and H/4, 2: H/4 and H/8). Each block reads
# the current tensors of its two scales and replaces them. In `model.py` the calls D9 and D10 re-read the
# outputs of D3/D5 and D5/D4, so D6, D7 and D8 are dead and do not exist in the Keras model.
DSDF_SCHEDULES = {
    "paper": (("d1", 0), ("d2", 2), ("d3", 0), ("d4", 2), ("d5", 1),
              ("d6", 0), ("d7", 2), ("d8", 1), ("d9", 0), ("d10", 2)),
    "original": (("d1", 0), ("d2", 2), ("d3", 0), ("d4", 2), ("d5", 1), ("d9", 0), ("d10", 2)),
}
# Scale of each DSDF block's update (`x + 0.4 * x5`) and of the sub-network's output (`n11 + 0.4 * n13`).
RESIDUAL_SCALE = 0.4
DSDF_LEAKY_SLOPE = 0.25
ENCODER_DROPOUT = 0.2
KERAS_BN_MOMENTUM = 0.99
KERAS_BN_EPSILON = 1e-3
ATTENTION_BN_EPSILON = 1e-5
SE_REDUCTION = 16
# Resolution divisor: three 2x2 poolings.
INPUT_MULTIPLE = 8

_he_normal = nnx.initializers.he_normal()           # Keras he_normal: truncated normal, fan_in, scale 2
_glorot_uniform = nnx.initializers.glorot_uniform()  # the Keras default for Conv2D, Dense, Conv2DTranspose


def _batch_norm(features: int, *, dtype, rngs: nnx.Rngs, epsilon: float = KERAS_BN_EPSILON) -> nnx.BatchNorm:
  # Two-pass variance (as Keras and PyTorch compute it): E[x^2] - E[x]^2 cancels badly in float32.
  return nnx.BatchNorm(features, momentum=KERAS_BN_MOMENTUM, epsilon=epsilon, dtype=dtype,
                       use_fast_variance=False, param_dtype=jnp.float32, rngs=rngs)


def _conv(in_features: int, out_features: int, kernel_size: int = 3, *, stride: int = 1,
          kernel_init=_glorot_uniform, dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """Keras `Conv2D(out, k, strides, padding='same')` with bias; lax 'SAME' pads strided convs as TF does."""
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=stride, padding="SAME",
                  kernel_init=kernel_init, dtype=dtype, param_dtype=jnp.float32,
                  conv_general_dilated=conv_general_dilated, rngs=rngs)


def _pointwise(in_features: int, out_features: int, *, kernel_init=_glorot_uniform, dtype,
               rngs: nnx.Rngs) -> PointwiseConv:
  return PointwiseConv(in_features, out_features, kernel_init=kernel_init, dtype=dtype, rngs=rngs)


def _leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, DSDF_LEAKY_SLOPE)


class KerasConvTranspose(nnx.Module):
  """Keras `Conv2DTranspose(out, k, strides=s, padding=...)`: (B, h, w, in) -> (B, s*h, s*w, out).

  Computes y[s*i + a - p] += x[i] * kernel[a] per spatial axis, where p is the top padding of the forward
  conv whose gradient this is (TF: p = max(k - s, 0) // 2 for 'same', 0 for 'valid'). Keras stores the
  kernel as (k, k, out, in); this one is (k, k, in, out), so a Keras kernel imports by swapping its last
  two axes. Implemented as a correlation of the stride-dilated input with the flipped kernel, padded
  (k - 1 - p) before and the rest after; for the sizes MSRF-Net uses, 'same' pads (2, 1) for k3 s2,
  (2, 2) for k4 s2 and (0, 1) for k1 s2, and 'valid' pads (1, 1) for k2 s2 (docs/networks.md).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, stride: int, *,
               padding: Literal["same", "valid"], kernel_init=_glorot_uniform, dtype, rngs: nnx.Rngs):
    if padding == "same":
      forward_pad = max(kernel_size - stride, 0) // 2
      before = kernel_size - 1 - forward_pad
      after = stride + kernel_size - 2 - before
    elif padding == "valid":
      before = kernel_size - 1
      after = stride - 1 + max(kernel_size - stride, 0)
    else:
      raise ValueError(f"KerasConvTranspose padding={padding!r}: expected 'same' or 'valid'")
    self.stride = stride
    self.padding = (before, after)
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (kernel_size, kernel_size, in_features, out_features),
                                        jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = conv_transpose(x.astype(self.dtype), self.kernel[...].astype(self.dtype), (self.stride, self.stride),
                       (self.padding, self.padding))
    return y + self.bias[...].astype(self.dtype)


class SqueezeExcite(nnx.Module):
  """x * sigmoid(Dense(C)(relu(Dense(C // 16)(global_average(x))))), on (B, H, W, C)."""

  def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
    hidden = max(1, channels // SE_REDUCTION)
    self.squeeze = nnx.Linear(channels, hidden, kernel_init=_glorot_uniform, dtype=dtype,
                              param_dtype=jnp.float32, rngs=rngs)
    self.excite = nnx.Linear(hidden, channels, kernel_init=_glorot_uniform, dtype=dtype,
                             param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.mean(x, axis=(1, 2))
    gate = jax.nn.sigmoid(self.excite(jax.nn.relu(self.squeeze(pooled))))
    return x * gate[:, None, None, :]


class EncoderLevel(nnx.Module):
  """Two 3x3 convs with ReLU (he_normal), BatchNorm, optional squeeze-excite: (B, H, W, in) -> (B, H, W, out)."""

  def __init__(self, in_features: int, out_features: int, *, squeeze_excite: bool, dtype, rngs: nnx.Rngs):
    self.conv1 = _conv(in_features, out_features, kernel_init=_he_normal, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(out_features, out_features, kernel_init=_he_normal, dtype=dtype, rngs=rngs)
    self.norm = _batch_norm(out_features, dtype=dtype, rngs=rngs)
    self.squeeze_excite = SqueezeExcite(out_features, dtype=dtype, rngs=rngs) if squeeze_excite else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.norm(jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x)))))
    return self.squeeze_excite(x) if self.squeeze_excite is not None else x


class DSDFBlock(nnx.Module):
  """Dual-scale dense fusion (`RDDB` in `model.py`, docs/networks.md) of a high- and a low-resolution stream.

  x: (B, H, W, Cx) and y: (B, H/2, W/2, Cy) -> (x + 0.4 * x5, y + 0.4 * y5), same shapes. Each stream grows
  densely by `growth` = Cx // 2 channels per step (LeakyReLU 0.25 after every conv), and at every step
  receives the other stream resampled: a stride-2 3x3 conv down, a stride-2 3x3 transposed conv up.

  `y1="keras"` is what the original executes: `y1 = lrelu(y)`, because `model.py` computes a conv of y
  and then overwrites the result with `LeakyReLU(y)` (the conv is dead, so it has no parameters) and the
  y-stream concatenations are Cy wider. `y1="designed"` is the paper's `y1 = lrelu(conv(y))`.
  """

  # Which dense feature of each stream crosses to the other scale before steps 1..4. `model.py` crosses
  # x, x1, x3, x4 (and y, y1, y3, y4): x2 and y2 never cross.
  CROSS_SOURCES = (0, 1, 3, 4)

  def __init__(self, high_features: int, low_features: int, *, y1: Literal["keras", "designed"],
               dtype, rngs: nnx.Rngs):
    growth = max(1, high_features // 2)
    y1_features = low_features if y1 == "keras" else growth
    self.y1_conv = _conv(low_features, growth, dtype=dtype, rngs=rngs) if y1 == "designed" else None
    # x_k (k = 2..5) sees x, x1..x_{k-1} and the crossed map: Cx + k * growth channels; y_k sees y, y1..y_{k-1}
    # and the crossed map: Cy + C(y1) + (k - 1) * growth. x5 and y5 map back to the input widths.
    self.x_convs = nnx.List(
        [_conv(high_features, growth, dtype=dtype, rngs=rngs)]                                   # x1
        + [_conv(high_features + k * growth, growth, dtype=dtype, rngs=rngs) for k in (2, 3, 4)]  # x2..x4
        + [_conv(high_features + 5 * growth, high_features, dtype=dtype, rngs=rngs)])             # x5
    self.y_convs = nnx.List(
        [_conv(low_features + y1_features + k * growth, growth, dtype=dtype, rngs=rngs) for k in (1, 2, 3)]
        + [_conv(low_features + y1_features + 4 * growth, low_features, dtype=dtype, rngs=rngs)])  # y2..y5
    self.down_convs = nnx.List(   # of x, x1, x3, x4
        [_conv(features, growth, stride=2, dtype=dtype, rngs=rngs)
         for features in (high_features, growth, growth, growth)])
    self.up_convs = nnx.List(     # of y, y1, y3, y4
        [KerasConvTranspose(features, growth, 3, 2, padding="same", dtype=dtype, rngs=rngs)
         for features in (low_features, y1_features, growth, growth)])

  def __call__(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    y1 = _leaky_relu(self.y1_conv(y) if self.y1_conv is not None else y)
    x_features = [x, _leaky_relu(self.x_convs[0](x))]
    y_features = [y, y1]
    for step in range(4):
      source = self.CROSS_SOURCES[step]
      x_down = _leaky_relu(self.down_convs[step](x_features[source]))
      y_up = _leaky_relu(self.up_convs[step](y_features[source]))
      x_next = _leaky_relu(self.x_convs[step + 1](jnp.concatenate([*x_features, y_up], axis=-1)))
      y_next = _leaky_relu(self.y_convs[step](jnp.concatenate([*y_features, x_down], axis=-1)))
      x_features.append(x_next)
      y_features.append(y_next)
    return x + RESIDUAL_SCALE * x_features[-1], y + RESIDUAL_SCALE * y_features[-1]


class ShapeResidual(nnx.Module):
  """`resblock` of `model.py`: relu(BN(conv3x3(x)) + x): (B, H, W, in) -> (B, H, W, out).

  Its first conv + BN + ReLU is overwritten in the original (dead). When `in` is 1 (after a gated shape
  conv) the residual is broadcast to `out` channels, as Keras `Add` does.
  """

  def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
    if in_features not in (1, out_features):
      raise ValueError(f"ShapeResidual: in_features={in_features} must be 1 or out_features={out_features}")
    self.conv = _conv(in_features, out_features, dtype=dtype, rngs=rngs)
    self.norm = _batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.norm(self.conv(x)) + x)


class GatedShapeConv(nnx.Module):
  """`gsc` of `model.py`: the 1-channel attention map of shape features and a gating map.

  features (B, H, W, C) and gate (B, H, W, 1) -> sigmoid(BN(1x1(relu(1x1(BN([features, gate])))))) of shape
  (B, H, W, 1). As in the original, only the map is returned: the features are not multiplied by it.
  """

  def __init__(self, features: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.in_norm = _batch_norm(features + 1, dtype=dtype, rngs=rngs)
    self.hidden = _pointwise(features + 1, hidden, dtype=dtype, rngs=rngs)
    self.out = _pointwise(hidden, 1, dtype=dtype, rngs=rngs)
    self.out_norm = _batch_norm(1, dtype=dtype, rngs=rngs)

  def __call__(self, features: jax.Array, gate: jax.Array) -> jax.Array:
    x = self.in_norm(jnp.concatenate([features, gate], axis=-1))
    return jax.nn.sigmoid(self.out_norm(self.out(jax.nn.relu(self.hidden(x)))))


class ShapeStream(nnx.Module):
  """The full-resolution boundary stream (docs/networks.md): n23, n33, n43 -> `edge_out` logits.

  n23 (B, H/2, W/2, C2), n33 (B, H/4, W/4, C3), n43 (B, H/8, W/8, C4) -> (B, H, W, out_channels).
  """

  def __init__(self, c2: int, c3: int, c4: int, stage_features: tuple[int, int, int, int], out_channels: int,
               *, dtype, rngs: nnx.Rngs):
    s1, s2, s3, s4 = stage_features
    self.entry = _pointwise(c2, s1, dtype=dtype, rngs=rngs)
    self.residual1 = ShapeResidual(s1, s1, dtype=dtype, rngs=rngs)
    self.gate3 = _pointwise(c3, 1, dtype=dtype, rngs=rngs)
    self.reduce2 = _pointwise(s1, s2, dtype=dtype, rngs=rngs)
    # `gsc(ss, c3, 32, 32)` and `gsc(ss, c4, 16, 16)`: the hidden width is the previous stage's plus one.
    self.gated2 = GatedShapeConv(s2, s1 + 1, dtype=dtype, rngs=rngs)
    self.residual2 = ShapeResidual(1, s2, dtype=dtype, rngs=rngs)
    self.reduce3 = _pointwise(s2, s3, dtype=dtype, rngs=rngs)
    self.gate4 = _pointwise(c4, 1, dtype=dtype, rngs=rngs)
    self.gated3 = GatedShapeConv(s3, s2 + 1, dtype=dtype, rngs=rngs)
    self.residual3 = ShapeResidual(1, s3, dtype=dtype, rngs=rngs)
    self.reduce4 = _pointwise(s3, s4, dtype=dtype, rngs=rngs)
    self.head = _pointwise(s4, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, n23: jax.Array, n33: jax.Array, n43: jax.Array, size: tuple[int, int]) -> jax.Array:
    ss = self.residual1(upsample_bilinear(self.entry(n23), size))
    ss = self.gated2(self.reduce2(ss), upsample_bilinear(self.gate3(n33), size))
    ss = self.residual2(ss)
    ss = self.gated3(self.reduce3(ss), upsample_bilinear(self.gate4(n43), size))
    ss = self.residual3(ss)
    return self.head(self.reduce4(ss))


class EdgeFusion(nnx.Module):
  """Fuses the boundary maps with the Canny map of the image into one edge prior (docs/networks.md).

  edge logits (B, H, W, K) and canny (B, H, W, 1) in {0, 1} -> relu(BN(1x1(sigmoid(1x1([sigmoid(edge), canny])))))
  of shape (B, H, W, 1).
  """

  def __init__(self, edge_channels: int, *, dtype, rngs: nnx.Rngs):
    self.mix = _pointwise(edge_channels + 1, 1, dtype=dtype, rngs=rngs)
    self.gain = _pointwise(1, 1, dtype=dtype, rngs=rngs)
    self.norm = _batch_norm(1, dtype=dtype, rngs=rngs)

  def __call__(self, edge_logits: jax.Array, canny: jax.Array) -> jax.Array:
    mixed = jax.nn.sigmoid(self.mix(jnp.concatenate([jax.nn.sigmoid(edge_logits), canny], axis=-1)))
    return jax.nn.relu(self.norm(self.gain(mixed)))


class AttentionGate(nnx.Module):
  """`Attention_B(X, G, k)`: X (B, H, W, Cx) gated by G (B, H/2, W/2, Cg) -> BN(X * up(psi)), (B, H, W, Cx)."""

  def __init__(self, skip_features: int, gating_features: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.theta = _conv(skip_features, hidden, 2, stride=2, dtype=dtype, rngs=rngs)
    self.phi = _pointwise(gating_features, hidden, dtype=dtype, rngs=rngs)
    self.psi = _pointwise(hidden, 1, kernel_init=nnx.initializers.normal(0.02), dtype=dtype, rngs=rngs)
    self.upsample = KerasConvTranspose(1, 1, 2, 2, padding="valid", dtype=dtype, rngs=rngs)
    self.norm = _batch_norm(skip_features, epsilon=ATTENTION_BN_EPSILON, dtype=dtype, rngs=rngs)

  def __call__(self, skip: jax.Array, gating: jax.Array) -> jax.Array:
    attention = jax.nn.sigmoid(self.psi(jax.nn.relu(self.theta(skip) + self.phi(gating))))
    return self.norm(skip * self.upsample(attention))


class DualAttention(nnx.Module):
  """`dual_att_blocks(skip, prev, C)`: squeeze-excite and spatial attention on the upsampled fusion.

  skip (B, H, W, Cs), prev (B, H/2, W/2, Cp) -> (1 + spatial) * SE(z), (B, H, W, C), where
  z = relu(BN(conv3x3([skip, relu(BN(convT4x4s2(prev)))]))) and spatial is a C/4-wide 1x1 bottleneck.
  """

  def __init__(self, skip_features: int, prev_features: int, features: int, *, dtype, rngs: nnx.Rngs):
    spatial_hidden = max(1, features // 4)
    self.upsample = KerasConvTranspose(prev_features, features, 4, 2, padding="same", dtype=dtype, rngs=rngs)
    self.upsample_norm = _batch_norm(features, dtype=dtype, rngs=rngs)
    self.fuse = _conv(skip_features + features, features, dtype=dtype, rngs=rngs)
    self.fuse_norm = _batch_norm(features, dtype=dtype, rngs=rngs)
    self.squeeze_excite = SqueezeExcite(features, dtype=dtype, rngs=rngs)
    self.spatial_hidden = _pointwise(features, spatial_hidden, dtype=dtype, rngs=rngs)
    self.spatial_norm = _batch_norm(spatial_hidden, dtype=dtype, rngs=rngs)
    self.spatial_out = _pointwise(spatial_hidden, 1, dtype=dtype, rngs=rngs)

  def __call__(self, skip: jax.Array, prev: jax.Array) -> jax.Array:
    up = jax.nn.relu(self.upsample_norm(self.upsample(prev)))
    z = jax.nn.relu(self.fuse_norm(self.fuse(jnp.concatenate([skip, up], axis=-1))))
    spatial = jax.nn.sigmoid(self.spatial_out(jax.nn.relu(self.spatial_norm(self.spatial_hidden(z)))))
    return (spatial + 1.0) * self.squeeze_excite(z)


class AttentionDecoderStage(nnx.Module):
  """One attention decoder stage (the H/4 and H/2 rows in docs/networks.md).

  skip (B, H, W, C) from the sub-network and prev (B, H/2, W/2, Cp) from the stage below ->
  features (B, H, W, C) and head logits (B, H, W, out_channels).
  """

  def __init__(self, skip_features: int, prev_features: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
    c = skip_features
    self.attention = AttentionGate(c, prev_features, c, dtype=dtype, rngs=rngs)
    # `Up3`: a 1x1 stride-2 transposed conv writes prev to the even pixels; odd pixels get only the bias.
    self.upsample = KerasConvTranspose(prev_features, c, 1, 2, padding="same", dtype=dtype, rngs=rngs)
    self.dual_attention = DualAttention(c, prev_features, c, dtype=dtype, rngs=rngs)
    self.fuse = _pointwise(3 * c, c, dtype=dtype, rngs=rngs)
    self.norm1 = _batch_norm(c, dtype=dtype, rngs=rngs)
    self.conv1 = _conv(c, c, dtype=dtype, rngs=rngs)
    self.norm2 = _batch_norm(c, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(c, c, dtype=dtype, rngs=rngs)
    self.head = _pointwise(c, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, skip: jax.Array, prev: jax.Array) -> tuple[jax.Array, jax.Array]:
    gated = self.attention(skip, prev)
    fused = self.fuse(jnp.concatenate(
        [self.upsample(prev), gated, self.dual_attention(skip, prev)], axis=-1))
    # Pre-activation residual: no BN or activation after the second conv.
    features = fused + self.conv2(jax.nn.relu(self.norm2(self.conv1(jax.nn.relu(self.norm1(fused))))))
    return features, self.head(features)


class OutputStage(nnx.Module):
  """The full-resolution decoder stage: n24 (B, H/2, W/2, C2), n13 (B, H, W, C1) and the fused edge
  prior (B, H, W, 1) -> mask logits (B, H, W, out_channels). he_normal initialisation as in the original."""

  def __init__(self, prev_features: int, skip_features: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
    c = skip_features
    self.upsample = KerasConvTranspose(prev_features, c, 4, 2, padding="same", dtype=dtype, rngs=rngs)
    self.merge = _pointwise(2 * c, c, kernel_init=_he_normal, dtype=dtype, rngs=rngs)
    self.conv = _conv(c, c, kernel_init=_he_normal, dtype=dtype, rngs=rngs)
    self.norm = _batch_norm(c, dtype=dtype, rngs=rngs)
    self.edge_conv = _conv(c + 1, c, kernel_init=_he_normal, dtype=dtype, rngs=rngs)
    self.head = _pointwise(c, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, n24: jax.Array, n13: jax.Array, edge: jax.Array) -> jax.Array:
    merged = jax.nn.relu(self.merge(jnp.concatenate([self.upsample(n24), n13], axis=-1)))
    # Activation before BatchNorm, then the residual, as in the original.
    x = self.norm(jax.nn.relu(self.conv(merged))) + merged
    x = jax.nn.relu(self.edge_conv(jnp.concatenate([x, edge], axis=-1)))
    return self.head(x)


class MSRFNet(nnx.Module):
  """MSRF-Net: image (B, H, W, in_channels) and its binary Canny map (B, H, W, 1) -> four logit maps.

  `__call__` returns `[x, edge_out, pred2, pred4]`, each (B, H, W, out_channels) float32 logits at full
  resolution: the mask, the shape stream's boundary map (one per target channel), and the decoder's H/2
  and H/4 heads upsampled bilinearly. H and W must be multiples of 8.

  Args:
    in_channels: image channels (1 for the lens data, 3 for RGB PNGs such as CHAOS).
    out_channels: target maps K (for example lens and arcs); every head has K channels.
    width: multiplies every channel count (0.125 or 0.25 give CPU-sized variants); the DSDF growth rate
      stays half the high-resolution stream and the SE bottleneck C // 16 (at least 1).
    wiring: "original" (the 7 DSDF blocks alive in `model.py`) or "paper" (all 10 blocks of Fig. 2b).
    dsdf_y1: "keras" (default; what the original computes, see `DSDFBlock`) or "designed" (the paper's
      y1 conv: 21,092,093 parameters with the paper wiring).
    dtype: compute dtype (float32 or bfloat16); parameters and BatchNorm statistics stay float32.
    rngs: parameter initialisation keys. Dropout keys are passed at call time, not stored.

  Train mode (the default after construction) applies dropout 0.2 after each pooling and uses batch
  statistics; `model.eval()` or `nnx.view(model, deterministic=True, use_running_average=True)` turns
  dropout off and uses the running statistics.
  """

  input_keys = ("image", "edge")

  def __init__(self, in_channels: int = 1, out_channels: int = 1, *, width: float = 1.0,
               wiring: Literal["original", "paper"] = "original",
               dsdf_y1: Literal["keras", "designed"] = "keras", dtype=jnp.float32, rngs: nnx.Rngs):
    if not (isinstance(in_channels, int) and in_channels >= 1):
      raise ValueError(f"MSRFNet in_channels={in_channels!r}: expected a positive int (1 grey, 3 RGB)")
    if not (isinstance(out_channels, int) and out_channels >= 1):
      raise ValueError(f"MSRFNet out_channels={out_channels!r}: expected a positive int (one per target)")
    if not width > 0:
      raise ValueError(f"MSRFNet width={width!r}: expected a positive channel multiplier (1.0 = reference)")
    if wiring not in DSDF_SCHEDULES:
      raise ValueError(f"MSRFNet wiring={wiring!r}: expected one of {', '.join(map(repr, DSDF_SCHEDULES))}")
    if dsdf_y1 not in ("keras", "designed"):
      raise ValueError(f"MSRFNet dsdf_y1={dsdf_y1!r}: expected 'keras' (as executed) or 'designed' (paper)")
    dtype = jnp.dtype(dtype)
    self.in_channels = in_channels
    self.out_channels = out_channels
    self.wiring = wiring
    self.dtype = dtype
    c1, c2, c3, c4 = (scaled_channels(c, width) for c in ENCODER_CHANNELS)

    self.encoder = nnx.List([
        EncoderLevel(in_channels, c1, squeeze_excite=True, dtype=dtype, rngs=rngs),
        EncoderLevel(c1, c2, squeeze_excite=True, dtype=dtype, rngs=rngs),
        EncoderLevel(c2, c3, squeeze_excite=True, dtype=dtype, rngs=rngs),
        EncoderLevel(c3, c4, squeeze_excite=False, dtype=dtype, rngs=rngs),
    ])
    self.dropout = nnx.Dropout(ENCODER_DROPOUT)
    scale_features = (c1, c2, c3, c4)
    self.dsdf_schedule = DSDF_SCHEDULES[wiring]
    self.dsdf = nnx.Dict({
        name: DSDFBlock(scale_features[pair], scale_features[pair + 1], y1=dsdf_y1, dtype=dtype, rngs=rngs)
        for name, pair in self.dsdf_schedule})
    self.shape_stream = ShapeStream(
        c2, c3, c4, tuple(scaled_channels(c, width) for c in SHAPE_STREAM_CHANNELS), out_channels,
        dtype=dtype, rngs=rngs)
    self.edge_fusion = EdgeFusion(out_channels, dtype=dtype, rngs=rngs)
    self.decoder4 = AttentionDecoderStage(c3, c4, out_channels, dtype=dtype, rngs=rngs)
    self.decoder2 = AttentionDecoderStage(c2, c3, out_channels, dtype=dtype, rngs=rngs)
    self.decoder1 = OutputStage(c2, c1, out_channels, dtype=dtype, rngs=rngs)

  def _check_inputs(self, image: jax.Array, edge: jax.Array, rngs: nnx.Rngs | None) -> None:
    if image.ndim != 4 or image.shape[-1] != self.in_channels:
      raise ValueError(f"MSRFNet image shape {image.shape}: expected (B, H, W, {self.in_channels}) NHWC; "
                       f"build the model with in_channels={image.shape[-1] if image.ndim == 4 else '?'} "
                       "to match the data")
    batch, height, width = image.shape[:3]
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
      raise ValueError(f"MSRFNet image size {height}x{width}: height and width must be multiples of "
                       f"{INPUT_MULTIPLE} (three 2x2 poolings); pad or crop the images, e.g. 125 -> 128")
    if edge.shape != (batch, height, width, 1):
      raise ValueError(f"MSRFNet edge shape {edge.shape}: expected the image's Canny map, "
                       f"({batch}, {height}, {width}, 1)")
    if not self.dropout.deterministic and rngs is None:
      raise ValueError("MSRFNet in train mode needs a dropout key: call model(image, edge, "
                       "rngs=nnx.Rngs(dropout=key)), or use model.eval() for inference")

  def __call__(self, image: jax.Array, edge: jax.Array, *, rngs: nnx.Rngs | None = None) -> list[jax.Array]:
    """image (B, H, W, in_channels), edge (B, H, W, 1) in {0, 1} -> [x, edge_out, pred2, pred4] logits."""
    self._check_inputs(image, edge, rngs)
    size = image.shape[1:3]
    x = image.astype(self.dtype)
    encoded = []
    for level, encoder_level in enumerate(self.encoder):
      if level:
        x = self.dropout(max_pool_ceil(x), rngs=rngs)
      x = encoder_level(x)
      encoded.append(x)

    streams = list(encoded)
    for name, pair in self.dsdf_schedule:
      streams[pair], streams[pair + 1] = self.dsdf[name](streams[pair], streams[pair + 1])
    n13, n23, n33, n43 = (e + RESIDUAL_SCALE * s for e, s in zip(encoded, streams))

    edge_logits = self.shape_stream(n23, n33, n43, size)
    edge_prior = self.edge_fusion(edge_logits, edge.astype(self.dtype))
    n34, pred4 = self.decoder4(n33, n43)
    n24, pred2 = self.decoder2(n23, n34)
    mask_logits = self.decoder1(n24, n13, edge_prior)
    outputs = [mask_logits, edge_logits, upsample_bilinear(pred2, size), upsample_bilinear(pred4, size)]
    return [o.astype(jnp.float32) for o in outputs]

  def prediction(self, outputs: list[jax.Array]) -> jax.Array:
    """The mask logits (B, H, W, out_channels) among the outputs of `__call__`."""
    return outputs[0]
