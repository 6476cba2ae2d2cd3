"""The instrument: pixel grid with supersampling, point-spread function and noise.

Image arrays are (..., H, W) with row j <-> y and column i <-> x. Pixel centres sit at
x_i = (i - (W - 1)/2) * pixel_scale and y_j = (j - (H - 1)/2) * pixel_scale (arcsec), so (0, 0) is the centre
of the stamp (the original notebook put it half a pixel off, at index N/2; see docs/simulator.md).
Pixel values are in the image's flux unit ("counts", the original data's 0.1538 nJy): the mean surface
brightness over the pixel times the pixel area, as lenstronomy computes it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))

# `SimConfig` noise fields of a deep JWST NIRCam F115W image (`python -m lensjax.simulate --noise jwst`):
# exact Poisson noise, 10 exposures of 1,000 s (the 10 ks depth of the original's parent survey forecast),
# the sky of a low-zodiacal field, about 0.15 MJy/sr = 22.5 AB mag/arcsec^2 (0.15 electrons/s per 0.031"
# pixel; SimConfig's default 30.96 mag/arcsec^2 is lenstronomy's provisional value, ~8 mag fainter), and
# lenstronomy's F115W zero point and read noise. Background sigma: about 0.9 counts per pixel.
JWST_F115W_DEEP = dict(noise="poisson", exposure_time=1000.0, num_exposures=10, read_noise=15.77,
                       sky_brightness=22.5, magnitude_zero_point=28.02)


def pixel_centres(num_pixels: int, pixel_scale: float, supersampling: int = 1) -> np.ndarray:
  """1-D coordinates (arcsec, float32) of the num_pixels * supersampling sub-pixel centres along one axis.

  Sub-pixel k of pixel i sits at (i + (k + 1/2)/ss - 1/2 - (num_pixels - 1)/2) * pixel_scale.
  """
  if num_pixels <= 0:
    raise ValueError(f"num_pixels must be a positive integer; got {num_pixels}")
  if supersampling <= 0:
    raise ValueError(f"supersampling must be a positive integer; got {supersampling}")
  if not pixel_scale > 0:
    raise ValueError(f"pixel_scale must be > 0 arcsec; got {pixel_scale}")
  sub = (np.arange(num_pixels * supersampling) + 0.5) / supersampling - 0.5
  return ((sub - (num_pixels - 1) / 2) * pixel_scale).astype(np.float32)


def bin_supersampled(image: jax.Array, supersampling: int) -> jax.Array:
  """Means (..., H*ss, W*ss) sub-pixel values over each ss x ss block -> (..., H, W)."""
  if supersampling == 1:
    return image
  *batch, height, width = image.shape
  blocks = image.reshape(*batch, height // supersampling, supersampling, width // supersampling, supersampling)
  return blocks.mean(axis=(-3, -1))


def gaussian_psf_taps(fwhm: float, pixel_scale: float, truncation: float) -> np.ndarray:
  """Normalised 1-D Gaussian weights (float64, length 2r + 1) as `scipy.ndimage.gaussian_filter` builds them.

  sigma = fwhm / 2.3548 / pixel_scale pixels, radius r = int(truncation * sigma + 0.5), w_k ~ exp(-k^2 / 2 sigma^2).
  This is how lenstronomy applies a 'GAUSSIAN' PSF to extended light. A radius of 0 gives [1.0] (no blur).
  """
  sigma = fwhm / FWHM_PER_SIGMA / pixel_scale
  radius = int(truncation * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  weights = np.exp(-0.5 * offsets**2 / sigma**2)
  return weights / weights.sum()


def moffat_psf_kernel(fwhm: float, beta: float, pixel_scale: float, truncation: float) -> np.ndarray:
  """Normalised 2-D Moffat kernel (float64, (2r + 1, 2r + 1)), point-sampled at pixel centres.

  I(r) ~ (1 + (r / alpha)^2)^(-beta), alpha = fwhm / (2 sqrt(2^(1/beta) - 1)). The radius r follows the
  Gaussian rule with the same FWHM: r = int(truncation * fwhm / 2.3548 / pixel_scale + 0.5), at least 1 pixel
  (a Moffat's wings are wider than a Gaussian's, so prefer a larger truncation than for the Gaussian).
  """
  alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1)) / pixel_scale
  radius = max(1, int(truncation * fwhm / FWHM_PER_SIGMA / pixel_scale + 0.5))
  offsets = np.arange(-radius, radius + 1, dtype=np.float64)
  r_squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
  kernel = (1 + r_squared / alpha**2) ** (-beta)
  return kernel / kernel.sum()


def _pad_edge(image: jax.Array, rows: int, columns: int) -> jax.Array:
  """(..., H, W) -> (..., H + 2 rows, W + 2 columns), replicating edge pixels, materialised.

  The barrier makes XLA write the padded image once. Without it XLA fuses the padding (a concatenate) and
  everything before it into each shifted read of the stencil, recomputing the profiles once per tap
  (measured: 3-6x slower renders).
  """
  pad = [(0, 0)] * (image.ndim - 2) + [(rows, rows), (columns, columns)]
  return jax.lax.optimization_barrier(jnp.pad(image, pad, mode="edge"))


def convolve_separable(image: jax.Array, taps: np.ndarray) -> jax.Array:
  """Convolves (..., H, W) with outer(taps, taps), replicating edge pixels (scipy mode 'nearest').

  Written as 2r + 1 shifted, weighted adds per axis of the edge-padded image: with the 3-7 taps of a space
  PSF this is an order of magnitude faster on CPU than `lax.conv_general_dilated` (measured), and it keeps
  lenstronomy's edge handling (a zero-padded convolution differs by up to 1 % at the stamp edge).
  """
  radius = (len(taps) - 1) // 2
  if radius == 0:
    return image
  weights = [np.float32(w) for w in taps]
  height, width = image.shape[-2:]
  padded = _pad_edge(image, radius, 0)
  rows = jax.lax.optimization_barrier(sum(w * padded[..., k:k + height, :] for k, w in enumerate(weights)))
  padded = _pad_edge(rows, 0, radius)
  return sum(w * padded[..., :, k:k + width] for k, w in enumerate(weights))


# Kernels up to this radius are applied as shifted adds (fast, but one slice per tap in the program);
# larger ones with lax.conv_general_dilated (slow on CPU, compact to compile).
SHIFTED_ADD_MAX_RADIUS = 4


def convolve_kernel(image: jax.Array, kernel: np.ndarray) -> jax.Array:
  """Convolves (..., H, W) with a 2-D (2r + 1, 2r + 1) kernel, replicating edge pixels.

  Used for the (non-separable) Moffat PSF.
  """
  radius = (kernel.shape[0] - 1) // 2
  height, width = image.shape[-2:]
  padded = _pad_edge(image, radius, radius)
  flipped = kernel[::-1, ::-1]
  if radius <= SHIFTED_ADD_MAX_RADIUS:
    return sum(np.float32(flipped[a, b]) * padded[..., a:a + height, b:b + width]
               for a in range(kernel.shape[0]) for b in range(kernel.shape[1]))
  batch = padded.shape[:-2]
  flat = padded.reshape((-1, 1) + padded.shape[-2:])
  blurred = jax.lax.conv_general_dilated(flat, jnp.asarray(flipped, jnp.float32)[None, None], (1, 1), "VALID")
  return blurred.reshape(batch + (height, width))


@dataclasses.dataclass(frozen=True)
class NoiseModel:
  """Detector and sky in the image's flux unit (counts); see docs/simulator.md (lenstronomy semantics).

  Attributes:
    electrons_per_count: photo-electrons collected per image count over the whole exposure,
      10^(-0.4 (counts_zero_point - magnitude_zero_point)) * total exposure time.
    background_sigma: standard deviation (counts per pixel) of sky shot noise plus read noise,
      sqrt(num_exposures read_noise^2 + sky electrons per pixel) / electrons_per_count.
    sky_electrons: mean sky electrons per pixel over the whole exposure.
    read_noise_electrons: read noise (electrons) summed over the exposures, read_noise sqrt(num_exposures).
  """
  electrons_per_count: float
  background_sigma: float
  sky_electrons: float
  read_noise_electrons: float

  @classmethod
  def from_exposure(cls, *, exposure_time: float, num_exposures: int, read_noise: float, sky_brightness: float,
                    magnitude_zero_point: float, counts_zero_point: float, pixel_scale: float) -> NoiseModel:
    """Builds the model from an exposure (seconds per exposure), read noise (electrons), sky (mag/arcsec^2),
    the zero point (magnitude of 1 electron/s) and the AB magnitude of one image count."""
    total_time = exposure_time * num_exposures
    electrons_per_count = 10 ** (-0.4 * (counts_zero_point - magnitude_zero_point)) * total_time
    sky_electrons = 10 ** (-0.4 * (sky_brightness - magnitude_zero_point)) * pixel_scale**2 * total_time
    read_noise_electrons = read_noise * math.sqrt(num_exposures)
    background_sigma = math.sqrt(read_noise_electrons**2 + sky_electrons) / electrons_per_count
    return cls(electrons_per_count, background_sigma, sky_electrons, read_noise_electrons)

  def add_gaussian(self, key: jax.Array, image: jax.Array) -> jax.Array:
    """image + N(0, sigma^2) with sigma^2 = background_sigma^2 + max(image, 0) / electrons_per_count.

    The Gaussian approximation of shot noise plus sky and read noise that lenstronomy's SimulationAPI uses;
    the sum of the two independent Gaussians is drawn as one.
    """
    variance = self.background_sigma**2 + jnp.maximum(image, 0) / self.electrons_per_count
    return image + jnp.sqrt(variance) * jax.random.normal(key, image.shape, image.dtype)

  def add_poisson(self, key: jax.Array, image: jax.Array) -> jax.Array:
    """Exact Poisson counts of source plus sky electrons, sky subtracted, plus Gaussian read noise, in counts."""
    shot_key, read_key = jax.random.split(key)
    expected = jnp.maximum(image, 0) * self.electrons_per_count + self.sky_electrons
    electrons = jax.random.poisson(shot_key, expected, image.shape).astype(image.dtype)
    read = self.read_noise_electrons * jax.random.normal(read_key, image.shape, image.dtype)
    return (electrons - self.sky_electrons + read) / self.electrons_per_count
