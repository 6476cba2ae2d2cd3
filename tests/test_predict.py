"""`python -m lensjax.predict` on arrays, PNG and FITS files of any size, and clear errors for bad inputs."""

import json

import numpy as np
import pytest
from PIL import Image

from lensjax import models, predict
from lensjax.data.errors import DataError
from lensjax.models import import_torch
from tests.helpers import datasets as fx
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return tiny_run.trained_run(tmp_path_factory)


def _write_inputs(folder):
  rng = np.random.default_rng(0)
  (folder / "more").mkdir(parents=True)
  np.save(folder / "cube.npy", rng.gamma(2.0, 10.0, (2, 50, 70)).astype(np.float32))
  Image.fromarray((rng.random((61, 61, 3)) * 255).astype(np.uint8)).save(folder / "more" / "rgb.png")
  fx.write_fits(folder / "more" / "cutout.fits", rng.normal(100.0, 5.0, (40, 40)).astype(np.float32))
  (folder / "more" / "notes.txt").write_text("ignored: not an image kind predict reads\n")
  return {"cube_0": (50, 70), "cube_1": (50, 70), "rgb": (61, 61), "cutout": (40, 40)}


def _check_outputs(out, sizes, targets=("lens", "arcs")):
  summary = json.loads((out / "predictions.json").read_text())
  assert sorted(i["name"] for i in summary["images"]) == sorted(sizes)
  for entry in summary["images"]:
    name, size = entry["name"], sizes[entry["name"]]
    masks = np.load(out / f"{name}.npy")
    probabilities = np.load(out / f"{name}_probabilities.npy")
    assert masks.shape == probabilities.shape == (*size, len(targets)) and masks.dtype == np.uint8
    assert probabilities.dtype == np.float32 and 0 <= probabilities.min() and probabilities.max() <= 1
    np.testing.assert_array_equal(masks, probabilities >= 0.5)
    for k, target in enumerate(targets):
      with Image.open(out / f"{name}_{target}.png") as png:
        np.testing.assert_array_equal(np.asarray(png), masks[..., k] * 255)
      assert entry["area_pixels"][target] == masks[..., k].sum()
    with Image.open(out / f"{name}_overlay.png") as overlay:
      assert overlay.mode == "RGB" and overlay.width % size[1] == 0 and overlay.height % size[0] == 0


@pytest.mark.slow
def test_predict_writes_masks_probabilities_and_overlays_at_each_images_own_size(run_dir, tmp_path,
                                                                                  tmp_path_factory):
  sizes = _write_inputs(tmp_path / "inputs")
  out = tmp_path / "out"
  code, output = tiny_run.run(
      "lensjax.predict", [str(run_dir), str(tmp_path / "inputs" / "cube.npy"), str(tmp_path / "inputs" / "more"),
                          "--out", str(out), "--batch-size", "2"],
      tiny_run.compile_cache(tmp_path_factory), tmp_path / "predict.log")
  assert code == 0, output[-3000:]
  assert "4 images" in output and "padded size 64x64" in output and "padded size 96x96" in output
  _check_outputs(out, sizes)


@pytest.mark.slow
def test_predict_runs_imported_isnet_weights_with_a_named_config(tmp_path, tmp_path_factory):
  model = models.build("isnet", in_channels=1, out_channels=2, width=0.0625, depth=2, seed=3)
  import_torch.save_isnet_checkpoint(model, tmp_path / "weights", source="test")
  sizes = {"cutout": (40, 40)}
  fx.write_fits(tmp_path / "cutout.fits", np.random.default_rng(1).random((40, 40)).astype(np.float32))
  code, output = tiny_run.run(
      "lensjax.predict", [str(tmp_path / "weights"), str(tmp_path / "cutout.fits"), "--out", str(tmp_path / "out"),
                          "--config", "default", "--config.data.pad_to=64"],
      tiny_run.compile_cache(tmp_path_factory), tmp_path / "predict.log")
  assert code == 0, output[-3000:]
  assert "imported weights" in output and "padded size 64x64" in output
  _check_outputs(tmp_path / "out", sizes)


def test_bad_inputs_stop_the_command_naming_the_file_before_any_model_is_loaded(tmp_path, capsys):
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  with pytest.raises(SystemExit) as exit_info:
    predict.main([str(tmp_path / "no_such_run"), str(tmp_path / "broken.png"), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  assert f"{tmp_path / 'broken.png'}: is not a readable image" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, array, message", [
    ("four_channels.npy", np.zeros((2, 8, 8, 4), np.float32), "has shape (2, 8, 8, 4); expected (H, W), (N, H, W)"),
    ("one_dimensional.npy", np.zeros(5, np.float32), "has shape (5,)"),
    ("text.npy", np.array(["a", "b"]), "images have dtype <U1"),
    ("empty.npy", np.zeros((0, 8, 8), np.float32), "holds no image"),
])
def test_malformed_arrays_are_named(tmp_path, name, array, message):
  np.save(tmp_path / name, array)
  with pytest.raises(DataError, match=None) as error:
    predict.find_inputs([tmp_path / name])
  assert f"{tmp_path / name}: " in str(error.value) and message in str(error.value)


def test_unsupported_files_and_empty_folders_are_named(tmp_path):
  (tmp_path / "photo.jpg").write_bytes(b"jpeg")
  with pytest.raises(DataError, match="photo.jpg: not an input lensjax reads"):
    predict.find_inputs([tmp_path / "photo.jpg"])
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="empty: no .npy, .png or FITS files in this folder"):
    predict.find_inputs([tmp_path / "empty"])
  with pytest.raises(DataError, match="missing.npy: no such file or folder"):
    predict.find_inputs([tmp_path / "missing.npy"])


def test_nan_pixels_are_reported_with_the_file_and_index(tmp_path):
  cube = np.ones((3, 8, 8), np.float32)
  cube[1, 2, 2] = np.nan
  np.save(tmp_path / "cube.npy", cube)
  found = predict.find_inputs([tmp_path / "cube.npy"])
  assert [i.name for i in found] == ["cube_0", "cube_1", "cube_2"] and found[0].read().shape == (8, 8, 1)
  with pytest.raises(DataError, match=r"cube.npy\[1\]: 1 NaN or infinite pixels"):
    found[1].read()


def test_padding_reaches_a_multiple_of_32_and_at_least_the_runs_pad_to():
  from lensjax.data import transforms
  assert predict.padded_side(125, 125, transforms.Preprocessor(pad_to=128)) == 128
  assert predict.padded_side(50, 70, transforms.Preprocessor(pad_to=64)) == 96
  assert predict.padded_side(300, 20, transforms.Preprocessor(pad_to=0)) == 320
  assert predict.padded_side(512, 512, transforms.Preprocessor(resize_to=256, pad_to=0)) == 256
