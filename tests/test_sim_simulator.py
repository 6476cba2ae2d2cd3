"""`Simulator`: output contract, determinism by (seed, index), priors, masks, flux, rotation, bad input."""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lensjax.config import SimConfig
from lensjax.sim import PARAM_KEYS, Simulator, check_config, masks, scenes

SMALL = SimConfig(image_size=32, pixel_scale=0.08, render_chunk=8, theta_E_min=0.4, theta_E_max=0.9,
                  lens_R_sersic_min=0.2, lens_R_sersic_max=0.6, field_galaxies_mean=2.0)


@pytest.fixture(scope="module")
def simulator():
  return Simulator(SMALL, seed=7)


@pytest.fixture(scope="module")
def batch(simulator):
  return simulator.render(np.arange(64))


def test_render_returns_the_documented_arrays(batch):
  for name in ("observed", "lens", "arcs"):
    assert batch[name].shape == (64, 32, 32) and batch[name].dtype == np.float32
    assert np.isfinite(batch[name]).all()
  assert batch["masks"].shape == (64, 32, 32, 2) and batch["masks"].dtype == np.uint8
  assert set(np.unique(batch["masks"])) <= {0, 1}
  assert tuple(batch["params"]) == PARAM_KEYS
  assert all(v.shape == (64,) and v.dtype == np.float32 for v in batch["params"].values())
  # Noise is off: observed = lens + arcs + field galaxies (>= 0).
  assert (batch["observed"] - batch["lens"] - batch["arcs"] >= -1e-3 * batch["observed"].max()).all()
  assert (batch["lens"] >= 0).all() and (batch["arcs"] >= 0).all()


def test_the_same_index_gives_the_same_bits_in_any_batch(simulator, batch):
  indices = np.array([5, 0, 63, 17, 2])
  singles = [simulator.render([i]) for i in indices]
  odd = simulator.render(indices)                         # one chunk of 8, padded
  long = simulator.render(np.concatenate([np.arange(40), indices]))   # 6 chunks, the last one padded
  for row, index in enumerate(indices):
    for name in ("observed", "lens", "arcs", "masks"):
      np.testing.assert_array_equal(singles[row][name][0], batch[name][index])
      np.testing.assert_array_equal(odd[name][row], batch[name][index])
      np.testing.assert_array_equal(long[name][40 + row], batch[name][index])
    for name in PARAM_KEYS:
      assert odd["params"][name][row] == batch["params"][name][index]


def test_the_same_index_gives_the_same_bits_in_another_process_on_two_devices(batch, tmp_path):
  # The other process splits its 20 images over 2 CPU devices (one chunk per device per call).
  script = (
      "import json, sys, jax, numpy as np\n"
      "from lensjax.config import SimConfig\n"
      "from lensjax.sim import Simulator\n"
      "assert len(jax.local_devices()) == 2\n"
      "out = Simulator(SimConfig(**json.loads(sys.argv[1])), seed=7).render(np.arange(20)[::-1])\n"
      "np.savez(sys.argv[2], observed=out['observed'], masks=out['masks'], theta_E=out['params']['theta_E'])\n")
  path = tmp_path / "other.npz"
  subprocess.run([sys.executable, "-c", script, json.dumps(dataclasses.asdict(SMALL)), str(path)], check=True,
                 env={**os.environ, "JAX_NUM_CPU_DEVICES": "2"})
  other = np.load(path)
  np.testing.assert_array_equal(other["observed"], batch["observed"][19::-1])
  np.testing.assert_array_equal(other["masks"], batch["masks"][19::-1])
  np.testing.assert_array_equal(other["theta_E"], batch["params"]["theta_E"][19::-1])


def test_scenes_hold_the_scalars_and_the_slot_arrays(simulator, batch):
  batch_scenes = simulator.scenes(np.arange(5))
  assert set(batch_scenes) == set(scenes.SCENE_SCALAR_KEYS + scenes.CLUMP_KEYS + scenes.FIELD_KEYS)
  assert all(batch_scenes[name].shape == (5,) for name in scenes.SCENE_SCALAR_KEYS)
  assert all(batch_scenes[name].shape == (5, SMALL.clumps_max) for name in scenes.CLUMP_KEYS)
  assert all(batch_scenes[name].shape == (5, SMALL.field_galaxies_max) for name in scenes.FIELD_KEYS)
  np.testing.assert_array_equal(batch_scenes["theta_E"], batch["params"]["theta_E"][:5])
  # Slots beyond the drawn counts are empty.
  slot = np.arange(SMALL.field_galaxies_max)
  np.testing.assert_array_equal(batch_scenes["field_flux"] > 0, slot < batch_scenes["n_field_galaxies"][:, None])
  np.testing.assert_array_equal(batch_scenes["clump_flux"] > 0, np.arange(SMALL.clumps_max)
                                < batch_scenes["n_clumps"][:, None])


def test_seeds_give_different_datasets(batch):
  other = Simulator(SMALL, seed=8).render(np.arange(4))
  assert not np.array_equal(other["lens"], batch["lens"][:4])


def test_one_program_serves_every_request_size(simulator, caplog):
  simulator.render(np.arange(1))        # compiled once (or already, by the other tests)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING):
    for count in (1, 2, 3, 5, 9, 16, 17, 40):
      assert len(simulator.render(np.arange(100, 100 + count))["lens"]) == count
    # Another simulator with an equal config, any seed, reuses the compiled program.
    Simulator(dataclasses.replace(SMALL), seed=99).render(np.arange(3))
  assert not [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]


def test_non_lenses_have_no_arc_light_and_empty_arc_masks(batch):
  params = batch["params"]
  non_lens = params["is_lens"] == 0
  assert 10 < non_lens.sum() < 54   # lens_fraction 0.5 of 64
  assert (batch["arcs"][non_lens] == 0).all()
  assert batch["masks"][non_lens, ..., 1].sum() == 0
  assert (params["theta_E"][non_lens] == 0).all() and (params["arc_flux"][non_lens] == 0).all()
  assert (params["magnification"][non_lens] == 0).all() and (params["n_clumps"][non_lens] == 0).all()
  lens = ~non_lens
  assert (batch["arcs"][lens].max(axis=(1, 2)) > 0).all()
  assert ((params["theta_E"][lens] >= 0.4) & (params["theta_E"][lens] <= 0.9)).all()
  # The original percentile rule on 32 x 32: 11 lens pixels (p99) and 52 arc pixels (p95), ties aside.
  assert np.median(params["lens_mask_pixels"]) == 11
  assert np.median(params["arc_mask_pixels"][lens]) == 52


def test_masks_are_the_numpy_rule_applied_to_the_returned_channels(simulator, batch):
  np.testing.assert_array_equal(batch["masks"], simulator.masks.apply(batch["lens"], batch["arcs"]))
  np.testing.assert_array_equal(batch["masks"][..., 0], masks.percentile_mask(batch["lens"], 99.0))


def test_priors_and_measured_parameters_are_plausible(batch):
  params = batch["params"]
  lens = params["is_lens"] == 1
  assert np.median(params["magnification"][lens]) > 2
  assert (params["arc_snr"][lens] > 0).all() and (params["arc_peak"][lens] > 0).all()
  assert (params["n_clumps"] <= SMALL.clumps_max).all()
  assert (params["n_field_galaxies"] <= SMALL.field_galaxies_max).all()
  assert 1 < params["n_field_galaxies"].mean() < 3   # Poisson(2), capped at 4
  assert ((params["lens_flux"] >= 10**4.5) & (params["lens_flux"] <= 10**6)).all()
  # Lens light follows the mass within the misalignment scatter.
  assert np.abs(params["light_e1"] - params["lens_e1"]).max() < 0.15
  np.testing.assert_allclose(params["arc_flux"][lens], batch["arcs"][lens].sum(axis=(1, 2)), rtol=1e-4)


def _scene(**overrides):
  """A hand-made scene with every field of `scenes.sample_scene`: lens, source, 2 clumps, 1 field galaxy."""
  scene = dict(
      is_lens=1.0, theta_E=0.7, lens_e1=0.12, lens_e2=-0.05, lens_center_x=0.04, lens_center_y=-0.03,
      gamma1=0.03, gamma2=-0.02, light_e1=0.1, light_e2=-0.04, lens_R_sersic=0.5, lens_n_sersic=3.5,
      lens_amp=900.0, lens_flux=0.0, source_x=0.1, source_y=0.05, source_e1=0.2, source_e2=0.1,
      source_R_sersic=0.15, source_n_sersic=1.2, source_amp=2000.0, source_flux=0.0, n_clumps=2.0,
      n_field_galaxies=1.0,
      clump_x=[0.15, 0.0], clump_y=[0.0, 0.12], clump_sigma=[0.04, 0.06], clump_flux=[30.0, 50.0],
      field_x=[-0.9], field_y=[0.6], field_e1=[0.05], field_e2=[0.0], field_R_sersic=[0.2], field_n_sersic=[2.5],
      field_amp=[300.0], field_flux=[0.0])
  scene.update(overrides)
  return {name: np.asarray(value, np.float32) for name, value in scene.items()}


def _render_scene(scene, config):
  batch = {name: value[None] for name, value in scene.items()}
  images = jax.jit(lambda s: scenes.render_scenes(s, scenes.Optics.from_config(config)))(batch)
  return {name: np.asarray(image[0]) for name, image in images.items()}


def _rotate_scene_90(scene):
  """All positions rotated by +90 degrees about the stamp centre, all position angles by +90 degrees."""
  rotated = dict(scene)
  for x_name, y_name in (("lens_center_x", "lens_center_y"), ("source_x", "source_y"), ("clump_x", "clump_y"),
                         ("field_x", "field_y")):
    rotated[x_name], rotated[y_name] = -scene[y_name], scene[x_name]
  # e1 + i e2 ~ exp(2i phi): a quarter turn flips both components; the same for the shear.
  for first, second in (("lens_e1", "lens_e2"), ("light_e1", "light_e2"), ("source_e1", "source_e2"),
                        ("field_e1", "field_e2"), ("gamma1", "gamma2")):
    rotated[first], rotated[second] = -scene[first], -scene[second]
  return rotated


def test_rotating_every_angle_by_90_degrees_rotates_the_image():
  config = dataclasses.replace(SMALL, image_size=41)
  original = _render_scene(_scene(), config)
  rotated = _render_scene(_rotate_scene_90(_scene()), config)
  for name in ("lens", "arcs", "field"):
    # I'(x, y) = I(y, -x): row j, column i of the rotated image is row N-1-i, column j of the original.
    expected = np.rot90(original[name], k=-1)
    np.testing.assert_allclose(rotated[name], expected, rtol=2e-4, atol=2e-5 * original[name].max())
    assert not np.allclose(original[name], expected, rtol=0.05)   # the scene is not symmetric


def test_without_lensing_the_arcs_hold_the_whole_source_flux():
  # Pixels of 0.02 arcsec (2x supersampled) resolve the source; the 1.9 arcsec stamp holds 6 R_sersic.
  config = dataclasses.replace(SMALL, image_size=96, pixel_scale=0.02, supersampling=2)
  source_flux = 5000.0
  clump_flux = np.array([600.0, 400.0], np.float32)
  amp = source_flux / float(scenes.profiles.sersic_total_flux_per_amp(0.15, 1.2))
  scene = _scene(theta_E=0.0, gamma1=0.0, gamma2=0.0, source_x=0.0, source_y=0.0, source_amp=amp,
                 clump_flux=clump_flux)
  for psf in ("none", "gaussian"):
    arcs = _render_scene(scene, dataclasses.replace(config, psf=psf, psf_fwhm=0.2))["arcs"]
    assert arcs.sum() == pytest.approx(source_flux + clump_flux.sum(), rel=2e-3)


def test_supersampling_converges():
  scene = _scene()
  coarse, fine, finest = (_render_scene(scene, dataclasses.replace(SMALL, image_size=48, supersampling=ss))
                          for ss in (1, 3, 9))
  for name in ("lens", "arcs"):
    assert np.abs(fine[name] - finest[name]).max() < 0.2 * np.abs(coarse[name] - finest[name]).max()
    assert fine[name].sum() == pytest.approx(finest[name].sum(), rel=5e-3)
  overlap = masks.percentile_mask(coarse["arcs"], 95) & masks.percentile_mask(finest["arcs"], 95)
  assert overlap.sum() / masks.percentile_mask(finest["arcs"], 95).sum() > 0.9


@pytest.mark.parametrize("overrides", [
    dict(noise="gaussian", psf="moffat", psf_truncation=5.0, mask_rule="noise"),
    dict(noise="poisson", psf="none", mask_rule="peak_fraction", clumps_max=0, field_galaxies_max=0),
])
def test_noise_and_instrument_options(overrides):
  config = dataclasses.replace(SMALL, **overrides)
  simulator = Simulator(config, seed=1)
  out = simulator.render(np.arange(8))
  again = simulator.render(np.arange(8))
  np.testing.assert_array_equal(out["observed"], again["observed"])   # the noise is seeded by index too
  residual = out["observed"] - out["lens"] - out["arcs"]
  sigma = simulator.noise.background_sigma
  if config.field_galaxies_max == 0:   # then the residual is the noise alone: check its per-pixel sigma
    expected = np.sqrt(sigma**2 + (out["lens"] + out["arcs"]) / simulator.noise.electrons_per_count)
    assert (residual / expected).std() == pytest.approx(1.0, abs=0.03)
    assert (residual / expected).mean() == pytest.approx(0.0, abs=0.03)
  assert np.abs(residual).max() > 3 * sigma
  np.testing.assert_array_equal(out["masks"], simulator.masks.apply(out["lens"], out["arcs"]))


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=0), r"config.sim.image_size must lie in \[1, 4096\]; got 0"),
    (dict(image_size=12.5), "config.sim.image_size must be an integer"),
    (dict(pixel_scale=float("nan")), "config.sim.pixel_scale must lie in"),
    (dict(psf_fwhm="0.04"), "config.sim.psf_fwhm must be a number"),
    (dict(psf="airy"), "config.sim.psf must be one of 'none', 'gaussian', 'moffat'; got 'airy'"),
    (dict(noise="lognormal"), "config.sim.noise must be one of"),
    (dict(theta_E_min=2.0, theta_E_max=1.0), "theta_E_min .* must not exceed config.sim.theta_E_max"),
    (dict(lens_fraction=1.5), r"config.sim.lens_fraction must lie in \[0, 1\]"),
    (dict(render_chunk=0), r"config.sim.render_chunk must lie in \[1, 1024\]"),
    (dict(arc_mask_percentile=100.0), r"arc_mask_percentile must lie in \[0, 100\)"),
    (dict(mask_rule="otsu"), "config.sim.mask_rule must be one of"),
    (dict(moffat_beta=1.0), "moffat_beta must lie in"),
    (dict(psf_fwhm=2.0, psf_truncation=5.0), "gives a 53-pixel PSF radius; at most 32 pixels"),
    (dict(source_model="vela"), "config.sim.source_model must be one of 'sersic', 'irregular'; got 'vela'"),
    (dict(crowd_galaxies_mean=-2.0), r"config.sim.crowd_galaxies_mean must lie in \[0, 200\]"),
])
def test_bad_configs_raise_value_errors_naming_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    check_config(dataclasses.replace(SMALL, **overrides))


@pytest.mark.parametrize("indices, message", [
    ([-1, 2], r"indices must lie in \[0, 4294967295\]"),
    ([[1, 2]], "1-D array of integers"),
    ([0.5], "1-D array of integers"),
    ([2**32], "indices must lie in"),
])
def test_bad_indices_are_refused(simulator, indices, message):
  with pytest.raises(ValueError, match=message):
    simulator.render(indices)


def test_bad_seed_is_refused_and_empty_requests_are_empty(simulator):
  with pytest.raises(ValueError, match="seed must be an integer"):
    Simulator(SMALL, seed=-3)
  empty = simulator.render([])
  assert empty["observed"].shape == (0, 32, 32) and empty["masks"].shape == (0, 32, 32, 2)
  assert all(v.shape == (0,) for v in empty["params"].values())
