"""Scene priors, scene sampling and rendering, all traceable by `jax.jit` (sampling also by `jax.vmap`).

A scene is a dict of float32 arrays: scalars for the lens (SIE + external shear + Sersic light) and the
source's main Sersic, and fixed-length slot arrays for the source's Gaussian clumps and the field galaxies
(the first n_clumps / n_field_galaxies slots are used, the rest have zero flux and are not evaluated), so
every scene has the same shapes and one compilation serves all.
Parameter names follow lenstronomy (`scene_to_lenstronomy` converts one scene to its kwargs).

Priors (docs/simulator.md; every range is a `SimConfig` field):
  lens        theta_E ~ U; q ~ U(mass_q_min, 1) and orientation ~ U(0, pi) -> e1, e2; centre ~ N(0, sigma);
              shear gamma1, gamma2 ~ N(0, sigma), |gamma| capped; light e1, e2 = mass e1, e2 + N(0, sigma);
              R_sersic, n ~ U; total flux 10^U (counts).
  source      centre uniform in a disc of radius source_position_max * theta_E around the lens centre;
              R_sersic, n ~ U; e1, e2 ~ N(0, sigma), |e| capped; total (unlensed) flux = lens flux * 10^U;
              0..clumps_max Gaussian clumps taking a U(min, max) share of that flux.
  non-lenses  (a fraction 1 - lens_fraction) theta_E = 0 and zero source flux: no arc light at all.
  field       Poisson(field_galaxies_mean) Sersics (capped at field_galaxies_max) uniform over the stamp,
              in the observed channel only.
Options (each draws from its own key, so the rest of a scene is the same with the option on or off):
  source_model='irregular'   the source's Sersic becomes a twisted, spiral-perturbed body with knots and
                             sometimes a companion (`lensjax.sim.irregular`); same flux, same lens.
  crowd_galaxies_mean > 0    a crowded field: Poisson(crowd_galaxies_mean) more, mostly faint, field galaxies
                             (CROWD_* priors; CROWDED_FIELD_GALAXIES is a deep-field density), observed only.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.config import SimConfig
from lensjax.sim import instrument, irregular, profiles

# Keys of the per-image scalars of a scene; the slot arrays are CLUMP_KEYS and FIELD_KEYS.
SCENE_SCALAR_KEYS = (
    "is_lens", "theta_E", "lens_e1", "lens_e2", "lens_center_x", "lens_center_y", "gamma1", "gamma2",
    "light_e1", "light_e2", "lens_R_sersic", "lens_n_sersic", "lens_amp", "lens_flux",
    "source_x", "source_y", "source_e1", "source_e2", "source_R_sersic", "source_n_sersic", "source_amp",
    "source_flux", "n_clumps", "n_field_galaxies")
CLUMP_KEYS = ("clump_x", "clump_y", "clump_sigma", "clump_flux")
FIELD_KEYS = ("field_x", "field_y", "field_e1", "field_e2", "field_R_sersic", "field_n_sersic", "field_amp",
              "field_flux")
FIELD_E_MAX = 0.3   # cap on |e| of field galaxies
# Crowded fields (`SimConfig.crowd_galaxies_mean`): the extra galaxies are fainter and smaller than the default
# field galaxies, like the bulk of a deep-field galaxy population. A 125 x 0.031" stamp covers 15 arcsec^2;
# CROWDED_FIELD_GALAXIES in it is about 0.65 galaxies per arcsec^2 (2,400 per arcmin^2), the density of a
# JADES-like mock catalogue counted down to galaxies far below the detection limit.
CROWDED_FIELD_GALAXIES = 10.0
CROWD_KEYS = ("crowd_x", "crowd_y", "crowd_e1", "crowd_e2", "crowd_R_sersic", "crowd_n_sersic", "crowd_amp",
              "crowd_flux")
CROWD_R_SERSIC = (0.03, 0.25)      # arcsec, uniform
CROWD_N_SERSIC = (1.0, 4.0)        # uniform
CROWD_E_SIGMA = 0.15               # e1, e2 ~ N(0, this) each, |e| capped at FIELD_E_MAX
CROWD_LOG10_FLUX = (2.3, 0.7)      # log10(counts) ~ N(mean, sigma): AB 27.7 +- 1.8 mag


def _uniform(u: jax.Array, low: float, high: float) -> jax.Array:
  return low + (high - low) * u


def _cap_modulus(a: jax.Array, b: jax.Array, cap: float) -> tuple[jax.Array, jax.Array]:
  """Scales the 2-vector (a, b) down to length `cap` if it is longer."""
  modulus = jnp.sqrt(a * a + b * b)
  scale = jnp.minimum(1.0, cap / jnp.maximum(modulus, 1e-12))
  return a * scale, b * scale


def _poisson_capped_cdf(mean: float, cap: int) -> np.ndarray:
  """P(N <= j) for j = 0 .. cap - 1 of N ~ Poisson(mean); the draw sum(u > cdf) is Poisson capped at `cap`."""
  probabilities = [math.exp(-mean + j * math.log(mean) - math.lgamma(j + 1)) if mean > 0 else float(j == 0)
                   for j in range(cap)]
  return np.cumsum(probabilities).astype(np.float32)


class _Draws:
  """Hands out consecutive entries of one vector of uniform draws, as uniforms or standard normals.

  Every scene uses one `jax.random.uniform` call: each threefry call is inlined into the compiled program,
  and a dozen of them made compilation 5x slower. Normals are sqrt(2) erfinv(2u - 1), as jax.random.normal.
  """

  def __init__(self, key: jax.Array, count: int):
    self._values = jax.random.uniform(key, (count,), minval=np.float32(2**-25), maxval=1.0)
    self.used = 0

  def uniform(self, *shape: int) -> jax.Array:
    size = math.prod(shape)
    values = self._values[self.used:self.used + size].reshape(shape)
    self.used += size
    return values

  def normal(self, *shape: int) -> jax.Array:
    return np.float32(math.sqrt(2)) * jax.scipy.special.erfinv(2 * self.uniform(*shape) - 1)


def draws_per_scene(config: SimConfig) -> int:
  """How many uniform draws `sample_scene` uses: 22 + 4 per clump slot + 1 + 7 per field-galaxy slot.

  The options draw from keys of their own (`irregular.DRAWS`, and `_field_draws(crowd_slots(config))`).
  """
  return 22 + 4 * config.clumps_max + _field_draws(config.field_galaxies_max)


def _field_draws(slots: int) -> int:
  return 1 + 7 * slots


def crowd_slots(config: SimConfig) -> int:
  """Slots for the crowded field's galaxies: the Poisson mean + 6 standard deviations (0 when off)."""
  mean = config.crowd_galaxies_mean
  return math.ceil(mean + 6 * math.sqrt(mean)) + 1 if mean > 0 else 0


def _sample_galaxies(draws: _Draws, mean: float, slots: int, R_sersic: tuple[float, float],
                     n_sersic: tuple[float, float], e_sigma: float, log10_flux: tuple[float, float],
                     half_width: float) -> dict[str, jax.Array]:
  """A capped Poisson(mean) number of Sersics uniform over the stamp, in `slots` slots (the first ones used).

  Returns 'count' and (slots,) arrays 'x', 'y', 'e1', 'e2', 'R_sersic', 'n_sersic', 'amp', 'flux'.
  """
  count_draw = draws.uniform(1)[0]
  count = jnp.sum(count_draw > _poisson_capped_cdf(mean, slots)).astype(jnp.float32)
  u = draws.uniform(4, slots)
  g = draws.normal(3, slots)
  e1, e2 = _cap_modulus(e_sigma * g[0], e_sigma * g[1], FIELD_E_MAX)
  radius = _uniform(u[2], *R_sersic)
  index = _uniform(u[3], *n_sersic)
  flux = jnp.where(jnp.arange(slots) < count, 10.0 ** (log10_flux[0] + log10_flux[1] * g[2]), 0.0)
  return dict(count=count, x=_uniform(u[0], -half_width, half_width), y=_uniform(u[1], -half_width, half_width),
              e1=e1, e2=e2, R_sersic=radius, n_sersic=index,
              amp=flux / profiles.sersic_total_flux_per_amp(radius, index), flux=flux)


def sample_scene(key: jax.Array, config: SimConfig) -> dict[str, jax.Array]:
  """Draws one scene from the priors of `config`; see the module docstring. Traceable (vmap over keys)."""
  c = config
  draws = _Draws(key, draws_per_scene(c))
  # Lens: 7 uniforms and 6 normals.
  u = draws.uniform(7)
  g = draws.normal(6)
  is_lens = u[0] < c.lens_fraction
  theta_E = jnp.where(is_lens, _uniform(u[1], c.theta_E_min, c.theta_E_max), 0.0)
  q = _uniform(u[2], c.mass_q_min, 1.0)
  angle = math.pi * u[3]
  lens_e1, lens_e2 = profiles.phi_q_to_ellipticity(angle, q)
  gamma1, gamma2 = _cap_modulus(c.shear_sigma * g[0], c.shear_sigma * g[1], c.shear_max)
  light_e1, light_e2 = _cap_modulus(lens_e1 + c.light_misalignment_sigma * g[2],
                                    lens_e2 + c.light_misalignment_sigma * g[3], 0.9)
  lens_R = _uniform(u[4], c.lens_R_sersic_min, c.lens_R_sersic_max)
  lens_n = _uniform(u[5], c.lens_n_sersic_min, c.lens_n_sersic_max)
  lens_flux = 10.0 ** _uniform(u[6], c.lens_log10_flux_min, c.lens_log10_flux_max)
  scene = dict(
      is_lens=is_lens.astype(jnp.float32), theta_E=theta_E, lens_e1=lens_e1, lens_e2=lens_e2,
      lens_center_x=c.lens_center_sigma * g[4], lens_center_y=c.lens_center_sigma * g[5],
      gamma1=gamma1, gamma2=gamma2, light_e1=light_e1, light_e2=light_e2,
      lens_R_sersic=lens_R, lens_n_sersic=lens_n,
      lens_amp=lens_flux / profiles.sersic_total_flux_per_amp(lens_R, lens_n), lens_flux=lens_flux)

  # Source: 7 uniforms and 2 normals; position in a disc around the lens, flux relative to the lens,
  # split between the Sersic and the clumps.
  u = draws.uniform(7)
  g = draws.normal(2)
  radius = c.source_position_max * theta_E * jnp.sqrt(u[0])
  position_angle = 2 * math.pi * u[1]
  source_e1, source_e2 = _cap_modulus(c.source_e_sigma * g[0], c.source_e_sigma * g[1], c.source_e_max)
  source_R = _uniform(u[2], c.source_R_sersic_min, c.source_R_sersic_max)
  source_n = _uniform(u[3], c.source_n_sersic_min, c.source_n_sersic_max)
  source_flux = jnp.where(
      is_lens, lens_flux * 10.0 ** _uniform(u[4], c.source_log10_flux_ratio_min, c.source_log10_flux_ratio_max),
      0.0)
  n_clumps = jnp.where(is_lens, jnp.floor(u[5] * (c.clumps_max + 1)), 0.0)
  clump_share = jnp.where(n_clumps > 0, _uniform(u[6], c.clump_flux_fraction_min, c.clump_flux_fraction_max), 0.0)
  sersic_flux = (1 - clump_share) * source_flux
  source_x = scene["lens_center_x"] + radius * jnp.cos(position_angle)
  source_y = scene["lens_center_y"] + radius * jnp.sin(position_angle)
  scene.update(
      source_x=source_x, source_y=source_y, source_e1=source_e1, source_e2=source_e2,
      source_R_sersic=source_R, source_n_sersic=source_n,
      source_amp=sersic_flux / profiles.sersic_total_flux_per_amp(source_R, source_n),
      source_flux=source_flux, n_clumps=n_clumps)

  # Clumps: fixed slots, the first n_clumps active, flux shared with random weights.
  slots = c.clumps_max
  u = draws.uniform(4, slots)
  active = jnp.arange(slots) < n_clumps
  weights = jnp.where(active, 0.5 + u[0], 0.0)
  clump_radius = c.clump_offset_max * jnp.sqrt(u[1])
  clump_angle = 2 * math.pi * u[2]
  scene.update(
      clump_x=source_x + clump_radius * jnp.cos(clump_angle),
      clump_y=source_y + clump_radius * jnp.sin(clump_angle),
      clump_sigma=_uniform(u[3], c.clump_sigma_min, c.clump_sigma_max),
      clump_flux=clump_share * source_flux * weights / jnp.maximum(weights.sum(), 1e-12))

  # Field galaxies: capped Poisson count, uniform over the stamp.
  half_width = 0.5 * c.image_size * c.pixel_scale
  field = _sample_galaxies(draws, c.field_galaxies_mean, c.field_galaxies_max,
                           (c.field_R_sersic_min, c.field_R_sersic_max), (c.field_n_sersic_min, c.field_n_sersic_max),
                           c.field_e_sigma, (c.field_log10_flux_mean, c.field_log10_flux_sigma), half_width)
  scene["n_field_galaxies"] = field.pop("count")
  scene.update({f"field_{name}": value for name, value in field.items()})
  assert draws.used == draws_per_scene(c), "draws_per_scene is out of step with sample_scene"

  if c.source_model == "irregular":
    source_draws = _Draws(jax.random.fold_in(key, 1), irregular.DRAWS)
    scene.update(irregular.sample(source_draws, scene))
  if c.crowd_galaxies_mean > 0:
    slots = crowd_slots(c)
    crowd = _sample_galaxies(_Draws(jax.random.fold_in(key, 2), _field_draws(slots)), c.crowd_galaxies_mean,
                             slots, CROWD_R_SERSIC, CROWD_N_SERSIC, CROWD_E_SIGMA, CROWD_LOG10_FLUX, half_width)
    scene["n_crowd_galaxies"] = crowd.pop("count")
    scene.update({f"crowd_{name}": value for name, value in crowd.items()})
  return {name: value.astype(jnp.float32) for name, value in scene.items()}


@dataclasses.dataclass(frozen=True)
class Optics:
  """What the renderer needs from the instrument, fixed per `SimConfig` (static under jit).

  Attributes:
    x, y: (size * supersampling,) float32 sub-pixel centre coordinates in arcsec (columns and rows).
    supersampling: sub-pixels per pixel side.
    pixel_area: arcsec^2 per pixel (surface brightness -> pixel counts).
    psf_taps: 1-D separable Gaussian weights, or None.
    psf_kernel: 2-D (Moffat) kernel, or None. Both None: no PSF.
  """
  x: np.ndarray
  y: np.ndarray
  supersampling: int
  pixel_area: float
  psf_taps: np.ndarray | None
  psf_kernel: np.ndarray | None

  @classmethod
  def from_config(cls, config: SimConfig) -> Optics:
    centres = instrument.pixel_centres(config.image_size, config.pixel_scale, config.supersampling)
    taps = kernel = None
    if config.psf == "gaussian":
      taps = instrument.gaussian_psf_taps(config.psf_fwhm, config.pixel_scale, config.psf_truncation)
    elif config.psf == "moffat":
      kernel = instrument.moffat_psf_kernel(config.psf_fwhm, config.moffat_beta, config.pixel_scale,
                                            config.psf_truncation)
    return cls(centres, centres, config.supersampling, config.pixel_scale**2, taps, kernel)

  def pixelise(self, surface_brightness: jax.Array) -> jax.Array:
    """(..., H*ss, W*ss) surface brightness (counts/arcsec^2) -> PSF-convolved (..., H, W) pixel counts."""
    # The barrier keeps XLA from fusing the profile evaluation into the PSF stencil (recomputing it per tap).
    surface_brightness = jax.lax.optimization_barrier(surface_brightness)
    pixels = instrument.bin_supersampled(surface_brightness, self.supersampling) * np.float32(self.pixel_area)
    if self.psf_taps is not None:
      return instrument.convolve_separable(pixels, self.psf_taps)
    if self.psf_kernel is not None:
      return instrument.convolve_kernel(pixels, self.psf_kernel)
    return pixels


def _sum_over_active_slots(profile, count: jax.Array, slots: int, like: jax.Array) -> jax.Array:
  """sum_k profile(k) for k < count (a traced integer <= slots): an XLA loop that runs only the active slots."""
  if slots == 0:
    return jnp.zeros_like(like)
  return jax.lax.fori_loop(0, count, lambda k, total: total + profile(k), jnp.zeros_like(like))


def surface_brightness(scene: dict[str, jax.Array], optics: Optics) -> jax.Array:
  """(3, H*ss, W*ss) float32 surface brightness (counts/arcsec^2) of one scene: lens light, lensed arcs, field.

  The source (Sersic + clumps) is evaluated at beta = theta - alpha_SIE - alpha_shear; the shear is centred on
  the lens. Work that contributes nothing is skipped under `jax.lax.map` over scenes: the deflection and source
  of non-lenses, and the unused clump and field-galaxy slots (under `vmap` the skips become selects, so map).
  """
  x, y = jnp.asarray(optics.x)[None, :], jnp.asarray(optics.y)[:, None]
  s = scene
  lens_light = profiles.sersic_ellipse(x, y, s["lens_amp"], s["lens_R_sersic"], s["lens_n_sersic"],
                                       s["light_e1"], s["light_e2"], s["lens_center_x"], s["lens_center_y"])

  def arcs_light():
    sie_x, sie_y = profiles.sie_deflection(x, y, s["theta_E"], s["lens_e1"], s["lens_e2"],
                                           s["lens_center_x"], s["lens_center_y"])
    shear_x, shear_y = profiles.shear_deflection(x, y, s["gamma1"], s["gamma2"],
                                                 s["lens_center_x"], s["lens_center_y"])
    # Materialised once: otherwise XLA recomputes the deflection inside each of the source's profiles.
    beta_x, beta_y = jax.lax.optimization_barrier((x - sie_x - shear_x, y - sie_y - shear_y))
    return source_surface_brightness(s, beta_x, beta_y)

  field_light = _sum_over_active_slots(
      lambda k: profiles.sersic_ellipse(x, y, s["field_amp"][k], s["field_R_sersic"][k], s["field_n_sersic"][k],
                                        s["field_e1"][k], s["field_e2"][k], s["field_x"][k], s["field_y"][k]),
      s["n_field_galaxies"].astype(jnp.int32), s["field_amp"].shape[-1], lens_light)
  if "crowd_flux" in s:
    field_light = field_light + _sum_over_active_slots(
        lambda k: profiles.sersic_ellipse(x, y, s["crowd_amp"][k], s["crowd_R_sersic"][k], s["crowd_n_sersic"][k],
                                          s["crowd_e1"][k], s["crowd_e2"][k], s["crowd_x"][k], s["crowd_y"][k]),
        s["n_crowd_galaxies"].astype(jnp.int32), s["crowd_amp"].shape[-1], lens_light)
  arcs = jax.lax.cond(s["is_lens"] > 0, arcs_light, lambda: jnp.zeros_like(lens_light))
  return jnp.stack([lens_light, arcs, field_light])


def source_surface_brightness(scene: dict[str, jax.Array], beta_x: jax.Array, beta_y: jax.Array) -> jax.Array:
  """Unlensed surface brightness (counts/arcsec^2) of one scene's source at source-plane positions (arcsec).

  The Sersic (or, for an irregular source, `irregular.body_and_companion` and its knots) plus the clumps.
  """
  s = scene
  if "knot_flux" in s:
    light = irregular.body_and_companion(beta_x, beta_y, s)
    light = light + _sum_over_active_slots(lambda k: irregular.knot(beta_x, beta_y, s, k),
                                           s["n_knots"].astype(jnp.int32), irregular.KNOT_SLOTS, light)
  else:
    light = profiles.sersic_ellipse(beta_x, beta_y, s["source_amp"], s["source_R_sersic"], s["source_n_sersic"],
                                    s["source_e1"], s["source_e2"], s["source_x"], s["source_y"])

  def clump(k):
    return profiles.gaussian(beta_x, beta_y, s["clump_flux"][k], s["clump_sigma"][k], s["clump_x"][k],
                             s["clump_y"][k])

  return light + _sum_over_active_slots(clump, s["n_clumps"].astype(jnp.int32), s["clump_flux"].shape[-1], light)


def render_scenes(batch_scenes: dict[str, jax.Array], optics: Optics) -> dict[str, jax.Array]:
  """Noiseless (B, H, W) float32 pixel images of a batch of scenes: `lens` light, lensed `arcs`, `field`.

  Profiles per scene (`surface_brightness` under `lax.map`), then pixelisation and PSF once over the whole
  batch: PSF and pixelisation are linear, so each component is convolved once and `observed` is their sum.
  """
  light = jax.lax.map(lambda scene: surface_brightness(scene, optics), batch_scenes)
  lens, arcs, field = jnp.unstack(optics.pixelise(light), axis=1)
  return dict(lens=lens, arcs=arcs, field=field)


def scene_to_lenstronomy(scene: dict[str, np.ndarray],
                         keep_empty_slots: bool = False) -> dict[str, tuple[list[str], list[dict]]]:
  """One scene (numpy scalars and slot arrays, as `Simulator.scenes` returns per image) as lenstronomy kwargs.

  Returns {'lens': (model list, kwargs list), 'lens_light': ..., 'source_light': ..., 'field_light': ...}
  for `LensModel`, `LightModel` and `ImageModel`: SIE + SHEAR; SERSIC_ELLIPSE lens light; SERSIC_ELLIPSE +
  GAUSSIAN clumps as source; SERSIC_ELLIPSE field galaxies (unlensed, so add them as extra lens light).
  Unused slots (zero flux) are left out unless `keep_empty_slots` (then the model lists have fixed lengths).
  """
  if "knot_flux" in scene:
    raise ValueError("an irregular source (config.sim.source_model='irregular') has no lenstronomy equivalent")
  f = {name: np.asarray(value, dtype=np.float64) for name, value in scene.items()}
  lens = (["SIE", "SHEAR"], [
      dict(theta_E=f["theta_E"].item(), e1=f["lens_e1"].item(), e2=f["lens_e2"].item(),
           center_x=f["lens_center_x"].item(), center_y=f["lens_center_y"].item()),
      dict(gamma1=f["gamma1"].item(), gamma2=f["gamma2"].item(),
           ra_0=f["lens_center_x"].item(), dec_0=f["lens_center_y"].item())])
  lens_light = (["SERSIC_ELLIPSE"], [dict(
      amp=f["lens_amp"].item(), R_sersic=f["lens_R_sersic"].item(), n_sersic=f["lens_n_sersic"].item(),
      e1=f["light_e1"].item(), e2=f["light_e2"].item(),
      center_x=f["lens_center_x"].item(), center_y=f["lens_center_y"].item())])
  source_models, source_kwargs = ["SERSIC_ELLIPSE"], [dict(
      amp=f["source_amp"].item(), R_sersic=f["source_R_sersic"].item(), n_sersic=f["source_n_sersic"].item(),
      e1=f["source_e1"].item(), e2=f["source_e2"].item(),
      center_x=f["source_x"].item(), center_y=f["source_y"].item())]
  for i in range(len(f["clump_flux"])) if keep_empty_slots else np.flatnonzero(f["clump_flux"] > 0):
    source_models.append("GAUSSIAN")
    source_kwargs.append(dict(amp=f["clump_flux"][i], sigma=f["clump_sigma"][i],
                              center_x=f["clump_x"][i], center_y=f["clump_y"][i]))
  field_models, field_kwargs = [], []
  for prefix in ("field", "crowd") if "crowd_flux" in f else ("field",):
    for i in range(len(f[f"{prefix}_flux"])) if keep_empty_slots else np.flatnonzero(f[f"{prefix}_flux"] > 0):
      field_models.append("SERSIC_ELLIPSE")
      field_kwargs.append(dict(amp=f[f"{prefix}_amp"][i], R_sersic=f[f"{prefix}_R_sersic"][i],
                               n_sersic=f[f"{prefix}_n_sersic"][i], e1=f[f"{prefix}_e1"][i],
                               e2=f[f"{prefix}_e2"][i], center_x=f[f"{prefix}_x"][i], center_y=f[f"{prefix}_y"][i]))
  return dict(lens=lens, lens_light=lens_light, source_light=(source_models, source_kwargs),
              field_light=(field_models, field_kwargs))
