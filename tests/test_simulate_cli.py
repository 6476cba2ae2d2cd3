"""`python -m lensjax.simulate`: the dataset files, their agreement with `Simulator`, and refusals."""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from lensjax import simulate
from lensjax.config import SimConfig
from lensjax.sim import PARAM_KEYS, Simulator, masks, noise_model

ARGS = ["--size", "24", "--pixel-scale", "0.1", "--seed", "3", "--lens-fraction", "0.6",
        "--config.sim.render_chunk=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("sim") / "set"
  assert simulate.main(["--n", "10", "--out", str(out), "--chunk", "4"] + ARGS) == 0
  return out


def test_writes_the_original_format(dataset):
  images = np.load(dataset / "images.npy")
  mask_array = np.load(dataset / "masks.npy")
  assert images.shape == (10, 24, 24, 3) and images.dtype == np.float32
  assert mask_array.shape == (10, 24, 24, 2) and mask_array.dtype == np.uint8
  with open(dataset / "params.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert len(rows) == 10 and tuple(rows[0]) == ("index",) + PARAM_KEYS
  assert [int(row["index"]) for row in rows] == list(range(10))
  saved = json.loads((dataset / "sim_config.json").read_text())
  assert saved["seed"] == 3 and saved["sim"]["image_size"] == 24 and saved["sim"]["lens_fraction"] == 0.6


def test_files_hold_the_simulators_images_and_the_numpy_mask_rule(dataset):
  images = np.load(dataset / "images.npy")
  config = SimConfig(image_size=24, pixel_scale=0.1, lens_fraction=0.6, render_chunk=4)
  expected = Simulator(config, seed=3).render(np.arange(10))
  np.testing.assert_array_equal(images[..., 0], expected["observed"])
  np.testing.assert_array_equal(images[..., 1], expected["lens"])
  np.testing.assert_array_equal(images[..., 2], expected["arcs"])
  # The data pipeline recomputes masks from the saved channels with the numpy rule: the same pixels.
  mask_array = np.load(dataset / "masks.npy")
  np.testing.assert_array_equal(mask_array[..., 0], masks.percentile_mask(images[..., 1], 99.0))
  np.testing.assert_array_equal(mask_array[..., 1], masks.percentile_mask(images[..., 2], 95.0))
  with open(dataset / "params.csv") as handle:
    rows = list(csv.DictReader(handle))
  np.testing.assert_allclose([float(row["theta_E"]) for row in rows], expected["params"]["theta_E"], rtol=1e-8)
  non_lenses = [i for i, row in enumerate(rows) if row["is_lens"] == "0"]
  assert non_lenses and mask_array[non_lenses, ..., 1].sum() == 0 and images[non_lenses, ..., 2].max() == 0


def test_the_harder_set_options_set_the_source_model_and_the_crowded_field(tmp_path):
  out = tmp_path / "hard"
  assert simulate.main(["--n", "4", "--out", str(out), "--source", "irregular", "--crowded", "--noise", "jwst"]
                       + ARGS) == 0
  saved = json.loads((out / "sim_config.json").read_text())["sim"]
  assert saved["source_model"] == "irregular" and saved["crowd_galaxies_mean"] == 10.0
  assert saved["noise"] == "poisson" and saved["sky_brightness"] == 22.5 and saved["num_exposures"] == 10
  expected = Simulator(SimConfig(**saved), seed=3).render(np.arange(4))
  np.testing.assert_array_equal(np.load(out / "images.npy")[..., 0], expected["observed"])
  # A deep F115W background in NIRCam's 0.031" pixels: about 0.9 counts, sky and read noise of similar size.
  noise = noise_model(SimConfig(**{**saved, "pixel_scale": 0.031}))
  assert 0.8 < noise.background_sigma < 1.0
  assert 0.3 < noise.sky_electrons / noise.read_noise_electrons**2 < 1.0


def test_refuses_to_overwrite_without_force(dataset, capsys):
  before = (dataset / "images.npy").stat().st_mtime_ns
  with pytest.raises(SystemExit) as exit_info:
    simulate.main(["--n", "2", "--out", str(dataset)] + ARGS)
  assert exit_info.value.code == 2
  assert "already holds images.npy" in capsys.readouterr().err
  assert (dataset / "images.npy").stat().st_mtime_ns == before
  assert simulate.main(["--n", "2", "--out", str(dataset), "--force"] + ARGS) == 0
  assert np.load(dataset / "images.npy").shape[0] == 2


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be a positive number of images"),
    (["--n", "2", "--size", "0"], r"config.sim.image_size \(option --size\) must lie in \[1, 4096\]; got 0"),
    (["--n", "2", "--pixel-scale", "-0.1"], r"config.sim.pixel_scale \(option --pixel-scale\) must lie in"),
    (["--n", "2", "--noise", "speckle"], "argument --noise: invalid choice: 'speckle'"),
    (["--n", "2", "--lens-fraction", "1.2"], r"lens_fraction \(option --lens-fraction\) must lie in \[0, 1\]"),
    (["--n", "2", "--seed", "-1"], r"--seed must lie in \[0, 2\^32\)"),
    (["--n", "2", "--config.sim.psf=airy"], "expected one of 'none', 'gaussian', 'moffat'"),
    (["--n", "2", "--source", "vela"], "argument --source: invalid choice: 'vela'"),
    (["--n", "2", "--config.sim.crowd_galaxies_mean=-1"], r"crowd_galaxies_mean \(option --crowded\) must lie in"),
    (["--n", "2", "--config.train.batch_size=3"], r"only --config.sim.\* can be changed here"),
    (["--n", "2", "--nosie", "gaussian"], "unrecognized arguments: --nosie"),
])
def test_bad_options_give_a_clear_error(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as exit_info:
    simulate.main(argv + ["--out", str(tmp_path / "x")])
  assert exit_info.value.code == 2
  assert re.search(message, capsys.readouterr().err)
  assert not (tmp_path / "x").exists()


def test_runs_as_a_module(tmp_path):
  result = subprocess.run([sys.executable, "-m", "lensjax.simulate", "--n", "3", "--out", str(tmp_path / "m"),
                           "--noise", "gaussian"] + ARGS, capture_output=True, text=True, check=True)
  assert "wrote 3 images" in result.stdout
  images = np.load(tmp_path / "m" / "images.npy")
  assert (images[..., 0] != images[..., 1] + images[..., 2]).any()   # the observed channel is noisy
