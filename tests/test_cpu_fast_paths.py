"""The CPU fast paths of `lensjax.models.layers` compute what the plain JAX formulations compute: values and
gradients, on random inputs, layer by layer and through whole (tiny) networks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lensjax.models import layers
from lensjax.models.layers import _drop_padding_taps, conv_general_dilated, cpu_fast_paths, max_pool_ceil
from tests.helpers.networks import ISNET, MSRFNET, gradient_pairs, tiny_network_loss

NHWC = ("NHWC", "HWIO", "NHWC")


def _is_patch_matmul(function, *args) -> bool:
  """Whether `function(*args)` traces to a matmul with no convolution left in it, XLA's or oneDNN's."""
  program = str(jax.make_jaxpr(function)(*args))
  return "dot_general" in program and "conv_general_dilated" not in program and "ffi_call" not in program


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



# IS-Net's dilated convs on its smallest maps: dilation 4 and 8 on 4 x 4 and 8 x 8 read input through the centre
# tap only (1 x 1 taps left); dilation 4 on a 4 x 6 map through the centre row; dilation 2 on 4 x 4 and a 1 x 1
# map at dilation 1 (the deepest level of the tiny networks) keep or drop theirs; strided 'SAME' convs keep all.
@pytest.mark.parametrize("shape, dilation, stride, padding, taps", [
    ((2, 4, 4, 3), 8, 1, 8, (1, 1)), ((2, 4, 4, 3), 4, 1, 4, (1, 1)), ((2, 8, 8, 3), 8, 1, 8, (1, 1)),
    ((2, 4, 6, 3), 4, 1, 4, (1, 3)), ((2, 4, 4, 3), 2, 1, 2, (3, 3)), ((1, 1, 1, 3), 1, 1, 1, (1, 1)),
    ((2, 5, 5, 3), 1, 2, 1, (3, 3)), ((2, 3, 3, 3), 1, 2, "SAME", (3, 3))])
def test_a_convolution_without_its_padding_only_taps_computes_the_same_values_and_gradients(
    shape, dilation, stride, padding, taps):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], 5)), jnp.float32)
  padding = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
  numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  pruned = _drop_padding_taps(x.shape, w, (stride, stride), padding, (dilation, dilation), numbers)
  assert (pruned[0].shape[:2] if pruned is not None else (3, 3)) == taps
  conv = lambda f: lambda x, w: f(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                  dimension_numbers=NHWC)
  fast_out, (fast_dx, fast_dw) = jax.jit(lambda x, w: _value_and_grads(conv(conv_general_dilated), x, w))(x, w)
  out, (dx, dw) = jax.jit(lambda x, w: _value_and_grads(conv(jax.lax.conv_general_dilated), x, w))(x, w)
  np.testing.assert_allclose(fast_out, out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast_dx, dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast_dw, dw, rtol=1e-5, atol=1e-5)
  dropped = np.zeros((3, 3), bool)   # the dropped taps read only zeros: their gradient is exactly zero
  dropped[[0, 2], :] |= taps[0] == 1
  dropped[:, [0, 2]] |= taps[1] == 1
  assert float(jnp.abs(dw).sum()) > 0 and not np.any(np.asarray(fast_dw)[dropped])

# IS-Net's small maps: 3x3 on 4 x 4 and 2 x 2, dilation 2 on 4 x 4 (after dropping no taps), uneven padding and a
# 1 x 3 kernel (what tap dropping leaves on a 2 x 6 map); at the networks' widths, 512 x 512 channels.
@pytest.mark.parametrize("shape, kernel, dilation, padding", [
    ((3, 4, 4, 6), (3, 3), 1, ((1, 1), (1, 1))), ((2, 2, 2, 5), (3, 3), 1, ((1, 1), (1, 1))),
    ((2, 4, 4, 4), (3, 3), 2, ((2, 2), (2, 2))), ((2, 3, 5, 4), (3, 3), 1, ((0, 2), (1, 0))),
    ((2, 2, 6, 3), (1, 3), 4, ((0, 0), (4, 4)))])
def test_a_small_map_convolution_as_a_patch_matmul_computes_the_same_values_and_gradients(
    monkeypatch, shape, kernel, dilation, padding):
  monkeypatch.setattr(layers, "SMALL_MAP_MIN_CHANNEL_PRODUCT", 1)
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((*kernel, shape[-1], 7)), jnp.float32)
  conv = lambda f: lambda x, w: f(x, w, (1, 1), padding, rhs_dilation=(dilation, dilation), dimension_numbers=NHWC)
  fast = jax.jit(lambda x, w: _value_and_grads(conv(conv_general_dilated), x, w))
  assert _is_patch_matmul(conv(conv_general_dilated), x, w)
  fast_out, (fast_dx, fast_dw) = fast(x, w)
  out, (dx, dw) = jax.jit(lambda x, w: _value_and_grads(conv(jax.lax.conv_general_dilated), x, w))(x, w)
  assert fast_out.shape == out.shape
  for got, want in ((fast_out, out), (fast_dx, dx), (fast_dw, dw)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_small_maps_take_the_patch_matmul_only_at_stride_1_in_float32_from_the_channel_threshold():
  x = jnp.zeros((2, 4, 4, 256), jnp.float32)
  w = jnp.zeros((3, 3, 256, 256), jnp.float32)
  def taken(x, w, stride=1):
    return _is_patch_matmul(
        lambda x, w: conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=NHWC), x, w)

  assert taken(x, w)
  assert not taken(x, w, stride=2)
  assert not taken(x[..., :128], w[:, :, :128, :256])                                  # 128 x 256 channels
  assert not taken(jnp.zeros((2, 8, 8, 256)), w)                                       # 64 output pixels
  assert not taken(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  with cpu_fast_paths(False):
    assert not taken(x, w)
  with cpu_fast_paths(True, small_maps=False):
    assert not taken(x, w)


@pytest.mark.parametrize("name, options, inputs", [ISNET, pytest.param(*MSRFNET, marks=pytest.mark.slow)])
def test_a_network_trains_the_same_with_and_without_the_fast_paths(monkeypatch, name, options, inputs):
  # The oneDNN convolutions stay out: tests/test_onednn_conv.py compares them. The tiny networks' small maps (3 x 3
  # and below for IS-Net) take the patch matmul at any width.
  monkeypatch.setattr(layers, "SMALL_MAP_MIN_CHANNEL_PRODUCT", 1)
  loss, state = tiny_network_loss(name, options, inputs)
  with cpu_fast_paths(False):
    plain_loss, plain_grads = jax.jit(jax.value_and_grad(loss))(state)
  with cpu_fast_paths(True, onednn=False):
    fast_loss, fast_grads = jax.jit(jax.value_and_grad(loss))(state)
  np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-6)
  # The patch matmul sums the small maps' products in another order, and BatchNorm over 2 images of 1 x 1 and 2 x 2
  # maps there amplifies that float32 rounding (up to 1.3e-4 of a tensor's largest gradient in IS-Net; each layer
  # alone agrees to 1e-5 above). A wrong tap, padding or position would be O(1). The biases of convolutions before
  # a BatchNorm have gradients of rounding size (1e-7) on both paths: 1e-6 absolute is the floor.
  for path, plain, fast in gradient_pairs(plain_grads, fast_grads):
    scale = float(jnp.abs(plain).max())
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=max(1e-3 * scale, 1e-6), err_msg=path)
