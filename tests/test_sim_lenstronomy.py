"""lensjax.sim against lenstronomy 1.14 (float64), the reference implementation of the conventions.

lenstronomy is the optional `bench` extra; without it this file is skipped (the physics tests in
test_sim_profiles.py and test_sim_simulator.py do not need it).
"""

import numpy as np
import pytest

pytest.importorskip("lenstronomy")

from lenstronomy.Data.imaging_data import ImageData  # noqa: E402
from lenstronomy.Data.psf import PSF  # noqa: E402
from lenstronomy.ImSim.image_model import ImageModel  # noqa: E402
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.LensModel.Profiles.shear import Shear  # noqa: E402
from lenstronomy.LensModel.Profiles.sie import SIE  # noqa: E402
from lenstronomy.LightModel.light_model import LightModel  # noqa: E402
from lenstronomy.LightModel.Profiles.sersic import SersicElliptic  # noqa: E402

from lensjax.config import SimConfig  # noqa: E402
from lensjax.sim import Simulator, profiles, scenes  # noqa: E402


def _points(count=4000, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(-2.5, 2.5, (2, count))


@pytest.mark.parametrize("theta_E, e1, e2, cx, cy", [
    (1.1, 0.1, -0.2, 0.05, -0.03), (0.6, 0.3, 0.1, 0.0, 0.0), (1.5, -0.25, 0.05, -0.1, 0.2),
    (0.9, 1e-9, 0.0, 0.0, 0.0)])
def test_sie_deflection_matches_lenstronomy(theta_E, e1, e2, cx, cy):
  x, y = _points()
  expected = SIE().derivatives(x, y, theta_E, e1, e2, cx, cy)
  got = profiles.sie_deflection(x.astype(np.float32), y.astype(np.float32), theta_E, e1, e2, cx, cy)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_shear_deflection_matches_lenstronomy():
  x, y = _points()
  expected = Shear().derivatives(x, y, 0.04, -0.07, 0.3, -0.1)
  got = profiles.shear_deflection(x.astype(np.float32), y.astype(np.float32), 0.04, -0.07, 0.3, -0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("amp, R_sersic, n_sersic, e1, e2", [
    (3.0, 0.4, 3.3, 0.1, -0.2), (120.0, 0.08, 0.6, -0.3, 0.2), (1.0, 1.2, 6.0, 0.0, 0.05)])
def test_sersic_ellipse_matches_lenstronomy(amp, R_sersic, n_sersic, e1, e2):
  x, y = _points()
  expected = SersicElliptic().function(x, y, amp, R_sersic, n_sersic, e1, e2, 0.05, 0.02)
  got = profiles.sersic_ellipse(x.astype(np.float32), y.astype(np.float32), amp, R_sersic, n_sersic, e1, e2,
                                0.05, 0.02)
  # Relative to the peak far out: float32 loses relative precision in exp(-50) and underflows below 1e-38.
  np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7 * expected.max())


def _lenstronomy_images(config, scene):
  """observed, lens, arcs of one scene rendered by lenstronomy with lensjax's grid and PSF."""
  size, scale = config.image_size, config.pixel_scale
  origin = -(size - 1) / 2 * scale
  data = ImageData(image_data=np.zeros((size, size)), ra_at_xy_0=origin, dec_at_xy_0=origin,
                   transform_pix2angle=np.diag([scale, scale]))
  psf = PSF(psf_type="GAUSSIAN", fwhm=config.psf_fwhm, truncation=config.psf_truncation)
  numerics = dict(supersampling_factor=config.supersampling)
  kwargs = scenes.scene_to_lenstronomy(scene)
  arcs = ImageModel(data, psf, lens_model_class=LensModel(kwargs["lens"][0]),
                    source_model_class=LightModel(kwargs["source_light"][0]),
                    kwargs_numerics=numerics).image(kwargs_lens=kwargs["lens"][1],
                                                    kwargs_source=kwargs["source_light"][1])
  lens = ImageModel(data, psf, lens_light_model_class=LightModel(kwargs["lens_light"][0]),
                    kwargs_numerics=numerics).image(kwargs_lens_light=kwargs["lens_light"][1])
  observed = lens + arcs
  if kwargs["field_light"][0]:
    observed = observed + ImageModel(
        data, psf, lens_light_model_class=LightModel(kwargs["field_light"][0]),
        kwargs_numerics=numerics).image(kwargs_lens_light=kwargs["field_light"][1])
  return dict(observed=observed, lens=lens, arcs=arcs)


def test_whole_images_with_psf_supersampling_shear_clumps_and_field_galaxies_match_lenstronomy():
  config = SimConfig(image_size=48, supersampling=2, psf_fwhm=0.08, field_galaxies_mean=3.0, lens_fraction=0.7,
                     shear_sigma=0.08, shear_max=0.2)
  simulator = Simulator(config, seed=5)
  indices = np.arange(6)
  ours = simulator.render(indices)
  batch_scenes = simulator.scenes(indices)
  assert 0 < ours["params"]["is_lens"].sum() < len(indices)
  assert ours["params"]["n_clumps"].max() > 0 and ours["params"]["n_field_galaxies"].max() > 0
  for i in indices:
    theirs = _lenstronomy_images(config, {name: values[i] for name, values in batch_scenes.items()})
    for channel in ("observed", "lens", "arcs"):
      peak = max(theirs[channel].max(), 1e-30)
      np.testing.assert_allclose(ours[channel][i], theirs[channel], rtol=0, atol=2e-5 * peak)
