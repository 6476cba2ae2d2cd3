"""IS-Net and its ground-truth encoder: structure, shapes, BatchNorm modes, gradients, dtypes, factory, summary CLI.

Real forwards use width 0.125 (8-channel stem) and small images; full-size networks are only built
abstractly (`nnx.eval_shape`), which allocates and compiles nothing.
"""

import math
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lensjax import config as lensjax_config
from lensjax.models import ISNet, ISNetGTEncoder, build, build_from_config, count_parameters
from lensjax.models import __main__ as summary_cli
from lensjax.models.isnet import FEATURE_CHANNELS, RSU4F
from lensjax.registry import scaled_channels

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
WIDTH = 0.125


def _abstract(name: str, **options) -> nnx.Module:
  return nnx.eval_shape(lambda: build(name, **options, seed=0))


def _output_shapes(model: nnx.Module, *input_shapes: tuple[int, ...]):
  """The shapes and dtypes of `model(*inputs)` for float32 inputs of `input_shapes`, without computing them.

  Traced in eval mode: the shapes are the same, and tracing the train-mode BatchNorm updates costs ~10x
  more (JAX 0.10.2 builds an error message for every `Variable` update; jax-ml/jax#40041).
  """
  inputs = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in input_shapes]
  eval_view = nnx.view(model, use_running_average=True)
  return nnx.eval_shape(lambda model, *inputs: model(*inputs), eval_view, *inputs)


@nnx.jit
def _forward(model, x):
  return model(x)


@pytest.fixture(scope="module")
def reference_isnet() -> ISNet:
  """The full upstream ISNetDIS(3 -> 1), abstract."""
  return _abstract("isnet", in_channels=3, out_channels=1)


@pytest.fixture(scope="module")
def small_isnet() -> ISNet:
  """ISNet(1 -> 2) at width 0.125 and full depth, abstract."""
  return _abstract("isnet", in_channels=1, out_channels=2, width=WIDTH)


def _images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("name, in_channels, expected", [("isnet", 1, 44_045_638), ("isnet_gt_encoder", 1, 6_877_734)])
def test_parameter_counts_match_upstream(name, in_channels, expected):
  trainable, _ = count_parameters(_abstract(name, in_channels=in_channels, out_channels=1))
  assert trainable == expected


def test_isnet_blocks_match_the_reference_table(reference_isnet):
  model = reference_isnet
  assert count_parameters(model) == (44_046_790, 28_800)     # trainable, BatchNorm running statistics
  # docs/networks.md, per block.
  expected = {"conv_in": 1_792, "stage1": 241_152, "stage2": 305_856, "stage3": 1_108_992,
              "stage4": 3_986_688, "stage5": 10_034_688, "stage6": 10_034_688, "stage5d": 12_393_984,
              "stage4d": 4_280_064, "stage3d": 1_181_952, "stage2d": 323_904, "stage1d": 139_200,
              "side1": 577, "side2": 577, "side3": 1_153, "side4": 2_305, "side5": 4_609, "side6": 4_609}
  assert {name: count_parameters(getattr(model, name))[0] for name in expected} == expected
  heights = {name: getattr(model, name).height for name in ("stage1", "stage2", "stage3", "stage4", "stage1d")}
  assert heights == {"stage1": 7, "stage2": 6, "stage3": 5, "stage4": 4, "stage1d": 7}
  assert all(isinstance(getattr(model, name), RSU4F) for name in ("stage5", "stage6", "stage5d"))


def _level_sizes(size: int, depth: int) -> list[int]:
  sizes = [math.ceil(size / 2)]                  # the stride-2 stem, then one ceil-mode pool per level
  for _ in range(depth - 1):
    sizes.append(math.ceil(sizes[-1] / 2))
  return sizes


@pytest.mark.parametrize("size", [125, 128, 45])
def test_outputs_and_features_have_the_reference_shapes(small_isnet, size):
  side_logits, features = _output_shapes(small_isnet, (2, size, size, 1))
  assert [(s.shape, s.dtype) for s in side_logits] == [((2, size, size, 2), jnp.float32)] * 6
  levels = _level_sizes(size, 6)                 # 125: 63, 32, 16, 8, 4, 2
  assert [f.shape for f in features] == [(2, n, n, scaled_channels(c, WIDTH))
                                         for n, c in zip(levels, FEATURE_CHANNELS)]


def test_gt_encoder_features_match_isnet_features_at_full_and_reduced_depth(small_isnet):
  for depth in (6, 2):
    isnet = small_isnet if depth == 6 else _abstract("isnet", in_channels=1, out_channels=2, width=WIDTH,
                                                     depth=depth)
    encoder = _abstract("isnet_gt_encoder", in_channels=2, out_channels=2, width=WIDTH, depth=depth)
    isnet_logits, isnet_features = _output_shapes(isnet, (2, 125, 125, 1))
    mask_logits, mask_features = _output_shapes(encoder, (2, 125, 125, 2))
    assert [s.shape for s in mask_logits] == [s.shape for s in isnet_logits] == [(2, 125, 125, 2)] * depth
    assert [f.shape for f in mask_features] == [f.shape for f in isnet_features]
    assert [f.shape[1] for f in isnet_features] == _level_sizes(125, depth)


def test_shallow_variants_keep_the_reference_decoder_and_shrink(small_isnet):
  models = {depth: _abstract("isnet", in_channels=1, out_channels=2, width=WIDTH, depth=depth) for depth in (1, 4)}
  models[6] = small_isnet
  for depth, model in models.items():
    assert not hasattr(model, f"stage{depth + 1}") and not hasattr(model, f"stage{depth}d")
    assert hasattr(model, f"side{depth}") and not hasattr(model, f"side{depth + 1}")
  counts = [count_parameters(model)[0] for model in models.values()]
  assert counts == sorted(counts) and len(set(counts)) == 3
  # Depth 4's bottom (stage 4) emits hx4d's 256 channels (times width) instead of 512, so stage3d is unchanged.
  assert models[4].stage4.rebnconv1d.conv_s1.kernel.shape == (3, 3, 32, 32)
  assert models[6].stage4.rebnconv1d.conv_s1.kernel.shape == (3, 3, 32, 64)
  assert count_parameters(models[4].stage3d) == count_parameters(models[6].stage3d)


def test_eval_output_of_an_image_does_not_depend_on_the_rest_of_the_batch():
  model = build("isnet", in_channels=1, out_channels=2, width=WIDTH, depth=2, seed=0)
  image = _images((1, 32, 32, 1))
  batch_a = np.concatenate([image, _images((2, 32, 32, 1), seed=1)])
  batch_b = np.concatenate([image, 5.0 + 3.0 * _images((2, 32, 32, 1), seed=2)])
  model.eval()
  eval_a, eval_b = (model.prediction(_forward(model, batch))[0] for batch in (batch_a, batch_b))
  np.testing.assert_allclose(eval_a, eval_b, rtol=1e-5, atol=1e-6)
  model.train()                                  # batch statistics: now the batch-mates matter
  train_a, train_b = (model.prediction(_forward(model, batch))[0] for batch in (batch_a, batch_b))
  assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-2


def test_train_mode_updates_batch_statistics_and_eval_mode_uses_them():
  model = build("isnet", in_channels=1, out_channels=1, width=WIDTH, depth=1, seed=0)
  x = 2.0 + _images((4, 16, 16, 1))
  bn = model.stage1.rebnconvin.bn_s1
  assert not bn.use_running_average             # train mode after construction
  before = np.asarray(bn.mean[...]).copy()
  _forward(model, x)
  after_one_step = np.asarray(bn.mean[...]).copy()
  assert np.abs(after_one_step - before).max() > 1e-3

  eval_view = nnx.view(model, use_running_average=True)   # shares the variables, leaves `model` in train mode
  viewed = np.asarray(eval_view.prediction(_forward(eval_view, x)))
  np.testing.assert_array_equal(np.asarray(bn.mean[...]), after_one_step)
  assert not bn.use_running_average
  model.eval()
  np.testing.assert_allclose(np.asarray(model.prediction(_forward(model, x))), viewed, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(bn.mean[...]), after_one_step)


def test_batch_statistics_are_over_the_global_batch_under_sharded_jit():
  script = textwrap.dedent("""
      import jax, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from flax import nnx
      from lensjax.models import build
      assert jax.device_count() == 2, jax.devices()
      mesh = jax.make_mesh((2,), ("data",))
      x = np.random.default_rng(0).standard_normal((4, 16, 16, 1)).astype(np.float32)
      x[2:] = 3.0 * x[2:] + 2.0                  # the two devices' halves have different statistics
      forward = nnx.jit(lambda model, x: model(x))

      def running_mean_after_a_step(x, sharded):
        model = build("isnet", in_channels=1, out_channels=1, width=0.125, depth=1, seed=0)
        if sharded:
          nnx.update(model, jax.device_put(nnx.state(model), NamedSharding(mesh, P())))
          x = jax.device_put(x, NamedSharding(mesh, P("data")))
        forward(model, x)
        return np.asarray(model.stage1.rebnconvin.bn_s1.mean[...])

      sharded = running_mean_after_a_step(x, sharded=True)
      np.testing.assert_allclose(sharded, running_mean_after_a_step(x, sharded=False), rtol=1e-5, atol=1e-6)
      assert np.abs(sharded - running_mean_after_a_step(x[:2], sharded=False)).max() > 1e-2
      print("global batch statistics")
  """)
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "global batch statistics" in result.stdout


def test_a_gradient_reaches_every_parameter():
  # Depth 4 holds every RSU height in encoder and decoder (RSU-4F, the same ConvBNReLU layers without
  # resampling, is covered by the PyTorch parity test; depth 5 would double this test's compile time). Train
  # mode, as in training: BatchNorm cancels the bias of the conv before it, as upstream, so those biases get
  # a zero gradient up to rounding; every other parameter gets a nonzero one.
  model = build("isnet", in_channels=1, out_channels=2, width=WIDTH, depth=4, seed=0)
  x = _images((2, 32, 32, 1))
  targets = (_images((2, 32, 32, 2), seed=3) > 0).astype(np.float32)

  @nnx.jit
  def gradients(model):
    def loss_fn(model):
      side_logits, _ = model(x)
      return sum(jnp.mean(jnp.logaddexp(0.0, logits) - targets * logits) for logits in side_logits)
    return nnx.grad(loss_fn)(model)

  flat = {path: np.abs(np.asarray(grad[...])).max() for path, grad in nnx.to_flat_state(gradients(model))}
  assert len(flat) == len(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  before_batch_norm = {path for path in flat if path[-2:] == ("conv_s1", "bias")}
  assert len(before_batch_norm) == (14 + 12 + 10 + 8) + (10 + 12 + 14)   # encoder RSU-7/6/5/4, decoder RSU-5/6/7
  assert [path for path, size in flat.items() if path not in before_batch_norm and not size > 0] == []
  largest = max(flat.values())
  assert all(flat[path] < 1e-4 * largest for path in before_batch_norm)


def test_bfloat16_compute_is_close_to_float32():
  options = dict(in_channels=1, out_channels=2, width=WIDTH, depth=2, seed=0)
  float32_model, bfloat16_model = build("isnet", **options), build("isnet", **options, dtype="bfloat16")
  for model in (float32_model, bfloat16_model):
    model.eval()
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(bfloat16_model)))
  for a, b in zip(jax.tree.leaves(nnx.state(float32_model)), jax.tree.leaves(nnx.state(bfloat16_model))):
    np.testing.assert_array_equal(a, b)
  x = _images((3, 32, 32, 1))                    # the shapes of the batch-independence test: one compile less
  (reference, _), (logits, features) = _forward(float32_model, x), _forward(bfloat16_model, x)
  assert all(f.dtype == jnp.bfloat16 for f in features)
  for expected, actual in zip(reference, logits):
    assert actual.dtype == jnp.float32
    scale = np.abs(np.asarray(expected)).max()
    assert np.abs(np.asarray(actual) - np.asarray(expected)).max() < 0.05 * scale


def test_prediction_is_the_finest_side_output(small_isnet):
  model = small_isnet
  outputs = ([jnp.zeros((1, 8, 8, 2)), jnp.ones((1, 8, 8, 2))], [])
  assert model.prediction(outputs) is outputs[0][0]
  assert ISNet.input_keys == ("image",) and ISNetGTEncoder.input_keys == ("mask",)


def test_the_refinement_head_starts_as_the_reference_prediction_and_then_learns():
  # Built from the same seed, the network with the head has the reference network's parameters plus the head's,
  # whose last conv starts at zero: the same d1 to the last bit. One gradient step on a loss of d1 alone then
  # changes the prediction, and the head's layers and the reference layers below d1 all receive gradients.
  options = dict(in_channels=1, out_channels=2, width=WIDTH, depth=2, seed=0)
  reference, refined = build("isnet", **options), build("isnet", **options, refine_channels=4)
  assert refined.refine_channels == 4 and reference.refine is None
  head_parameters = count_parameters(refined)[0] - count_parameters(reference)[0]
  assert head_parameters == (9 * 3 * 4 + 4) + 2 * 4 + (9 * 4 * 4 + 4) + 2 * 4 + (9 * 4 * 2 + 2)
  for model in (reference, refined):
    model.eval()
  x = _images((2, 33, 33, 1))
  (expected, _), (actual, _) = _forward(reference, x), _forward(refined, x)
  assert actual[0].shape == (2, 33, 33, 2)
  for a, b in zip(expected, actual):
    np.testing.assert_array_equal(a, b)

  targets = (_images((2, 33, 33, 2), seed=3) > 0).astype(np.float32)
  refined.train()

  @nnx.jit
  def gradients(model):
    def loss_fn(model):
      logits = model.prediction(model(x))
      return jnp.mean(jnp.logaddexp(0.0, logits) - targets * logits)
    return nnx.grad(loss_fn)(model)

  grads = gradients(refined)
  assert np.abs(np.asarray(grads.refine.correction.kernel[...])).max() > 0
  assert np.abs(np.asarray(grads.side1.kernel[...])).max() > 0
  refined.refine.correction.kernel[...] -= 0.1 * grads.refine.correction.kernel[...]
  refined.eval()
  assert np.abs(np.asarray(_forward(refined, x)[0][0]) - np.asarray(expected[0])).max() > 1e-4


@pytest.mark.parametrize("options, message", [
    (dict(refine_channels=-1), "refine_channels must be an integer >= 0"),
    (dict(depth=0), "depth must be an integer in 1..6"),
    (dict(depth=7), "depth must be an integer in 1..6"),
    (dict(width=0.0), "width must be a positive number"),
    (dict(in_channels=0), "in_channels must be a positive integer"),
    (dict(dtype=jnp.int8), "dtype must be one of"),
])
def test_bad_options_are_refused_by_name(options, message):
  arguments = dict(in_channels=1, out_channels=1) | options
  with pytest.raises(ValueError, match=message):
    ISNet(arguments.pop("in_channels"), arguments.pop("out_channels"), **arguments, rngs=nnx.Rngs(0))


def test_an_input_with_the_wrong_channels_or_layout_is_refused():
  model = _abstract("isnet", in_channels=1, out_channels=1, width=WIDTH, depth=1)
  with pytest.raises(ValueError, match=r"in_channels=1\) got an image of shape \(2, 1, 16, 16\)"):
    _output_shapes(model, (2, 1, 16, 16))


def test_factory_builds_by_name_and_refuses_options_that_do_not_apply():
  encoder = _abstract("isnet_gt_encoder", in_channels=2, out_channels=2, width=WIDTH, depth=2)
  assert isinstance(encoder, ISNetGTEncoder) and encoder.in_channels == 2
  config = lensjax_config.ModelConfig(name="isnet", width=WIDTH, depth=2, dtype="bfloat16")
  model = nnx.eval_shape(lambda: build_from_config(config, in_channels=1, out_channels=2, seed=0))
  assert isinstance(model, ISNet) and (model.depth, model.width, model.dtype) == (2, WIDTH, jnp.bfloat16)
  with pytest.raises(ValueError, match="unknown model name 'unet'; choose one of isnet, isnet_gt_encoder, msrfnet"):
    build("unet", in_channels=1, out_channels=1, seed=0)
  with pytest.raises(ValueError, match="wiring='paper' is not an option of isnet; choose one of 'original'"):
    build("isnet", in_channels=1, out_channels=1, wiring="paper", seed=0)
  with pytest.raises(ValueError, match="depth=4 is not an option of msrfnet; choose one of 6"):
    build("msrfnet", in_channels=1, out_channels=1, depth=4, seed=0)
  with pytest.raises(ValueError, match="refine_channels=8 is not an option of msrfnet; leave it 0"):
    build("msrfnet", in_channels=1, out_channels=1, refine_channels=8, seed=0)
  with pytest.raises(ValueError, match="exactly one of seed="):
    build("isnet", in_channels=1, out_channels=1)
  with pytest.raises(ValueError, match="dtype='float16' is not an option of isnet; choose one of 'float32', 'bfloat16'"):
    build("isnet", in_channels=1, out_channels=1, dtype="float16", seed=0)


def test_the_same_seed_gives_the_same_initial_parameters():
  options = dict(in_channels=1, out_channels=1, width=WIDTH, depth=1)
  first, again, other = (build("isnet", **options, seed=seed) for seed in (0, 0, 1))
  np.testing.assert_array_equal(first.stage1.rebnconv1.conv_s1.kernel[...], again.stage1.rebnconv1.conv_s1.kernel[...])
  assert not np.array_equal(first.stage1.rebnconv1.conv_s1.kernel[...], other.stage1.rebnconv1.conv_s1.kernel[...])
  bound = 1 / math.sqrt(9 * first.stage1.rebnconv1.conv_s1.in_features)   # PyTorch's default init
  assert np.abs(np.asarray(first.stage1.rebnconv1.conv_s1.kernel[...])).max() <= bound


def test_summary_cli_prints_counts_flops_memory_and_compile_times(capsys):
  summary_cli.main(["isnet", "--params-only"])
  assert "parameters: 44,046,790 trainable + 28,800 BatchNorm statistics" in capsys.readouterr().out
  summary_cli.main(["msrfnet", "--params-only"])      # 1 input channel by default, as the original's lens models
  assert "parameters: 18,591,821 trainable + 3,210 BatchNorm statistics" in capsys.readouterr().out

  options = dict(in_channels=1, out_channels=2, width=WIDTH, depth=1)
  summary = summary_cli.summarize("isnet", **options, size=16, batch=2)
  # Counted by hand: conv_in 1 -> 8 (80), RSU-7 with 8 in, 4 mid, 8 out (3,936 with its BatchNorm scales and
  # offsets; 64 BatchNorm channels), side1 8 -> 2 (146).
  assert (summary["parameters"], summary["batch_norm_statistics"]) == (80 + 3_936 + 146, 2 * 64)
  # Forward + backward + update costs more than the forward alone, and keeps more activations.
  assert 0 < summary["forward_flops"] < summary["train_flops"]
  assert 0 < summary["forward_activation_bytes"] < summary["train_activation_bytes"]
  printed = summary_cli.format_summary("isnet", options | dict(size=16, batch=2), summary)
  for row in ("FLOPs", "activation memory", "trace + compile time"):
    assert row in printed
