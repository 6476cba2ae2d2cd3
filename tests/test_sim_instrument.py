"""Pixel grid, supersampling, PSF and noise of `lensjax.sim.instrument`."""

import math

import jax
import numpy as np
import pytest
from scipy import ndimage

from lensjax.sim import instrument


def test_pixel_centres_put_the_origin_at_the_stamp_centre():
  centres = instrument.pixel_centres(5, 0.1)
  np.testing.assert_allclose(centres, [-0.2, -0.1, 0.0, 0.1, 0.2], atol=1e-7)
  even = instrument.pixel_centres(4, 0.1)
  np.testing.assert_allclose(even, [-0.15, -0.05, 0.05, 0.15], atol=1e-7)
  # Supersampled: 3 sub-pixels per pixel, symmetric, with the pixel centre as the middle sub-pixel.
  sub = instrument.pixel_centres(5, 0.1, supersampling=3)
  np.testing.assert_allclose(sub[1::3], centres, atol=1e-7)
  np.testing.assert_allclose(np.diff(sub), 0.1 / 3, atol=1e-7)


def test_binning_averages_sub_pixel_blocks():
  image = np.arange(36, dtype=np.float32).reshape(6, 6)
  binned = np.asarray(instrument.bin_supersampled(image[None], 3))[0]
  np.testing.assert_allclose(binned, image.reshape(2, 3, 2, 3).mean(axis=(1, 3)))


@pytest.mark.parametrize("fwhm, truncation", [(0.03, 3.0), (0.04, 3.0), (0.05, 5.0), (0.1, 4.0)])
def test_gaussian_psf_is_normalised_and_matches_scipy_gaussian_filter(fwhm, truncation):
  scale = 0.031
  taps = instrument.gaussian_psf_taps(fwhm, scale, truncation)
  assert taps.sum() == pytest.approx(1.0, abs=1e-12)
  np.testing.assert_allclose(taps, taps[::-1])
  rng = np.random.default_rng(0)
  image = rng.gamma(1.0, 1.0, (3, 37, 41)).astype(np.float32)
  sigma = fwhm / instrument.FWHM_PER_SIGMA / scale
  # lenstronomy's 'GAUSSIAN' PSF: scipy.ndimage.gaussian_filter with edge replication ('nearest').
  expected = ndimage.gaussian_filter(image.astype(np.float64), (0, sigma, sigma), mode="nearest",
                                     truncate=truncation)
  np.testing.assert_allclose(instrument.convolve_separable(image, taps), expected, rtol=2e-6, atol=1e-6)


def test_psf_conserves_flux_away_from_the_edges_and_keeps_a_flat_image_flat():
  taps = instrument.gaussian_psf_taps(0.1, 0.031, 4.0)
  point = np.zeros((31, 31), np.float32)
  point[15, 15] = 100.0
  blurred = np.asarray(instrument.convolve_separable(point, taps))
  assert blurred.sum() == pytest.approx(100.0, rel=1e-6)
  assert blurred[15, 15] < 100.0 and blurred[15, 16] > 0.0
  flat = np.full((9, 12), 3.5, np.float32)   # edge replication: no darkening at the border
  np.testing.assert_allclose(instrument.convolve_separable(flat, taps), flat, rtol=1e-6)


def test_a_psf_narrower_than_half_a_pixel_is_the_identity():
  taps = instrument.gaussian_psf_taps(0.01, 0.031, 3.0)
  np.testing.assert_array_equal(taps, [1.0])
  image = np.arange(12, dtype=np.float32).reshape(3, 4)
  np.testing.assert_array_equal(instrument.convolve_separable(image, taps), image)


def test_moffat_kernel_is_normalised_symmetric_and_has_the_requested_fwhm():
  kernel = instrument.moffat_psf_kernel(fwhm=0.31, beta=3.0, pixel_scale=0.031, truncation=6.0)
  assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
  np.testing.assert_allclose(kernel, kernel.T)
  np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
  centre = kernel.shape[0] // 2
  # 0.31 arcsec = 10 pixels: the profile halves 5 pixels from the centre.
  assert kernel[centre, centre + 5] / kernel[centre, centre] == pytest.approx(0.5, rel=1e-6)
  point = np.zeros((81, 81), np.float32)
  point[40, 40] = 1.0
  blurred = np.asarray(instrument.convolve_kernel(point, kernel))
  np.testing.assert_allclose(blurred[40 - centre:41 + centre, 40 - centre:41 + centre], kernel, atol=1e-8)
  assert blurred.sum() == pytest.approx(1.0, rel=1e-5)


def test_large_kernels_take_the_convolution_path_with_the_same_result():
  kernel = instrument.moffat_psf_kernel(fwhm=0.3, beta=2.5, pixel_scale=0.031, truncation=3.0)
  assert (kernel.shape[0] - 1) // 2 > instrument.SHIFTED_ADD_MAX_RADIUS
  rng = np.random.default_rng(4)
  image = rng.random((2, 30, 33)).astype(np.float32)
  radius = (kernel.shape[0] - 1) // 2
  padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="edge").astype(np.float64)
  expected = np.stack([np.sum(kernel[::-1, ::-1] * padded[b, i:i + kernel.shape[0], j:j + kernel.shape[1]])
                       for b in range(2) for i in range(30) for j in range(33)]).reshape(2, 30, 33)
  np.testing.assert_allclose(instrument.convolve_kernel(image, kernel), expected, rtol=1e-5)


def _noise_model(**overrides):
  settings = dict(exposure_time=257.0, num_exposures=8, read_noise=15.77, sky_brightness=30.96,
                  magnitude_zero_point=28.02, counts_zero_point=33.43, pixel_scale=0.031)
  settings.update(overrides)
  return instrument.NoiseModel.from_exposure(**settings)


def test_noise_model_follows_the_exposure_formulas():
  model = _noise_model()
  total_time = 257.0 * 8
  electrons_per_count = 10 ** (-0.4 * (33.43 - 28.02)) * total_time
  sky = 10 ** (-0.4 * (30.96 - 28.02)) * 0.031**2 * total_time
  assert model.electrons_per_count == pytest.approx(electrons_per_count)
  assert model.sky_electrons == pytest.approx(sky)
  assert model.background_sigma == pytest.approx(math.sqrt(8 * 15.77**2 + sky) / electrons_per_count)
  # Longer exposures beat the read noise down in counts.
  assert _noise_model(exposure_time=1000.0).background_sigma < model.background_sigma


@pytest.mark.parametrize("kind", ["gaussian", "poisson"])
def test_noise_has_the_model_variance(kind):
  model = _noise_model()
  image = np.concatenate([np.zeros((200, 200)), np.full((200, 200), 400.0)]).astype(np.float32)
  add = model.add_gaussian if kind == "gaussian" else model.add_poisson
  noisy = np.asarray(add(jax.random.key(0), image))
  residual = noisy - image
  for rows, level in ((slice(0, 200), 0.0), (slice(200, 400), 400.0)):
    expected_sigma = math.sqrt(model.background_sigma**2 + level / model.electrons_per_count)
    assert residual[rows].mean() == pytest.approx(0.0, abs=4 * expected_sigma / 200)
    assert residual[rows].std() == pytest.approx(expected_sigma, rel=0.02)
