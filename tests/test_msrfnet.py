"""MSRF-Net (lensjax/models/msrfnet.py) against the Keras original, docs/networks.md.

Parameter counts are exact and use `nnx.eval_shape` (nothing allocated). The numeric tests share one
width-0.125 model at 64x64, so the whole module compiles the forward only a few times.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lensjax.models.msrfnet import DSDFBlock, KerasConvTranspose, MSRFNet, SqueezeExcite

SMALL_WIDTH = 0.125
SIZE = 64


def _param_key(seed: int) -> jax.Array:
  # On XLA:CPU every distinct parameter shape compiles its own random-number program; with threefry
  # (jax_threefry_partitionable=True, the default) that is ~1-2 s per shape, over a minute for MSRF-Net's
  # ~60 shapes. The rbg generator compiles in a fraction of that; the model does not care which it gets.
  return jax.random.key(seed, impl="rbg")


def _sizes(state) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state))


def _count(factory) -> tuple[int, int]:
  """(trainable parameters, BatchNorm statistics) of the module `factory()` builds, without allocating."""
  module = nnx.eval_shape(factory)
  return _sizes(nnx.state(module, nnx.Param)), _sizes(nnx.state(module, nnx.BatchStat))


LIVE_BLOCKS = ("d1", "d2", "d3", "d4", "d5", "d9", "d10")   # D6-D8 are dead in `model.py`
ALL_BLOCKS = tuple(f"d{i}" for i in range(1, 11))


@pytest.mark.parametrize("options, trainable, blocks", [
    ({}, 18_591_821, LIVE_BLOCKS),                            # the lens config of the original project
    ({"wiring": "paper"}, 24_593_789, ALL_BLOCKS),            # the paper's wiring, Keras y1
    ({"in_channels": 3}, 18_592_397, LIVE_BLOCKS),            # upstream / CHAOS: only the first conv grows
    ({"wiring": "paper", "dsdf_y1": "designed"}, 21_092_093, ALL_BLOCKS),
])
def test_parameter_counts_match_the_keras_model(options, trainable, blocks):
  model = nnx.eval_shape(lambda: MSRFNet(rngs=nnx.Rngs(0), **options))
  assert _sizes(nnx.state(model, nnx.Param)) == trainable
  assert _sizes(nnx.state(model, nnx.BatchStat)) == 3_210      # moving mean and variance of 1,605 channels
  assert sorted(model.dsdf.keys()) == sorted(blocks)


@pytest.mark.parametrize("high, low, y1, trainable", [
    (32, 64, "keras", 286_032), (64, 128, "keras", 1_143_456), (128, 256, "keras", 4_572_480),
    (32, 64, "designed", 239_968), (64, 128, "designed", 959_168), (128, 256, "designed", 3_835_264),
])
def test_dsdf_block_parameter_counts(high, low, y1, trainable):
  assert _count(lambda: DSDFBlock(high, low, y1=y1, dtype=jnp.float32, rngs=nnx.Rngs(0))) == (trainable, 0)


@pytest.mark.parametrize("size, options", [
    (128, {"width": 1.0}),                                  # the full network, traced only
    (40, {"width": SMALL_WIDTH, "in_channels": 3, "out_channels": 2, "wiring": "paper",
          "dtype": jnp.bfloat16}),                          # H/8 = 5: odd sizes in the deepest pair
])
def test_every_output_is_full_resolution_float32_logits(size, options):
  in_channels = options.get("in_channels", 1)

  def build_and_run():
    model = MSRFNet(rngs=nnx.Rngs(0), **options)
    model.eval()
    return model(jnp.zeros((2, size, size, in_channels)), jnp.zeros((2, size, size, 1)))

  outputs = nnx.eval_shape(build_and_run)
  out_channels = options.get("out_channels", 1)
  assert [(o.shape, o.dtype) for o in outputs] == [((2, size, size, out_channels), jnp.float32)] * 4


@pytest.mark.parametrize("kernel_size, stride, padding", [(3, 2, "same"), (4, 2, "same"), (1, 2, "same"),
                                                          (2, 2, "valid")])
def test_keras_conv_transpose_scatters_each_input_pixel_through_the_kernel(kernel_size, stride, padding):
  layer = KerasConvTranspose(2, 3, kernel_size, stride, padding=padding, dtype=jnp.float32,
                             rngs=nnx.Rngs(_param_key(0)))
  layer.bias[...] = jnp.array([0.5, -1.0, 2.0])
  x = np.asarray(jax.random.normal(jax.random.key(1), (1, 3, 4, 2)))
  kernel = np.asarray(layer.kernel[...])
  # TF's Conv2DTranspose is the gradient of the forward conv with 'same'/'valid' padding: input pixel i
  # adds x[i] * kernel[a] at output s*i + a - p, p the forward conv's top padding.
  top = max(kernel_size - stride, 0) // 2 if padding == "same" else 0
  extra = 0 if padding == "same" else max(kernel_size - stride, 0)
  expected = np.zeros((1, 3 * stride + extra, 4 * stride + extra, 3), np.float64)
  for i in range(3):
    for j in range(4):
      for a in range(kernel_size):
        for b in range(kernel_size):
          oi, oj = stride * i + a - top, stride * j + b - top
          if 0 <= oi < expected.shape[1] and 0 <= oj < expected.shape[2]:
            expected[0, oi, oj] += x[0, i, j] @ kernel[a, b]
  expected += np.array([0.5, -1.0, 2.0])
  np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Numeric tests on one small model, batch 2. Every forward goes through `_run`, so the module compiles
# four programs: the float32 and bfloat16 eval forwards, the train forward and the eval gradient.


@pytest.fixture(scope="module")
def small_model():
  return MSRFNet(width=SMALL_WIDTH, rngs=nnx.Rngs(_param_key(0)))


@pytest.fixture(scope="module")
def train_model(small_model):
  """A train-mode copy whose BatchNorms keep the statistics of the last batch (momentum 0)."""
  model = nnx.clone(small_model)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.BatchNorm):
      module.momentum = 0.0
  return model


@pytest.fixture(scope="module")
def images():
  """Three (SIZE, SIZE, 1) images in [0, 1] and binary edge maps (thresholds, standing in for Canny)."""
  image = jax.random.uniform(jax.random.key(7), (3, SIZE, SIZE, 1))
  return image, (image > 0.8).astype(jnp.float32)


@nnx.jit
def _run(model, image, edge, dropout_key):
  return model(image, edge, rngs=nnx.Rngs(dropout=dropout_key))


def _eval_view(model):
  return nnx.view(model, deterministic=True, use_running_average=True)


def test_invalid_options_and_inputs_raise_errors_that_name_the_fix(small_model):
  with pytest.raises(ValueError, match="wiring='fig2'"):
    MSRFNet(wiring="fig2", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dsdf_y1"):
    MSRFNet(dsdf_y1="fixed", rngs=nnx.Rngs(0))
  eval_model = _eval_view(small_model)
  with pytest.raises(ValueError, match="multiples of 8"):
    eval_model(jnp.zeros((1, 125, 125, 1)), jnp.zeros((1, 125, 125, 1)))
  with pytest.raises(ValueError, match="in_channels=3"):
    eval_model(jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, SIZE, SIZE, 1)))
  with pytest.raises(ValueError, match="Canny map"):
    eval_model(jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1, SIZE, SIZE, 2)))
  with pytest.raises(ValueError, match="rngs=nnx.Rngs\\(dropout=key\\)"):
    small_model(jnp.zeros((1, SIZE, SIZE, 1)), jnp.zeros((1, SIZE, SIZE, 1)))


def test_eval_output_of_an_image_does_not_depend_on_the_rest_of_the_batch(small_model, images):
  image, edge = images
  with_b = _run(_eval_view(small_model), image[:2], edge[:2], jax.random.key(0))
  with_c = _run(_eval_view(small_model), image[::2], edge[::2], jax.random.key(0))
  for a_with_b, a_with_c in zip(with_b, with_c):
    assert a_with_b.shape == (2, SIZE, SIZE, 1)
    assert np.isfinite(np.asarray(a_with_b)).all()
    np.testing.assert_allclose(a_with_b[0], a_with_c[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a_with_b[1], a_with_c[1])


def test_canny_map_reaches_only_the_mask_head(small_model, images):
  image, edge = images
  outputs = _run(_eval_view(small_model), image[:2], edge[:2], jax.random.key(0))
  flipped = _run(_eval_view(small_model), image[:2], 1.0 - edge[:2], jax.random.key(0))
  assert not np.allclose(outputs[0], flipped[0])
  for output, output_flipped in zip(outputs[1:], flipped[1:]):  # edge_out, pred2, pred4
    np.testing.assert_array_equal(output, output_flipped)


def test_bfloat16_forward_is_close_to_float32(small_model, images):
  image, edge = images
  bf16_model = MSRFNet(width=SMALL_WIDTH, dtype=jnp.bfloat16, rngs=nnx.Rngs(_param_key(0)))
  params = jax.tree.leaves(nnx.state(small_model, nnx.Param))
  bf16_params = jax.tree.leaves(nnx.state(bf16_model, nnx.Param))
  assert all(p.dtype == jnp.float32 for p in bf16_params)
  assert all(np.array_equal(p, q) for p, q in zip(params, bf16_params))
  reference = _run(_eval_view(small_model), image[:2], edge[:2], jax.random.key(0))
  half = _run(_eval_view(bf16_model), image[:2], edge[:2], jax.random.key(0))
  for f32, bf16 in zip(reference, half):
    # bfloat16 keeps 8 significant bits (0.4 %); the errors of ~100 layers add up to about 1 %.
    relative_l2 = float(jnp.linalg.norm(bf16 - f32) / jnp.linalg.norm(f32))
    assert relative_l2 < 0.03
    assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.05 * float(jnp.max(jnp.abs(f32)))


def test_dropout_is_active_in_train_mode_and_off_in_eval_mode(small_model, train_model, images):
  image, edge = images
  key1, key2 = jax.random.key(1), jax.random.key(2)
  first = _run(train_model, image[:2], edge[:2], key1)
  again = _run(train_model, image[:2], edge[:2], key1)
  other = _run(train_model, image[:2], edge[:2], key2)
  for a, b, c in zip(first, again, other):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, c, rtol=1e-3, atol=1e-3)
  eval_key1 = _run(_eval_view(small_model), image[:2], edge[:2], key1)
  eval_key2 = _run(_eval_view(small_model), image[:2], edge[:2], key2)
  for a, b in zip(eval_key1, eval_key2):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_gradient_reaches_every_parameter(train_model, images):
  image, edge = images[0][:2], images[1][:2]
  model = nnx.clone(train_model)
  for _, module in nnx.iter_modules(model):
    # At width 0.125 a squeeze-excite has one hidden ReLU unit (C // 16, at least 1); a fresh init can
    # leave it inactive for every image, and then its weights get no gradient (in Keras too). Switch
    # those units on, so that this test checks the wiring rather than the luck of the init.
    if isinstance(module, SqueezeExcite):
      module.squeeze.bias[...] += 3.0
  # In train mode the bias of a conv that feeds a BatchNorm directly has an exactly zero gradient (BN
  # subtracts the batch mean), as in Keras. Eval mode with running statistics set to this batch's (one
  # train-mode call at momentum 0) is the same function with the statistics held fixed, so there every
  # live parameter has a gradient.
  _run(model, image, edge, jax.random.key(3))
  weights = jax.random.normal(jax.random.key(4), (4, 2, SIZE, SIZE, 1))

  def loss_fn(model):
    return sum(jnp.mean(w * o) for w, o in zip(weights, model(image, edge)))

  grads = nnx.jit(nnx.grad(loss_fn))(_eval_view(model))
  flat = nnx.to_flat_state(grads)
  assert len(flat) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  no_gradient = [".".join(map(str, path)) for path, grad in flat if not np.any(np.asarray(grad[...]) != 0)]
  assert no_gradient == []
