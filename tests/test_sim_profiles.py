"""Physics of the lens and light profiles, without lenstronomy (its comparison is test_sim_lenstronomy.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.sim import profiles


def _points(count=2000, half_width=2.0, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-half_width, half_width, (2, count)).astype(np.float32)


def test_sie_at_q_equal_1_is_the_singular_isothermal_sphere_in_float32():
  x, y = _points()
  theta_E, cx, cy = 1.2, 0.1, -0.05
  alpha_x, alpha_y = profiles.sie_deflection(x, y, theta_E, 0.0, 0.0, cx, cy)
  r = np.hypot(x - cx, y - cy)
  np.testing.assert_allclose(alpha_x, theta_E * (x - cx) / r, rtol=2e-6, atol=2e-7)
  np.testing.assert_allclose(alpha_y, theta_E * (y - cy) / r, rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("modulus", [1e-12, 1e-8, 1e-7, 3e-7, 1e-5, 1e-3])
def test_sie_is_finite_and_continuous_as_q_approaches_1(modulus):
  x, y = _points(500)
  alpha_x, alpha_y = profiles.sie_deflection(x, y, 1.0, modulus * 0.6, modulus * 0.8)
  sis_x, sis_y = profiles.sie_deflection(x, y, 1.0, 0.0, 0.0)
  assert np.isfinite(alpha_x).all() and np.isfinite(alpha_y).all()
  # The deflection changes by O(|e|) from the SIS; 3 |e| bounds it for |alpha| = theta_E = 1.
  np.testing.assert_allclose(alpha_x, sis_x, atol=3 * modulus + 2e-6)
  np.testing.assert_allclose(alpha_y, sis_y, atol=3 * modulus + 2e-6)


def test_sie_is_finite_at_the_lens_centre():
  for e1, e2 in [(0.0, 0.0), (0.2, -0.1)]:
    alpha = profiles.sie_deflection(np.float32(0.3), np.float32(-0.2), 1.0, e1, e2, 0.3, -0.2)
    assert np.isfinite(alpha).all() and np.abs(alpha).max() < 1e-6


def _convergence(x, y, theta_E, e1, e2):
  """kappa = div(alpha) / 2 by automatic differentiation, at each point."""
  def divergence(px, py):
    jx = jax.grad(lambda u: profiles.sie_deflection(u, py, theta_E, e1, e2)[0])(px)
    jy = jax.grad(lambda v: profiles.sie_deflection(px, v, theta_E, e1, e2)[1])(py)
    return 0.5 * (jx + jy)
  return jax.vmap(divergence)(jnp.asarray(x), jnp.asarray(y))


@pytest.mark.parametrize("theta_E, q, angle", [(1.0, 0.6, 0.4), (0.7, 0.85, -1.1), (1.3, 1.0, 0.0)])
def test_sie_convergence_is_the_product_averaged_isothermal_ellipse(theta_E, q, angle):
  e1, e2 = (float(v) for v in profiles.phi_q_to_ellipticity(angle, q))
  x, y = _points(300, seed=1)
  x_major = math.cos(angle) * x + math.sin(angle) * y
  y_major = -math.sin(angle) * x + math.cos(angle) * y
  expected = theta_E / (2 * np.sqrt(q * x_major**2 + y_major**2 / q))
  np.testing.assert_allclose(_convergence(x, y, theta_E, e1, e2), expected, rtol=2e-4)


@pytest.mark.parametrize("theta_E, q, angle", [(1.0, 0.5, 0.3), (0.8, 0.9, 2.0)])
def test_mean_convergence_inside_the_einstein_ellipse_is_one(theta_E, q, angle):
  # Gauss: the mass inside a curve is the flux of alpha through it / 2; the ellipse
  # q x'^2 + y'^2 / q = theta_E^2 has area pi theta_E^2.
  e1, e2 = (float(v) for v in profiles.phi_q_to_ellipticity(angle, q))
  t = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
  x_major, y_major = theta_E / np.sqrt(q) * np.cos(t), theta_E * np.sqrt(q) * np.sin(t)
  normal_x, normal_y = theta_E * np.sqrt(q) * np.cos(t), theta_E / np.sqrt(q) * np.sin(t)   # n dl / dt
  x = np.cos(angle) * x_major - np.sin(angle) * y_major
  y = np.sin(angle) * x_major + np.cos(angle) * y_major
  alpha_x, alpha_y = (np.asarray(a, np.float64) for a in profiles.sie_deflection(
      x.astype(np.float32), y.astype(np.float32), theta_E, e1, e2))
  alpha_major = np.cos(angle) * alpha_x + np.sin(angle) * alpha_y
  alpha_minor = -np.sin(angle) * alpha_x + np.cos(angle) * alpha_y
  flux = np.mean(alpha_major * normal_x + alpha_minor * normal_y) * 2 * np.pi
  assert flux / (2 * np.pi * theta_E**2) == pytest.approx(1.0, abs=2e-5)


def test_shear_deflection_is_linear_in_shear_and_position():
  x, y = _points(100)
  ax1, ay1 = profiles.shear_deflection(x, y, 0.03, -0.02, 0.1, 0.2)
  ax2, ay2 = profiles.shear_deflection(x, y, -0.01, 0.05, 0.1, 0.2)
  ax12, ay12 = profiles.shear_deflection(x, y, 2 * 0.03 - 0.01, 2 * -0.02 + 0.05, 0.1, 0.2)
  np.testing.assert_allclose(ax12, 2 * np.asarray(ax1) + ax2, atol=1e-7)
  np.testing.assert_allclose(ay12, 2 * np.asarray(ay1) + ay2, atol=1e-7)
  np.testing.assert_allclose(ax1, 0.03 * (x - 0.1) - 0.02 * (y - 0.2), atol=1e-7)
  np.testing.assert_allclose(ay1, -0.02 * (x - 0.1) - 0.03 * (y - 0.2), atol=1e-7)
  # Pure shear: traceless, |alpha| = |gamma| r, and zero at (ra_0, dec_0).
  np.testing.assert_allclose(np.hypot(ax1, ay1), math.hypot(0.03, 0.02) * np.hypot(x - 0.1, y - 0.2), rtol=1e-5)
  assert profiles.shear_deflection(0.1, 0.2, 0.03, -0.02, 0.1, 0.2) == (0.0, 0.0)


def test_ellipticity_conversions_round_trip():
  phi = np.linspace(-1.5, 1.5, 13)
  q = np.linspace(0.3, 1.0, 13)
  e1, e2 = profiles.phi_q_to_ellipticity(phi, q)
  phi_back, q_back = profiles.ellipticity_to_phi_q(e1, e2)
  np.testing.assert_allclose(q_back, q, atol=1e-6)
  round_q = q < 1   # the angle is undefined for a circle
  np.testing.assert_allclose(np.asarray(phi_back)[round_q], phi[round_q], atol=1e-5)


@pytest.mark.parametrize("n_sersic", [0.5, 1.0, 2.5, 4.0, 6.0])
def test_half_the_sersic_flux_lies_inside_R_sersic_and_the_total_matches_the_formula(n_sersic):
  # Radial integral of I(r) 2 pi r dr in float64 (r is the product-averaged radius of any axis ratio).
  with jax.enable_x64(True):
    r = np.geomspace(1e-7, 1e4, 200_001)
    intensity = np.asarray(profiles.sersic_ellipse(r, 0.0 * r, 1.0, 0.4, n_sersic, 0.0, 0.0))
    cumulative = np.concatenate([[0], np.cumsum(0.5 * (intensity[1:] * r[1:] + intensity[:-1] * r[:-1])
                                                * np.diff(r))]) * 2 * np.pi
    total = float(profiles.sersic_total_flux_per_amp(0.4, n_sersic))
  assert cumulative[-1] == pytest.approx(total, rel=1e-4)
  # b_n = 1.9992 n - 0.3271 is lenstronomy's approximation: the half-light radius is off by < 1.5 %.
  assert np.interp(0.4, r, cumulative) / total == pytest.approx(0.5, abs=0.015 if n_sersic < 1 else 0.004)


def test_elliptical_sersic_flux_inside_its_product_averaged_ellipse():
  # 2-D check of the elliptical coordinates: n = 1, q = 0.5, rotated, on a fine grid.
  e1, e2 = (float(v) for v in profiles.phi_q_to_ellipticity(0.7, 0.5))
  axis = np.linspace(-6, 6, 2401).astype(np.float32)
  x, y = axis[None, :], axis[:, None]
  image = np.asarray(profiles.sersic_ellipse(x, y, 1.0, 0.5, 1.0, e1, e2, 0.1, -0.1), np.float64)
  pixel_area = float(axis[1] - axis[0]) ** 2
  phi, q = 0.7, 0.5
  dx, dy = x - 0.1, y + 0.1
  x_major, y_major = np.cos(phi) * dx + np.sin(phi) * dy, -np.sin(phi) * dx + np.cos(phi) * dy
  inside = q * x_major**2 + y_major**2 / q <= 0.5**2
  total = float(profiles.sersic_total_flux_per_amp(0.5, 1.0))
  assert image.sum() * pixel_area == pytest.approx(total, rel=2e-3)
  assert image[inside].sum() * pixel_area / total == pytest.approx(0.5, abs=0.006)


def test_gaussian_integrates_to_amp():
  axis = np.linspace(-1, 1, 801).astype(np.float32)
  image = np.asarray(profiles.gaussian(axis[None, :], axis[:, None], 3.0, 0.07, 0.1, -0.2), np.float64)
  assert image.sum() * float(axis[1] - axis[0]) ** 2 == pytest.approx(3.0, rel=1e-4)


def test_float32_agrees_with_float64():
  x, y = _points(3000, half_width=2.0, seed=3)
  args_sie = (1.1, 0.15, -0.1, 0.02, -0.03)
  args_sersic = (250.0, 0.6, 3.7, 0.1, -0.05, 0.02, -0.03)
  sie32 = np.asarray(profiles.sie_deflection(x, y, *args_sie))
  sersic32 = np.asarray(profiles.sersic_ellipse(x, y, *args_sersic))
  with jax.enable_x64(True):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    sie64 = np.asarray(profiles.sie_deflection(x64, y64, *args_sie))
    sersic64 = np.asarray(profiles.sersic_ellipse(x64, y64, *args_sersic))
  assert sie64.dtype == np.float64 and sersic64.dtype == np.float64
  np.testing.assert_allclose(sie32, sie64, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sersic32, sersic64, rtol=2e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: profiles.sie_deflection(0.0, 0.0, -1.0, 0.0, 0.0), "SIE theta_E must lie in"),
    (lambda: profiles.sie_deflection(0.0, 0.0, 1.0, 0.8, 0.7), "SIE ellipticity"),
    (lambda: profiles.sie_deflection(0.0, 0.0, float("nan"), 0.0, 0.0), "not be NaN"),
    (lambda: profiles.sersic_ellipse(0.0, 0.0, 1.0, 0.5, 12.0, 0.0, 0.0), "Sersic n_sersic must lie in"),
    (lambda: profiles.sersic_ellipse(0.0, 0.0, -1.0, 0.5, 2.0, 0.0, 0.0), "Sersic amp"),
    (lambda: profiles.gaussian(0.0, 0.0, 1.0, 0.0), "Gaussian sigma must lie in \\(0"),
    (lambda: profiles.shear_deflection(0.0, 0.0, 1.5, 0.0), "shear gamma1"),
])
def test_out_of_range_parameters_raise_value_errors_naming_them(call, message):
  with pytest.raises(ValueError, match=message):
    call()
