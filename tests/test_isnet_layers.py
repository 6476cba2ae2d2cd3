"""The shared NHWC layers IS-Net relies on, checked against PyTorch (the upstream framework)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lensjax.models.layers import (max_pool_ceil, torch_default_bias_init, torch_default_kernel_init,
                                   upsample_bilinear)


def _to_nchw(x: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _to_nhwc(x: torch.Tensor) -> np.ndarray:
  return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("height, width", [(64, 64), (63, 125), (5, 4), (3, 3), (1, 1), (2, 7)])
def test_max_pool_ceil_matches_torch_ceil_mode(height, width):
  x = np.random.default_rng(0).standard_normal((2, height, width, 3)).astype(np.float32)
  expected = _to_nhwc(torch.nn.MaxPool2d(2, stride=2, ceil_mode=True)(_to_nchw(x)))
  pooled = np.asarray(max_pool_ceil(jnp.asarray(x)))
  assert pooled.shape == (2, math.ceil(height / 2), math.ceil(width / 2), 3)
  np.testing.assert_array_equal(pooled, expected)


@pytest.mark.parametrize("source, target", [((63, 63), (125, 125)), ((2, 2), (4, 4)), ((1, 1), (3, 3)),
                                            ((4, 4), (125, 125)), ((5, 3), (9, 8)), ((32, 32), (63, 64))])
def test_upsample_bilinear_matches_torch_half_pixel_interpolation(source, target):
  x = np.random.default_rng(1).standard_normal((2, *source, 3)).astype(np.float32)
  expected = _to_nhwc(F.interpolate(_to_nchw(x), size=target, mode="bilinear", align_corners=False))
  upsampled = np.asarray(upsample_bilinear(jnp.asarray(x), target))
  assert upsampled.shape == (2, *target, 3)
  np.testing.assert_allclose(upsampled, expected, rtol=1e-5, atol=1e-5)   # float32 rounding of the weights


def test_torch_default_inits_draw_uniform_within_one_over_sqrt_fan_in():
  fan_in = 3 * 3 * 64
  bound = 1 / math.sqrt(fan_in)
  kernel = np.asarray(torch_default_kernel_init()(jax.random.key(0), (3, 3, 64, 128)))
  bias = np.asarray(torch_default_bias_init(fan_in)(jax.random.key(1), (4096,)))
  torch_weight = torch.nn.Conv2d(64, 128, 3).weight.detach().numpy()
  for sample in (kernel, bias, torch_weight):
    assert np.abs(sample).max() <= bound
    assert np.abs(sample).max() > 0.99 * bound
    assert np.std(sample) == pytest.approx(bound / math.sqrt(3), rel=0.05)   # a uniform, not a normal
