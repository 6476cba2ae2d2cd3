"""Layers shared by the networks. All tensors are NHWC: (batch, height, width, channels)."""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from lensjax.models import onednn


_FAST_PATHS = {"enabled": True, "onednn": True, "small_maps": True}


@contextlib.contextmanager
def cpu_fast_paths(enabled: bool, *, onednn: bool = True, small_maps: bool = True):
  """Turns the CPU fast paths of this module on or off for the code traced inside the block.

  They are on by default and only ever taken on the CPU backend (checked when a function is traced). Off, every
  layer is the plain JAX formulation: for tests of equivalence and for A/B timings
  (`python -m benchmarks.profile_step --compare-plain`). `onednn=False` leaves the other fast paths on but keeps
  XLA's convolutions (with the chunked kernel gradient) where the oneDNN kernels would run; `small_maps=False`
  keeps convolutions on small maps off the patch matmul (`SMALL_MAP_PIXELS`).
  """
  previous = dict(_FAST_PATHS)
  _FAST_PATHS.update(enabled=enabled, onednn=onednn, small_maps=small_maps)
  try:
    yield
  finally:
    _FAST_PATHS.update(previous)


def _fast_paths_enabled() -> bool:
  return _FAST_PATHS["enabled"] and jax.default_backend() == "cpu"


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

  PyTorch's `MaxPool2d(2, 2, ceil_mode=True)`: an odd edge is padded with -inf on the high side. The gradient
  goes to the first maximum of each window in row-major order (top-left, top-right, bottom-left,
  bottom-right), as XLA's select-and-scatter gradient of `reduce_window` and PyTorch send it: on windows with
  ties (all zeros after a ReLU are common) all three give bit-identical gradients. On CPU the forward pass
  records that position (int8) and the backward pass places the gradient there, elementwise passes that XLA's
  CPU backend runs several times faster than its select-and-scatter (an index-tracking reduce-window, an iota
  and a scatter).
  """
  if not _fast_paths_enabled() or _sharded_by_type(x):
    pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                 ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  return _max_pool_ceil(x)


def _onednn_allowed(x: jax.Array) -> bool:
  """Whether the oneDNN kernels may be asked for an op on `x` (the fast paths being on): not switched off with
  `cpu_fast_paths(..., onednn=False)`, and `x` not sharded by type."""
  return _FAST_PATHS["onednn"] and not _sharded_by_type(x)


def _sharded_by_type(x: jax.Array) -> bool:
  """Whether `x` carries a sharding in its type (explicit mesh axes): the window reshape of the fast path has
  no sharding rule there, so such inputs take the plain path."""
  spec = getattr(jax.typeof(x).sharding, "spec", None)
  return spec is not None and any(axis is not None for axis in spec)


def _pool_windows(x: jax.Array) -> jax.Array:
  """(B, h, w, C) -> (B, ceil(h/2), 2, ceil(w/2), 2, C): the 2x2 windows, -inf padded on the high side."""
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  batch, height, width, channels = x.shape
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels)


def _window_max_and_first(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The maximum of each 2x2 window and the row-major position (0..3) of its first occurrence, (B, h', w', C)."""
  windows = _pool_windows(x)
  corners = [windows[:, :, row, :, column, :] for row in (0, 1) for column in (0, 1)]
  pooled = jnp.maximum(jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3]))
  first = jnp.full(pooled.shape, 3, jnp.int8)
  for position in (2, 1, 0):
    first = jnp.where(corners[position] == pooled, jnp.int8(position), first)
  return pooled, first


@jax.custom_vjp
def _max_pool_ceil(x: jax.Array) -> jax.Array:
  return _pool_windows(x).max(axis=(2, 4))


def _max_pool_forward(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, tuple[int, ...]]]:
  # The position is found with the maximum, from the same values: comparing the input with the pooled map in
  # the backward pass would fail where XLA recomputes the input there with different rounding.
  pooled, first = _window_max_and_first(x)
  return pooled, (first, x.shape)


def _max_pool_backward(residuals: tuple[jax.Array, tuple[int, ...]], grad: jax.Array) -> tuple[jax.Array]:
  first, shape = residuals
  zero = jnp.zeros((), grad.dtype)
  corners = [jnp.where(first == position, grad, zero) for position in range(4)]
  grad_windows = jnp.stack([jnp.stack(corners[0:2], axis=3), jnp.stack(corners[2:4], axis=3)], axis=2)
  batch, height, _, width, _, channels = grad_windows.shape
  grad_x = grad_windows.reshape(batch, 2 * height, 2 * width, channels)[:, :shape[1], :shape[2]]
  return (grad_x,)


_max_pool_ceil.defvjp(_max_pool_forward, _max_pool_backward)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1, precision=None,
                         out_sharding=None, **kwargs) -> jax.Array:
  """`jax.lax.conv_general_dilated`, on CPU through oneDNN or with the weight gradient computed in batch chunks.

  On CPU a float32 NHWC convolution runs its forward pass, input gradient and kernel gradient as oneDNN kernels
  where the extension is built (`lensjax.models.onednn`, docs/cpu-speed.md). Otherwise it gets the same forward
  and input gradient, and the kernel gradient is the sum over batch chunks (`weight_gradient_chunk` images each,
  about `WEIGHT_GRADIENT_CHUNK_ROWS` output pixels) of the chunks' kernel gradients: the same terms summed in
  another order. XLA's CPU backend contracts the whole batch and image in one kernel-gradient convolution whose
  output is only kh x kw x in x out, slowly (2-4x slower than the forward at 64 x 64 maps); chunks run 1.3-2x
  faster where in x out >= 1,024 channels, and slower for narrower layers, which stay whole
  (docs/performance.md). On CPU, kernel taps that read only padding are dropped first (`_drop_padding_taps`).
  Other backends, grouped or input-dilated convolutions and batches that do not split get plain
  `lax.conv_general_dilated`. A drop-in for `nnx.Conv(conv_general_dilated=...)`.
  """
  plain = functools.partial(jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
                            lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                            precision=precision, **kwargs)
  if out_sharding is not None:
    plain = functools.partial(plain, out_sharding=out_sharding)
  numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if (not _fast_paths_enabled() or feature_group_count != 1 or kwargs or out_sharding is not None
      or (lhs_dilation is not None and any(d != 1 for d in lhs_dilation))):
    return plain(lhs, rhs)
  if (pruned := _drop_padding_taps(lhs.shape, rhs, window_strides, padding, rhs_dilation, numbers)) is not None:
    rhs, padding = pruned
    plain = functools.partial(plain, padding=padding)
  if (small := _small_map_window(lhs, rhs, window_strides, padding, rhs_dilation, numbers, precision)) is not None:
    return _patch_matmul_conv(lhs, rhs, *small)
  window = None
  if _onednn_allowed(lhs):
    window = onednn.conv_window(lhs, rhs, window_strides, padding, rhs_dilation, numbers, precision)
  if window is not None:
    return onednn.conv(lhs, rhs, *window)
  chunk = weight_gradient_chunk(lhs.shape[numbers.lhs_spec[0]],
                                [lhs.shape[d] // s for d, s in zip(numbers.lhs_spec[2:], window_strides)],
                                rhs.shape[numbers.rhs_spec[1]], rhs.shape[numbers.rhs_spec[0]])
  if chunk is None:
    return plain(lhs, rhs)
  return _chunked_weight_gradient_conv(lhs, rhs, _hashable(window_strides), _hashable(padding),
                                       _hashable(rhs_dilation), numbers, _hashable(precision), chunk)



def _drop_padding_taps(lhs_shape, rhs: jax.Array, window_strides, padding, rhs_dilation,
                       numbers: jax.lax.ConvDimensionNumbers):
  """(kernel slice, padding) without the kernel taps that read only padding, or None where every tap reads input.

  A dilated convolution on a map no larger than its dilation (IS-Net's dilation 4 and 8 at 4 x 4 and 8 x 8) reads
  zeros through all its outer taps: only the centre one sees the input, and the convolution is a 1 x 1 one with
  that tap. Dropping such taps (and as much padding) leaves every output the same sum of the same non-zero terms,
  and their kernel gradient is zero either way; it saves 8/9 of the work there. Taps are dropped per spatial axis
  from either end, only where the padding left stays >= 0; the slice's gradient is the full kernel's, zero on the
  dropped taps.
  """
  spatial = [lhs_shape[d] for d in numbers.lhs_spec[2:]]
  kernel = [rhs.shape[d] for d in numbers.rhs_spec[2:]]
  dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * len(spatial)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(spatial, [(k - 1) * d + 1 for k, d in zip(kernel, dilation)],
                                      window_strides, padding)
  taps, new_padding = [], []
  for size, k, stride, d, (low, high) in zip(spatial, kernel, window_strides, dilation, padding):
    outputs = range((size + low + high - (k - 1) * d - 1) // stride + 1)
    reads = [t for t in range(k) if any(0 <= o * stride + t * d - low < size for o in outputs)]
    first, last = (reads[0], reads[-1]) if reads else (0, k - 1)
    if low - first * d < 0 or high - (k - 1 - last) * d < 0:
      first, last = 0, k - 1
    taps.append((first, last))
    new_padding.append((low - first * d, high - (k - 1 - last) * d))
  if all(taps_ == (0, k - 1) for taps_, k in zip(taps, kernel)):
    return None
  for (first, last), axis in zip(taps, numbers.rhs_spec[2:]):
    rhs = jax.lax.slice_in_dim(rhs, first, last + 1, axis=axis)
  return rhs, tuple(new_padding)


# Convolutions whose output maps have at most SMALL_MAP_PIXELS pixels per image, with at least
# SMALL_MAP_MIN_CHANNEL_PRODUCT in x out channels (IS-Net's 512-channel layers on 4 x 4 and 2 x 2 maps), run as one
# matmul of their patches on CPU (docs/performance.md, "Small maps").
SMALL_MAP_PIXELS = 16
SMALL_MAP_MIN_CHANNEL_PRODUCT = 65_536


def _small_map_window(lhs: jax.Array, rhs: jax.Array, window_strides, padding, rhs_dilation,
                      numbers: jax.lax.ConvDimensionNumbers, precision):
  """(padding, dilation) for `_patch_matmul_conv`, or None where a convolution does not take it (or
  `cpu_fast_paths(..., small_maps=False)`): float32, a window of `onednn.nhwc_window` at stride 1, an output map of
  at most `SMALL_MAP_PIXELS` pixels and at least `SMALL_MAP_MIN_CHANNEL_PRODUCT` in x out channels, on an input
  not sharded by type.

  There the kernel (up to 9 x 1024 x 512 floats) outweighs the activations: oneDNN's convolutions reorder it into
  their blocked layout on every call and run at 35-170 GFLOP/s, XLA's at less; one matmul reads it as it is.
  bfloat16 convolutions keep oneDNN's AMX kernels, faster at 4 x 4 (XLA's bfloat16 matmul does not use AMX).
  """
  if (not _FAST_PATHS["small_maps"] or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32
      or _sharded_by_type(lhs) or rhs.shape[-2] * rhs.shape[-1] < SMALL_MAP_MIN_CHANNEL_PRODUCT):
    return None
  window = onednn.nhwc_window(lhs, rhs, window_strides, padding, rhs_dilation, numbers, precision)
  if (window is None or window[0] != (1, 1)
      or math.prod(onednn.output_shape(lhs.shape, rhs.shape, *window)[1:3]) > SMALL_MAP_PIXELS):
    return None
  return window[1:]


def _patch_matmul_conv(lhs: jax.Array, rhs: jax.Array, padding, dilation) -> jax.Array:
  """A stride-1 convolution (N, H, W, I) x (KH, KW, I, O) -> (N, OH, OW, O) as (N * OH * OW, KH * KW * I)
  patches times the kernel read as a (KH * KW * I, O) matrix: the same products as the convolution, summed in
  another order. Its gradients are XLA's of the pad, slices and matmul: two matmuls and a sum of shifted maps."""
  kh, kw, cin, cout = rhs.shape
  dh, dw = dilation
  padded = jnp.pad(lhs, ((0, 0), padding[0], padding[1], (0, 0)))
  oh, ow = padded.shape[1] - (kh - 1) * dh, padded.shape[2] - (kw - 1) * dw
  patches = jnp.concatenate([padded[:, i * dh:i * dh + oh, j * dw:j * dw + ow, :]
                             for i in range(kh) for j in range(kw)], axis=-1)
  out = patches.reshape(-1, kh * kw * cin) @ rhs.reshape(kh * kw * cin, cout)
  return out.reshape(lhs.shape[0], oh, ow, cout)


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """A transposed convolution, (N, H, W, I) x (KH, KW, I, O) -> (N, OH, OW, O): the spatially flipped kernel
  correlated with x dilated by `strides` (zeros between its pixels) and padded by `padding` ((before, after) per
  axis), OH = (H - 1) * stride + before + after - KH + 2.

  On CPU it runs through oneDNN where `conv_general_dilated` would (`onednn.conv_transpose`: the input gradient
  of a strided convolution, computed without the zeros); elsewhere it is `lax.conv_general_dilated` with
  `lhs_dilation`, whose CPU kernels multiply every inserted zero.
  """
  if _fast_paths_enabled() and _onednn_allowed(x):
    if (window := onednn.conv_transpose_window(x, kernel, strides, padding)) is not None:
      return onednn.conv_transpose(x, kernel, window[0], *window[1])
  return jax.lax.conv_general_dilated(x, jnp.flip(kernel, axis=(0, 1)), window_strides=(1, 1),
                                      padding=(padding[0], padding[1]), lhs_dilation=strides,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Rows (images x output pixels) per chunk of the kernel-gradient sum, and the smallest in x out channels for
# which chunking wins on CPU (docs/performance.md, "conv dW").
WEIGHT_GRADIENT_CHUNK_ROWS = 8192
WEIGHT_GRADIENT_MIN_CHANNEL_PRODUCT = 1024


def weight_gradient_chunk(batch: int, out_spatial, in_channels: int, out_channels: int) -> int | None:
  """Images per chunk for the kernel gradient of a convolution, or None to leave it whole."""
  images = max(1, WEIGHT_GRADIENT_CHUNK_ROWS // max(1, math.prod(out_spatial)))
  if in_channels * out_channels < WEIGHT_GRADIENT_MIN_CHANNEL_PRODUCT or images >= batch or batch % images:
    return None
  return images


def _hashable(value):
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _chunked_weight_gradient_conv(lhs, rhs, window_strides, padding, rhs_dilation, numbers, precision, chunk):
  del chunk
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, rhs_dilation=rhs_dilation,
                                      dimension_numbers=numbers, precision=precision)


def _chunked_forward(lhs, rhs, window_strides, padding, rhs_dilation, numbers, precision, chunk):
  out = _chunked_weight_gradient_conv(lhs, rhs, window_strides, padding, rhs_dilation, numbers, precision, chunk)
  return out, (lhs, rhs)


def _chunked_backward(window_strides, padding, rhs_dilation, numbers, precision, chunk, residuals, grad):
  lhs, rhs = residuals
  conv = lambda x, w: jax.lax.conv_general_dilated(x, w, window_strides, padding, rhs_dilation=rhs_dilation,
                                                   dimension_numbers=numbers, precision=precision)
  _, input_vjp = jax.vjp(lambda x: conv(x, rhs), lhs)
  (grad_lhs,) = input_vjp(grad)
  chunks = lhs.shape[numbers.lhs_spec[0]] // chunk
  grad_rhs = None
  for lhs_chunk, grad_chunk in zip(jnp.split(lhs, chunks, axis=numbers.lhs_spec[0]),
                                   jnp.split(grad, chunks, axis=numbers.out_spec[0])):
    _, kernel_vjp = jax.vjp(lambda w, x=lhs_chunk: conv(x, w), rhs)
    (chunk_grad,) = kernel_vjp(grad_chunk)
    grad_rhs = chunk_grad if grad_rhs is None else grad_rhs + chunk_grad
  return grad_lhs, grad_rhs


_chunked_weight_gradient_conv.defvjp(_chunked_forward, _chunked_backward)


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
