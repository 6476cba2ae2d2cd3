"""Preprocessing, augmentation and Canny (`lensjax.data.transforms`): numpy only, fast."""

import cv2
import numpy as np
import pytest

from lensjax import config as cfg
from lensjax.data import sources, transforms


def _blob_image(size=20, channels=1, seed=0):
  """A (size, size, channels) float32 image in [0, 1] with an off-centre, asymmetric bright blob."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size]
  blob = np.exp(-((yy - 0.3 * size) ** 2 + (xx - 0.65 * size) ** 2 / 3) / (0.05 * size * size))
  image = np.clip(blob[..., None] + 0.05 * rng.random((size, size, channels)), 0, 1)
  return image.astype(np.float32)


@pytest.mark.parametrize("augment, crop_size", [("d4", 0), ("d4", 13), ("hflip", 0), ("hflip", 15)])
def test_augmentation_keeps_a_mask_drawn_from_the_image_equal_to_the_transformed_mask(augment, crop_size):
  preprocess = transforms.Preprocessor(normalize="none", augment=augment, crop_size=crop_size,
                                       input_scaling="unit")
  image = _blob_image()
  mask = np.concatenate([image > 0.5, image < 0.1], axis=-1).astype(np.float32)
  seen = set()
  for seed in range(40):
    out = preprocess({"image": image, "mask": mask}, np.random.default_rng(seed))
    drawn = np.concatenate([out["image"] > 0.5, out["image"] < 0.1], axis=-1).astype(np.float32)
    np.testing.assert_array_equal(out["mask"], drawn)
    seen.add(out["image"].tobytes())
  # d4 reaches all 8 orientations of an asymmetric image; hflip 2; crops add offsets on top.
  assert len(seen) >= (8 if augment == "d4" else 2)


def test_without_an_rng_nothing_random_happens_and_the_crop_is_central():
  preprocess = transforms.Preprocessor(normalize="none", augment="d4", crop_size=10, input_scaling="unit")
  image = _blob_image(size=20)
  out = preprocess({"image": image})
  np.testing.assert_array_equal(out["image"], image[5:15, 5:15])


def test_d4_of_a_non_square_image_keeps_its_shape():
  preprocess = transforms.Preprocessor(normalize="none", augment="d4", input_scaling="unit")
  image = np.random.default_rng(0).random((6, 9, 1)).astype(np.float32)
  for seed in range(10):
    assert preprocess({"image": image}, np.random.default_rng(seed))["image"].shape == (6, 9, 1)


def test_padding_125_to_128_puts_the_image_at_offset_1_with_zeros_around():
  image = np.arange(125 * 125, dtype=np.float32).reshape(125, 125, 1) + 1
  padded = transforms.pad(image, 128)
  assert padded.shape == (128, 128, 1)
  np.testing.assert_array_equal(padded[1:126, 1:126], image)
  assert padded[0].sum() == padded[:, 0].sum() == padded[126:].sum() == padded[:, 126:].sum() == 0
  assert transforms.pad(np.ones((130, 130, 1)), 128).shape == (130, 130, 1)


def test_percentile_normalisation_divides_by_the_percentile_and_clips():
  image = np.arange(100, dtype=np.float32).reshape(10, 10, 1)
  out = transforms.percentile_normalize(image, 99.0)
  np.testing.assert_allclose(out, np.clip(image / np.percentile(image, 99), 0, 1))
  assert out.max() == 1.0 and out.min() == 0.0
  # An empty channel stays empty; a mostly-empty one falls back to its maximum.
  assert not transforms.percentile_normalize(np.zeros((4, 4, 1), np.float32), 99).any()
  sparse = np.zeros((10, 10, 1), np.float32)
  sparse[0, 0] = 5.0
  assert transforms.percentile_normalize(sparse, 99)[0, 0, 0] == 1.0


def test_arc_boost_is_applied_once_and_leaves_its_input_alone():
  rng = np.random.default_rng(0)
  image = rng.random((20, 20, 1)).astype(np.float32)
  before = image.copy()
  once = transforms.arc_boost(image, 10.0)
  np.testing.assert_array_equal(image, before)
  np.testing.assert_array_equal(transforms.arc_boost(image, 10.0), once)
  band = (image > np.percentile(image, 95)) & (image <= np.percentile(image, 99))
  # The 95-99 % band keeps its values; everything else is 10x dimmer.
  np.testing.assert_allclose(once[band], image[band], rtol=1e-6)
  np.testing.assert_allclose(once[image <= np.percentile(image, 95)],
                             image[image <= np.percentile(image, 95)] / 10, rtol=1e-6)
  assert once.max() <= 1.0


def _original_normalize_reference(channel):
  """The original's normalisation as written: x / p99 -> (x - min) * 255 / max -> clip at the recomputed p99."""
  scaled = channel.astype(np.float64) / np.percentile(channel.astype(np.float64), 99)
  scaled = (scaled - scaled.min()) * 255 / scaled.max()
  return np.clip(scaled, 0, np.percentile(scaled, 99))


def _original_boost_reference(channel, factor):
  """The original's boost as written: > p95 times factor, > recomputed p99 divided by it, capped at 255."""
  boosted = np.where(channel > np.percentile(channel, 95), channel * factor, channel)
  boosted = np.where(boosted > np.percentile(boosted, 99), boosted / factor, boosted)
  return np.minimum(boosted, 255)


def _lens_like_images(seed, count=4, size=31, channels=1):
  """Random float32 (size, size, channels) stamps: a bright core, a fainter ring, noise with negatives."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] - size // 2
  radius = np.hypot(yy, xx)[..., None]
  for _ in range(count):
    core = rng.uniform(1e3, 1e5) * np.exp(-radius / rng.uniform(1, 3))
    ring = rng.uniform(10, 300) * np.exp(-((radius - rng.uniform(5, 10)) ** 2))
    noise = rng.normal(0, rng.uniform(0, 5), (size, size, channels))
    yield (core + ring + noise).astype(np.float32)


@pytest.mark.parametrize("channels", [1, 3])
def test_original_normalisation_and_boost_are_the_written_formulas_bit_for_bit(channels):
  for image in _lens_like_images(seed=channels, channels=channels):
    normalised = transforms.original_normalize(image)
    boosted = transforms.original_arc_boost(normalised, 10.0)
    for c in range(channels):
      np.testing.assert_array_equal(normalised[..., c], _original_normalize_reference(image[..., c]))
      np.testing.assert_array_equal(boosted[..., c], _original_boost_reference(normalised[..., c], 10.0))
    assert normalised.min() == 0.0 and normalised.max() <= 255.0 and boosted.max() <= 255.0
    # No overall division: the top 5 % is brighter than before or back where it was (x 10 / 10, to 1 ulp), the
    # rest untouched.
    band = normalised > np.percentile(normalised, 95, axis=(0, 1))
    assert (boosted[band] >= normalised[band] * (1 - 1e-15)).all() and (boosted[band] > normalised[band]).any()
    np.testing.assert_array_equal(boosted[~band], normalised[~band])


def test_original_normalisation_ignores_a_positive_scale_and_clips_at_its_own_99th_percentile():
  image = next(_lens_like_images(seed=7))
  out = transforms.original_normalize(image)
  np.testing.assert_allclose(transforms.original_normalize(image * np.float32(37.5)), out, rtol=1e-6, atol=1e-4)
  # Clipped at p99 of the rescaled image, whose full scale 255 is the maximum: 1 % of the pixels sit at the top.
  assert np.isclose(out.max(), np.percentile(255 * (image - image.min()) / image.max(), 99), rtol=1e-5)
  assert (out == out.max()).sum() >= 0.01 * image.size - 1


@pytest.mark.parametrize("image", [np.zeros((9, 9, 1)), np.full((9, 9, 1), 5.0), np.full((9, 9, 1), -2.0)],
                         ids=["zeros", "constant", "negative"])
def test_original_normalisation_of_a_constant_image_is_zero_and_the_boost_leaves_it_alone(image):
  out = transforms.original_normalize(image.astype(np.float32))
  np.testing.assert_array_equal(out, np.zeros_like(out))
  np.testing.assert_array_equal(transforms.original_arc_boost(out, 10.0), out)


def test_original_normalisation_of_a_mostly_empty_image_skips_the_division_by_its_99th_percentile():
  sparse = np.linspace(-1.0, 0.0, 400, dtype=np.float32).reshape(20, 20, 1)
  sparse[0, :3, 0] = [7.0, 2.0, 1.0]   # p99 < 0: the original divided by a negative number here
  assert np.percentile(sparse, 99) < 0
  out = transforms.original_normalize(sparse)
  assert np.isfinite(out).all()
  rescaled = (sparse[..., 0].astype(np.float64) - sparse.min()) * 255 / 7.0
  np.testing.assert_array_equal(out[..., 0], np.clip(rescaled, 0, np.percentile(rescaled, 99)))
  assert out.max() > 0


def test_the_original_preprocessing_boosts_the_padded_stamp_and_ends_in_display_units():
  image = next(_lens_like_images(seed=3, size=125))
  preprocess = transforms.Preprocessor(normalize="original", arc_boost=10.0, pad_to=128, input_scaling="unit")
  out = preprocess({"image": image})["image"]
  padded = np.zeros((128, 128))
  padded[1:126, 1:126] = _original_normalize_reference(image[..., 0])
  expected = _original_boost_reference(padded, 10.0).astype(np.float32) / np.float32(255)
  np.testing.assert_array_equal(out[..., 0], expected)
  unboosted = transforms.Preprocessor(normalize="original", pad_to=128, input_scaling="unit")({"image": image})
  np.testing.assert_array_equal(unboosted["image"][..., 0], padded.astype(np.float32) / np.float32(255))


def test_canny_is_opencv_on_the_truncated_uint8_image_with_thresholds_10_and_1000():
  image = _blob_image(size=32)
  image[8:20, 8:20] = 1.0                         # a sharp square: strong edges
  edges = transforms.canny_edges(image)
  expected = cv2.Canny(np.uint8(image[..., 0] * 255), 10, 1000) / 255
  assert edges.shape == (32, 32, 1) and edges.dtype == np.float32
  np.testing.assert_array_equal(edges[..., 0], expected)
  assert edges.sum() > 0 and set(np.unique(edges)) <= {0.0, 1.0}


def test_the_edge_map_is_computed_on_the_augmented_image():
  preprocess = transforms.Preprocessor(normalize="none", augment="d4", input_scaling="unit", with_edge=True)
  image = _blob_image(size=32)
  image[8:20, 4:12] = 1.0
  mask = np.zeros((32, 32, 2), np.float32)
  mask[8:20, 4:12, 0] = 1.0
  for seed in range(8):
    out = preprocess({"image": image, "mask": mask}, np.random.default_rng(seed))
    np.testing.assert_array_equal(out["edge"], transforms.canny_edges(out["image"]))
    # MSRF-Net's edge target: the Canny map of each (augmented) mask channel, on the mask's boundary.
    assert out["mask_edge"].shape == (32, 32, 2)
    np.testing.assert_array_equal(out["mask_edge"][..., :1], transforms.canny_edges(out["mask"][..., :1]))
    assert out["mask_edge"][..., 0].sum() > 0 and out["mask_edge"][..., 1].sum() == 0


@pytest.mark.parametrize("mode", ["unit", "centered", "standardize"])
def test_input_scaling(mode):
  image = _blob_image(size=16, channels=3)
  out = transforms.scale_input(image, mode)
  if mode == "unit":
    np.testing.assert_array_equal(out, image)
  elif mode == "centered":
    np.testing.assert_allclose(out, image - 0.5)
  else:
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(0, 1)), 1, atol=1e-5)


def test_channels_repeat_grey_and_take_the_luma_of_rgb():
  grey = _blob_image(size=8)
  np.testing.assert_array_equal(transforms.to_channels(grey, 3), np.repeat(grey, 3, axis=-1))
  rgb = np.zeros((2, 2, 3), np.float32)
  rgb[..., 1] = 1.0
  np.testing.assert_allclose(transforms.to_channels(rgb, 1), 0.587)


def test_resize_uses_nearest_for_masks_so_they_stay_binary():
  mask = (np.random.default_rng(0).random((40, 40, 2)) > 0.5).astype(np.float32)
  assert set(np.unique(transforms.resize(mask, 17, nearest=True))) <= {0.0, 1.0}
  image = np.random.default_rng(1).random((40, 40, 1)).astype(np.float32)
  assert transforms.resize(image, 20, nearest=False).shape == (20, 20, 1)
  assert transforms.resize(image, 64, nearest=False).shape == (64, 64, 1)


def test_preprocessor_output_size_follows_resize_pad_and_crop():
  assert transforms.Preprocessor(pad_to=128).output_size(125, 125) == (128, 128)
  assert transforms.Preprocessor(resize_to=256, pad_to=128).output_size(512, 512) == (256, 256)
  assert transforms.Preprocessor(pad_to=128, crop_size=96).output_size(125, 125) == (96, 96)


def test_the_config_selects_the_original_preprocessing():
  config = cfg.Config()
  cfg.parse_overrides(config, ["--config.data.normalize=original", "--config.data.arc_boost=10",
                               "--config.data.pad_to=0", "--config.data.input_scaling=unit"])
  image = next(_lens_like_images(seed=11))
  out = sources.make_preprocessor(config, with_edge=False)({"image": image})["image"]
  expected = _original_boost_reference(_original_normalize_reference(image[..., 0]), 10.0)
  np.testing.assert_array_equal(out[..., 0], expected.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("key, value", [("arc_boost", 0.5), ("normalize_percentile", 0.0), ("pad_to", -1)])
def test_make_preprocessor_rejects_a_bad_preprocessing_field_by_its_config_key(key, value):
  config = cfg.Config()
  setattr(config.data, key, value)   # not through parse_overrides: predict builds configs that are not checked whole
  with pytest.raises(cfg.ConfigError, match=f"config.data.{key}="):
    sources.make_preprocessor(config, with_edge=False)
