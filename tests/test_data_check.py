"""`python -m lensjax.data check PATH`: summaries of good datasets, every problem of bad ones."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lensjax.data import DataError, check
from tests.helpers import datasets as fx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(argv):
  printed = []
  status = check.main([str(a) for a in argv], printed.append)
  return status, "\n".join(printed)


def test_recognises_each_layout(tmp_path):
  fx.write_npy_array(tmp_path / "array", count=10)
  fx.write_npy_folders(tmp_path / "folders")
  fx.write_png_folders(tmp_path / "png")
  fx.write_chaos(tmp_path / "chaos", patients=1)
  fx.write_fits(tmp_path / "cutout.fits", np.ones((4, 4), np.float32))
  assert check.infer_source(tmp_path / "array") == "npy"
  assert check.infer_source(tmp_path / "array" / "images.npy") == "npy"
  assert check.infer_source(tmp_path / "folders") == "npy"
  assert check.infer_source(tmp_path / "png") == "png"
  assert check.infer_source(tmp_path / "chaos") == "chaos"
  assert check.infer_source(tmp_path / "cutout.fits") == "fits"


def test_summary_of_a_good_dataset(tmp_path):
  _, masks = fx.write_npy_array(tmp_path, count=20, size=24)
  status, output = _run([tmp_path])
  assert status == 0, output
  assert "data.source=npy" in output and "no problems found" in output
  rows = {line.split()[0]: line for line in output.splitlines() if line.split()[:1] in (["train"], ["val"],
                                                                                       ["test"])}
  assert rows["train"].split()[1:3] == ["16", "24x24x1"] and rows["val"].split()[1] == "2"
  assert rows["train"].rstrip().endswith("128x128x1")
  assert "lens 0." in rows["train"] and "arcs 0." in rows["train"]
  overall = masks.mean(axis=(0, 1, 2)) / 255
  fractions = [float(rows[s].split("lens ")[1].split(",")[0]) for s in ("train", "val", "test")]
  np.testing.assert_allclose(np.average(fractions, weights=[16, 2, 2]), overall[0], atol=1e-4)


def test_lists_every_problem_with_its_file_and_index_and_fails(tmp_path):
  written = fx.write_png_folders(tmp_path, counts={"train": 4, "val": 2, "test": 2})
  (tmp_path / "train" / "masks" / "slice_001.png").unlink()                     # image without mask
  mask = written["val"][1][2].copy()
  mask[3, 3] = 77
  Image.fromarray(mask).save(tmp_path / "val" / "masks" / "slice_001.png")      # value outside the set
  (tmp_path / "test" / "images" / "slice_000.png").write_bytes(b"\x89PNG broken")   # unreadable
  status, output = _run([tmp_path, "--config.data.targets=foreground"])
  assert status == 1
  assert "3 problem(s)" in output
  assert "train/images/slice_001.png: image has no mask" in output
  assert "val/masks/slice_001.png: mask values 77 are not allowed" in output
  assert "test/images/slice_000.png: is not a readable image" in output
  # The split that could be opened is still summarised.
  assert any(line.startswith("val ") for line in output.splitlines())


def test_finds_every_nan_image_not_just_the_first(tmp_path):
  images_written, _ = fx.write_npy_array(tmp_path, count=10)
  images_written[[2, 7], 0, 0, 0] = np.nan
  np.save(tmp_path / "images.npy", images_written)
  status, output = _run([tmp_path, "--config.data.split_fractions=1,0,0"])
  assert status == 1
  assert "images.npy[2]: 1 NaN" in output and "images.npy[7]: 1 NaN" in output


def test_bad_arguments_and_unknown_layouts_are_explained(tmp_path):
  assert _run([])[0] == 2
  with pytest.raises(DataError, match="cannot tell the dataset format.*--config.data.source"):
    _run([tmp_path])
  with pytest.raises(DataError, match="no such file or folder"):
    _run([tmp_path / "missing"])


def test_runs_as_a_module_from_the_command_line(tmp_path):
  fx.write_fits(tmp_path / "cube.fits", np.ones((3, 8, 8), np.float32))
  result = subprocess.run([sys.executable, "-m", "lensjax.data", "check", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "test   3" in result.stdout and "no masks" in result.stdout


def test_a_problem_every_split_meets_is_listed_once_with_a_count(tmp_path):
  np.save(tmp_path / "images.npy", np.zeros((20, 8, 8), np.float32))           # a header problem
  status, output = _run([tmp_path])
  assert status == 1 and "1 problem(s):" in output
  (line,) = [line for line in output.splitlines() if "has shape (20, 8, 8)" in line]
  assert line.endswith("(found 3 times)")
  fx.write_npy_array(tmp_path, count=20)
  images = tmp_path / "images.npy"
  os.truncate(images, images.stat().st_size - 100)                              # a cut-short file
  status, output = _run([tmp_path])
  assert status == 1 and "1 problem(s):" in output
  assert len([line for line in output.splitlines() if "images.npy: is cut short" in line]) == 1


def test_says_which_masks_are_used_and_warns_of_a_misnamed_mask_file(tmp_path):
  fx.write_npy_array(tmp_path, count=20)
  status, output = _run([tmp_path])
  assert status == 0 and "masks: masks.npy" in output.splitlines()
  (tmp_path / "masks.npy").rename(tmp_path / "mask.npy")
  status, output = _run([tmp_path])
  assert status == 0
  assert "masks: made from the lens and arc channels by the percentile rule (no masks.npy)" in output
  assert f"warning: {tmp_path / 'mask.npy'}: not read; masks are read from {tmp_path / 'masks.npy'} only" in output
