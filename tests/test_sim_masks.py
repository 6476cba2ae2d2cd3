"""Mask rules: the numpy functions, their jit twins (bit-identical masks) and the empty-channel rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.sim import masks


def _jnp_percentile_masks(channels: np.ndarray, percentile: float) -> np.ndarray:
  compute = jax.jit(jax.vmap(lambda channel: masks.percentile_mask_jnp(channel, percentile)))
  return np.asarray(compute(jnp.asarray(channels))).astype(np.uint8)


def _interpolated_order_statistics(n: int, percentile: float) -> tuple[int, int]:
  """The order statistics (k, k + 1) numpy's default ('linear') percentile interpolates between, by its
  definition: the virtual index percentile / 100 x (n - 1)."""
  k = int(np.floor(percentile / 100 * (n - 1)))
  return k, min(k + 1, n - 1)


def _adjacent_order_statistics(size: int, percentile: float, ulps: int, base: float, rng) -> np.ndarray:
  """A (size, size) image whose order statistics k and k + 1 of numpy's interpolation are `ulps` apart."""
  n = size * size
  k, k_next = _interpolated_order_statistics(n, percentile)
  values = np.sort(rng.random(n).astype(np.float32)) * np.float32(base * 0.9)
  upper = np.float32(base)
  for _ in range(ulps):
    upper = np.nextafter(upper, np.float32(np.inf))
  values[k], values[k_next] = base, upper
  values[k_next + 1:] = upper * np.float32(1.01) + np.arange(n - k_next - 1, dtype=np.float32)
  return rng.permutation(values).reshape(size, size)


@pytest.mark.parametrize("size", [7, 64, 125])
@pytest.mark.parametrize("percentile", [0.0, 2.5, 50.0, 95.0, 99.0, 100.0])
def test_jit_percentile_mask_equals_numpys(size, percentile):
  # One batch per (size, percentile), one compilation: smooth, tied, signed and adjacent-float images.
  # numpy's float32 interpolation between adjacent floats rounds either way depending on gamma
  # (64 x 64 at p99 has gamma = 0.05 and rounds down onto sorted[k]; 125 x 125 has gamma = 0.76).
  rng = np.random.default_rng(size)
  smooth = rng.random((3, size, size)).astype(np.float32) ** 6 * 1e3
  images = [smooth, np.round(smooth / 100), smooth - 300]
  if 0 < percentile < 100:
    images += [_adjacent_order_statistics(size, percentile, ulps, base, rng)[None]
               for ulps in (1, 2, 5) for base in (1000.0, 1024.0, 0.75)]
  channels = np.concatenate(images).astype(np.float32)
  np.testing.assert_array_equal(_jnp_percentile_masks(channels, percentile),
                                masks.percentile_mask(channels, percentile))


def test_adjacent_cases_exercise_both_rounding_outcomes():
  # Guards the test above: among the adjacent-float cases numpy's threshold lands on sorted[k] for some and
  # above it for others, so both rounding branches of the jitted mask are checked.
  rng = np.random.default_rng(1)
  outcomes = set()
  for size, percentile in ((64, 99.0), (125, 99.0), (64, 95.0), (128, 99.0)):
    image = _adjacent_order_statistics(size, percentile, 1, 1000.0, rng)
    k, _ = _interpolated_order_statistics(image.size, percentile)
    outcomes.add(bool(np.percentile(image, percentile) == np.sort(image.ravel())[k]))
  assert outcomes == {True, False}


def test_the_original_rule_selects_one_and_five_percent_of_a_smooth_stamp():
  axis = np.linspace(-2, 2, 125, dtype=np.float32)
  radius = np.hypot(axis[None, :] - 0.1, axis[:, None] + 0.2)
  smooth = np.exp(-radius / 0.3)[None]
  assert masks.percentile_mask(smooth, 99.0).sum() == 157
  assert masks.percentile_mask(smooth, 95.0).sum() == 782


def test_an_empty_channel_gives_an_empty_mask_with_every_rule():
  empty = np.zeros((2, 32, 32), np.float32)
  # The original rule (channel >= percentile) would select all 1024 pixels of a non-lens as arcs.
  assert (empty >= np.percentile(empty, 95)).all()
  assert masks.percentile_mask(empty, 95.0).sum() == 0
  assert _jnp_percentile_masks(empty, 95.0).sum() == 0
  assert masks.noise_mask(empty, 3.0, 0.5).sum() == 0
  assert masks.peak_fraction_mask(empty, 0.1).sum() == 0


def test_mostly_zero_channel_masks_only_positive_pixels():
  channel = np.zeros((1, 20, 20), np.float32)
  channel[0, 5, 5:8] = [1.0, 2.0, 3.0]   # 3 positive pixels: the 95th percentile is 0
  mask = masks.percentile_mask(channel, 95.0)
  assert mask.sum() == 3 and mask[0, 5, 5:8].all()
  np.testing.assert_array_equal(_jnp_percentile_masks(channel, 95.0), mask)


def test_noise_and_peak_fraction_rules():
  channel = np.array([[[0.0, 1.0, 2.9, 3.1, 10.0]]], np.float32)
  np.testing.assert_array_equal(masks.noise_mask(channel, 3.0, 1.0), [[[0, 0, 0, 1, 1]]])
  np.testing.assert_array_equal(masks.peak_fraction_mask(channel, 0.29), [[[0, 0, 1, 1, 1]]])


@pytest.mark.parametrize("rule", ["percentile", "noise", "peak_fraction"])
def test_mask_rule_apply_and_its_jit_twin_agree(rule):
  rng = np.random.default_rng(2)
  lens = rng.random((3, 40, 40)).astype(np.float32) ** 4 * 50
  arcs = np.where(rng.random((3, 40, 40)) < 0.3, rng.random((3, 40, 40)) * 20, 0).astype(np.float32)
  arcs[1] = 0.0   # a non-lens
  mask_rule = masks.MaskRule(rule=rule, noise_k=2.0, noise_sigma=1.5, peak_fraction=0.2)
  expected = mask_rule.apply(lens, arcs)
  assert expected.shape == (3, 40, 40, 2) and expected.dtype == np.uint8
  assert expected[1, ..., 1].sum() == 0 and expected[..., 0].sum() > 0
  got = jax.jit(jax.vmap(mask_rule.apply_jnp))(lens, arcs)
  np.testing.assert_array_equal(np.asarray(got).astype(np.uint8), expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rule="otsu"), "mask rule must be one of"),
    (dict(lens_percentile=101.0), "percentile must lie in"),
    (dict(noise_sigma=0.0), "noise_k and noise_sigma must be > 0"),
    (dict(peak_fraction=0.0), "peak_fraction must lie in"),
])
def test_bad_mask_rules_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    masks.MaskRule(**kwargs)
