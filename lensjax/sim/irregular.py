"""Procedural irregular sources: twisted, spiral-perturbed Sersic bodies with star-forming knots and companions.

The original training set lensed hydro-simulation galaxies (twisted, clumpy, multi-part); this model makes
sources of that kind from a few random numbers, so it stays deterministic by (seed, index) and cheap to render.
An irregular source is the sum of
  body       the source's elliptical Sersic (`source_*` fields of the scene), with
               * twisted isophotes: offsets from the centre are turned by theta(r) = twist r^2 / (r^2 + R_sersic^2)
                 before the profile is evaluated, so the inner isophotes keep the sampled orientation and the
                 outer ones turn by up to `twist` radians;
               * azimuthal modes: the Sersic is multiplied by 1 + t(R) sum_m a_m cos(m phi - psi_m), m = 1, 2,
                 3, where phi is the angle in the profile's circularised frame after the twist, so the m = 2
                 mode winds into two spiral arms and m = 1 makes the galaxy lopsided; t(R) = R^2 / (R^2 +
                 (MODE_CORE_RADIUS R_sersic)^2) keeps the core smooth;
  knots      up to KNOT_SLOTS compact Gaussians on the crests of the two arms (m = 2), following the twist;
  companion  with probability COMPANION_PROBABILITY a small Sersic beside the body (a merger or tidal clump).
The source's Gaussian clumps (`clump_*`) are kept on top, as for the plain Sersic source.

Flux: the twist is a rotation by an angle that depends on r only, which keeps areas, and each mode integrates
to zero around every isophote (since sum_m a_m < 1 and t <= 1 the brightness stays positive), so the body holds exactly
the flux of its untwisted, unperturbed Sersic. The source's total flux (`source_flux`) is split between body,
knots, companion and clumps; `source_amp` is the body's amplitude.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.sim import profiles

TWIST_MAX = 2.5                         # radians; twist ~ U(-TWIST_MAX, TWIST_MAX)
MODE_AMPLITUDE_MAX = (0.3, 0.45, 0.15)  # a_1, a_2, a_3 ~ U(0, max); their sum stays below 1
MODE_CORE_RADIUS = 0.5                  # in R_sersic: the modes are scaled by R^2 / (R^2 + this^2)
KNOT_SLOTS = 8                          # knots per source ~ uniform integer in [KNOTS_MIN, KNOT_SLOTS]
KNOTS_MIN = 2
KNOT_FLUX_SHARE = (0.15, 0.4)           # share of the body's flux moved into its knots, uniform
KNOT_SIGMA = (0.008, 0.03)              # arcsec, Gaussian knot sigma, uniform (about unresolved at 0.03"/px)
KNOT_RADIUS = (0.3, 2.0)                # knot distance from the centre, in R_sersic (circularised), uniform
KNOT_ARM_SCATTER = 0.25                 # radians, Gaussian scatter of a knot's angle about its arm's crest
COMPANION_PROBABILITY = 0.35
COMPANION_FLUX_SHARE = (0.1, 0.3)       # share of the body's flux in the companion, uniform
COMPANION_RADIUS = (0.25, 0.6)          # companion R_sersic in units of the body's, uniform
COMPANION_N_SERSIC = (0.5, 1.5)
COMPANION_Q_MIN = 0.5                   # companion axis ratio ~ U(COMPANION_Q_MIN, 1), orientation uniform
COMPANION_OFFSET = (1.0, 2.5)           # companion distance from the body's centre, in R_sersic, uniform

# Per-scene arrays that an irregular source adds to a scene (`KNOT_KEYS` are (KNOT_SLOTS,) slot arrays).
SCALAR_KEYS = ("source_twist", "source_mode_a1", "source_mode_a2", "source_mode_a3", "source_mode_psi1",
               "source_mode_psi2", "source_mode_psi3", "n_knots", "companion_x", "companion_y", "companion_e1",
               "companion_e2", "companion_R_sersic", "companion_n_sersic", "companion_amp", "companion_flux")
KNOT_KEYS = ("knot_x", "knot_y", "knot_sigma", "knot_flux")
# Uniform draws `sample` takes: twist, 3 amplitudes, 3 phases, knot count and share, 4 per knot slot, 8 for
# the companion.
DRAWS = 9 + 4 * KNOT_SLOTS + 8


def _uniform(u: jax.Array, bounds: tuple[float, float]) -> jax.Array:
  return bounds[0] + (bounds[1] - bounds[0]) * u


def _twist_angle(radius_squared: jax.Array, twist: jax.Array, R_sersic: jax.Array) -> jax.Array:
  return twist * radius_squared / (radius_squared + R_sersic * R_sersic)


def _turn(dx: jax.Array, dy: jax.Array, angle: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(dx, dy) turned counter-clockwise by `angle` radians."""
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  return cos * dx - sin * dy, sin * dx + cos * dy


def body(x: jax.Array, y: jax.Array, scene: dict[str, jax.Array]) -> jax.Array:
  """Surface brightness (counts/arcsec^2) of the twisted, mode-perturbed Sersic body at (x, y) in arcsec."""
  s = scene
  dx, dy = x - s["source_x"], y - s["source_y"]
  # Turning back by theta(r) maps the twisted isophotes onto the plain Sersic's.
  dx, dy = _turn(dx, dy, -_twist_angle(dx * dx + dy * dy, s["source_twist"], s["source_R_sersic"]))
  x_scaled, y_scaled, radius_ratio_squared = profiles.sersic_scaled_coordinates(
      dx, dy, s["source_R_sersic"], s["source_e1"], s["source_e2"])
  inverse_radius = jax.lax.rsqrt(radius_ratio_squared)
  cos1, sin1 = x_scaled * inverse_radius, y_scaled * inverse_radius
  cos2, sin2 = cos1 * cos1 - sin1 * sin1, 2 * cos1 * sin1
  cos3, sin3 = cos1 * cos2 - sin1 * sin2, sin1 * cos2 + cos1 * sin2
  # The modes fade in over the core (R < ~0.5 R_sersic), which stays a smooth bulge.
  taper = radius_ratio_squared / (radius_ratio_squared + MODE_CORE_RADIUS**2)
  cos1, sin1 = taper * cos1, taper * sin1
  cos2, sin2 = taper * cos2, taper * sin2
  cos3, sin3 = taper * cos3, taper * sin3
  modes = 1.0
  for amplitude, phase, cos_m, sin_m in ((s["source_mode_a1"], s["source_mode_psi1"], cos1, sin1),
                                         (s["source_mode_a2"], s["source_mode_psi2"], cos2, sin2),
                                         (s["source_mode_a3"], s["source_mode_psi3"], cos3, sin3)):
    # a cos(m phi - psi) = (a cos psi) cos(m phi) + (a sin psi) sin(m phi)
    modes = modes + (amplitude * jnp.cos(phase)) * cos_m + (amplitude * jnp.sin(phase)) * sin_m
  return profiles.sersic_of_radius(radius_ratio_squared, s["source_amp"], s["source_n_sersic"]) * modes


def knot(x: jax.Array, y: jax.Array, scene: dict[str, jax.Array], k: jax.Array) -> jax.Array:
  """Surface brightness of knot slot `k` (a Gaussian, `knot_flux` its total flux) at (x, y)."""
  s = scene
  return profiles.gaussian(x, y, s["knot_flux"][k], s["knot_sigma"][k], s["knot_x"][k], s["knot_y"][k])


def body_and_companion(x: jax.Array, y: jax.Array, scene: dict[str, jax.Array]) -> jax.Array:
  """The body plus the companion at (x, y); the companion is evaluated only when the scene has one (a
  `lax.cond`, a real skip under `lax.map`). The knots are summed by the caller (`knot`)."""
  s = scene
  light = body(x, y, s)

  def companion():
    return profiles.sersic_ellipse(x, y, s["companion_amp"], s["companion_R_sersic"], s["companion_n_sersic"],
                                   s["companion_e1"], s["companion_e2"], s["companion_x"], s["companion_y"])

  return light + jax.lax.cond(s["companion_flux"] > 0, companion, lambda: jnp.zeros_like(light))


def sample(draws, scene: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The irregular parts of one scene's source, from `DRAWS` uniforms of `draws` (a `scenes` draw stream).

  `scene` holds the plain source (`source_*`, with `source_amp` for the whole Sersic share of the flux);
  returns the new fields (SCALAR_KEYS, KNOT_KEYS) and `source_amp` lowered to the body's share.
  A scene without arc light (a non-lens) gets no knots and no companion.
  """
  s = scene
  radius, n_sersic = s["source_R_sersic"], s["source_n_sersic"]
  sersic_flux = s["source_amp"] * profiles.sersic_total_flux_per_amp(radius, n_sersic)
  u = draws.uniform(9)
  twist = _uniform(u[0], (-TWIST_MAX, TWIST_MAX))
  amplitudes = [max_a * u[1 + m] for m, max_a in enumerate(MODE_AMPLITUDE_MAX)]
  phases = [2 * math.pi * u[4 + m] for m in range(3)]
  has_light = sersic_flux > 0
  n_knots = jnp.where(has_light, KNOTS_MIN + jnp.floor(u[7] * (KNOT_SLOTS - KNOTS_MIN + 1)), 0.0)
  knot_share = jnp.where(has_light, _uniform(u[8], KNOT_FLUX_SHARE), 0.0)

  # Knots: on the crests of the m = 2 mode (phi = psi_2 / 2 and + pi) in the circularised frame, mapped back
  # to the sky through the ellipse and the twist.
  u = draws.uniform(4, KNOT_SLOTS)
  slot = jnp.arange(KNOT_SLOTS)
  scatter = np.float32(KNOT_ARM_SCATTER * math.sqrt(2)) * jax.scipy.special.erfinv(2 * u[1] - 1)
  angle = phases[1] / 2 + math.pi * (slot % 2) + scatter
  knot_radius = _uniform(u[0], KNOT_RADIUS)
  x_scaled, y_scaled = knot_radius * jnp.cos(angle), knot_radius * jnp.sin(angle)
  e1, e2 = s["source_e1"], s["source_e2"]
  inverse_nu = 1 / jnp.sqrt(jnp.maximum(1 - e1 * e1 - e2 * e2, 1e-6))
  dx = radius * inverse_nu * ((1 + e1) * x_scaled + e2 * y_scaled)
  dy = radius * inverse_nu * (e2 * x_scaled + (1 - e1) * y_scaled)
  dx, dy = _turn(dx, dy, _twist_angle(dx * dx + dy * dy, twist, radius))
  weights = jnp.where(slot < n_knots, 0.5 + u[3], 0.0)
  knot_flux = knot_share * sersic_flux * weights / jnp.maximum(weights.sum(), 1e-12)
  knot_sigma = _uniform(u[2], KNOT_SIGMA)

  # Companion: present with COMPANION_PROBABILITY, beside the body in a random direction.
  u = draws.uniform(8)
  companion_share = jnp.where(has_light & (u[0] < COMPANION_PROBABILITY), _uniform(u[1], COMPANION_FLUX_SHARE),
                              0.0)
  companion_flux = companion_share * sersic_flux
  companion_radius = _uniform(u[2], COMPANION_RADIUS) * radius
  companion_n = _uniform(u[3], COMPANION_N_SERSIC)
  companion_e1, companion_e2 = profiles.phi_q_to_ellipticity(math.pi * u[4],
                                                             _uniform(u[5], (COMPANION_Q_MIN, 1.0)))
  offset, offset_angle = _uniform(u[6], COMPANION_OFFSET) * radius, 2 * math.pi * u[7]
  body_flux = (1 - knot_share - companion_share) * sersic_flux
  return dict(
      source_amp=body_flux / profiles.sersic_total_flux_per_amp(radius, n_sersic),
      source_twist=twist, source_mode_a1=amplitudes[0], source_mode_a2=amplitudes[1],
      source_mode_a3=amplitudes[2], source_mode_psi1=phases[0], source_mode_psi2=phases[1],
      source_mode_psi3=phases[2], n_knots=n_knots,
      knot_x=s["source_x"] + dx, knot_y=s["source_y"] + dy, knot_sigma=knot_sigma, knot_flux=knot_flux,
      companion_x=s["source_x"] + offset * jnp.cos(offset_angle),
      companion_y=s["source_y"] + offset * jnp.sin(offset_angle),
      companion_e1=companion_e1, companion_e2=companion_e2, companion_R_sersic=companion_radius,
      companion_n_sersic=companion_n,
      companion_amp=companion_flux / profiles.sersic_total_flux_per_amp(companion_radius, companion_n),
      companion_flux=companion_flux)
