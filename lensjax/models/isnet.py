"""IS-Net (`ISNetDIS`, Qin et al. 2022) and its ground-truth encoder (`ISNetGTEncoder`) in Flax NNX.

Faithful to upstream `xuebinqin/DIS` `IS-Net/models/isnet.py` (see `docs/networks.md`):
RSU-7/6/5/4 residual U-blocks with ceil-mode 2x2 pooling and a dilation-2 bottom, RSU-4F blocks with
dilations 1/2/4/8, a stride-2 3x3 stem with explicit (1, 1) padding, half-pixel bilinear upsampling to exact
sizes, concatenation in the order (upsampled deeper map, skip), the residual `hx1d + hxin` in every block, six
3x3 side heads each upsampled to the input size, and no fused d0 head. Convolutions keep their bias before
BatchNorm, and every convolution is initialised as PyTorch does, so the parameter counts are the upstream ones
(ISNet 3->1: 44,046,790; 1->1: 44,045,638; ISNetGTEncoder 1->1: 6,877,734) and an upstream state_dict maps
one-to-one onto the attributes here (`lensjax.models.import_torch`); attribute names are the upstream ones
(`conv_in`, `stage1`, `rebnconvin`, `conv_s1`, `bn_s1`, `side1`, ...) for that reason.

Two deliberate departures from upstream: the forward returns **logits** (upstream applies the sigmoid inside;
apply it outside, or use a BCE-with-logits loss), and PyTorch updates BatchNorm's running variance with the
unbiased batch variance where Flax uses the biased one (a factor n/(n-1), n = batch * height * width pixels
per channel: 1.03 on the 2x2 bottom maps at batch 8, negligible elsewhere). Given the same weights and
running statistics, eval-mode outputs agree with upstream to float32 rounding.

Size options for small (CPU) variants:
- `width` multiplies every channel count (`lensjax.registry.scaled_channels`: halves rounded up, at least 1);
  the image and output channels are not scaled.
- `depth` D in 1..6 keeps the first D resolution levels: encoder stages 1..D, decoder stages (D-1)d..1d and D
  side outputs. The bottom stage D emits as many channels as hx{D}d has in the full network, so every decoder
  stage keeps its reference shape and the features `[hx1d, ..., hx{D-1}d, hx{D}]` have the channels of the first
  D reference features (64, 64, 128, 256, 512, 512, times `width`), as do the ground-truth encoder's at the
  same depth. Depth 5 and 6 are the reference blocks exactly; at depth 4 stage 4 is RSU-4(256, 128, 256)
  instead of RSU-4(256, 128, 512).
- `refine_channels` C > 0 adds a lensjax head that is not upstream's (`Refinement`): two C-channel conv-BN-ReLU
  layers at the input's full resolution on (image, d1) and a 3x3 conv that adds a correction to d1. 0 (the
  default) is the reference network.

All tensors are NHWC. Parameters are float32; `dtype` is the compute dtype (bfloat16 for mixed precision).
Side logits are returned in float32, features in the compute dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lensjax.models.layers import (conv_general_dilated, max_pool_ceil, torch_default_bias_init,
                                   torch_default_kernel_init, upsample_bilinear)
from lensjax.registry import COMPUTE_DTYPES, scaled_channels

# PyTorch BatchNorm2d(momentum=0.1, eps=1e-5): Flax's momentum is the weight of the old running value.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5

MAX_DEPTH = 6


class StageSpec(NamedTuple):
  """One RSU stage of the reference table: block height (4F = 4 with dilations), mid and out channels."""
  height: int
  dilated: bool
  mid_channels: int
  out_channels: int


# Reference channel tables (docs/networks.md); index 0 is level 1 (the H/2 level).
ISNET_STEM_CHANNELS = 64
ISNET_ENCODER = (StageSpec(7, False, 32, 64), StageSpec(6, False, 32, 128), StageSpec(5, False, 64, 256),
                 StageSpec(4, False, 128, 512), StageSpec(4, True, 256, 512), StageSpec(4, True, 256, 512))
ISNET_DECODER = (StageSpec(7, False, 16, 64), StageSpec(6, False, 32, 64), StageSpec(5, False, 64, 128),
                 StageSpec(4, False, 128, 256), StageSpec(4, True, 256, 512))
GT_ENCODER_STEM_CHANNELS = 16
GT_ENCODER = (StageSpec(7, False, 16, 64), StageSpec(6, False, 16, 64), StageSpec(5, False, 32, 128),
              StageSpec(4, False, 32, 256), StageSpec(4, True, 64, 512), StageSpec(4, True, 64, 512))
# Channels of the feature-synchronisation maps [hx1d .. hx5d, hx6] (ISNet) = [hx1 .. hx6] (GT encoder).
FEATURE_CHANNELS = tuple(spec.out_channels for spec in ISNET_DECODER) + (ISNET_ENCODER[-1].out_channels,)


def _check_options(cls_name: str, in_channels: int, out_channels: int, width: float, depth: int,
                   dtype) -> jnp.dtype:
  """Validates the constructor options shared by both networks; returns the compute dtype."""
  for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{cls_name}: {name} must be a positive integer, got {value!r}")
  if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
    raise ValueError(f"{cls_name}: width must be a positive number (1.0 is the reference network), got {width!r}")
  if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
    raise ValueError(f"{cls_name}: depth must be an integer in 1..{MAX_DEPTH} (6 is the reference), got {depth!r}")
  try:
    compute_dtype = jnp.dtype(dtype)
  except TypeError:
    compute_dtype = None
  if compute_dtype is None or compute_dtype.name not in COMPUTE_DTYPES:
    raise ValueError(f"{cls_name}: dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
  return compute_dtype


def _conv3x3(in_channels: int, out_channels: int, *, dilation: int = 1, stride: int = 1, zero_init: bool = False,
             dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A 3x3 convolution with bias, padding = dilation (size-preserving at stride 1), PyTorch's init (or zeros)."""
  zeros = nnx.initializers.zeros_init()
  return nnx.Conv(in_channels, out_channels, (3, 3), strides=stride,
                  padding=((dilation, dilation), (dilation, dilation)), kernel_dilation=dilation,
                  kernel_init=zeros if zero_init else torch_default_kernel_init(),
                  bias_init=zeros if zero_init else torch_default_bias_init(9 * in_channels),
                  dtype=dtype, param_dtype=jnp.float32, conv_general_dilated=conv_general_dilated, rngs=rngs)


def _batch_norm(channels: int, *, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # Two-pass variance (as PyTorch computes it): E[x^2] - E[x]^2 cancels badly in float32.
  return nnx.BatchNorm(channels, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, dtype=dtype,
                       use_fast_variance=False, param_dtype=jnp.float32, rngs=rngs)


def _check_image(cls_name: str, image: jax.Array, in_channels: int, argument: str) -> None:
  if image.ndim != 4 or image.shape[-1] != in_channels:
    raise ValueError(f"{cls_name}(in_channels={in_channels}) got {argument} of shape {tuple(image.shape)}; "
                     f"expected (batch, height, width, {in_channels}) in NHWC layout (build the model with "
                     f"in_channels equal to the number of input channels)")


class ConvBNReLU(nnx.Module):
  """Upstream `REBNCONV`: 3x3 conv (bias, dilation d, padding d) -> BatchNorm -> ReLU.

  (B, h, w, in) -> (B, h, w, out).
  """

  def __init__(self, in_channels: int, out_channels: int, dilation: int = 1, *, dtype, rngs: nnx.Rngs):
    # `conv_s1`/`bn_s1` are the upstream attribute names, so state_dict keys map onto these paths.
    self.conv_s1 = _conv3x3(in_channels, out_channels, dilation=dilation, dtype=dtype, rngs=rngs)
    self.bn_s1 = _batch_norm(out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.bn_s1(self.conv_s1(x)))


class RSU(nnx.Module):
  """Upstream `RSU{height}` (height 4..7): a residual U-block, (B, h, w, in) -> (B, h, w, out).

  `rebnconvin` maps to `out` channels, `rebnconv1` to `mid`; levels 2..height-1 each follow a ceil-mode 2x2
  max pool (height - 2 pools, the deepest level at h / 2**(height - 2)); `rebnconv{height}` is a dilation-2
  conv at the deepest resolution. The decoder `rebnconv{i}d` consumes (upsampled deeper map, skip i)
  concatenated on channels; the block returns `hx1d + hxin`.
  """

  def __init__(self, height: int, in_channels: int, mid_channels: int, out_channels: int, *, dtype,
               rngs: nnx.Rngs):
    if height < 3:
      raise ValueError(f"RSU: height must be >= 3, got {height}")
    self.height = height
    self.rebnconvin = ConvBNReLU(in_channels, out_channels, dtype=dtype, rngs=rngs)
    self.rebnconv1 = ConvBNReLU(out_channels, mid_channels, dtype=dtype, rngs=rngs)
    for level in range(2, height):
      setattr(self, f"rebnconv{level}", ConvBNReLU(mid_channels, mid_channels, dtype=dtype, rngs=rngs))
    setattr(self, f"rebnconv{height}", ConvBNReLU(mid_channels, mid_channels, 2, dtype=dtype, rngs=rngs))
    for level in range(height - 1, 1, -1):
      setattr(self, f"rebnconv{level}d", ConvBNReLU(2 * mid_channels, mid_channels, dtype=dtype, rngs=rngs))
    self.rebnconv1d = ConvBNReLU(2 * mid_channels, out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    hxin = self.rebnconvin(x)
    skips = [self.rebnconv1(hxin)]                 # skips[i - 1] is hx_i
    for level in range(2, self.height):
      skips.append(getattr(self, f"rebnconv{level}")(max_pool_ceil(skips[-1])))
    hx = getattr(self, f"rebnconv{self.height}")(skips[-1])     # same resolution as hx_{height-1}
    for level in range(self.height - 1, 0, -1):
      skip = skips[level - 1]
      deeper = upsample_bilinear(hx, skip.shape[1:3])
      hx = getattr(self, f"rebnconv{level}d")(jnp.concatenate([deeper, skip], axis=-1))
    return hx + hxin


class RSU4F(nnx.Module):
  """Upstream `RSU4F`: a residual block with dilations 1, 2, 4, 8 and no resampling, (B, h, w, in) -> (B, h, w, out)."""

  def __init__(self, in_channels: int, mid_channels: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
    conv = lambda cin, cout, dilation: ConvBNReLU(cin, cout, dilation, dtype=dtype, rngs=rngs)
    self.rebnconvin = conv(in_channels, out_channels, 1)
    self.rebnconv1 = conv(out_channels, mid_channels, 1)
    self.rebnconv2 = conv(mid_channels, mid_channels, 2)
    self.rebnconv3 = conv(mid_channels, mid_channels, 4)
    self.rebnconv4 = conv(mid_channels, mid_channels, 8)
    self.rebnconv3d = conv(2 * mid_channels, mid_channels, 4)
    self.rebnconv2d = conv(2 * mid_channels, mid_channels, 2)
    self.rebnconv1d = conv(2 * mid_channels, out_channels, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    hxin = self.rebnconvin(x)
    hx1 = self.rebnconv1(hxin)
    hx2 = self.rebnconv2(hx1)
    hx3 = self.rebnconv3(hx2)
    hx4 = self.rebnconv4(hx3)
    hx3d = self.rebnconv3d(jnp.concatenate([hx4, hx3], axis=-1))
    hx2d = self.rebnconv2d(jnp.concatenate([hx3d, hx2], axis=-1))
    hx1d = self.rebnconv1d(jnp.concatenate([hx2d, hx1], axis=-1))
    return hx1d + hxin


def _stage(spec: StageSpec, in_channels: int, mid_channels: int, out_channels: int, *, dtype,
           rngs: nnx.Rngs) -> RSU | RSU4F:
  if spec.dilated:
    return RSU4F(in_channels, mid_channels, out_channels, dtype=dtype, rngs=rngs)
  return RSU(spec.height, in_channels, mid_channels, out_channels, dtype=dtype, rngs=rngs)


def _add_side_heads(model: ISNet | ISNetGTEncoder, out_channels: int, channels, *, dtype, rngs: nnx.Rngs) -> None:
  """Side heads `side1` ... `side{depth}`: a 3x3 conv from the channels of feature i to `out_channels` logits."""
  for level in range(1, model.depth + 1):
    setattr(model, f"side{level}",
            _conv3x3(channels(FEATURE_CHANNELS[level - 1]), out_channels, dtype=dtype, rngs=rngs))


def _encode(model: ISNet | ISNetGTEncoder, hx: jax.Array) -> list[jax.Array]:
  """The encoder stages on the stem's output: [hx1, ..., hx{depth}], a ceil-mode 2x2 max pool before each but
  the first."""
  stage_outputs = []
  for level in range(1, model.depth + 1):
    if level > 1:
      hx = max_pool_ceil(hx)
    hx = getattr(model, f"stage{level}")(hx)
    stage_outputs.append(hx)
  return stage_outputs


def _side_logits(model: ISNet | ISNetGTEncoder, features: list[jax.Array],
                 size: tuple[int, int]) -> list[jax.Array]:
  """Side head i on feature i, in float32, bilinearly upsampled to the input size: D x (B, H, W, K)."""
  return [upsample_bilinear(getattr(model, f"side{level}")(feature).astype(jnp.float32), size)
          for level, feature in enumerate(features, start=1)]


class Refinement(nnx.Module):
  """A full-resolution correction of d1 (lensjax's, not upstream's): (B, H, W, in + K) -> (B, H, W, K) logits.

  IS-Net's finest features are at H/2 (its stem has stride 2), so d1 is a bilinear upsampling of a
  half-resolution map, and the edge of a thin arc or of the lens mask falls between its samples. This head sees
  the input image at full resolution beside d1: two 3x3 conv-BN-ReLU layers of `channels` channels and a 3x3
  conv to K logits that `ISNet` adds to d1. That last conv starts at zero, so a freshly built network predicts
  upstream's d1.
  """

  def __init__(self, in_channels: int, out_channels: int, channels: int, *, dtype, rngs: nnx.Rngs):
    self.layer1 = ConvBNReLU(in_channels + out_channels, channels, dtype=dtype, rngs=rngs)
    self.layer2 = ConvBNReLU(channels, channels, dtype=dtype, rngs=rngs)
    self.correction = _conv3x3(channels, out_channels, zero_init=True, dtype=dtype, rngs=rngs)

  def __call__(self, image_and_logits: jax.Array) -> jax.Array:
    return self.correction(self.layer2(self.layer1(image_and_logits)))


class ISNet(nnx.Module):
  """The IS-Net segmentation network (upstream `ISNetDIS`), NHWC.

  `model(image)` with image (B, H, W, in_channels), any H and W, returns `(side_logits, features)`:
  - `side_logits`: `depth` arrays (B, H, W, out_channels) of float32 logits d1, ..., d{depth}; d1 (from the
    finest decoder map, at H/2, plus the `Refinement` correction where `refine_channels` > 0) is the prediction
    (`prediction(outputs)`).
  - `features`: `[hx1d, ..., hx{depth-1}d, hx{depth}]`, level i at ceil(H / 2**i) x ceil(W / 2**i) with
    `scaled_channels(FEATURE_CHANNELS[i - 1], width)` channels, in the compute dtype; the targets of feature
    synchronisation with `ISNetGTEncoder`.
  BatchNorm uses batch statistics after `model.train()` (the state after construction) and running
  statistics after `model.eval()` or in `nnx.view(model, use_running_average=True)`.
  """

  input_keys = ("image",)

  def __init__(self, in_channels: int = 3, out_channels: int = 1, *, width: float = 1.0, depth: int = MAX_DEPTH,
               refine_channels: int = 0, dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = _check_options("ISNet", in_channels, out_channels, width, depth, dtype)
    if not isinstance(refine_channels, int) or isinstance(refine_channels, bool) or refine_channels < 0:
      raise ValueError(f"ISNet: refine_channels must be an integer >= 0 (0: the reference network), "
                       f"got {refine_channels!r}")
    self.in_channels, self.out_channels, self.width, self.depth = in_channels, out_channels, width, depth
    self.refine_channels = refine_channels
    channels = lambda n: scaled_channels(n, width)

    # Upstream's stem is a plain conv (no BN/ReLU); its `pool_in` is defined but unused, so it is left out.
    self.conv_in = _conv3x3(in_channels, channels(ISNET_STEM_CHANNELS), stride=2, dtype=self.dtype, rngs=rngs)
    encoder_out = []
    stage_in = channels(ISNET_STEM_CHANNELS)
    for level, spec in enumerate(ISNET_ENCODER[:depth], start=1):
      # The bottom of a shallower network emits what hx{depth}d carries in the full one (module docstring).
      shallow_bottom = level == depth < MAX_DEPTH
      out = ISNET_DECODER[level - 1].out_channels if shallow_bottom else spec.out_channels
      setattr(self, f"stage{level}",
              _stage(spec, stage_in, channels(spec.mid_channels), channels(out), dtype=self.dtype, rngs=rngs))
      encoder_out.append(channels(out))
      stage_in = channels(out)
    deeper = encoder_out[-1]
    for level in range(depth - 1, 0, -1):
      spec = ISNET_DECODER[level - 1]
      setattr(self, f"stage{level}d",
              _stage(spec, deeper + encoder_out[level - 1], channels(spec.mid_channels),
                     channels(spec.out_channels), dtype=self.dtype, rngs=rngs))
      deeper = channels(spec.out_channels)
    _add_side_heads(self, out_channels, channels, dtype=self.dtype, rngs=rngs)
    self.refine = (Refinement(in_channels, out_channels, refine_channels, dtype=self.dtype, rngs=rngs)
                   if refine_channels else None)

  def __call__(self, image: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> tuple[list[jax.Array], list[jax.Array]]:
    """image (B, H, W, in_channels) -> (side_logits, features); `rngs` is unused (IS-Net has no dropout)."""
    del rngs
    _check_image("ISNet", image, self.in_channels, "an image")
    skips = _encode(self, self.conv_in(image.astype(self.dtype)))   # skips[i - 1] is hx_i
    hx = skips[-1]
    features = [hx]
    for level in range(self.depth - 1, 0, -1):
      skip = skips[level - 1]
      deeper = upsample_bilinear(hx, skip.shape[1:3])
      hx = getattr(self, f"stage{level}d")(jnp.concatenate([deeper, skip], axis=-1))
      features.insert(0, hx)
    side_logits = _side_logits(self, features, image.shape[1:3])
    if self.refine is not None:
      d1 = side_logits[0]
      correction = self.refine(jnp.concatenate([image.astype(self.dtype), d1.astype(self.dtype)], axis=-1))
      side_logits[0] = d1 + correction.astype(jnp.float32)
    return side_logits, features

  def prediction(self, outputs: tuple[list[jax.Array], list[jax.Array]]) -> jax.Array:
    """The logits of the final prediction, d1: (B, H, W, out_channels)."""
    side_logits, _ = outputs
    return side_logits[0]


class StemConvBNReLU(nnx.Module):
  """Upstream `myrebnconv` as the GT encoder uses it: 3x3 stride-2 conv (padding 1) -> BN -> ReLU.

  (B, H, W, in) -> (B, ceil(H/2), ceil(W/2), out).
  """

  def __init__(self, in_channels: int, out_channels: int, *, dtype, rngs: nnx.Rngs):
    self.conv = _conv3x3(in_channels, out_channels, stride=2, dtype=dtype, rngs=rngs)
    self.bn = _batch_norm(out_channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.relu(self.bn(self.conv(x)))


class ISNetGTEncoder(nnx.Module):
  """IS-Net's ground-truth encoder (upstream `ISNetGTEncoder`), NHWC: an encoder-only U^2-Net over masks.

  `encoder(mask)` with mask (B, H, W, in_channels) in [0, 1] (in_channels = K for a K-label target) returns
  `(side_logits, features)`: `depth` float32 logit maps (B, H, W, out_channels) from side heads on each stage,
  and the stage outputs `[hx1, ..., hx{depth}]`, shaped as `ISNet`'s features for the same width and depth.
  The stem is conv -> BN -> ReLU (upstream `myrebnconv`, attributes `conv` and `bn`) with 16 channels.
  """

  input_keys = ("mask",)

  def __init__(self, in_channels: int = 1, out_channels: int = 1, *, width: float = 1.0, depth: int = MAX_DEPTH,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = _check_options("ISNetGTEncoder", in_channels, out_channels, width, depth, dtype)
    self.in_channels, self.out_channels, self.width, self.depth = in_channels, out_channels, width, depth
    channels = lambda n: scaled_channels(n, width)

    self.conv_in = StemConvBNReLU(in_channels, channels(GT_ENCODER_STEM_CHANNELS), dtype=self.dtype, rngs=rngs)
    stage_in = channels(GT_ENCODER_STEM_CHANNELS)
    for level, spec in enumerate(GT_ENCODER[:depth], start=1):
      setattr(self, f"stage{level}", _stage(spec, stage_in, channels(spec.mid_channels),
                                            channels(spec.out_channels), dtype=self.dtype, rngs=rngs))
      stage_in = channels(spec.out_channels)
    _add_side_heads(self, out_channels, channels, dtype=self.dtype, rngs=rngs)

  def __call__(self, mask: jax.Array, *, rngs: nnx.Rngs | None = None
               ) -> tuple[list[jax.Array], list[jax.Array]]:
    """mask (B, H, W, in_channels) -> (side_logits, features); `rngs` is unused (no dropout)."""
    del rngs
    _check_image("ISNetGTEncoder", mask, self.in_channels, "a mask")
    features = _encode(self, self.conv_in(mask.astype(self.dtype)))
    return _side_logits(self, features, mask.shape[1:3]), features

  def prediction(self, outputs: tuple[list[jax.Array], list[jax.Array]]) -> jax.Array:
    """The logits of the reconstructed mask, d1: (B, H, W, out_channels)."""
    side_logits, _ = outputs
    return side_logits[0]
