"""The oneDNN convolutions (`lensjax.models.onednn`) compute what XLA's do: values and gradients on random inputs,
for every convolution pattern the networks use, and through whole (tiny) networks.

The comparisons run against whichever path is active: where the extension is built every one also asserts that
the traced program calls oneDNN (on the CPU backend), and where it is not, that it does not.
`LENSJAX_REQUIRE_ONEDNN=1` makes a missing extension a failure (for CI machines that must build it)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.models import onednn
from lensjax.models.layers import conv_general_dilated, conv_transpose, cpu_fast_paths
from tests.helpers.networks import ISNET, MSRFNET, gradient_pairs, tiny_network_loss

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NHWC = ("NHWC", "HWIO", "NHWC")
ONEDNN_CALL = "lensjax_onednn_conv_forward"


def _onednn_expected() -> bool:
  """Whether traced programs should call oneDNN: the kernels loaded and the backend is CPU (never on a GPU)."""
  return onednn.available() and jax.default_backend() == "cpu"


def test_the_extension_is_built_where_required_and_the_active_path_is_reported():
  print(f"oneDNN convolutions: {'used' if onednn.available() else 'not used'}: {onednn.status()}")
  if os.environ.get("LENSJAX_REQUIRE_ONEDNN") == "1":
    assert onednn.available(), onednn.status()
  if onednn.available():
    assert pathlib.Path(onednn.status().split(",")[0]).is_file()


def _value_and_grads(function, *args):
  """function(*args) and the gradients of a fixed random projection of it with respect to every argument."""
  out = function(*args)
  weights = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
  grads = jax.grad(lambda *a: jnp.sum(function(*a) * weights), argnums=tuple(range(len(args))))(*args)
  return out, grads


def _assert_close(actual, expected, what):
  scale = float(jnp.abs(expected).max()) + 1e-12
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale, err_msg=what)


# Every convolution of the networks: IS-Net's 3x3 convs padded by their dilation 1, 2, 4, 8 and its stride-2 stem
# (padding 1), MSRF-Net's 'SAME' 3x3 convs at stride 1 and 2 and its 2x2 stride-2 attention conv; odd and even
# maps, maps smaller than the dilated kernel (IS-Net's deepest levels).
@pytest.mark.parametrize("shape, kernel, stride, dilation, padding", [
    ((2, 9, 7, 3), (3, 3), 1, 1, ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (3, 3), 1, 2, ((2, 2), (2, 2))),
    ((2, 6, 5, 4), (3, 3), 1, 4, ((4, 4), (4, 4))),
    ((1, 3, 3, 4), (3, 3), 1, 8, ((8, 8), (8, 8))),
    ((2, 8, 8, 1), (3, 3), 2, 1, ((1, 1), (1, 1))),
    ((2, 9, 7, 3), (3, 3), 2, 1, ((1, 1), (1, 1))),
    ((2, 8, 8, 5), (3, 3), 1, 1, "SAME"),
    ((2, 8, 8, 5), (3, 3), 2, 1, "SAME"),
    ((2, 8, 8, 5), (2, 2), 2, 1, "SAME"),
])
def test_a_convolution_and_its_gradients_match_xlas(shape, kernel, stride, dilation, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((*kernel, shape[-1], 6)) * 0.3, jnp.float32)

  def conv(function):
    return lambda x, w: function(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
                                 dimension_numbers=NHWC)

  step = jax.jit(lambda x, w: _value_and_grads(conv(conv_general_dilated), x, w))
  assert (ONEDNN_CALL in step.lower(x, w).as_text()) == _onednn_expected()
  out, (dx, dw) = step(x, w)
  with cpu_fast_paths(False):
    plain_out, (plain_dx, plain_dw) = jax.jit(lambda x, w: _value_and_grads(conv(conv_general_dilated), x, w))(x, w)
  assert out.shape == plain_out.shape
  _assert_close(out, plain_out, "output")
  _assert_close(dx, plain_dx, "input gradient")
  _assert_close(dw, plain_dw, "kernel gradient")



# MSRF-Net's transposed convs (Keras Conv2DTranspose 'same' k3, k4 and k1 at stride 2, 'valid' k2 s2, as
# KerasConvTranspose pads them), a stride-1 one and a non-overlapping stride 3; odd, even and non-square maps.
@pytest.mark.parametrize("kernel, stride, padding", [
    (3, 2, (2, 1)), (4, 2, (2, 2)), (1, 2, (0, 1)), (2, 2, (1, 1)), (3, 1, (1, 1)), (3, 3, (2, 2))])
@pytest.mark.parametrize("shape", [(2, 5, 5, 3), (1, 4, 7, 2)])
def test_a_transposed_convolution_and_its_gradients_match_xlas(shape, kernel, stride, padding):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, shape[-1], 4)) * 0.3, jnp.float32)
  conv = lambda x, w: conv_transpose(x, w, (stride, stride), (padding, padding))
  step = jax.jit(lambda x, w: _value_and_grads(conv, x, w))
  assert ("lensjax_onednn_conv_backward_data" in step.lower(x, w).as_text()) == _onednn_expected()
  out, (dx, dw) = step(x, w)
  plain = lambda x, w: jax.lax.conv_general_dilated(x, jnp.flip(w, (0, 1)), (1, 1), (padding, padding),
                                                    lhs_dilation=(stride, stride), dimension_numbers=NHWC)
  plain_out, (plain_dx, plain_dw) = jax.jit(lambda x, w: _value_and_grads(plain, x, w))(x, w)
  assert out.shape == plain_out.shape == (shape[0], *[(n - 1) * stride + sum(padding) - kernel + 2
                                                      for n in shape[1:3]], 4)
  _assert_close(out, plain_out, "output")
  _assert_close(dx, plain_dx, "input gradient")
  _assert_close(dw, plain_dw, "kernel gradient")

# bfloat16 operands (model.dtype=bfloat16): oneDNN's native kernels where the CPU has them, XLA's elsewhere. Both
# accumulate in float32 and round the result to bfloat16: each is checked against the float32 computation on the
# same bfloat16 values, to the rounding of the result.
@pytest.mark.parametrize("case", ["conv 3x3", "conv 3x3 dilation 2 stride 2", "transposed 3x3 stride 2"])
def test_bfloat16_convolutions_round_the_float32_result(case):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 12, 10, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 8)) * 0.2, jnp.bfloat16)
  if case.startswith("transposed"):
    conv = lambda x, w: conv_transpose(x, w, (2, 2), ((2, 1), (2, 1)))
    call = "lensjax_onednn_conv_backward_data"
  else:
    stride, dilation = (2, 2) if "stride 2" in case else (1, 1)
    conv = lambda x, w: conv_general_dilated(x, w, (stride, stride), "SAME", rhs_dilation=(dilation, dilation),
                                             dimension_numbers=NHWC)
    call = ONEDNN_CALL
  def value_and_grads(x, w):            # as _value_and_grads, with projection weights of bfloat16 values
    out = conv(x, w)
    weights = jax.random.normal(jax.random.key(7), out.shape).astype(jnp.bfloat16).astype(out.dtype)
    return out, jax.grad(lambda x, w: jnp.sum(conv(x, w) * weights), argnums=(0, 1))(x, w)

  step = jax.jit(value_and_grads)
  native = _onednn_expected() and jnp.dtype(jnp.bfloat16) in onednn.dtypes()
  assert (call in step.lower(x, w).as_text()) == native
  out, grads = step(x, w)
  with cpu_fast_paths(False):
    reference = jax.jit(value_and_grads)(x.astype(jnp.float32), w.astype(jnp.float32))
  for what, actual, expected in zip(("output", "input gradient", "kernel gradient"), (out, *grads),
                                    (reference[0], *reference[1])):
    assert actual.dtype == jnp.bfloat16 and actual.shape == expected.shape, what
    scale = float(jnp.abs(expected).max())
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=2.0 ** -8, atol=1e-5 * scale,
                               err_msg=what)


def test_a_vmapped_convolution_matches_xlas():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 2)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 2, 4)), jnp.float32)
  conv = lambda x, w: conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                           dimension_numbers=NHWC)
  out, (dx, dw) = jax.jit(jax.vmap(lambda x, w: _value_and_grads(conv, x, w)))(x, w)
  with cpu_fast_paths(False):
    plain_out, (plain_dx, plain_dw) = jax.jit(jax.vmap(lambda x, w: _value_and_grads(conv, x, w)))(x, w)
  _assert_close(out, plain_out, "output")
  _assert_close(dx, plain_dx, "input gradient")
  _assert_close(dw, plain_dw, "kernel gradient")


@pytest.mark.parametrize("name, options, inputs", [ISNET, pytest.param(*MSRFNET, marks=pytest.mark.slow)])
def test_a_network_computes_the_same_loss_and_gradients_through_onednn(name, options, inputs):
  loss, state = tiny_network_loss(name, options, inputs)
  step = jax.jit(jax.value_and_grad(loss))
  assert (ONEDNN_CALL in step.lower(state).as_text()) == _onednn_expected()
  value, grads = step(state)
  with cpu_fast_paths(True, onednn=False):
    xla_value, xla_grads = jax.jit(jax.value_and_grad(loss))(state)
  np.testing.assert_allclose(value, xla_value, rtol=1e-5)
  # Float32 rounding in another summation order, grown through a dozen BatchNorms of a 2-image batch: up to about
  # 5e-5 of the largest gradient (1e-4 of some leaves' own largest); a wrong convolution is off by its whole size.
  scale = max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(xla_grads))
  for path, expected, actual in gradient_pairs(xla_grads, grads):
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale, err_msg=path)


def _run(*arguments: str, **env) -> str:
  """Runs CONV_AGAINST_XLA in a fresh Python process (the device count and the switch are read at start-up) and
  returns its standard output."""
  result = subprocess.run([sys.executable, "-c", CONV_AGAINST_XLA, *arguments], cwd=REPO_ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", **env), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


# A dilated conv's loss and gradients against lax's; with the argument "sharded", the batch is split over a
# two-device mesh; with "batch N", a batch of N images (4 otherwise).
CONV_AGAINST_XLA = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from lensjax.models import onednn
    from lensjax.models.layers import conv_general_dilated
    NHWC = ("NHWC", "HWIO", "NHWC")
    rng = np.random.default_rng(3)
    batch = int(sys.argv[2]) if sys.argv[1:2] == ["batch"] else 4
    x = jnp.asarray(rng.standard_normal((batch, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 5)), jnp.float32)
    def loss(conv, x, w):
      return jnp.sum(jnp.sin(conv(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2), dimension_numbers=NHWC)))
    inputs = (x, w)
    if sys.argv[1:] == ["sharded"]:
      mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Auto,))
      inputs = (jax.device_put(x, NamedSharding(mesh, P("data"))), jax.device_put(w, NamedSharding(mesh, P())))
    step = jax.jit(jax.value_and_grad(lambda x, w: loss(conv_general_dilated, x, w), argnums=(0, 1)))
    print("calls oneDNN:", "lensjax_onednn_conv_forward" in step.lower(*inputs).as_text())
    value, (dx, dw) = step(*inputs)
    plain, (plain_dx, plain_dw) = jax.jit(jax.value_and_grad(lambda x, w: loss(jax.lax.conv_general_dilated, x, w),
                                                             argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(value, plain, rtol=1e-5)
    np.testing.assert_allclose(dx, plain_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, plain_dw, rtol=1e-5, atol=1e-4)
    print("input gradient sharding:", dx.sharding.spec if hasattr(dx.sharding, "spec") else None)
    print("available:", onednn.available(), "|", onednn.status())
""")


@pytest.mark.parametrize("batch", [4, 3])
def test_a_convolution_cut_into_batch_parts_on_xlas_thread_pool_matches_xlas(batch):
  # With a team threshold of 0 every call is large enough to be cut into one batch part per thread of XLA's pool
  # (onednn_conv.cc, Threads); a batch that does not split evenly into them runs whole (on 2 cores: batch 4 in
  # parts of 2, batch 3 whole). oneDNN's verbose log names the
  # minibatch of each primitive it executes.
  stdout = _run("batch", str(batch), LENSJAX_ONEDNN_TEAM_MIN_MACS="0", ONEDNN_VERBOSE="1")
  assert f"calls oneDNN: {_onednn_expected()}" in stdout
  if _onednn_expected():
    threads = len(os.sched_getaffinity(0))
    parts = threads if batch % threads == 0 else 1
    executed = {line.split(",")[-2].split("_")[0] for line in stdout.splitlines()
                if line.startswith("onednn_verbose,exec") and ",convolution," in line}
    assert executed == {f"mb{batch // parts}"}, executed


def test_switched_off_by_the_environment_the_convolutions_are_xlas():
  stdout = _run(LENSJAX_ONEDNN="0")
  assert "calls oneDNN: False" in stdout
  assert "available: False | switched off by LENSJAX_ONEDNN=0" in stdout


def test_a_data_parallel_step_on_two_devices_keeps_xlas_convolutions_and_its_batch_sharding():
  stdout = _run("sharded", JAX_NUM_CPU_DEVICES="2")
  assert "calls oneDNN: False" in stdout
  assert "input gradient sharding: P('data',)" in stdout
