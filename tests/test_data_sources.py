"""Every file source round-trips its fixture, and every kind of bad input gives an error naming the file."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from lensjax import data as lensdata
from lensjax.data import DataError, images, sources, validation
from tests.helpers import datasets as fx

# Preprocessing that leaves stored values alone, so reads can be compared with what was written.
AS_STORED = dict(normalize="none", pad_to=0, input_scaling="unit")


def test_npy_array_with_masks_round_trips_and_splits_are_disjoint_and_complete(tmp_path):
  images_written, masks_written = fx.write_npy_array(tmp_path, count=20)
  config = fx.config_for("npy", tmp_path, **AS_STORED)
  rows = {}
  for split in sources.SPLITS:
    source = lensdata.make_source(config, split)
    rows[split] = source.raw.rows
    for i in range(len(source)):
      example, row = source[i], source.raw.rows[i]
      np.testing.assert_array_equal(example["image"][..., 0], images_written[row, ..., 0])
      np.testing.assert_array_equal(example["mask"], masks_written[row] / 255)
      assert example["index"] == i
  assert [len(rows[s]) for s in sources.SPLITS] == [16, 2, 2]
  assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(20))
  # Memory-mapped: the file is not read up front.
  assert isinstance(lensdata.make_source(config, "train").raw._arrays()[0], np.memmap)


def test_npy_array_without_masks_makes_them_by_the_percentile_rules(tmp_path):
  images_written, _ = fx.write_npy_array(tmp_path, count=10, with_masks=False)
  config = fx.config_for("npy", tmp_path, split_fractions=(1.0, 0.0, 0.0), **AS_STORED)
  source = lensdata.make_source(config, "train")
  for i in range(len(source)):
    lens, arcs = images_written[source.raw.rows[i], ..., 1], images_written[source.raw.rows[i], ..., 2]
    mask = source[i]["mask"]
    np.testing.assert_array_equal(mask[..., 0], lens >= np.percentile(lens, 99))
    # Non-lenses (odd rows) have an all-zero arc channel: their arc mask is empty, not all ones.
    np.testing.assert_array_equal(mask[..., 1], (arcs >= np.percentile(arcs, 95)) & (arcs > 0))
    assert mask[..., 1].any() == (source.raw.rows[i] % 2 == 0)


def test_npy_split_folders_round_trip_with_masks_paired_by_name(tmp_path):
  written = fx.write_npy_folders(tmp_path)
  config = fx.config_for("npy", tmp_path, targets=("arcs", "lens"), **AS_STORED)
  for split, entries in written.items():
    source = lensdata.make_source(config, split)
    assert len(source) == len(entries)
    for i, (name, image, lens, arcs) in enumerate(entries):
      example = source[i]
      assert source.raw.describe(i).endswith(name)
      np.testing.assert_allclose(example["image"][..., 0], image.astype(np.float32))
      np.testing.assert_array_equal(example["mask"][..., 0], arcs / 255)
      np.testing.assert_array_equal(example["mask"][..., 1], lens)


@pytest.mark.parametrize("masks, rgb", [("binary255", False), ("binary1", True)])
def test_png_folders_round_trip_binary_masks(tmp_path, masks, rgb):
  written = fx.write_png_folders(tmp_path, masks=masks, rgb=rgb)
  config = fx.config_for("png", tmp_path, targets=("foreground",), input_channels=3 if rgb else 1, **AS_STORED)
  for split, entries in written.items():
    source = lensdata.make_source(config, split)
    for i, (_, image, mask) in enumerate(entries):
      example = source[i]
      stored = image if rgb else image[..., None]
      np.testing.assert_allclose(example["image"], stored / np.float32(255))
      np.testing.assert_array_equal(example["mask"][..., 0], mask > 0)


def test_png_chaos_masks_are_decoded_to_one_channel_per_organ(tmp_path):
  written = fx.write_png_folders(tmp_path, masks="chaos")
  targets = ("spleen", "liver", "left_kidney", "right_kidney")
  source = lensdata.make_source(fx.config_for("png", tmp_path, targets=targets, **AS_STORED), "train")
  for i, (_, _, mask) in enumerate(written["train"]):
    decoded = source[i]["mask"]
    for k, organ in enumerate(targets):
      np.testing.assert_array_equal(decoded[..., k], mask == fx.MR_CODES[organ])
  # Slightly off the nominal grey level (e.g. after lossy re-encoding) still decodes by range.
  organs = ("liver", "right_kidney", "left_kidney", "spleen")
  decoded = images.decode_mask(np.array([[60, 130], [180, 245]]), organs, "x")
  assert decoded.sum(axis=(0, 1)).tolist() == [1, 1, 1, 1]


def test_chaos_ct_slices_are_in_hounsfield_units_windowed_to_0_1(tmp_path):
  written = fx.write_chaos(tmp_path, patients=4)
  config = fx.config_for("chaos", tmp_path, targets=("liver",), ct_hu_range=(-100.0, 300.0), **AS_STORED)
  seen_patients = []
  for split in sources.SPLITS:
    source = lensdata.make_source(config, split)
    patients = {source.raw.describe(i).split("/CT/")[1].split("/")[0] for i in range(len(source))}
    seen_patients.append(patients)
    for i in range(len(source)):
      dicom_file = source.raw.slices[i][0]
      patient, slice_number = dicom_file.parent.parent.name, int(dicom_file.name[1:5])
      pixels, liver = written["CT", patient][slice_number]
      hounsfield = pixels.astype(np.float32) - 1024
      np.testing.assert_allclose(source[i]["image"][..., 0], np.clip((hounsfield + 100) / 400, 0, 1), atol=1e-6)
      np.testing.assert_array_equal(source[i]["mask"][..., 0], liver > 0)
  # Patients, not slices, are split: no patient in two splits, all patients used.
  assert set().union(*seen_patients) == {"1", "2", "3", "4"}
  assert sum(len(p) for p in seen_patients) == 4


def test_chaos_mr_slices_pair_with_masks_in_sorted_order(tmp_path):
  written = fx.write_chaos(tmp_path, patients=3)
  config = fx.config_for("chaos", tmp_path, chaos_modality="T2SPIR", targets=("liver", "spleen"), **AS_STORED)
  source = lensdata.make_source(config, "train")
  for i in range(len(source)):
    dicom_file = source.raw.slices[i][0]
    patient, slice_number = dicom_file.parent.parent.parent.name, int(dicom_file.stem[-5:]) - 1
    pixels, organs = written["T2SPIR", patient][slice_number]
    np.testing.assert_array_equal(source[i]["image"][..., 0], pixels)
    np.testing.assert_array_equal(source[i]["mask"][..., 0], organs == fx.MR_CODES["liver"])
    np.testing.assert_array_equal(source[i]["mask"][..., 1], organs == fx.MR_CODES["spleen"])


def test_fits_images_and_cubes_round_trip_without_masks(tmp_path):
  rng = np.random.default_rng(0)
  cube, single = rng.random((3, 12, 12)).astype(np.float32), rng.random((12, 12)).astype(">f8")
  fx.write_fits(tmp_path / "a_cube.fits", cube)
  fx.write_fits(tmp_path / "b_single.fits", single)
  config = fx.config_for("fits", tmp_path, **AS_STORED)
  source = lensdata.make_source(config, "test")
  assert len(source) == 4 and "mask" not in source[0]
  for i in range(3):
    np.testing.assert_array_equal(source[i]["image"][..., 0], cube[i])
  np.testing.assert_allclose(source[3]["image"][..., 0], single.astype(np.float32))
  assert source.raw.describe(1).endswith("a_cube.fits[HDU 0][1]")
  one_file = lensdata.make_source(fx.config_for("fits", tmp_path / "b_single.fits"), "test")
  assert len(one_file) == 1 and one_file[0]["image"].shape == (128, 128, 1)
  with pytest.raises(ValueError, match="split 'test'"):
    lensdata.make_source(config, "train")


def test_default_preprocessing_gives_128_px_centred_inputs_and_float_masks(tmp_path):
  fx.write_npy_array(tmp_path, count=20, size=125)
  config = fx.config_for("npy", tmp_path)
  example = lensdata.make_source(config, "val", with_edge=True)[0]
  assert example["image"].shape == (128, 128, 1) and example["image"].dtype == np.float32
  assert example["mask"].shape == (128, 128, 2) and example["mask"].dtype == np.float32
  assert example["edge"].shape == (128, 128, 1)
  assert example["image"].min() == -0.5 and example["image"].max() == 0.5
  assert not example["mask"][0].any() and not example["mask"][:, 0].any()   # zero padding at offset 1
  assert lensdata.input_channels(config) == 1 and lensdata.num_targets(config) == 2
  assert lensdata.num_examples(config, "train") == 16


def test_sources_survive_pickling_for_worker_processes(tmp_path):
  fx.write_npy_array(tmp_path / "npy", count=10)
  fx.write_png_folders(tmp_path / "png")
  for config in (fx.config_for("npy", tmp_path / "npy"), fx.config_for("png", tmp_path / "png",
                                                                        targets=("foreground",))):
    source = lensdata.make_source(config, "train")
    first = source[0]                                   # opens memory maps / files
    clone = pickle.loads(pickle.dumps(source))
    for key, value in first.items():
      np.testing.assert_array_equal(clone[0][key], value)


# ---------------------------------------------------------------------------------------------------
# Bad input: each case raises DataError (or ValueError for a bad config) naming the file and the problem.


def _expect_data_error(config, split, *patterns):
  with pytest.raises(DataError) as raised:
    lensdata.make_source(config, split)[0]
  for pattern in patterns:
    assert pattern in str(raised.value), f"{pattern!r} not in: {raised.value}"


def test_npy_of_the_wrong_shape_or_dtype_is_refused_before_reading(tmp_path):
  np.save(tmp_path / "images.npy", np.zeros((4, 8, 8), np.float32))
  _expect_data_error(fx.config_for("npy", tmp_path), "train", "images.npy", "shape (4, 8, 8)", "(N, H, W, 3)")
  np.save(tmp_path / "images.npy", np.zeros((4, 8, 8, 3), np.complex64))
  _expect_data_error(fx.config_for("npy", tmp_path), "train", "images.npy", "dtype complex64")
  np.save(tmp_path / "images.npy", np.zeros((4, 8, 8, 3), np.float32))
  np.save(tmp_path / "masks.npy", np.zeros((4, 8, 8, 1), np.uint8))
  _expect_data_error(fx.config_for("npy", tmp_path), "train", "masks.npy", "shape (4, 8, 8, 1)",
                     "expected (4, 8, 8, 2)")


def test_pickled_npy_is_never_unpickled(tmp_path):
  np.save(tmp_path / "images.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
  _expect_data_error(fx.config_for("npy", tmp_path), "train", "images.npy", "Python objects")


def test_nan_or_inf_pixels_name_the_file_and_row_when_the_split_is_opened(tmp_path):
  images_written, _ = fx.write_npy_array(tmp_path, count=10)
  images_written[3, 5, 5, 0] = np.nan
  images_written[4, 0, 0, 2] = np.inf           # the arc channel, from which no mask is read here
  np.save(tmp_path / "images.npy", images_written)
  _expect_data_error(fx.config_for("npy", tmp_path, split_fractions=(1.0, 0.0, 0.0)), "train",
                     "images.npy[3]: 1 NaN or infinite pixels", "images.npy[4]: 1 NaN or infinite pixels",
                     "Replace them")


@pytest.mark.parametrize("chunk_bytes", [1, 10**9])      # one row per chunk, or the whole split in one
def test_every_mask_value_is_checked_when_the_split_is_opened_not_when_it_is_read(tmp_path, monkeypatch,
                                                                                   chunk_bytes):
  monkeypatch.setattr(validation, "SCAN_CHUNK_BYTES", chunk_bytes)
  _, masks_written = fx.write_npy_array(tmp_path, count=12)
  masks_written[9, 4, 4, 1] = 7                  # the repro: one pixel of one arc mask
  masks_written[2, 0, 0, 0] = 1                  # 1 in a 0/255 mask
  np.save(tmp_path / "masks.npy", masks_written)
  _expect_data_error(fx.config_for("npy", tmp_path, split_fractions=(1.0, 0.0, 0.0)), "train",
                     "masks.npy[9]: mask values 7 are not allowed; masks hold 0/1 or 0/255",
                     "masks.npy[2]: mask mixes the values 1 and 255")
  # Only the split holding the bad rows is refused.
  config = fx.config_for("npy", tmp_path, split_fractions=(0.5, 0.25, 0.25))
  bad_splits = [split for split in ("train", "val", "test")
                if {2, 9} & set(sources.split_rows(12, (0.5, 0.25, 0.25), config.data.split_seed, split))]
  for split in ("train", "val", "test"):
    if split in bad_splits:
      with pytest.raises(DataError):
        lensdata.make_source(config, split)
    else:
      assert len(lensdata.make_source(config, split)) > 0


def test_split_folder_files_are_checked_value_by_value_when_opened(tmp_path):
  fx.write_npy_folders(tmp_path)
  name = sorted((tmp_path / "train" / "arc_mask").glob("*.npy"))[1]
  mask = np.load(name)
  mask.flat[3] = 7
  np.save(name, mask)
  image_file = sorted((tmp_path / "train" / "images").glob("*.npy"))[0]
  image = np.load(image_file)
  image.flat[0] = np.nan
  np.save(image_file, image)
  _expect_data_error(fx.config_for("npy", tmp_path), "train", f"{name}: mask values 7 are not allowed",
                     f"{image_file}: 1 NaN or infinite pixels")


def test_a_cut_short_npy_is_named_once_when_opened(tmp_path):
  fx.write_npy_array(tmp_path, count=10)
  images = tmp_path / "images.npy"
  os.truncate(images, images.stat().st_size - 100)
  _expect_data_error(fx.config_for("npy", tmp_path), "train", "images.npy: is cut short",
                     "Copy or save it again")


def test_mask_source_says_which_masks_are_used_and_warns_of_misnamed_mask_files(tmp_path):
  fx.write_npy_array(tmp_path / "with", count=10)
  assert lensdata.mask_source(fx.config_for("npy", tmp_path / "with")) == ("masks.npy", [])
  fx.write_npy_array(tmp_path / "misnamed", count=10)
  (tmp_path / "misnamed" / "masks.npy").rename(tmp_path / "misnamed" / "mask.npy")
  np.save(tmp_path / "misnamed" / "Labels.npy", np.zeros(3))
  np.save(tmp_path / "misnamed" / "psf.npy", np.zeros(3))
  masks, warnings = lensdata.mask_source(fx.config_for("npy", tmp_path / "misnamed"))
  assert masks.startswith("made from the lens and arc channels by the percentile rule")
  assert [w.split(":")[0] for w in warnings] == [str(tmp_path / "misnamed" / n) for n in ("Labels.npy", "mask.npy")]
  assert all(f"masks are read from {tmp_path / 'misnamed' / 'masks.npy'} only" in w for w in warnings)
  assert lensdata.mask_source(fx.config_for("sim", ""))[0].startswith("the simulator's")


def test_image_without_mask_is_named(tmp_path):
  fx.write_png_folders(tmp_path)
  (tmp_path / "train" / "masks" / "slice_001.png").unlink()
  _expect_data_error(fx.config_for("png", tmp_path, targets=("foreground",)), "train",
                     "train/images/slice_001.png: image has no mask", "slice_001.png")
  fx.write_npy_folders(tmp_path / "npy")
  (tmp_path / "npy" / "val" / "arc_mask" / "img_002.npy").unlink()
  _expect_data_error(fx.config_for("npy", tmp_path / "npy"), "val", "val/images/img_002.npy: image has no "
                     "arcs mask")


def test_mask_values_outside_the_allowed_set_are_refused(tmp_path):
  written = fx.write_png_folders(tmp_path)
  mask = written["train"][0][2].copy()
  mask[0, 0] = 100
  Image.fromarray(mask).save(tmp_path / "train" / "masks" / "slice_000.png")
  _expect_data_error(fx.config_for("png", tmp_path, targets=("foreground",)), "train",
                     "masks/slice_000.png: mask values 100 are not allowed")
  # Binary masks read with organ targets: 255 is the spleen code, 1 is no organ code.
  fx.write_png_folders(tmp_path / "b", masks="binary1")
  _expect_data_error(fx.config_for("png", tmp_path / "b", targets=("liver",)), "train",
                     "mask values 1 are not allowed", "data.targets=foreground")
  images_written, masks_written = fx.write_npy_array(tmp_path / "c", count=10)
  np.save(tmp_path / "c" / "masks.npy", masks_written / 510.0)
  _expect_data_error(fx.config_for("npy", tmp_path / "c", split_fractions=(1.0, 0.0, 0.0)), "train",
                     "masks.npy[0]: mask values 0.5 are not allowed")


def test_empty_folders_are_named(tmp_path):
  (tmp_path / "train" / "images").mkdir(parents=True)
  (tmp_path / "train" / "masks").mkdir(parents=True)
  _expect_data_error(fx.config_for("png", tmp_path, targets=("foreground",)), "train",
                     "train/images: empty folder")
  (tmp_path / "cutouts").mkdir()
  _expect_data_error(fx.config_for("fits", tmp_path / "cutouts"), "test", "cutouts: no FITS files")


def test_unreadable_fits_and_dicom_files_are_named(tmp_path):
  fx.write_fits(tmp_path / "fits" / "good.fits", np.ones((8, 8), np.float32))
  (tmp_path / "fits" / "broken.fits").write_bytes(b"not a FITS file at all" * 10)
  _expect_data_error(fx.config_for("fits", tmp_path / "fits"), "test", "broken.fits: is not a readable FITS")
  fx.write_chaos(tmp_path / "chaos", patients=1)
  broken = tmp_path / "chaos" / "Train_Sets" / "CT" / "1" / "DICOM_anon" / "i0001,0000b.dcm"
  broken.write_bytes(b"garbage" * 20)
  _expect_data_error(fx.config_for("chaos", tmp_path / "chaos", targets=("liver",),
                                   split_fractions=(1.0, 0.0, 0.0)), "train",
                     "i0001,0000b.dcm: is not a readable DICOM file")


def test_truncated_dicom_pixels_fail_on_read_naming_the_file(tmp_path):
  fx.write_chaos(tmp_path, patients=1)
  dicom_file = tmp_path / "Train_Sets" / "CT" / "1" / "DICOM_anon" / "i0000,0000b.dcm"
  dicom_file.write_bytes(dicom_file.read_bytes()[:-100])
  source = lensdata.make_source(fx.config_for("chaos", tmp_path, targets=("liver",),
                                              split_fractions=(1.0, 0.0, 0.0)), "train")
  with pytest.raises(DataError, match="i0000,0000b.dcm: cannot decode the DICOM pixels"):
    source[0]


def test_bad_configs_name_the_field_and_the_choices(tmp_path):
  fx.write_npy_array(tmp_path, count=10)
  with pytest.raises(ValueError, match=r"data.targets=\('lens', 'liver'\).*lens, arcs"):
    lensdata.make_source(fx.config_for("npy", tmp_path, targets=("lens", "liver")), "train")
  with pytest.raises(ValueError, match="data.split_fractions"):
    lensdata.make_source(fx.config_for("npy", tmp_path, split_fractions=(0.5, 0.1)), "train")
  with pytest.raises(ValueError, match="data.crop_size=200"):
    lensdata.make_source(fx.config_for("npy", tmp_path, crop_size=200), "train")
  with pytest.raises(ValueError, match="set data.path"):
    lensdata.make_source(fx.config_for("png", ""), "train")
  with pytest.raises(ValueError, match="split='training'"):
    lensdata.make_source(fx.config_for("npy", tmp_path), "training")
  with pytest.raises(ValueError, match="'liver' or 'foreground'|organs from liver"):
    fx.write_chaos(tmp_path / "chaos", patients=1)
    lensdata.make_source(fx.config_for("chaos", tmp_path / "chaos", targets=("spleen",)), "train")


def test_auto_normalisation_is_percentile_for_astronomy_and_none_for_medical_images():
  def resolved(source, **fields):
    return sources.resolved_normalize(fx.config_for(source, "x", **fields).data)
  assert [resolved(s) for s in ("sim", "npy", "fits", "png")] == ["percentile"] * 3 + ["none"]
  assert resolved("chaos") == "none" and resolved("chaos", chaos_modality="T2SPIR") == "percentile"
  assert resolved("png", normalize="minmax") == "minmax"
