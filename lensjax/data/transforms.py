"""Per-image preprocessing, augmentation and the Canny edge map, in numpy (no JAX: runs in worker processes).

Arrays are channels-last: images (H, W, C) float32, masks (H, W, K) float32 in {0, 1}, edges (H, W, 1).

`Preprocessor` applies the steps a `DataConfig` asks for, in this order:
  normalize -> arc_boost -> resize -> pad -> augment (train) -> crop -> channels -> Canny edge -> input scaling.
Normalised images are in "display units": [0, 1], where 1 is the full scale the Canny map is computed from.
The `original` normalisation works in the original project's 0-255 units up to and including its arc boost,
which (as there) runs after the padding, and then divides by 255 into display units.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

# The original MSRF-Net runs: `cv2.Canny(np.uint8(img), 10, 1000)` (L1 gradient, 3x3 Sobel aperture).
CANNY_LOW_THRESHOLD = 10
CANNY_HIGH_THRESHOLD = 1000
# The original's arc boost: the band above the 95th percentile is boosted, the part above the recomputed 99th
# percentile (the saturated lens core) is divided back.
ARC_BOOST_BAND_PERCENTILE = 95.0
ARC_BOOST_CORE_PERCENTILE = 99.0
# The original's 8-bit full scale: its normalisation maps images to [0, 255] and its boost clips there.
ORIGINAL_FULL_SCALE = 255.0
# The original's normalisation divides by, and clips at, the 99th percentile of each image.
ORIGINAL_NORMALIZE_PERCENTILE = 99.0
# ITU-R 601 luma, as PIL's convert('L').
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# Standard deviations below this are treated as a constant image by `scale_input('standardize')`.
_MIN_STD = 1e-6


def percentile_normalize(image: np.ndarray, percentile: float) -> np.ndarray:
  """Divides each channel of (H, W, C) `image` by its `percentile` percentile and clips to [0, 1].

  A [0, 1] cousin of the original's normalisation (`original_normalize` is the original's own function). A
  channel whose percentile is not positive (mostly empty) is divided by its maximum instead; an all-zero or negative
  channel becomes 0.
  """
  out = np.empty(image.shape, np.float32)
  for c in range(image.shape[-1]):
    channel = image[..., c]
    level = np.percentile(channel, percentile)
    if level <= 0:
      level = channel.max()
    out[..., c] = np.clip(channel / level, 0.0, 1.0) if level > 0 else 0.0
  return out


def minmax_normalize(image: np.ndarray) -> np.ndarray:
  """Maps each channel of (H, W, C) `image` linearly onto [0, 1]; a constant channel becomes 0."""
  low = image.min(axis=(0, 1), keepdims=True)
  span = image.max(axis=(0, 1), keepdims=True) - low
  return np.where(span > 0, (image - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


def arc_boost(image: np.ndarray, factor: float) -> np.ndarray:
  """The original's arc-brightness enhancement on a [0, 1] (H, W, C) image, applied once (on a copy).

  Per channel: pixels above the 95th percentile are multiplied by `factor`, then pixels above the 99th
  percentile of the result divided by it, then the whole channel is divided by `factor` so the output stays
  in [0, 1]. Net effect: the 95-99 % band (arcs and lens wings) is `factor` times brighter than the rest,
  relative to the background and the saturated core. The original edited the training array in place, so
  the boost compounded every epoch; here the input is never modified.
  """
  out = image.astype(np.float32, copy=True)
  for c in range(out.shape[-1]):
    channel = out[..., c]
    channel[channel > np.percentile(channel, ARC_BOOST_BAND_PERCENTILE)] *= factor
    channel[channel > np.percentile(channel, ARC_BOOST_CORE_PERCENTILE)] /= factor
    channel /= factor
  return out


def original_normalize(image: np.ndarray) -> np.ndarray:
  """The original project's normalisation of (H, W, C) `image`, per channel, in float64 0-255 units.

  In the original's order: y = x / p99(x); y = (y - min y) * 255 / max y; y = clip(y, 0, p99(y)), where the
  last 99th percentile is recomputed on the rescaled y (numpy's linear interpolation throughout). The full
  scale is the image maximum, so a bright core squeezes the rest into [0, 255 (p99 - min) / max]. The first
  division only changes rounding (the second step undoes any positive scale); where p99(x) <= 0 (a mostly
  empty channel, where the original divided by zero) it is skipped, and a channel with max <= 0 (all zeros,
  or negative) becomes 0, as does a constant one.
  """
  out = np.empty(image.shape, np.float64)
  for c in range(image.shape[-1]):
    channel = image[..., c].astype(np.float64)
    level = np.percentile(channel, ORIGINAL_NORMALIZE_PERCENTILE)
    if level > 0:
      channel = channel / level
    peak = channel.max()
    if peak <= 0:
      out[..., c] = 0.0
      continue
    channel = ((channel - channel.min()) * ORIGINAL_FULL_SCALE) / peak
    out[..., c] = np.clip(channel, 0, np.percentile(channel, ORIGINAL_NORMALIZE_PERCENTILE))
  return out


def original_arc_boost(image: np.ndarray, factor: float) -> np.ndarray:
  """The original's arc boost of an (H, W, C) image in 0-255 units (`original_normalize`), per channel, float64.

  Pixels above the channel's 95th percentile are multiplied by `factor`, then pixels above the 99th percentile
  of that result divided by it, then values above 255 set to 255. Unlike `arc_boost` there is no overall
  division by `factor`: the 95-99 % band comes out up to `factor` times brighter in absolute units. Applied
  once, on a copy (the original's in-place edit compounded it every epoch).
  """
  out = image.astype(np.float64, copy=True)
  for c in range(out.shape[-1]):
    channel = out[..., c]
    channel[channel > np.percentile(channel, ARC_BOOST_BAND_PERCENTILE)] *= factor
    channel[channel > np.percentile(channel, ARC_BOOST_CORE_PERCENTILE)] /= factor
    channel[channel > ORIGINAL_FULL_SCALE] = ORIGINAL_FULL_SCALE
  return out


def from_original_units(image: np.ndarray) -> np.ndarray:
  """0-255 units -> float32 display units, as the original: the float32 cast first, then the division by 255."""
  return image.astype(np.float32) / np.float32(ORIGINAL_FULL_SCALE)


def resize(array: np.ndarray, size: int, *, nearest: bool) -> np.ndarray:
  """Resizes (H, W, C) `array` to (size, size, C): nearest neighbour (masks) or bilinear/area (images).

  Downscaling images uses area averaging (no aliasing), upscaling bilinear interpolation.
  """
  if array.shape[0] == size and array.shape[1] == size:
    return array
  if nearest:
    interpolation = cv2.INTER_NEAREST
  elif size < max(array.shape[:2]):
    interpolation = cv2.INTER_AREA
  else:
    interpolation = cv2.INTER_LINEAR
  resized = cv2.resize(np.ascontiguousarray(array), (size, size), interpolation=interpolation)
  return resized.reshape(size, size, array.shape[-1])


def pad_offset(size: int, target: int) -> int:
  """Rows (and columns) of zeros before an image of side `size` padded to `target`: (1 for 125 -> 128)."""
  return (target - size) // 2


def pad(array: np.ndarray, target: int) -> np.ndarray:
  """Zero-pads (H, W, C) `array` to (max(H, target), max(W, target), C), at offset (target - n) // 2."""
  height, width = array.shape[:2]
  if height >= target and width >= target:
    return array
  top, left = pad_offset(height, target), pad_offset(width, target)
  out = np.zeros((max(height, target), max(width, target), array.shape[-1]), array.dtype)
  out[max(top, 0):max(top, 0) + height, max(left, 0):max(left, 0) + width] = array
  return out


def d4(arrays: dict[str, np.ndarray], rotations: int, flip: bool) -> dict[str, np.ndarray]:
  """Rotates every (H, W, ...) array by `rotations` x 90 degrees, then flips it left-right if `flip`."""
  out = {}
  for name, array in arrays.items():
    array = np.rot90(array, rotations, axes=(0, 1))
    if flip:
      array = array[:, ::-1]
    out[name] = np.ascontiguousarray(array)
  return out


def crop(arrays: dict[str, np.ndarray], top: int, left: int, size: int) -> dict[str, np.ndarray]:
  """The (size, size) window at (top, left) of every (H, W, ...) array."""
  return {name: np.ascontiguousarray(a[top:top + size, left:left + size]) for name, a in arrays.items()}


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """(H, W, C) -> (H, W, channels): repeats a grey image to 3 channels, or takes the luma of an RGB one."""
  if image.shape[-1] == channels:
    return image
  if channels == 3 and image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if channels == 1 and image.shape[-1] == 3:
    return (image @ _LUMA_WEIGHTS)[..., None].astype(np.float32)
  raise ValueError(f"cannot turn a {image.shape[-1]}-channel image into {channels} channels "
                   "(data.input_channels must be 1 or 3, images 1- or 3-channel)")


def canny_edges(image: np.ndarray) -> np.ndarray:
  """The original MSRF-Net edge input of a [0, 1] (H, W, C) image: (H, W, 1) float32 in {0, 1}.

  The image is taken to uint8 as the original did: `np.uint8(x)` of the 0-255 image, i.e. truncation of
  255 * x (after clipping to [0, 1]); then `cv2.Canny(u8, 10, 1000) / 255`. For 3 channels OpenCV uses, at
  each pixel, the channel with the largest gradient.
  """
  display = (np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  edges = cv2.Canny(np.ascontiguousarray(display), CANNY_LOW_THRESHOLD, CANNY_HIGH_THRESHOLD)
  return (edges[..., None] > 0).astype(np.float32)


def scale_input(image: np.ndarray, mode: str) -> np.ndarray:
  """The network input from a [0, 1] image: 'unit' (as is), 'centered' (- 0.5), 'standardize' (per channel)."""
  if mode == "unit":
    return image
  if mode == "centered":
    return image - np.float32(0.5)
  if mode == "standardize":
    mean = image.mean(axis=(0, 1), keepdims=True)
    std = image.std(axis=(0, 1), keepdims=True)
    return ((image - mean) / np.where(std > _MIN_STD, std, 1.0)).astype(np.float32)
  raise ValueError(f"data.input_scaling={mode!r}: expected 'unit', 'centered' or 'standardize'")


@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """Turns a raw example into a network example; picklable, so it runs in Grain worker processes.

  A raw example holds `image` (H, W, C) float32 in the source's units, `mask` (H, W, K) float32 in {0, 1}
  (absent for unlabelled sources), and scalars (`index`, simulation metadata) that pass through unchanged.
  The output `image` is (S, S, input_channels) float32; `mask` (S, S, K); if `with_edge`, `edge` (S, S, 1) the
  Canny map of the image and `mask_edge` (S, S, K) those of the masks.
  """
  normalize: str = "percentile"      # 'percentile', 'original', 'minmax' or 'none' ('auto' is resolved by the
                                     # caller)
  normalize_percentile: float = 99.0   # 'percentile' only
  arc_boost: float = 1.0             # `arc_boost`; with normalize='original', `original_arc_boost` after padding
  resize_to: int = 0
  pad_to: int = 0
  crop_size: int = 0
  augment: str = "none"              # 'none', 'hflip' or 'd4'; applied only when an rng is passed
  input_channels: int = 1
  input_scaling: str = "unit"
  with_edge: bool = False

  def output_size(self, height: int, width: int) -> tuple[int, int]:
    """(H, W) of the output for a raw (height, width) image."""
    if self.resize_to:
      height = width = self.resize_to
    if self.pad_to:
      height, width = max(height, self.pad_to), max(width, self.pad_to)
    if self.crop_size:
      height = width = self.crop_size
    return height, width

  def __call__(self, example: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
    """Preprocesses one raw example; `rng` draws the augmentation and the crop (None: none, central crop)."""
    image = np.asarray(example["image"], np.float32)
    original_units = self.normalize == "original"
    if original_units:
      image = original_normalize(image)
    elif self.normalize == "percentile":
      image = percentile_normalize(image, self.normalize_percentile)
    elif self.normalize == "minmax":
      image = minmax_normalize(image)
    if self.arc_boost != 1.0 and not original_units:
      image = arc_boost(image, self.arc_boost)
    spatial = {"image": image}
    if "mask" in example:
      spatial["mask"] = np.asarray(example["mask"], np.float32)
    if self.resize_to:
      spatial = {name: resize(a, self.resize_to, nearest=name == "mask") for name, a in spatial.items()}
    if self.pad_to:
      spatial = {name: pad(a, self.pad_to) for name, a in spatial.items()}
    if original_units:   # the original boosted the padded stamp, so its percentiles count the padding
      boosted = original_arc_boost(spatial["image"], self.arc_boost) if self.arc_boost != 1.0 else spatial["image"]
      spatial["image"] = from_original_units(boosted)
    if rng is not None and self.augment != "none":
      spatial = self._augment(spatial, rng)
    if self.crop_size:
      spatial = self._crop(spatial, rng)
    image = to_channels(spatial["image"], self.input_channels)
    out = {k: v for k, v in example.items() if k not in ("image", "mask")}
    if self.with_edge:
      out["edge"] = canny_edges(image)
    out["image"] = scale_input(image, self.input_scaling)
    if "mask" in spatial:
      out["mask"] = spatial["mask"]
      if self.with_edge:   # MSRF-Net's edge-stream target: the Canny map of each mask channel
        out["mask_edge"] = np.concatenate(
            [canny_edges(spatial["mask"][..., k:k + 1]) for k in range(spatial["mask"].shape[-1])], axis=-1)
    return out

  def _augment(self, spatial: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    height, width = spatial["image"].shape[:2]
    if self.augment == "hflip":
      return d4(spatial, 0, bool(rng.integers(2)))
    # 90-degree rotations would change the shape of a non-square image; flips keep it.
    rotations = int(rng.integers(4)) if height == width else 2 * int(rng.integers(2))
    return d4(spatial, rotations, bool(rng.integers(2)))

  def _crop(self, spatial: dict[str, np.ndarray], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    height, width = spatial["image"].shape[:2]
    if self.crop_size > min(height, width):
      raise ValueError(f"data.crop_size={self.crop_size} is larger than the {height}x{width} images "
                       "(after resize_to and pad_to): lower it or set it to 0")
    if rng is None:
      top, left = (height - self.crop_size) // 2, (width - self.crop_size) // 2
    else:
      top = int(rng.integers(height - self.crop_size + 1))
      left = int(rng.integers(width - self.crop_size + 1))
    return crop(spatial, top, left, self.crop_size)
