"""PyTorch weight import: parity with an independent PyTorch ISNetDIS, refusal of state_dicts that do not fit,
and the Orbax checkpoint written by `python -m lensjax.models.import_torch`.

The PyTorch network (`benchmarks/torch_models.py`) is written from the spec, not from lensjax's code; it
gets random weights and non-trivial BatchNorm statistics, and both run in eval mode in float32.
"""

import json
import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from lensjax.models import count_parameters, import_torch
from benchmarks.torch_models import ISNetDIS, randomize_batch_norm_

WIDTH = 0.125
RELATIVE_TOLERANCE = 1e-4


class NotATensor:
  """A pickled object that `torch.load(weights_only=True)` must refuse to rebuild."""


@nnx.jit
def _forward(model, x):
  return model(x)


def _reference_outputs(reference: torch.nn.Module, images: np.ndarray) -> list[np.ndarray]:
  """The PyTorch side logits then features, as NHWC arrays."""
  with torch.no_grad():
    logits, features = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
  return [t.numpy().transpose(0, 2, 3, 1) for t in logits + features]


def _assert_matches(outputs, expected: list[np.ndarray]) -> None:
  logits, features = outputs
  names = [f"d{i}" for i in range(1, 7)] + ["hx1d", "hx2d", "hx3d", "hx4d", "hx5d", "hx6"]
  for name, actual, wanted in zip(names, list(logits) + list(features), expected, strict=True):
    assert actual.shape == wanted.shape, name
    error = np.abs(np.asarray(actual) - wanted).max() / np.abs(wanted).max()
    assert error < RELATIVE_TOLERANCE, f"{name}: max error {error:.2e} of the largest value"


@pytest.fixture(scope="module")
def reference() -> ISNetDIS:
  torch.manual_seed(0)
  return randomize_batch_norm_(ISNetDIS(3, 2, width=WIDTH), seed=1).eval()


@pytest.fixture(scope="module")
def state_dict(reference) -> dict[str, np.ndarray]:
  return {name: tensor.numpy().copy() for name, tensor in reference.state_dict().items()}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
  return np.random.default_rng(0).standard_normal((2, 45, 45, 3)).astype(np.float32)   # odd: ceil pools


@pytest.fixture(scope="module")
def imported(state_dict):
  model = import_torch.isnet_from_state_dict(state_dict, width=WIDTH)
  model.eval()
  # Committed to the device, as a restored checkpoint is, so both share one compiled forward.
  nnx.update(model, jax.device_put(nnx.state(model), jax.devices()[0]))
  return model


def test_imported_weights_reproduce_the_pytorch_outputs_and_features(reference, imported, images):
  assert (imported.in_channels, imported.out_channels) == (3, 2)
  assert count_parameters(imported)[0] == sum(p.numel() for p in reference.parameters())
  _assert_matches(_forward(imported, images), _reference_outputs(reference, images))


@pytest.mark.slow
def test_full_width_import_reproduces_pytorch_at_a_small_input():
  torch.manual_seed(2)
  reference = randomize_batch_norm_(ISNetDIS(1, 1), seed=3).eval()
  model = import_torch.isnet_from_state_dict({k: v.numpy() for k, v in reference.state_dict().items()})
  assert count_parameters(model) == (44_045_638, 28_800)
  model.eval()
  images = np.random.default_rng(1).standard_normal((1, 32, 32, 1)).astype(np.float32)
  _assert_matches(_forward(model, images), _reference_outputs(reference, images))


@pytest.mark.parametrize("edit, message", [
    ("shape", r"'stage3\.rebnconv2\.conv_s1\.weight' has shape \(9, 8, 3, 3\), but ISNetDIS\(in_ch=3, "
              r"out_ch=2\) at width 0\.125 expects \(8, 8, 3, 3\)"),
    ("missing", r"missing entry 'stage5d\.rebnconv3d\.bn_s1\.running_var' \(shape \(32,\)\)"),
    ("extra", r"unexpected entry 'outconv\.weight'"),
])
def test_a_state_dict_that_does_not_fit_is_refused_with_the_first_mismatch(state_dict, edit, message):
  edited = dict(state_dict)
  if edit == "shape":
    edited["stage3.rebnconv2.conv_s1.weight"] = np.zeros((9, 8, 3, 3), np.float32)
  elif edit == "missing":
    del edited["stage5d.rebnconv3d.bn_s1.running_var"]
  else:
    edited["outconv.weight"] = np.zeros((1, 12, 1, 1), np.float32)    # U^2-Net's fused head; not in IS-Net
  with pytest.raises(ValueError, match=message):
    import_torch.isnet_from_state_dict(edited, width=WIDTH, source="model.pth")


def test_a_state_dict_of_another_network_is_refused_before_building_anything():
  with pytest.raises(ValueError, match="model.pth: no 4-d 'conv_in.weight'.*not an ISNetDIS state_dict"):
    import_torch.isnet_from_state_dict({"conv1.weight": np.zeros((8, 3, 3, 3))}, source="model.pth")


def test_the_command_writes_a_checkpoint_that_restores_the_same_model(tmp_path, reference, imported, images,
                                                                       capsys):
  # As a training script saves it: nested under "state_dict", with nn.DataParallel's "module." prefix.
  pth = tmp_path / "isnet.pth"
  torch.save({"epoch": 7, "state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, pth)
  out = tmp_path / "checkpoint"
  import_torch.main([str(pth), "--out", str(out), "--width", str(WIDTH)])
  assert f"wrote {out}" in capsys.readouterr().out
  assert json.loads((out / "model.json").read_text()) | {"source": ""} == {
      "name": "isnet", "in_channels": 3, "out_channels": 2, "width": WIDTH, "depth": 6, "source": ""}

  restored = import_torch.load_isnet_checkpoint(out)
  for (path, expected), (restored_path, value) in zip(nnx.to_flat_state(nnx.state(imported)),
                                                      nnx.to_flat_state(nnx.state(restored)), strict=True):
    assert path == restored_path
    np.testing.assert_array_equal(np.asarray(value[...]), np.asarray(expected[...]), err_msg=str(path))
  restored.eval()
  _assert_matches(_forward(restored, images), _reference_outputs(reference, images))

  with pytest.raises(SystemExit):
    import_torch.main([str(pth), "--out", str(out), "--width", str(WIDTH)])
  assert "exists and is not an empty directory" in capsys.readouterr().err


def test_a_pth_holding_pickled_objects_is_refused_unread(tmp_path, reference, capsys):
  pth = tmp_path / "with_code.pth"
  torch.save({"state_dict": reference.state_dict(), "config": NotATensor()}, pth)
  with pytest.raises(SystemExit):
    import_torch.main([str(pth), "--out", str(tmp_path / "checkpoint")])
  assert "refused by torch.load(weights_only=True)" in capsys.readouterr().err
  assert not (tmp_path / "checkpoint").exists()


def _truncated_pth(tmp_path, reference):
  whole = tmp_path / "whole.pth"
  torch.save(reference.state_dict(), whole)
  cut = tmp_path / "cut.pth"
  cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
  return cut


@pytest.mark.parametrize("contents, message", [
    (b"", r"is empty \(0 bytes\)"),
    (b"<html>404 Not Found</html>" * 40, "is not a PyTorch .pth file"),
    (_truncated_pth, "cannot be read as a .pth file, it is cut short or damaged"),
])
def test_an_empty_garbage_or_cut_short_file_is_one_error_naming_it(tmp_path, reference, capsys, contents, message):
  if callable(contents):
    pth = contents(tmp_path, reference)
  else:
    pth = tmp_path / "weights.pth"
    pth.write_bytes(contents)
  with pytest.raises(SystemExit) as stopped:
    import_torch.main([str(pth), "--out", str(tmp_path / "checkpoint")])
  error = capsys.readouterr().err
  assert stopped.value.code == 2 and error.startswith(f"error: {pth}: ") and error.count("\n") == 1
  assert re.search(message, error) and "Traceback" not in error
  assert not (tmp_path / "checkpoint").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, reference, capsys, bad):
  weights = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
  weights["stage2.rebnconv1.conv_s1.weight"][0, 0, 1, 1] = bad
  pth = tmp_path / "diverged.pth"
  torch.save(weights, pth)
  with pytest.raises(SystemExit) as stopped:
    import_torch.main([str(pth), "--out", str(tmp_path / "checkpoint"), "--width", str(WIDTH)])
  assert stopped.value.code == 2
  assert f"{pth}: 'stage2.rebnconv1.conv_s1.weight' holds 1 NaN or infinite values" in capsys.readouterr().err
  assert not (tmp_path / "checkpoint").exists()
