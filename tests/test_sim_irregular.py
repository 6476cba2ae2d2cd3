"""The harder simulations: irregular sources (`source_model='irregular'`) and crowded fields.

Determinism by (seed, index), what each option leaves alone, flux conservation, masks, and the morphology.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lensjax.config import SimConfig
from lensjax.sim import Simulator, instrument, irregular, masks, profiles, scenes

SMALL = SimConfig(image_size=32, pixel_scale=0.08, render_chunk=8, theta_E_min=0.4, theta_E_max=0.9,
                  lens_R_sersic_min=0.2, lens_R_sersic_max=0.6)
HARD = dataclasses.replace(SMALL, source_model="irregular", crowd_galaxies_mean=scenes.CROWDED_FIELD_GALAXIES)
INDICES = np.arange(24)


@pytest.fixture(scope="module")
def easy():
  return Simulator(SMALL, seed=5).render(INDICES)


@pytest.fixture(scope="module")
def hard():
  return Simulator(HARD, seed=5).render(INDICES)


def test_the_same_index_gives_the_same_bits_in_any_batch_with_both_options(hard):
  simulator = Simulator(HARD, seed=5)
  picks = np.array([23, 0, 11, 5, 17])
  longer = simulator.render(np.concatenate([np.arange(30, 41), picks]))
  for batch, rows, offset in ((simulator.render(picks), picks, 0), (longer, picks, 11),
                              (simulator.render(picks[:1]), picks[:1], 0)):
    for name in ("observed", "lens", "arcs", "masks"):
      np.testing.assert_array_equal(batch[name][offset:], hard[name][rows])
    np.testing.assert_array_equal(batch["params"]["n_field_galaxies"][offset:],
                                  hard["params"]["n_field_galaxies"][rows])
  other_seed = Simulator(HARD, seed=6).render(picks)
  assert not np.array_equal(other_seed["arcs"], hard["arcs"][picks])


@pytest.mark.slow
def test_the_same_index_gives_the_same_bits_in_another_process_on_two_devices_with_both_options(hard, tmp_path):
  script = (
      "import json, sys, numpy as np\n"
      "from lensjax.config import SimConfig\n"
      "from lensjax.sim import Simulator\n"
      "out = Simulator(SimConfig(**json.loads(sys.argv[1])), seed=5).render(np.arange(16)[::-1])\n"
      "np.savez(sys.argv[2], observed=out['observed'], masks=out['masks'])\n")
  path = tmp_path / "other.npz"
  subprocess.run([sys.executable, "-c", script, json.dumps(dataclasses.asdict(HARD)), str(path)], check=True,
                 env={**os.environ, "JAX_NUM_CPU_DEVICES": "2"})
  other = np.load(path)
  np.testing.assert_array_equal(other["observed"], hard["observed"][15::-1])
  np.testing.assert_array_equal(other["masks"], hard["masks"][15::-1])


def test_the_options_change_the_source_and_add_galaxies_but_keep_the_lenses(easy, hard):
  lens = easy["params"]["is_lens"] == 1
  assert 4 < lens.sum() < 20
  for name in ("is_lens", "theta_E", "lens_e1", "source_x", "source_flux", "n_clumps"):
    np.testing.assert_array_equal(hard["params"][name], easy["params"][name])
  np.testing.assert_array_equal(hard["lens"], easy["lens"])
  np.testing.assert_array_equal(hard["masks"][..., 0], easy["masks"][..., 0])
  # Other arcs from the same source flux; the extra galaxies add light to the observed channel only.
  assert not np.allclose(hard["arcs"][lens], easy["arcs"][lens], rtol=0.05)
  assert (hard["arcs"][~lens] == 0).all()
  extra_light = hard["observed"][~lens] - easy["observed"][~lens]
  assert (extra_light >= -1e-5 * easy["observed"].max()).all()
  assert (extra_light.sum(axis=(1, 2)) > 0).mean() > 0.8


def test_crowded_fields_hold_about_ten_more_field_galaxies(easy, hard):
  extra = hard["params"]["n_field_galaxies"] - easy["params"]["n_field_galaxies"]
  assert (extra >= 0).all()
  assert 7 < extra.mean() < 13   # Poisson(10) over 24 images: the mean lies within 3 sigma (1.9)


def test_masks_follow_the_rule_on_the_lensed_irregular_source(hard):
  lens = hard["params"]["is_lens"] == 1
  np.testing.assert_array_equal(hard["masks"][..., 1], masks.percentile_mask(hard["arcs"], 95.0))
  np.testing.assert_array_equal(hard["masks"][..., 0], masks.percentile_mask(hard["lens"], 99.0))
  assert (hard["masks"][lens, ..., 1].sum(axis=(1, 2)) > 0).all()
  assert (hard["masks"][..., 0].sum(axis=(1, 2)) > 0).all()
  assert hard["masks"][~lens, ..., 1].sum() == 0


def _irregular_scene(**overrides):
  """A hand-made irregular source: strong twist and modes, two knots, a companion."""
  scene = dict(source_x=0.05, source_y=-0.04, source_e1=0.25, source_e2=-0.1, source_R_sersic=0.2,
               source_n_sersic=1.5, source_amp=100.0, source_twist=2.2, source_mode_a1=0.3, source_mode_a2=0.45,
               source_mode_a3=0.15, source_mode_psi1=1.0, source_mode_psi2=4.0, source_mode_psi3=2.5,
               n_knots=2.0, knot_x=[0.1] + [0.0] * 7, knot_y=[0.2] + [0.0] * 7, knot_sigma=[0.02] * 8,
               knot_flux=[7.0, 3.0] + [0.0] * 6, companion_x=0.4, companion_y=0.1, companion_e1=0.1,
               companion_e2=0.0, companion_R_sersic=0.08, companion_n_sersic=1.0, companion_amp=50.0,
               companion_flux=1.0, n_clumps=1.0, clump_x=[-0.1, 0.0], clump_y=[0.0, 0.0], clump_sigma=[0.03, 0.03],
               clump_flux=[4.0, 0.0])
  scene.update(overrides)
  return {name: jnp.asarray(value, jnp.float32) for name, value in scene.items()}


def _grid(half_width, step):
  centres = np.arange(-half_width + step / 2, half_width, step, dtype=np.float32)
  return jnp.asarray(centres)[None, :], jnp.asarray(centres)[:, None]


def test_the_twisted_perturbed_body_holds_the_flux_of_its_plain_sersic():
  # The twist keeps areas and the modes average to zero around each isophote: same integral as the plain
  # Sersic on the same (truncated, 6 arcsec wide) grid, and the analytic total within the truncation loss.
  x, y = _grid(3.0, 0.006)
  body = jax.jit(irregular.body)
  flux = float(jnp.sum(body(x, y, _irregular_scene()))) * 0.006**2
  plain = float(jnp.sum(profiles.sersic_ellipse(x, y, 100.0, 0.2, 1.5, 0.25, -0.1, 0.05, -0.04))) * 0.006**2
  assert flux == pytest.approx(plain, rel=1e-4)
  assert flux == pytest.approx(100.0 * float(profiles.sersic_total_flux_per_amp(0.2, 1.5)), rel=2e-3)
  # ... while the light is redistributed: the body is far from point-symmetric, the plain Sersic is symmetric.
  image = np.asarray(body(x, y, _irregular_scene(source_x=0.003, source_y=0.003)))
  assert np.abs(image - image[::-1, ::-1]).sum() / image.sum() > 0.2


# Compact sources (R_sersic <= 0.12", n <= 1.5) so that a 2.56" stamp of 0.01" pixels holds all but ~1e-4 of the
# flux and resolves the smallest knots (sigma >= 0.008").
COMPACT = dataclasses.replace(SMALL, source_model="irregular", source_R_sersic_max=0.12, source_n_sersic_max=1.5,
                              image_size=256, pixel_scale=0.01, psf="none")


@pytest.fixture(scope="module")
def compact_scenes():
  batch_scenes = Simulator(COMPACT, seed=1).scenes(np.arange(16))
  lenses = np.flatnonzero(batch_scenes["is_lens"] == 1)
  assert len(lenses) >= 4 and (batch_scenes["n_knots"][lenses] >= irregular.KNOTS_MIN).all()
  return {name: jnp.asarray(value[lenses]) for name, value in batch_scenes.items()}


@pytest.fixture(scope="module")
def render_compact():
  optics = scenes.Optics.from_config(COMPACT)
  return jax.jit(lambda batch_scenes: scenes.render_scenes(batch_scenes, optics)["arcs"])


def _centred_and_unlensed(batch_scenes):
  """The scenes with no deflection and every source component moved so the source sits at the origin."""
  out = dict(batch_scenes, theta_E=jnp.zeros_like(batch_scenes["theta_E"]),
             gamma1=jnp.zeros_like(batch_scenes["gamma1"]), gamma2=jnp.zeros_like(batch_scenes["gamma2"]))
  for axis in ("x", "y"):
    shift = batch_scenes[f"source_{axis}"]
    for name in (f"source_{axis}", f"companion_{axis}"):
      out[name] = batch_scenes[name] - shift
    for name in (f"knot_{axis}", f"clump_{axis}"):
      out[name] = batch_scenes[name] - shift[:, None]
  return out


def test_sampled_irregular_sources_integrate_to_their_declared_flux(compact_scenes):
  x, y = _grid(1.5, 0.005)
  source = jax.jit(lambda scene: jnp.sum(scenes.source_surface_brightness(scene, x, y)) * 0.005**2)
  centred = _centred_and_unlensed(compact_scenes)
  for i in range(len(centred["theta_E"])):
    flux = float(source({name: value[i] for name, value in centred.items()}))
    assert flux == pytest.approx(float(compact_scenes["source_flux"][i]), rel=2e-3)


def test_without_deflection_the_arcs_hold_the_whole_irregular_source_flux(compact_scenes, render_compact):
  # Point-sampled 0.01" pixels (no supersampling) leave a few 1e-3 of sampling error on the smallest sources.
  arcs = np.asarray(render_compact(_centred_and_unlensed(compact_scenes)))
  np.testing.assert_allclose(arcs.sum(axis=(1, 2)), compact_scenes["source_flux"], rtol=5e-3)


def test_lensing_keeps_the_irregular_sources_surface_brightness(compact_scenes, render_compact):
  # Without PSF and supersampling, each arc pixel is the source's surface brightness at beta(theta) x area.
  arcs = np.asarray(render_compact(compact_scenes))
  centres = instrument.pixel_centres(COMPACT.image_size, COMPACT.pixel_scale)
  x, y = jnp.asarray(centres)[None, :], jnp.asarray(centres)[:, None]

  @jax.jit
  def traced_back(s):
    sie = profiles.sie_deflection(x, y, s["theta_E"], s["lens_e1"], s["lens_e2"], s["lens_center_x"],
                                  s["lens_center_y"])
    shear = profiles.shear_deflection(x, y, s["gamma1"], s["gamma2"], s["lens_center_x"], s["lens_center_y"])
    return scenes.source_surface_brightness(s, x - sie[0] - shear[0], y - sie[1] - shear[1])

  for i in range(len(arcs)):
    expected = traced_back({name: value[i] for name, value in compact_scenes.items()})
    np.testing.assert_allclose(arcs[i], np.asarray(expected) * COMPACT.pixel_scale**2, rtol=1e-4,
                               atol=1e-6 * arcs[i].max())


def test_lenstronomy_conversion_lists_crowd_galaxies_and_refuses_irregular_sources():
  batch_scenes = Simulator(HARD, seed=5).scenes(INDICES[:4])
  irregular_keys = irregular.SCALAR_KEYS + irregular.KNOT_KEYS
  for i in range(4):
    scene = {name: value[i] for name, value in batch_scenes.items()}
    with pytest.raises(ValueError, match="irregular source .* has no lenstronomy equivalent"):
      scenes.scene_to_lenstronomy(scene)
    crowded_only = {name: value for name, value in scene.items() if name not in irregular_keys}
    field_models = scenes.scene_to_lenstronomy(crowded_only)["field_light"][0]
    assert len(field_models) == scene["n_field_galaxies"] + scene["n_crowd_galaxies"]
