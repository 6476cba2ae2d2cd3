"""Lens and light profiles in lenstronomy's parametrisation: SIE, external shear, elliptical Sersic, Gaussian.

Conventions (lenstronomy 1.14, see `docs/simulator.md`):
  * Angles are in arcsec. `x` runs along image columns, `y` along image rows.
  * Ellipticity: e1 = (1 - q)/(1 + q) cos 2phi, e2 = (1 - q)/(1 + q) sin 2phi, where q is the minor/major axis
    ratio and phi the major-axis angle from +x, counter-clockwise.
  * SIE `theta_E` and Sersic `R_sersic` are product-averaged ("circularised") radii, sqrt(major * minor).
  * Sersic `amp` is the surface brightness at R_sersic (image units per arcsec^2);
    b_n = 1.9992 n - 0.3271 (lenstronomy's approximation, kept for parity).

Every function takes arrays of any broadcastable shape and works in float32 and float64. In float32 the SIE
is finite and accurate at q = 1 and at the lens centre (lenstronomy's own form is NaN at q = 1 in float32).
When a parameter is a concrete number (not traced by `jax.jit`), its range is checked and a `ValueError` names it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.sim import fastmath

ArrayLike = jax.typing.ArrayLike

# lenstronomy's core of the SIE (`SIE._s_scale`), in arcsec: keeps the lens centre finite.
SIE_CORE = 1e-10
# lenstronomy floors Sersic radii at this value (arcsec) so the centre and R_sersic = 0 stay finite.
SERSIC_MIN_RADIUS = 1e-4
# lenstronomy caps |e| at this value (q >= 5e-5).
MAX_ELLIPTICITY_MODULUS = 0.9999
# Below this value of f = sqrt(1 - q^2) the SIE uses its series in f (exact form is 0/0 at q = 1).
_SIE_SERIES_BELOW_F = 1e-3


def _check_range(name: str, value: ArrayLike, low: float, high: float, *, low_open: bool = False) -> None:
  """Raises ValueError if a concrete `value` has NaNs or leaves [low, high] ((low, high] if `low_open`)."""
  if isinstance(value, jax.core.Tracer):
    return
  array = np.asarray(value, dtype=np.float64)
  below = array <= low if low_open else array < low
  if np.isnan(array).any() or below.any() or (array > high).any():
    bracket = "(" if low_open else "["
    raise ValueError(f"{name} must lie in {bracket}{low}, {high}] (and not be NaN); got {value!r}")


def check_ellipticity(name: str, e1: ArrayLike, e2: ArrayLike) -> None:
  """Raises ValueError unless concrete e1, e2 are finite with e1^2 + e2^2 < 1."""
  _check_range(f"{name} e1", e1, -1.0, 1.0)
  _check_range(f"{name} e2", e2, -1.0, 1.0)
  if isinstance(e1, jax.core.Tracer) or isinstance(e2, jax.core.Tracer):
    return
  modulus = np.hypot(np.asarray(e1, np.float64), np.asarray(e2, np.float64))
  if (modulus >= 1.0).any():
    raise ValueError(f"{name} ellipticity sqrt(e1^2 + e2^2) must be < 1; got e1={e1!r}, e2={e2!r}")


def ellipticity_to_phi_q(e1: ArrayLike, e2: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """(e1, e2) -> (phi, q): major-axis angle in radians from +x (counter-clockwise) and axis ratio minor/major."""
  e1, e2 = jnp.asarray(e1), jnp.asarray(e2)
  phi = 0.5 * jnp.arctan2(e2, e1)
  modulus = jnp.minimum(jnp.sqrt(e1 * e1 + e2 * e2), MAX_ELLIPTICITY_MODULUS)
  return phi, (1 - modulus) / (1 + modulus)


def phi_q_to_ellipticity(phi: ArrayLike, q: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """(phi, q) -> (e1, e2), the inverse of `ellipticity_to_phi_q`."""
  phi, q = jnp.asarray(phi), jnp.asarray(q)
  modulus = (1 - q) / (1 + q)
  return modulus * jnp.cos(2 * phi), modulus * jnp.sin(2 * phi)


def sie_deflection(x: ArrayLike, y: ArrayLike, theta_E: ArrayLike, e1: ArrayLike, e2: ArrayLike,
                   center_x: ArrayLike = 0.0, center_y: ArrayLike = 0.0) -> tuple[jax.Array, jax.Array]:
  """Deflection (alpha_x, alpha_y) in arcsec of lenstronomy's `SIE` at image-plane positions (x, y) in arcsec.

  Convergence kappa = theta_E / (2 sqrt(q x'^2 + y'^2 / q)) in the frame (x', y') of the major axis, so the
  mean convergence inside the ellipse q x'^2 + y'^2/q = theta_E^2 is 1. Kormann et al. (1994) closed form with
  b = theta_E sqrt(q), f = sqrt(1 - q^2), psi = sqrt(q^2 (s^2 + x'^2) + y'^2) and lenstronomy's core s:
    alpha'_x = b/f arctan(f x' / (psi + s)),  alpha'_y = b/f arctanh(f y' / (psi + q^2 s)),
  rotated back to (x, y). For f < 1e-3 (q within 5e-7 of 1) the first two terms of the series in f are used,
  which also gives the singular isothermal sphere alpha = theta_E (x, y)/r exactly at q = 1.
  """
  _check_range("SIE theta_E", theta_E, 0.0, np.inf)
  check_ellipticity("SIE", e1, e2)
  x, y, theta_E, e1, e2 = (jnp.asarray(a) for a in (x, y, theta_E, e1, e2))
  dtype = jnp.result_type(x, y, theta_E, e1, e2, float)
  x, y, theta_E, e1, e2 = (a.astype(dtype) for a in (x, y, theta_E, e1, e2))
  phi = 0.5 * jnp.arctan2(e2, e1)
  cos_phi, sin_phi = jnp.cos(phi), jnp.sin(phi)
  modulus = jnp.minimum(jnp.sqrt(e1 * e1 + e2 * e2), MAX_ELLIPTICITY_MODULUS)
  q = (1 - modulus) / (1 + modulus)
  # 1 - q^2 = 4c / (1 + c)^2 exactly; this form has no cancellation as q -> 1.
  f = 2 * jnp.sqrt(modulus) / (1 + modulus)
  sqrt_q = jnp.sqrt(q)
  b = theta_E * sqrt_q
  core = SIE_CORE / sqrt_q
  dx, dy = x - center_x, y - center_y
  x_major = cos_phi * dx + sin_phi * dy
  y_major = -sin_phi * dx + cos_phi * dy
  psi = jnp.sqrt(q * q * (core * core + x_major * x_major) + y_major * y_major)
  ratio_x = x_major / (psi + core)
  ratio_y = y_major / (psi + q * q * core)
  use_series = f < _SIE_SERIES_BELOW_F
  f_exact = jnp.where(use_series, 1.0, f)
  u_x, u_y = f_exact * ratio_x, f_exact * ratio_y
  # |u_y| < 1 since |y'| <= psi.
  major_exact = fastmath.arctan(u_x) / f_exact
  minor_exact = fastmath.arctanh(u_y) / f_exact
  f_squared_third = f * f / 3
  major_series = ratio_x * (1 - f_squared_third * ratio_x * ratio_x)
  minor_series = ratio_y * (1 + f_squared_third * ratio_y * ratio_y)
  alpha_major = b * jnp.where(use_series, major_series, major_exact)
  alpha_minor = b * jnp.where(use_series, minor_series, minor_exact)
  return cos_phi * alpha_major - sin_phi * alpha_minor, sin_phi * alpha_major + cos_phi * alpha_minor


def shear_deflection(x: ArrayLike, y: ArrayLike, gamma1: ArrayLike, gamma2: ArrayLike,
                     ra_0: ArrayLike = 0.0, dec_0: ArrayLike = 0.0) -> tuple[jax.Array, jax.Array]:
  """Deflection (alpha_x, alpha_y) in arcsec of lenstronomy's external `SHEAR` centred at (ra_0, dec_0).

  alpha_x = gamma1 dx + gamma2 dy, alpha_y = gamma2 dx - gamma1 dy; polar form gamma1 = gamma cos 2phi_gamma,
  gamma2 = gamma sin 2phi_gamma.
  """
  _check_range("shear gamma1", gamma1, -1.0, 1.0)
  _check_range("shear gamma2", gamma2, -1.0, 1.0)
  dx = jnp.asarray(x) - ra_0
  dy = jnp.asarray(y) - dec_0
  return gamma1 * dx + gamma2 * dy, gamma2 * dx - gamma1 * dy


def sersic_b_n(n_sersic: ArrayLike) -> jax.Array:
  """lenstronomy's b_n = 1.9992 n - 0.3271, floored at 1e-5 like lenstronomy."""
  return jnp.maximum(1.9992 * jnp.asarray(n_sersic) - 0.3271, 1e-5)


def sersic_total_flux_per_amp(R_sersic: ArrayLike, n_sersic: ArrayLike) -> jax.Array:
  """Total flux of a Sersic with amp = 1 (arcsec^2): 2 pi n R^2 e^b_n b_n^(-2n) Gamma(2n), any axis ratio.

  R_sersic is product-averaged, so the ellipse's area factor cancels. Divide a total flux by this to get `amp`.
  """
  R_sersic, n_sersic = jnp.asarray(R_sersic), jnp.asarray(n_sersic)
  b_n = sersic_b_n(n_sersic)
  log_flux = (jnp.log(2 * math.pi * n_sersic * R_sersic * R_sersic) + b_n - 2 * n_sersic * jnp.log(b_n)
              + jax.scipy.special.gammaln(2 * n_sersic))
  return jnp.exp(log_flux)


def sersic_ellipse(x: ArrayLike, y: ArrayLike, amp: ArrayLike, R_sersic: ArrayLike, n_sersic: ArrayLike,
                   e1: ArrayLike, e2: ArrayLike, center_x: ArrayLike = 0.0, center_y: ArrayLike = 0.0) -> jax.Array:
  """Surface brightness (units of `amp`, per arcsec^2) of lenstronomy's `SERSIC_ELLIPSE` at (x, y) in arcsec.

  I = amp exp(-b_n ((R / R_sersic)^(1/n) - 1)), R = sqrt(q x'^2 + y'^2 / q), written without trigonometry as
  R^2 = ((1 - e1) dx - e2 dy)^2 / nu^2 + (-e2 dx + (1 + e1) dy)^2 / nu^2, nu^2 = 1 - e1^2 - e2^2 (lenstronomy's
  `transform_e1e2_product_average`). R and R_sersic are floored at 1e-4 arcsec like lenstronomy; its
  `max_R_frac` cut at 1000 R_sersic lies far outside any stamp and is left out.
  In base 2 with `fastmath`: I = amp 2^(b_n log2(e) (1 - 2^(log2(R^2 / R_sersic^2) / (2n)))), one log2 and two
  exp2 per pixel, no sqrt.
  """
  _check_range("Sersic amp", amp, 0.0, np.inf)
  _check_range("Sersic R_sersic", R_sersic, 0.0, np.inf)
  _check_range("Sersic n_sersic", n_sersic, 0.2, 10.0)
  check_ellipticity("Sersic", e1, e2)
  x_scaled, y_scaled, radius_ratio_squared = sersic_scaled_coordinates(
      jnp.asarray(x) - center_x, jnp.asarray(y) - center_y, R_sersic, e1, e2)
  return sersic_of_radius(radius_ratio_squared, amp, n_sersic)


def sersic_scaled_coordinates(dx: ArrayLike, dy: ArrayLike, R_sersic: ArrayLike, e1: ArrayLike,
                              e2: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Offsets (dx, dy) from a Sersic's centre (arcsec) -> its circularised frame, in units of R_sersic.

  Returns (x_s, y_s, R^2 / R_sersic^2): the isophotes are the circles x_s^2 + y_s^2 = const, and the map is
  linear with determinant 1 / R_sersic^2 (areas scale by a constant). R is floored as in `sersic_ellipse`.
  """
  R_sersic = jnp.maximum(jnp.asarray(R_sersic), SERSIC_MIN_RADIUS)
  e1, e2 = jnp.asarray(e1), jnp.asarray(e2)
  inverse_nu = 1 / jnp.sqrt(jnp.maximum(jnp.abs(1 - e1 * e1 - e2 * e2), 1e-6))
  scale = inverse_nu / R_sersic
  x_scaled = ((1 - e1) * scale) * dx - (e2 * scale) * dy
  y_scaled = (1 + e1) * scale * dy - (e2 * scale) * dx
  radius_ratio_squared = jnp.maximum(x_scaled * x_scaled + y_scaled * y_scaled,
                                     (SERSIC_MIN_RADIUS / R_sersic) ** 2)
  return x_scaled, y_scaled, radius_ratio_squared


def sersic_of_radius(radius_ratio_squared: jax.Array, amp: ArrayLike, n_sersic: ArrayLike) -> jax.Array:
  """The Sersic law amp exp(-b_n ((R / R_sersic)^(1/n) - 1)) of (R / R_sersic)^2, with `fastmath` in base 2."""
  b_n_log2e = sersic_b_n(n_sersic) * (1 / math.log(2))
  power = fastmath.exp2(fastmath.log2(radius_ratio_squared) * (0.5 / n_sersic))
  return amp * fastmath.exp2(b_n_log2e - b_n_log2e * power)


def gaussian(x: ArrayLike, y: ArrayLike, amp: ArrayLike, sigma: ArrayLike,
             center_x: ArrayLike = 0.0, center_y: ArrayLike = 0.0) -> jax.Array:
  """Surface brightness of lenstronomy's circular `GAUSSIAN` light: amp is the total flux, sigma in arcsec.

  I = amp / (2 pi sigma^2) exp(-r^2 / (2 sigma^2)).
  """
  _check_range("Gaussian amp", amp, 0.0, np.inf)
  _check_range("Gaussian sigma", sigma, 0.0, np.inf, low_open=True)
  dx = jnp.asarray(x) - center_x
  dy = jnp.asarray(y) - center_y
  inverse_two_var = 0.5 / (jnp.asarray(sigma) ** 2)
  exponent_log2e = (dx * dx + dy * dy) * (-inverse_two_var / math.log(2))
  return (amp * inverse_two_var / math.pi) * fastmath.exp2(exponent_log2e)
