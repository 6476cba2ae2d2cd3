"""`Simulator`: images, masks and parameters for any image indices, deterministic by (seed, index).

    sim = Simulator(SimConfig(), seed=0)
    batch = sim.render(np.arange(64))
    batch["observed"], batch["lens"], batch["arcs"]   # (64, H, W) float32 counts; lens/arcs noiseless
    batch["masks"]                                     # (64, H, W, 2) uint8, (lens, arcs)
    batch["params"]["theta_E"]                         # (64,) float32, one entry per parameter

Every image is a pure function of (seed, index): its random key is `fold_in(key(seed), index)`, and every
image goes through the same compiled program, one `jit` over a fixed chunk of
`config.render_chunk` images: requests are padded to whole chunks. (XLA compiles a different batch size,
or a `shard_map` over several devices, into different code whose float rounding differs in the last bit, so
power-of-two buckets or a sharded batch would not give bit-identical images.) With several local devices
(e.g. `JAX_NUM_CPU_DEVICES=2`, one per core) the chunks of a request are dealt out over them and run
concurrently; the program is compiled once per device and gives the same bits on each.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lensjax.config import SimConfig
from lensjax.sim import instrument, masks, scenes

# Per-image parameters that `render` measures on the images, beside the scene's scalars.
MEASURED_KEYS = ("arc_flux", "arc_peak", "arc_snr", "magnification", "lens_mask_pixels", "arc_mask_pixels")
PARAM_KEYS = scenes.SCENE_SCALAR_KEYS + MEASURED_KEYS
MAX_INDEX = 2**32 - 1   # indices are folded into the key as uint32
MAX_PSF_RADIUS = 32     # pixels; the separable Gaussian is one slice per tap in the compiled program


def _require(config: SimConfig, name: str, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> None:
  value = getattr(config, name)
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"config.sim.{name} must be a number; got {value!r}")
  above_low = value > low if low_open else value >= low
  below_high = value < high if high_open else value <= high
  if not (above_low and below_high):   # also false for NaN
    bracket = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
    raise ValueError(f"config.sim.{name} must lie in {bracket}; got {value!r}")


def _require_ordered(config: SimConfig, low_name: str, high_name: str) -> None:
  if getattr(config, low_name) > getattr(config, high_name):
    raise ValueError(f"config.sim.{low_name} ({getattr(config, low_name)!r}) must not exceed "
                     f"config.sim.{high_name} ({getattr(config, high_name)!r})")


def _require_choice(config: SimConfig, name: str, choices: Sequence[str]) -> None:
  if getattr(config, name) not in choices:
    raise ValueError(f"config.sim.{name} must be one of {', '.join(map(repr, choices))}; "
                     f"got {getattr(config, name)!r}")


def check_config(config: SimConfig) -> None:
  """Raises ValueError naming the first `SimConfig` field outside its allowed range (NaN included)."""
  for name in ("image_size", "supersampling", "num_exposures", "clumps_max", "field_galaxies_max", "render_chunk"):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"config.sim.{name} must be an integer; got {value!r}")
  _require(config, "image_size", 1, 4096)
  _require(config, "pixel_scale", 0, 10, low_open=True)
  _require(config, "supersampling", 1, 16)
  _require_choice(config, "psf", ("none", "gaussian", "moffat"))
  _require(config, "psf_fwhm", 0, 100, low_open=True)
  _require(config, "psf_truncation", 0, 50, low_open=True)
  _require(config, "moffat_beta", 1, 100, low_open=True)
  if config.psf != "none":
    radius = int(config.psf_truncation * config.psf_fwhm / instrument.FWHM_PER_SIGMA / config.pixel_scale + 0.5)
    if radius > MAX_PSF_RADIUS:
      raise ValueError(f"config.sim.psf_fwhm x psf_truncation gives a {radius}-pixel PSF radius; at most "
                       f"{MAX_PSF_RADIUS} pixels (lower psf_truncation or psf_fwhm, or raise pixel_scale)")
  _require_choice(config, "noise", ("none", "gaussian", "poisson"))
  _require(config, "exposure_time", 0, 1e9, low_open=True)
  _require(config, "num_exposures", 1, 100_000)
  _require(config, "read_noise", 0, 1e6)
  for name in ("sky_brightness", "magnitude_zero_point", "counts_zero_point"):
    _require(config, name, -100, 100)
  _require(config, "lens_fraction", 0, 1)
  _require(config, "theta_E_min", 0, 10)
  _require(config, "theta_E_max", 0, 10)
  _require_ordered(config, "theta_E_min", "theta_E_max")
  _require(config, "mass_q_min", 0.05, 1)
  _require(config, "lens_center_sigma", 0, 10)
  _require(config, "shear_sigma", 0, 1)
  _require(config, "shear_max", 0, 0.5)
  _require(config, "light_misalignment_sigma", 0, 1)
  for prefix in ("lens", "source", "field"):
    _require(config, f"{prefix}_R_sersic_min", 0, 100, low_open=True)
    _require(config, f"{prefix}_R_sersic_max", 0, 100, low_open=True)
    _require_ordered(config, f"{prefix}_R_sersic_min", f"{prefix}_R_sersic_max")
    _require(config, f"{prefix}_n_sersic_min", 0.3, 10)
    _require(config, f"{prefix}_n_sersic_max", 0.3, 10)
    _require_ordered(config, f"{prefix}_n_sersic_min", f"{prefix}_n_sersic_max")
  _require(config, "lens_log10_flux_min", -10, 15)
  _require(config, "lens_log10_flux_max", -10, 15)
  _require_ordered(config, "lens_log10_flux_min", "lens_log10_flux_max")
  _require(config, "source_position_max", 0, 10)
  _require(config, "source_e_sigma", 0, 1)
  _require(config, "source_e_max", 0, 0.9)
  _require(config, "source_log10_flux_ratio_min", -10, 10)
  _require(config, "source_log10_flux_ratio_max", -10, 10)
  _require_ordered(config, "source_log10_flux_ratio_min", "source_log10_flux_ratio_max")
  _require(config, "clumps_max", 0, 16)
  _require(config, "clump_sigma_min", 0, 10, low_open=True)
  _require(config, "clump_sigma_max", 0, 10, low_open=True)
  _require_ordered(config, "clump_sigma_min", "clump_sigma_max")
  _require(config, "clump_offset_max", 0, 10)
  _require(config, "clump_flux_fraction_min", 0, 1)
  _require(config, "clump_flux_fraction_max", 0, 1)
  _require_ordered(config, "clump_flux_fraction_min", "clump_flux_fraction_max")
  _require(config, "field_galaxies_mean", 0, 1000)
  _require(config, "field_galaxies_max", 0, 64)
  _require(config, "field_e_sigma", 0, 1)
  _require(config, "field_log10_flux_mean", -10, 15)
  _require(config, "field_log10_flux_sigma", 0, 5)
  _require_choice(config, "source_model", ("sersic", "irregular"))
  _require(config, "crowd_galaxies_mean", 0, 200)
  _require_choice(config, "mask_rule", masks.MASK_RULES)
  _require(config, "lens_mask_percentile", 0, 100, high_open=True)
  _require(config, "arc_mask_percentile", 0, 100, high_open=True)
  _require(config, "mask_noise_k", 0, 1e6, low_open=True)
  _require(config, "mask_peak_fraction", 0, 1, low_open=True)
  _require(config, "render_chunk", 1, 1024)


def noise_model(config: SimConfig) -> instrument.NoiseModel:
  """The detector and sky of `config` (used for noise, the 'noise' mask rule and `arc_snr`)."""
  return instrument.NoiseModel.from_exposure(
      exposure_time=config.exposure_time, num_exposures=config.num_exposures, read_noise=config.read_noise,
      sky_brightness=config.sky_brightness, magnitude_zero_point=config.magnitude_zero_point,
      counts_zero_point=config.counts_zero_point, pixel_scale=config.pixel_scale)


def mask_rule(config: SimConfig) -> masks.MaskRule:
  """The mask rule of `config`, with the noise model's background sigma for the 'noise' rule."""
  return masks.MaskRule(rule=config.mask_rule, lens_percentile=config.lens_mask_percentile,
                        arc_percentile=config.arc_mask_percentile, noise_k=config.mask_noise_k,
                        noise_sigma=noise_model(config).background_sigma, peak_fraction=config.mask_peak_fraction)


def _check_indices(indices: np.ndarray | Sequence[int]) -> np.ndarray:
  array = np.asarray(indices)
  if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
    raise ValueError(f"indices must be a 1-D array of integers; got shape {array.shape}, dtype {array.dtype}")
  if array.size and (array.min() < 0 or array.max() > MAX_INDEX):
    raise ValueError(f"indices must lie in [0, {MAX_INDEX}]; got values in [{array.min()}, {array.max()}]")
  return array.astype(np.uint32)


class _Programs:
  """The compiled functions of one config, shared by every `Simulator` with an equal config (any seed).

  render(seed, indices) and scenes(seed, indices) take a uint32 seed and a (render_chunk,) uint32 index array.
  """

  def __init__(self, config: SimConfig):
    self.config = config
    self.optics = scenes.Optics.from_config(config)
    self.noise = noise_model(config)
    self.masks = mask_rule(config)
    self.render = jax.jit(self._render_batch)
    self.scenes = jax.jit(self._scenes_batch)

  @staticmethod
  def _image_keys(seed: jax.Array, indices: jax.Array) -> jax.Array:
    base = jax.random.key(seed)
    return jax.vmap(lambda index: jax.random.fold_in(base, index))(indices)

  def _scenes_batch(self, seed: jax.Array, indices: jax.Array) -> dict[str, jax.Array]:
    scene_keys = jax.vmap(lambda key: jax.random.fold_in(key, 0))(self._image_keys(seed, indices))
    return jax.vmap(lambda key: scenes.sample_scene(key, self.config))(scene_keys)

  def _render_batch(self, seed: jax.Array, indices: jax.Array) -> dict[str, jax.Array]:
    noise_keys = jax.vmap(lambda key: jax.random.fold_in(key, 1))(self._image_keys(seed, indices))
    batch_scenes = self._scenes_batch(seed, indices)
    images = scenes.render_scenes(batch_scenes, self.optics)
    lens, arcs = images["lens"], images["arcs"]
    observed = lens + arcs + images["field"]
    if self.config.noise == "gaussian":
      observed = jax.vmap(self.noise.add_gaussian)(noise_keys, observed)
    elif self.config.noise == "poisson":
      observed = jax.vmap(self.noise.add_poisson)(noise_keys, observed)
    # Mapped, not vmapped: each image's percentile search stops at its own step count (measured 1.3x faster).
    mask_pairs = jax.lax.map(lambda pair: self.masks.apply_jnp(*pair), (lens, arcs))
    params = {name: batch_scenes[name] for name in scenes.SCENE_SCALAR_KEYS}
    if "n_crowd_galaxies" in batch_scenes:
      params["n_field_galaxies"] = params["n_field_galaxies"] + batch_scenes["n_crowd_galaxies"]
    params.update(self._measure(batch_scenes, lens, arcs, images["field"], mask_pairs))
    # One (B, len(PARAM_KEYS)) output instead of 30 small ones: each output buffer costs the host ~10 us.
    packed_params = jnp.stack([params[name] for name in PARAM_KEYS], axis=1)
    return dict(observed=observed, lens=lens, arcs=arcs, masks=mask_pairs.astype(jnp.uint8), params=packed_params)

  def _measure(self, batch_scenes, lens, arcs, field, mask_pairs) -> dict[str, jax.Array]:
    """Per-image arc brightness measures and mask sizes, (B,) float32 each."""
    arc_flux = arcs.sum(axis=(1, 2))
    # Matched-filter S/N of the arcs against the configured noise model (applied or not):
    # sqrt(sum arcs^2 / sigma^2), sigma^2 = background^2 + shot noise of the whole noiseless image.
    variance = self.noise.background_sigma**2 + (lens + arcs + field) / self.noise.electrons_per_count
    source_flux = batch_scenes["source_flux"]
    return dict(
        arc_flux=arc_flux,
        arc_peak=arcs.max(axis=(1, 2)),
        arc_snr=jnp.sqrt((arcs * arcs / variance).sum(axis=(1, 2))),
        magnification=jnp.where(source_flux > 0, arc_flux / jnp.maximum(source_flux, 1e-30), 0.0),
        lens_mask_pixels=mask_pairs[..., 0].sum(axis=(1, 2)).astype(jnp.float32),
        arc_mask_pixels=mask_pairs[..., 1].sum(axis=(1, 2)).astype(jnp.float32))


@functools.lru_cache(maxsize=8)
def _programs_for(config_fields: tuple) -> _Programs:
  return _Programs(SimConfig(**dict(config_fields)))


class Simulator:
  """Renders lens/non-lens scenes drawn from the priors of a `SimConfig`, deterministically by index.

  Simulators with equal configs share their compiled program (the seed is an argument of it), so making
  another one, e.g. per data split or per worker, costs no compilation.

  Args:
    config: the simulator config (checked: a bad field raises ValueError naming it).
    seed: the dataset seed in [0, 2^32); with an index it fixes an image.
    devices: where to render (default: every local device of the default backend). Pass e.g.
      `jax.devices("cpu")[:1]` to keep rendering off the accelerators a training step uses.

  Attributes:
    optics, noise, masks: the pixel grid and PSF, the detector noise model and the mask rule of `config`.
  """

  def __init__(self, config: SimConfig, seed: int, devices: Sequence[jax.Device] | None = None):
    check_config(config)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
      raise ValueError(f"seed must be an integer in [0, 2^32); got {seed!r}")
    self.config = dataclasses.replace(config)
    self.seed = int(seed)
    self._programs = _programs_for(tuple(dataclasses.asdict(self.config).items()))
    self.optics, self.noise, self.masks = self._programs.optics, self._programs.noise, self._programs.masks
    self.devices = list(devices) if devices is not None else jax.local_devices()
    if not self.devices:
      raise ValueError("devices must name at least one device")

  def _chunks(self, indices: np.ndarray):
    """Yields (uint32 indices padded to render_chunk, number of real images); the padding repeats the last."""
    chunk = self.config.render_chunk
    for start in range(0, len(indices), chunk):
      part = indices[start:start + chunk]
      yield np.concatenate([part, np.repeat(part[-1:], chunk - len(part))]), len(part)

  def render(self, indices: np.ndarray | Sequence[int]) -> dict:
    """Images, masks and parameters of the images `indices` (1-D integers in [0, 2^32)).

    Returns:
      observed: (N, H, W) float32, lens + arcs + field galaxies (+ noise if configured), counts per pixel.
      lens, arcs: (N, H, W) float32 noiseless lens light and lensed source light (zero for non-lenses).
      masks: (N, H, W, 2) uint8 (lens, arcs) from the configured rule on the noiseless channels.
      params: dict of (N,) float32 arrays: the scene scalars (`scenes.SCENE_SCALAR_KEYS`: is_lens, theta_E,
        positions, ellipticities, shear, Sersic parameters, amplitudes, lens_flux and source_flux in counts,
        n_clumps, n_field_galaxies with any crowded-field galaxies) and measured ones: arc_flux (counts in the
        stamp), arc_peak (counts per pixel), arc_snr (matched-filter S/N of the arcs against the configured
        noise model, applied or not), magnification (arc_flux / source_flux, 0 for non-lenses),
        lens_mask_pixels, arc_mask_pixels.
    """
    indices = _check_indices(indices)
    size = self.config.image_size
    if not len(indices):
      empty = np.zeros((0, size, size), np.float32)
      return dict(observed=empty, lens=empty.copy(), arcs=empty.copy(),
                  masks=np.zeros((0, size, size, 2), np.uint8),
                  params={name: np.zeros(0, np.float32) for name in PARAM_KEYS})
    # Dispatch every chunk (round robin over the devices) before reading any back: the devices run
    # concurrently and rendering overlaps the copies out.
    seed = np.uint32(self.seed)
    pending = [(self._programs.render(seed, jax.device_put(padded, self.devices[number % len(self.devices)])),
                count) for number, (padded, count) in enumerate(self._chunks(indices))]
    parts = [jax.tree.map(lambda a, n=count: np.asarray(a)[:n], out) for out, count in pending]
    batch = jax.tree.map(lambda *arrays: np.concatenate(arrays), *parts)
    batch["params"] = {name: np.ascontiguousarray(batch["params"][:, column])
                       for column, name in enumerate(PARAM_KEYS)}
    return batch

  def scenes(self, indices: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """The sampled scenes of `indices`: (N,) scalars and (N, slots) clump and field-galaxy arrays.

    `scenes.scene_to_lenstronomy({k: v[i] for k, v in out.items()})` gives lenstronomy kwargs of image i.
    """
    indices = _check_indices(indices)
    if not len(indices):
      raise ValueError("scenes() needs at least one index")
    parts = [jax.tree.map(lambda a, n=count: np.asarray(a)[:n],
                          self._programs.scenes(np.uint32(self.seed), jax.device_put(padded, self.devices[0])))
             for padded, count in self._chunks(indices)]
    return jax.tree.map(lambda *arrays: np.concatenate(arrays), *parts)
