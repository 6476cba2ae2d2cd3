"""The float32 exp2, log2, arctanh and arctan of `lensjax.sim.fastmath` against float64 numpy, over their domains.

float32 rounding alone gives relative errors up to 6e-8 (half an ulp); the bounds are a few ulp.
"""

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.sim import fastmath


def _relative_error(function, x: np.ndarray, exact: np.ndarray) -> np.ndarray:
  approximate = np.asarray(function(jnp.asarray(x)), np.float64)
  nonzero = exact != 0
  return np.abs(approximate - exact)[nonzero] / np.abs(exact[nonzero])


def test_exp2_accurate_over_the_normal_range_and_zero_below_it():
  x = np.concatenate([np.linspace(-126, 127, 400_001), np.linspace(-1, 1, 100_001)]).astype(np.float32)
  assert _relative_error(fastmath.exp2, x, np.exp2(x.astype(np.float64))).max() < 3e-7
  assert float(fastmath.exp2(jnp.float32(-130.0))) == 0.0
  assert float(fastmath.exp2(jnp.float32(0.0))) == 1.0


def test_log2_accurate_over_the_normal_range():
  x = np.concatenate([np.geomspace(1.2e-38, 3e38, 400_001), np.linspace(0.5, 2, 100_001)]).astype(np.float32)
  exact = np.log2(x.astype(np.float64))
  approximate = np.asarray(fastmath.log2(jnp.asarray(x)), np.float64)
  assert (np.abs(approximate - exact) / np.maximum(np.abs(exact), 1)).max() < 1.5e-7
  assert _relative_error(fastmath.log2, x, exact).max() < 3e-7
  assert float(fastmath.log2(jnp.float32(1.0))) == 0.0


def test_arctanh_accurate_including_tiny_arguments():
  u = np.concatenate([np.linspace(-0.999999, 0.999999, 400_001), np.geomspace(1e-30, 0.5, 10_001)]).astype(
      np.float32)
  assert _relative_error(fastmath.arctanh, u, np.arctanh(u.astype(np.float64))).max() < 4e-7


def test_arctan_accurate_over_all_ranges():
  z = np.concatenate([np.linspace(-50, 50, 200_001), np.geomspace(1e-30, 1e30, 10_001)]).astype(np.float32)
  assert _relative_error(fastmath.arctan, z, np.arctan(z.astype(np.float64))).max() < 3e-7


def test_derivatives_are_the_exact_ones():
  x = jnp.asarray(np.linspace(0.1, 0.9, 9), jnp.float32)
  exact_derivatives = [(fastmath.exp2, lambda v: np.log(2) * np.exp2(v)),
                       (fastmath.log2, lambda v: 1 / (v * np.log(2))),
                       (fastmath.arctanh, lambda v: 1 / (1 - v * v)),
                       (fastmath.arctan, lambda v: 1 / (1 + v * v))]
  for function, exact in exact_derivatives:
    derivative = jax.vmap(jax.grad(function))(x)
    np.testing.assert_allclose(derivative, exact(np.asarray(x, np.float64)), rtol=1e-6)
