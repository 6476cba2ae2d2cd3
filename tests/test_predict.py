"""`python -m lensjax.predict` on arrays, PNG and FITS files of any size: masks, FITS with the input's WCS, the
catalog, tiles, never over an input, and clear errors for bad inputs."""

import csv
import json

import numpy as np
import pytest
from astropy import wcs as astropy_wcs
from astropy.io import fits as astropy_fits
from PIL import Image

import lensjax
from lensjax import evaluate, models, predict
from lensjax.data import transforms
from lensjax.data.errors import DataError
from lensjax.models import import_torch
from tests.helpers import datasets as fx
from tests.helpers import tiny_run


TARGETS = ("lens", "arcs")
# Tiles see less context at their inner edges than the whole image does; the linear blend keeps the difference
# small. Measured on the tiny run (3 x 3 tiles of 64 px): mean |difference| 0.021 to 0.022 (largest 0.20),
# masks the same on 99.8 % of the pixels.
TILED_MEAN_DIFFERENCE = 0.04
TILED_MASK_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return tiny_run.trained_run(tmp_path_factory)


def _write_inputs(folder):
  rng = np.random.default_rng(0)
  (folder / "more").mkdir(parents=True)
  np.save(folder / "cube.npy", rng.gamma(2.0, 10.0, (2, 50, 70)).astype(np.float32))
  np.save(folder / "more" / "strip.npy", rng.gamma(2.0, 10.0, (300, 20)).astype(np.float32))
  Image.fromarray((rng.random((61, 61, 3)) * 255).astype(np.uint8)).save(folder / "more" / "rgb.png")
  fx.write_fits(folder / "more" / "cutout.fits", rng.normal(100.0, 5.0, (40, 40)).astype(np.float32))
  (folder / "more" / "notes.txt").write_text("ignored: not an image kind predict reads\n")
  return {"cube_0": (50, 70), "cube_1": (50, 70), "strip": (300, 20), "rgb": (61, 61), "cutout": (40, 40)}


def _arrays(out, name, fits_file=None, plane=None):
  """(masks, probabilities) (H, W, K) of image `name`: from its .npy files, or its planes of a FITS file."""
  if fits_file is None:
    return np.load(out / f"{name}_masks.npy"), np.load(out / f"{name}_probabilities.npy")
  with astropy_fits.open(out / fits_file) as hdus:
    masks = np.stack([hdus[f"{t.upper()}_MASK"].data for t in TARGETS], axis=-1)
    probabilities = np.stack([hdus[f"{t.upper()}_PROB"].data for t in TARGETS], axis=-1)
  return (masks, probabilities) if plane is None else (masks[plane], probabilities[plane])


def _check_outputs(out, sizes, fits_files=None):
  """Every image's masks, probabilities, PNGs and catalog rows agree; fits_files: name -> (file, plane)."""
  fits_files = fits_files or {}
  summary = json.loads((out / "predictions.json").read_text())
  with open(out / "predictions.csv") as file:
    rows = {row["name"]: row for row in csv.DictReader(file)}
  assert sorted(i["name"] for i in summary["images"]) == sorted(sizes) == sorted(rows)
  for entry in summary["images"]:
    name, size = entry["name"], sizes[entry["name"]]
    masks, probabilities = _arrays(out, name, *fits_files.get(name, ()))
    assert masks.shape == probabilities.shape == (*size, len(TARGETS)) and masks.dtype == np.uint8
    assert probabilities.dtype == np.float32 and 0 <= probabilities.min() and probabilities.max() <= 1
    np.testing.assert_array_equal(masks, probabilities >= 0.5)
    for k, target in enumerate(TARGETS):
      with Image.open(out / f"{name}_{target}.png") as png:
        np.testing.assert_array_equal(np.asarray(png), masks[..., k] * 255)
      assert entry["area_pixels"][target] == masks[..., k].sum()
    assert int(rows[name]["arc_area_px"]) == masks[..., 1].sum() == entry["arc_area_px"]
    with Image.open(out / f"{name}_overlay.png") as overlay:
      assert overlay.mode == "RGB" and overlay.width % size[1] == 0 and overlay.height % size[0] == 0
  return rows


@pytest.mark.slow
def test_predict_writes_masks_probabilities_and_overlays_at_each_images_own_size(run_dir, tmp_path,
                                                                                  tmp_path_factory):
  sizes = _write_inputs(tmp_path / "inputs")
  out = tmp_path / "out"
  code, output = tiny_run.run(
      "lensjax.predict", [str(run_dir), str(tmp_path / "inputs" / "cube.npy"), str(tmp_path / "inputs" / "more"),
                          "--out", str(out), "--batch-size", "2", "--tile", "128", "--lenstronomy-mask",
                          "--mask-dilation", "2", "--sheet", "2"],
      tiny_run.compile_cache(tmp_path_factory), tmp_path / "predict.log")
  assert code == 0, output[-3000:]
  # Each side is padded on its own (50 x 70 -> 64 x 96, not 96 x 96); the 300 x 20 strip (320 x 64 padded)
  # is predicted in 4 overlapping tiles of 128 x 64.
  assert "5 images" in output and "in 64x64 network inputs" in output and "in 64x96 network inputs" in output
  assert "1/1 images in 128x64 network inputs (4 tiles)" in output
  _check_outputs(out, sizes, fits_files={"cutout": ("cutout.fits", None)})
  assert not (out / "cutout_masks.npy").exists()
  for name, size in sizes.items():
    likelihood = np.load(out / f"{name}_likelihood_mask.npy")
    masks, _ = _arrays(out, name, *({"cutout": ("cutout.fits",)}.get(name, ())))
    assert likelihood.dtype == bool and likelihood.shape == size
    assert likelihood[masks[..., 1] > 0].all() and likelihood.sum() >= masks[..., 1].sum()
  with Image.open(out / "sheet.png") as sheet:
    assert sheet.format == "PNG" and sheet.width > 400


@pytest.mark.slow
def test_predict_runs_imported_isnet_weights_with_a_named_config(tmp_path, tmp_path_factory):
  model = models.build("isnet", in_channels=1, out_channels=2, width=0.0625, depth=2, seed=3)
  import_torch.save_isnet_checkpoint(model, tmp_path / "weights", source="test")
  sizes = {"cutout": (40, 40)}
  np.save(tmp_path / "cutout.npy", np.random.default_rng(1).random((40, 40)).astype(np.float32))
  code, output = tiny_run.run(
      "lensjax.predict", [str(tmp_path / "weights"), str(tmp_path / "cutout.npy"), "--out", str(tmp_path / "out"),
                          "--config", "default", "--config.data.pad_to=64", "--format", "fits"],
      tiny_run.compile_cache(tmp_path_factory), tmp_path / "predict.log")
  assert code == 0, output[-3000:]
  assert "imported weights" in output and "in 64x64 network inputs" in output
  _check_outputs(tmp_path / "out", sizes, fits_files={"cutout": ("cutout.fits", None)})
  with astropy_fits.open(tmp_path / "out" / "cutout.fits") as hdus:
    assert hdus["ARCS_MASK"].header["LJSTEP"] == "imported" and "CTYPE1" not in hdus["ARCS_MASK"].header


@pytest.mark.slow
def test_predict_never_writes_over_its_inputs(run_dir, tmp_path, tmp_path_factory):
  # Issue 13's repro: --out is the input folder. The masks once went to d/a.npy, over the memory-mapped input.
  folder = tmp_path / "d"
  folder.mkdir()
  rng = np.random.default_rng(5)
  inputs = {name: rng.random((125, 125)).astype("f4") for name in "ab"}
  for name, array in inputs.items():
    np.save(folder / f"{name}.npy", array)
  cache = tiny_run.compile_cache(tmp_path_factory)
  code, output = tiny_run.run("lensjax.predict", [str(run_dir), str(folder), "--out", str(folder)], cache,
                              tmp_path / "first.log")
  assert code == 0, output[-3000:]
  for name, array in inputs.items():
    np.testing.assert_array_equal(np.load(folder / f"{name}.npy"), array)
    assert np.load(folder / f"{name}_masks.npy").shape == (125, 125, 2)
  # A second run reads the first run's outputs as inputs, and a_masks.npy would be written over: refused.
  listing = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
  code, output = tiny_run.run("lensjax.predict", [str(run_dir), str(folder), "--out", str(folder)], cache,
                              tmp_path / "second.log")
  assert code == 2, output[-3000:]
  assert (f"{folder / 'a_lens.png'}: predict would write this output over the input {folder / 'a_lens.png'}; "
          "choose an --out folder that holds no input") in output
  assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == listing
  assert not list(folder.glob(".*.tmp"))


def _sky_header(shape, extra_axis=False):
  """A real TAN WCS (0.1 arcsec pixels, rotated 30 degrees) and instrument cards, for an image of `shape`."""
  header = astropy_fits.Header()
  angle, scale = np.radians(30.0), 0.1 / 3600
  header.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 150.1163, "CRVAL2": 2.2058,
                 "CRPIX1": shape[-1] / 2 + 0.5, "CRPIX2": shape[-2] / 2 - 3.0, "CUNIT1": "deg", "CUNIT2": "deg",
                 "CD1_1": -scale * np.cos(angle), "CD1_2": scale * np.sin(angle),
                 "CD2_1": scale * np.sin(angle), "CD2_2": scale * np.cos(angle),
                 "RADESYS": "ICRS", "EQUINOX": 2000.0, "TELESCOP": "JWST", "FILTER": "F115W", "EXPTIME": 1200.0})
  if extra_axis:
    header.update({"CTYPE3": "FREQ", "CRVAL3": 1.4e9, "CDELT3": 1e6, "CRPIX3": 1.0, "CUNIT3": "Hz"})
  return header


@pytest.mark.slow
def test_fits_outputs_keep_the_inputs_wcs_shape_and_header(run_dir, tmp_path, tmp_path_factory):
  rng = np.random.default_rng(2)
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  image = (100 + 50 * fx.lens_like_images(1, 60, 3)[0, :, :, 0]).astype(np.float32)[:, :56]
  cube = rng.normal(100.0, 5.0, (3, 48, 48)).astype(np.float32)
  astropy_fits.PrimaryHDU(image, header=_sky_header(image.shape)).writeto(inputs / "sky.fits")
  astropy_fits.PrimaryHDU(cube, header=_sky_header(cube.shape, extra_axis=True)).writeto(inputs / "cube.fits")
  fx.write_fits(inputs / "plain.fits", rng.normal(100.0, 5.0, (40, 40)).astype(np.float32))
  out = tmp_path / "out"
  code, output = tiny_run.run("lensjax.predict", [str(run_dir), str(inputs), "--out", str(out),
                                                  "--pixel-scale", "0.05", "--threshold", "0.4"],
                              tiny_run.compile_cache(tmp_path_factory), tmp_path / "predict.log")
  assert code == 0, output[-3000:]
  summary = json.loads((out / "predictions.json").read_text())
  step = int(summary["checkpoint"].split(",")[0].removeprefix("step "))
  with open(out / "predictions.csv") as file:
    rows = {row["name"]: row for row in csv.DictReader(file)}

  with astropy_fits.open(inputs / "sky.fits") as given, astropy_fits.open(out / "sky.fits") as written:
    assert [h.name for h in written] == ["PRIMARY", "LENS_MASK", "LENS_PROB", "ARCS_MASK", "ARCS_PROB"]
    sky_in = astropy_wcs.WCS(given[0].header)
    for hdu in written[1:]:
      assert hdu.data.shape == image.shape
      for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
                  "RADESYS", "TELESCOP", "FILTER", "EXPTIME"):
        assert hdu.header[key] == given[0].header[key], key
      assert (hdu.header["LJVERSN"], hdu.header["LJRUNDIR"], hdu.header["LJSTEP"], hdu.header["LJTHRESH"]) == (
          lensjax.__version__, str(run_dir), step, 0.4)
      # pixel <-> sky of every pixel of the mask is the input's, both ways.
      rows_, columns = np.indices(hdu.data.shape)
      sky_out = astropy_wcs.WCS(hdu.header)
      ra_in, dec_in = sky_in.wcs_pix2world(columns.ravel(), rows_.ravel(), 0)
      ra_out, dec_out = sky_out.wcs_pix2world(columns.ravel(), rows_.ravel(), 0)
      np.testing.assert_array_equal(ra_out, ra_in)
      np.testing.assert_array_equal(dec_out, dec_in)
      x, y = sky_out.wcs_world2pix(ra_in, dec_in, 0)
      np.testing.assert_allclose(x, columns.ravel(), atol=1e-6)
      np.testing.assert_allclose(y, rows_.ravel(), atol=1e-6)
    np.testing.assert_array_equal(written["ARCS_MASK"].data, written["ARCS_PROB"].data >= 0.4)
    row = rows["sky"]
    ra, dec = sky_in.wcs_pix2world([[float(row["lens_x_px"]), float(row["lens_y_px"])]], 0)[0]
    assert float(row["lens_ra_deg"]) == pytest.approx(ra, abs=1e-9)
    assert float(row["lens_dec_deg"]) == pytest.approx(dec, abs=1e-9)
    assert float(row["pixel_scale_arcsec"]) == pytest.approx(0.1, rel=1e-6)      # the WCS's, not --pixel-scale

  with astropy_fits.open(out / "cube.fits") as written:
    for hdu in written[1:]:
      assert hdu.data.shape == cube.shape and hdu.header["NAXIS"] == 3 and hdu.header["CTYPE3"] == "FREQ"
    for plane in range(3):
      with Image.open(out / f"cube_{plane}_arcs.png") as png:
        np.testing.assert_array_equal(written["ARCS_MASK"].data[plane] * 255, np.asarray(png))

  with astropy_fits.open(out / "plain.fits") as written:
    assert written["LENS_PROB"].data.shape == (40, 40)
    assert astropy_wcs.WCS(written["LENS_PROB"].header).has_celestial is False
  row = rows["plain"]
  assert row["lens_ra_deg"] == row["lens_dec_deg"] == "" and float(row["pixel_scale_arcsec"]) == 0.05
  if row["arc_radius_px"]:
    assert float(row["arc_radius_arcsec"]) == pytest.approx(float(row["arc_radius_px"]) * 0.05, rel=1e-5)
  assert float(row["arc_area_arcsec2"]) == pytest.approx(int(row["arc_area_px"]) * 0.05**2, rel=1e-5)


@pytest.mark.slow
def test_a_tiled_prediction_matches_the_untiled_one(run_dir):
  run = evaluate.load_run(run_dir)
  pixels = fx.lens_like_images(2, 125, 4)[:, :, :, 0]
  images = [predict.InputImage(str(i), "test", 125, 125, lambda i=i: pixels[i][..., None]) for i in range(2)]
  whole = {i.name: p for i, _, p in predict.predict_images(run, images, tile=512, report=lambda _: None)}
  # The 128 x 128 canvas in 3 x 3 tiles of 64 x 64, neighbours sharing 32 pixels.
  tiled = {i.name: p for i, _, p in predict.predict_images(run, images, tile=64, tile_overlap=32,
                                                           report=lambda _: None)}
  for name in whole:
    difference = np.abs(whole[name] - tiled[name])
    assert difference.mean() < TILED_MEAN_DIFFERENCE, difference.mean()
    assert ((whole[name] >= 0.5) == (tiled[name] >= 0.5)).mean() > TILED_MASK_AGREEMENT


def test_each_side_is_padded_on_its_own_to_a_multiple_of_32_and_the_runs_pad_to():
  assert predict.canvas_shape(125, 125, transforms.Preprocessor(pad_to=128)) == (128, 128)
  assert predict.canvas_shape(50, 70, transforms.Preprocessor(pad_to=64)) == (64, 96)
  assert predict.canvas_shape(300, 20, transforms.Preprocessor(pad_to=0)) == (320, 32)
  assert predict.canvas_shape(512, 512, transforms.Preprocessor(resize_to=256, pad_to=0)) == (256, 256)
  # Issue 13's strip: 4000 x 128 pixels of network input (1.03 x the image), no longer 4000 x 4000 (41 x).
  assert predict.canvas_shape(4000, 97, transforms.Preprocessor(pad_to=128)) == (4000, 128)


@pytest.mark.parametrize("length, tile, overlap, count", [(100, 128, 32, 1), (4000, 512, 64, 9), (600, 512, 64, 2),
                                                          (128, 64, 32, 3), (1000, 256, 0, 4)])
def test_tiles_cover_the_axis_overlapping_and_their_weights_sum_to_one(length, tile, overlap, count):
  windows = predict.tile_windows(length, tile, overlap)
  assert len(windows) == count
  total, covered = np.zeros(length), np.zeros(length)
  for start, weights in windows:
    assert weights.shape == (min(tile, length),) and 0 <= start and start + weights.size <= length
    total[start:start + weights.size] += weights
    covered[start:start + weights.size] += 1
  np.testing.assert_allclose(total, 1.0, atol=1e-6)
  assert covered.min() >= 1
  starts = [start for start, _ in windows]
  assert all(previous + tile - start >= overlap for previous, start in zip(starts, starts[1:]))


def test_bad_flags_are_refused_naming_the_flag(tmp_path, capsys):
  np.save(tmp_path / "a.npy", np.ones((8, 8), np.float32))
  for flags, message in ((["--tile", "100"], "--tile 100: expected a multiple of 32"),
                         (["--tile-overlap", "400"], "--tile-overlap 400: expected 0 to half the tile (256)"),
                         (["--pixel-scale", "-1"], "--pixel-scale -1.0: expected arcsec per pixel > 0"),
                         (["--threshold", "1.5"], "--threshold 1.5: expected a probability")):
    with pytest.raises(SystemExit) as exit_info:
      predict.main([str(tmp_path / "no_run"), str(tmp_path / "a.npy"), "--out", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


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


@pytest.mark.slow
def test_evaluate_compares_the_catalogs_radius_proxy_with_the_true_einstein_radius(run_dir, tmp_path,
                                                                                  tmp_path_factory):
  out = tmp_path / "evaluation"
  code, output = tiny_run.run("lensjax.evaluate", [str(run_dir), "--out", str(out)],
                              tiny_run.compile_cache(tmp_path_factory), tmp_path / "evaluate.log")
  assert code == 0, output[-3000:]
  proxy = json.loads(out.with_suffix(".json").read_text())["theta_E_proxy"]
  lenses = sum(b["images"] for b in json.loads(out.with_suffix(".json").read_text())["iou_bins"]["theta_E"]["bins"])
  assert proxy["lenses"] == lenses and len(proxy["theta_E"]) == len(proxy["radius_arcsec"]) == proxy["found"]
  assert proxy["lenses"] + proxy["non_lenses"] == 16 and 0 <= proxy["non_lenses_found"] <= proxy["non_lenses"]
  assert all(0.5 <= theta <= 1.5 for theta in proxy["theta_E"])        # the simulator's prior, in arcsec
  if proxy["found"]:
    assert proxy["median_abs_error_arcsec"] == pytest.approx(
        np.median(np.abs(np.subtract(proxy["radius_arcsec"], proxy["theta_E"]))))
    assert f"median absolute error {proxy['median_abs_error_arcsec']:.3f} arcsec" in out.with_suffix(".md").read_text()
    with Image.open(tmp_path / "evaluation_theta_E.png") as figure:
      assert figure.format == "PNG"
