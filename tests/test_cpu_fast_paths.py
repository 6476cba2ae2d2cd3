"""The CPU fast paths of `lensjax.models.layers` compute what the plain JAX formulations compute: values and
gradients, on random inputs, layer by layer and through whole (tiny) networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lensjax.models.layers import conv_general_dilated, cpu_fast_paths, max_pool_ceil
from tests.helpers.networks import ISNET, MSRFNET, gradient_pairs, tiny_network_loss

NHWC = ("NHWC", "HWIO", "NHWC")


def _value_and_grads(function, *args):
  """function(*args) and the gradients of a fixed random projection of it with respect to every argument."""
  out = function(*args)
  weights = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
  grads = jax.grad(lambda *a: jnp.sum(function(*a) * weights), argnums=tuple(range(len(args))))(*args)
  return out, grads


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 4), (1, 5, 5, 2), (3, 1, 1, 2)])
def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window_as_select_and_scatter_and_torch(shape):
  rng = np.random.default_rng(0)
  # After a ReLU whole windows are zero: every window element ties, so the tie rule decides the gradient.
  x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
  x[0, :2, :2, 0] = 1.5
  with cpu_fast_paths(False):
    plain_out, (plain_grad,) = jax.jit(lambda x: _value_and_grads(max_pool_ceil, x))(x)
  fast_out, (fast_grad,) = jax.jit(lambda x: _value_and_grads(max_pool_ceil, x))(x)
  np.testing.assert_array_equal(fast_out, plain_out)
  np.testing.assert_array_equal(fast_grad, plain_grad)

  weights = jax.random.normal(jax.random.key(7), fast_out.shape)
  x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
  pooled = torch.nn.functional.max_pool2d(x_torch, 2, 2, ceil_mode=True)
  (pooled * torch.from_numpy(np.asarray(weights).transpose(0, 3, 1, 2).copy())).sum().backward()
  np.testing.assert_array_equal(fast_grad, x_torch.grad.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("stride, dilation, padding", [(1, 1, ((1, 1), (1, 1))), (2, 1, "SAME"),
                                                       (1, 2, ((2, 2), (2, 2)))])
def test_convolution_with_the_chunked_kernel_gradient_matches_the_plain_one(stride, dilation, padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((4, 64, 64, 32)), jnp.float32)    # large enough to be chunked
  kernel = jnp.asarray(rng.standard_normal((3, 3, 32, 32)) * 0.1, jnp.float32)

  def conv(function):
    return lambda x, w: function(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                 dimension_numbers=NHWC)

  plain_out, (plain_dx, plain_dw) = jax.jit(lambda x, w: _value_and_grads(conv(jax.lax.conv_general_dilated), x, w))(
      x, kernel)
  with cpu_fast_paths(True, onednn=False):
    fast_out, (fast_dx, fast_dw) = jax.jit(lambda x, w: _value_and_grads(conv(conv_general_dilated), x, w))(x, kernel)
  np.testing.assert_array_equal(fast_out, plain_out)
  np.testing.assert_array_equal(fast_dx, plain_dx)
  # The same products summed in another order: float32 rounding of sums over 4 x 64 x 64 pixels.
  np.testing.assert_allclose(fast_dw, plain_dw, rtol=2e-5, atol=2e-5 * float(jnp.abs(plain_dw).max()))


@pytest.mark.parametrize("name, options, inputs", [ISNET, pytest.param(*MSRFNET, marks=pytest.mark.slow)])
def test_a_network_trains_the_same_with_and_without_the_fast_paths(name, options, inputs):
  # The oneDNN convolutions stay out: tests/test_onednn_conv.py compares them.
  loss, state = tiny_network_loss(name, options, inputs)
  with cpu_fast_paths(False):
    plain_loss, plain_grads = jax.jit(jax.value_and_grad(loss))(state)
  with cpu_fast_paths(True, onednn=False):
    fast_loss, fast_grads = jax.jit(jax.value_and_grad(loss))(state)
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-6)
  for path, plain, fast in gradient_pairs(plain_grads, fast_grads):
    scale = float(jnp.abs(plain).max()) + 1e-12
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * scale, err_msg=path)
