"""Segmentation masks of the lens-light and arc channels.

Three rules, each a plain numpy function for arrays from disk (any leading batch axes, (..., H, W)) and a
`jax.numpy` twin used inside the simulator's compiled renderer, which gives bit-identical masks:

  percentile      the original project's rule: lens = pixels >= the 99th percentile of the lens channel,
                  arcs = pixels >= the 95th percentile of the arc channel (numpy's default linear
                  interpolation, per image). Made well defined: a pixel must also be > 0, so an empty channel
                  (a non-lens's arcs) gives an empty mask. The original marked every pixel of a non-lens as
                  arc, because percentile(zeros, 95) = 0 and 0 >= 0.
  noise           pixels whose noiseless value exceeds k times the background noise sigma (counts per pixel).
  peak_fraction   pixels >= a fraction of the channel's peak value, and > 0.

All rules are meant for the noiseless component channels, before any padding of the stamp.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

MaskRuleName = Literal["percentile", "noise", "peak_fraction"]
MASK_RULES = ("percentile", "noise", "peak_fraction")


def _check_percentile(percentile: float) -> None:
  if not 0.0 <= percentile <= 100.0:
    raise ValueError(f"percentile must lie in [0, 100]; got {percentile}")


def percentile_mask(channel: np.ndarray, percentile: float) -> np.ndarray:
  """uint8 (..., H, W): 1 where channel >= its per-image `percentile` (numpy 'linear') and channel > 0."""
  _check_percentile(percentile)
  channel = np.asarray(channel)
  threshold = np.percentile(channel, percentile, axis=(-2, -1), keepdims=True)
  return ((channel >= threshold) & (channel > 0)).astype(np.uint8)


def noise_mask(channel: np.ndarray, k: float, noise_sigma: float) -> np.ndarray:
  """uint8 (..., H, W): 1 where channel > k * noise_sigma (noise_sigma in the channel's unit, > 0)."""
  if not (k > 0 and noise_sigma > 0):
    raise ValueError(f"noise mask needs k > 0 and noise_sigma > 0; got k={k}, noise_sigma={noise_sigma}")
  return (np.asarray(channel) > k * noise_sigma).astype(np.uint8)


def peak_fraction_mask(channel: np.ndarray, fraction: float) -> np.ndarray:
  """uint8 (..., H, W): 1 where channel >= fraction * its per-image maximum and channel > 0."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"peak fraction must lie in (0, 1]; got {fraction}")
  channel = np.asarray(channel)
  peak = channel.max(axis=(-2, -1), keepdims=True)
  return ((channel >= fraction * peak) & (channel > 0)).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class MaskRule:
  """A mask rule and its thresholds; `lensjax.config.SimConfig` holds the same fields (see `from_config`).

  Attributes:
    rule: 'percentile', 'noise' or 'peak_fraction' (module docstring).
    lens_percentile, arc_percentile: percentiles in [0, 100) for the 'percentile' rule.
    noise_k: threshold in units of `noise_sigma` for the 'noise' rule.
    noise_sigma: background noise sigma (counts per pixel) for the 'noise' rule.
    peak_fraction: fraction of the channel's peak for the 'peak_fraction' rule.
  """
  rule: MaskRuleName = "percentile"
  lens_percentile: float = 99.0
  arc_percentile: float = 95.0
  noise_k: float = 3.0
  noise_sigma: float = 1.0
  peak_fraction: float = 0.1

  def __post_init__(self):
    if self.rule not in MASK_RULES:
      raise ValueError(f"mask rule must be one of {', '.join(MASK_RULES)}; got {self.rule!r}")
    _check_percentile(self.lens_percentile)
    _check_percentile(self.arc_percentile)
    if not (self.noise_k > 0 and self.noise_sigma > 0):
      raise ValueError(f"mask noise_k and noise_sigma must be > 0; got {self.noise_k}, {self.noise_sigma}")
    if not 0.0 < self.peak_fraction <= 1.0:
      raise ValueError(f"mask peak_fraction must lie in (0, 1]; got {self.peak_fraction}")

  def _one(self, channel: np.ndarray, percentile: float) -> np.ndarray:
    if self.rule == "percentile":
      return percentile_mask(channel, percentile)
    if self.rule == "noise":
      return noise_mask(channel, self.noise_k, self.noise_sigma)
    return peak_fraction_mask(channel, self.peak_fraction)

  def apply(self, lens: np.ndarray, arcs: np.ndarray) -> np.ndarray:
    """Masks of noiseless (..., H, W) lens and arc channels -> uint8 (..., H, W, 2), channel order (lens, arcs)."""
    return np.stack([self._one(lens, self.lens_percentile), self._one(arcs, self.arc_percentile)], axis=-1)

  def _one_jnp(self, channel: jax.Array, percentile: float) -> jax.Array:
    if self.rule == "percentile":
      return percentile_mask_jnp(channel, percentile)
    if self.rule == "noise":
      return channel > np.float32(self.noise_k * self.noise_sigma)
    return (channel >= self.peak_fraction * jnp.max(channel)) & (channel > 0)

  def apply_jnp(self, lens: jax.Array, arcs: jax.Array) -> jax.Array:
    """`apply` for one image inside `jax.jit`: (H, W) lens and arcs -> bool (H, W, 2), same pixels as `apply`."""
    return jnp.stack([self._one_jnp(lens, self.lens_percentile), self._one_jnp(arcs, self.arc_percentile)],
                     axis=-1)


# ---------------------------------------------------------------------------------------------------
# numpy's percentile inside jit, without a sort.
#
# XLA's CPU sort of 15,625 floats costs about 170 ns per value (measured), more than rendering the image.
# The mask only needs the two order statistics that numpy's linear interpolation uses, sorted[k] and
# sorted[k + 1]. They are found by searching for a threshold t with exactly m = n - 1 - k values >= t
# (then sorted[k] < t <= sorted[k + 1]), counting values >= t in one pass per step. The search runs on
# unsigned integer keys that order like the floats (the key is about log2 of the value, in which the counts
# are smooth), by interpolation, falling back to bisection after 24 steps so it always ends. jnp.percentile
# (a sort) and lax.top_k (k = 158 or 782) were measured too: tens of times and 2-6x slower than this search.


def _percentile_interpolation(n: int, percentile: float) -> tuple[int, int, float]:
  """(k, k_next, gamma) of numpy's 'linear' percentile of n values, computed the way numpy computes them."""
  quantile = float(np.true_divide(percentile, 100))
  virtual_index = n * quantile + (1 + quantile * (1 - 1 - 1)) - 1
  k = min(max(int(math.floor(virtual_index)), 0), n - 1)
  return k, min(k + 1, n - 1), float(virtual_index - k)


def _ordered_key(values: jax.Array) -> jax.Array:
  """uint32 keys whose unsigned order is the order of the float32 `values` (finite values)."""
  bits = jax.lax.bitcast_convert_type(values, jnp.uint32)
  negative = bits >= jnp.uint32(0x80000000)
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _key_to_float(key: jax.Array) -> jax.Array:
  negative_value = key < jnp.uint32(0x80000000)
  bits = jnp.where(negative_value, ~key, key & jnp.uint32(0x7FFFFFFF))
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


# Interpolation steps before the search falls back to bisection, which then needs at most 32 more steps.
_INTERPOLATION_STEPS = 24


def _order_statistics(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """(sorted(values)[k], sorted(values)[k + 1]) of a 1-D float32 array with 0 <= k < n - 1.

  Regula falsi with the Illinois modification on g(t) = sqrt(count(values >= t)) - sqrt(m + 1/2), over the
  integer keys t. The square root makes g close to linear in the key for peaked profiles, where the count
  grows like a power of -log(value); on 125x125 lens and arc channels it takes 8 steps on average.
  """
  n = values.shape[0]
  m = n - 1 - k
  keys = _ordered_key(values)
  target = math.sqrt(m + 0.5)

  def unfinished(state):
    low, high, *_, found, step = state
    return ~found & (high - low > 1)

  # Invariant: count(low) > m > count(high); the search stops when count(threshold) == m.
  def search_step(state):
    low, high, g_low, g_high, last_side, threshold, found, step = state
    span = high - low
    fraction = jnp.where(step < _INTERPOLATION_STEPS, g_low / (g_low - g_high), 0.5)
    fraction = jnp.clip(fraction, 1 / 256, 255 / 256)
    threshold = low + jnp.clip((span.astype(jnp.float32) * fraction).astype(jnp.uint32), 1, span - 1)
    # Summed as float32 (exact below 2^24): XLA's CPU int32 reduction is scalar code, 1.8x slower (measured).
    count = jnp.sum(jnp.where(keys >= threshold, np.float32(1), np.float32(0)))
    g = jnp.sqrt(count) - target
    raise_low = count > m
    # Illinois: when the same end moves twice in a row, halve g at the end that stays, so it is not stuck.
    g_low = jnp.where(raise_low, g, jnp.where(last_side == -1, 0.5 * g_low, g_low))
    g_high = jnp.where(count < m, g, jnp.where(last_side == 1, 0.5 * g_high, g_high))
    low = jnp.where(raise_low, threshold, low)
    high = jnp.where(count < m, threshold, high)
    side = jnp.where(raise_low, 1, -1)
    return low, high, g_low, g_high, side, threshold, count == m, step + 1

  low, high = jnp.min(keys), jnp.max(keys) + 1
  start = (low, high, jnp.float32(math.sqrt(n) - target), jnp.float32(-target), jnp.int32(0), low,
           jnp.bool_(False), jnp.int32(0))
  low, _, _, _, _, threshold, found, _ = jax.lax.while_loop(unfinished, search_step, start)
  above = keys >= threshold
  below_key = jnp.max(jnp.where(above, jnp.uint32(0), keys))
  above_key = jnp.min(jnp.where(above, keys, jnp.uint32(0xFFFFFFFF)))
  # Not found: sorted[k] and sorted[k + 1] are tied, both equal to the value at key `low`.
  lower = _key_to_float(jnp.where(found, below_key, low))
  upper = _key_to_float(jnp.where(found, above_key, low))
  return lower, upper


def _rounds_to_lower(lower: jax.Array, upper: jax.Array, gamma: float) -> jax.Array:
  """Whether numpy's float32 `_lerp(lower, upper, gamma)` returns exactly `lower` (lower < upper adjacent in order).

  The result always lies in [lower, upper], and no value lies strictly between the two order statistics, so
  the mask is either `>= upper` or, when the interpolation rounds down to `lower`, `>= lower`. The rounding is
  decided exactly here instead of recomputing numpy's arithmetic, which XLA would contract into an FMA
  (one rounding instead of numpy's two) and get wrong by 1 ulp.
  numpy computes lower + fl(d gamma) for gamma < 0.5 and upper - fl(d (1 - gamma)) otherwise, d = upper - lower.
  """
  lower_bits = jax.lax.bitcast_convert_type(lower, jnp.uint32)
  lower_is_even = (lower_bits & 1) == 0           # round-half-to-even keeps `lower` on a tie
  ulp_above_lower = _key_to_float(_ordered_key(lower) + 1) - lower
  half_ulp = 0.5 * ulp_above_lower
  difference = upper - lower
  if gamma >= 0.5:
    # upper - fl(d (1 - gamma)) >= (lower + upper) / 2: only a tie at gamma = 0.5 between adjacent floats.
    return (gamma == 0.5) & (difference == ulp_above_lower) & lower_is_even
  step = difference * gamma
  return (step < half_ulp) | ((step == half_ulp) & lower_is_even)


def percentile_mask_jnp(channel: jax.Array, percentile: float) -> jax.Array:
  """bool (H, W): `percentile_mask` of one finite float32 image inside jit, the same pixels as numpy's."""
  _check_percentile(percentile)
  channel = channel.astype(jnp.float32)
  values = channel.reshape(-1)
  k, k_next, gamma = _percentile_interpolation(values.shape[0], percentile)
  if k_next == k:   # percentile 100 (or a single pixel): the maximum
    threshold = jnp.max(values)
  else:
    lower, upper = _order_statistics(values, k)
    threshold = jnp.where((lower < upper) & _rounds_to_lower(lower, upper, gamma), lower, upper)
  return (channel >= threshold) & (channel > 0)
