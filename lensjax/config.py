"""Typed experiment configs: dataclasses loaded from `configs/*.py` and overridden from the command line.

A config file is a Python module with a `get_config()` that returns a `Config` (see `configs/default.py`).
Any field can be overridden as `--config.SECTION.FIELD=VALUE`, e.g. `--config.train.batch_size=16`;
an unknown key or a value of the wrong type raises `ConfigError`, naming the key and the valid choices.

The machinery here is generic over any tree of dataclasses: each concern owns its section's dataclass
(`SimConfig`, `DataConfig`, ... below), and `Config` composes them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from lensjax import registry

REPO_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
  """A config key or value that does not fit the schema."""


def _field_types(cls: type) -> dict[str, Any]:
  return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
  origin = typing.get_origin(tp)
  if origin is Literal:
    return " | ".join(repr(a) for a in typing.get_args(tp))
  if origin in (tuple, list):
    args = typing.get_args(tp)
    return f"comma-separated {_type_name(args[0])}s" if args else "comma-separated values"
  if origin in (typing.Union, types.UnionType):
    return " or ".join(_type_name(a) for a in typing.get_args(tp))
  return getattr(tp, "__name__", str(tp))


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _convert(value: Any, tp: Any, key: str, *, text: bool) -> Any:
  """`value` as a value of the annotated type `tp`; the one type walker of the configs.

  `text`: `value` is command-line text (`--config.KEY=TEXT`), parsed; otherwise it is a Python or JSON value,
  checked and lightly coerced (int -> float, list -> tuple, dict -> section).
  """
  shown = f"--config.{key}={value!r}" if text else f"config.{key}={value!r}"
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if type(None) in args and (value is None or (text and value.lower() in ("none", "null", ""))):
      return None
    for arg in args:
      if arg is not type(None):
        try:
          return _convert(value, arg, key, text=text)
        except ConfigError:
          pass
    raise ConfigError(f"{shown}: expected {_type_name(tp)}")
  if origin is Literal:
    for choice in typing.get_args(tp):
      if (str(choice) == value) if text else (choice == value and type(choice) is type(value)):
        return choice
    raise ConfigError(f"{shown}: expected one of {', '.join(map(repr, typing.get_args(tp)))}")
  if origin in (tuple, list):
    (elem,) = typing.get_args(tp)[:1] or (Any,)
    if text:
      value = [t.strip() for t in value.split(",") if t.strip()]
    elif isinstance(value, str) or not isinstance(value, (tuple, list)):
      raise ConfigError(f"{shown}: expected {_type_name(tp)}")
    items = [_convert(v, elem, key, text=text) for v in value]
    return tuple(items) if origin is tuple else items
  if tp is Any:
    return value
  if dataclasses.is_dataclass(tp):
    if isinstance(value, tp):
      return value
    if isinstance(value, dict) and not text:
      return from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"config key '{key}' is a section; set one of its fields: "
                      + ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(tp)))
  if tp is bool:
    if text and value.lower() in _TRUE + _FALSE:
      return value.lower() in _TRUE
    if not text and isinstance(value, bool):
      return value
    raise ConfigError(f"{shown}: expected true or false")
  if tp in (int, float):
    if text:
      try:
        return tp(value)
      except ValueError:
        pass
    elif not isinstance(value, bool) and isinstance(value, int if tp is int else (int, float)):
      return tp(value)
    raise ConfigError(f"{shown}: expected {'an integer' if tp is int else 'a number'}")
  if isinstance(tp, type) and not isinstance(value, tp):
    raise ConfigError(f"{shown}: expected {_type_name(tp)}")
  return value


def validate(config: Any, prefix: str = "") -> Any:
  """Checks every field of a dataclass tree against its annotation, then (for a whole `Config`) every range
  and cross-field rule (`Config.check`); returns the config."""
  for name, tp in _field_types(type(config)).items():
    value = getattr(config, name)
    checked = _convert(value, tp, prefix + name, text=False)
    if checked is not value:
      object.__setattr__(config, name, checked)
    if dataclasses.is_dataclass(checked):
      validate(checked, prefix + name + ".")
  if not prefix and isinstance(config, Config):
    config.check()
  return config


def override(config: Any, key: str, text: str) -> None:
  """Sets the field at dotted `key` (e.g. 'train.batch_size') from command-line `text`, in place."""
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts):
    fields = {f.name: f for f in dataclasses.fields(node)}
    where = ".".join(parts[:depth]) or "config"
    if part not in fields:
      raise ConfigError(
          f"unknown config key '{key}': {where} has no field '{part}'; valid keys: "
          + ", ".join(sorted(fields)))
    tp = _field_types(type(node))[part]
    if depth == len(parts) - 1:
      setattr(node, part, _convert(text, tp, key, text=True))
    else:
      node = getattr(node, part)
      if not dataclasses.is_dataclass(node):
        raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:depth + 1])}' is not a section")


def parse_overrides(config: Any, args: Sequence[str], sections: Sequence[str] | None = None) -> Any:
  """Applies every `--config.KEY=VALUE` of `args` to `config` and validates it; returns the config.

  `sections`: the only top-level sections these overrides may change (e.g. ('sim', 'data') for evaluation,
  which changes the data a trained network sees, never the network); None: any.
  """
  for arg in args:
    key, sep, text = arg.removeprefix("--config.").partition("=")
    if not arg.startswith("--config.") or not sep:
      raise ConfigError(f"{arg}: write overrides as --config.KEY=VALUE")
    if sections is not None and key.split(".")[0] not in sections:
      raise ConfigError(f"{arg}: only {', '.join(f'--config.{s}.*' for s in sections)} can be changed here")
    override(config, key, text)
  return validate(config)


def to_dict(config: Any) -> dict[str, Any]:
  """The config as JSON-compatible nested dicts (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
  """Builds dataclass `cls` from nested dicts, as written by `to_dict`; unknown keys are errors."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - fields)
  if unknown:
    raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(sorted(fields))}")
  types_ = _field_types(cls)
  kwargs = {k: _convert(v, types_[k], prefix + k, text=False) for k, v in data.items()}
  return cls(**kwargs)


_RESUMABLE = "resumable"


def resumable(default: Any) -> Any:
  """A field that may change when a run resumes: it changes what is logged or kept, or how fast data are
  read, never the batches, the parameters or the optimizer (see `resumable_keys`)."""
  return dataclasses.field(default=default, metadata={_RESUMABLE: True})


def _check_range(key: str, value: float, low: float, high: float | None, unit: str = "",
                 *, low_open: bool = False, high_open: bool = False) -> None:
  """Raises ConfigError unless low <= value <= high (open ends as asked; NaN fails); `unit` says what it counts."""
  above = value > low if low_open else value >= low
  below = high is None or (value < high if high_open else value <= high)
  if not (above and below):
    if high is None:
      expected = f"{'>' if low_open else '>='} {low}"
    else:
      expected = "in " + ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
    raise ConfigError(f"config.{key}={value!r}: expected {expected}" + (f" ({unit})" if unit else ""))


def _check_choice(key: str, value: Any, choices: Sequence[Any], context: str = "") -> None:
  if value not in choices:
    raise ConfigError(f"config.{key}={value!r}: expected one of {', '.join(map(repr, choices))}{context}")


def find_config_file(name: str) -> pathlib.Path:
  """Resolves a config name ('default', 'configs/isnet_sim.py', a path) to a file."""
  candidates = [pathlib.Path(name)]
  if not name.endswith(".py"):
    candidates += [pathlib.Path("configs") / f"{name}.py", REPO_CONFIG_DIR / f"{name}.py"]
  for path in candidates:
    if path.is_file():
      return path
  available = sorted(p.stem for p in REPO_CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
  raise ConfigError(f"no config file '{name}' (looked in ./configs and {REPO_CONFIG_DIR}); "
                    f"available: {', '.join(available)}")


def parse_config_arg(config_name: str, arg: str, choices: Sequence[str], flags: Sequence[str] = (),
                     default: str | None = None) -> tuple[str, set[str]]:
  """Splits a config file's argument 'CHOICE[,FLAG...]' (as in `--config isnet_sim:arcs,cpu`).

  Returns (the one choice, or `default` when none is given; the set of flags); anything else is a ConfigError
  that lists what `config_name` accepts.
  """
  words = {w for w in arg.split(",") if w}
  chosen = words & set(choices)
  if len(chosen) > 1 or words - set(choices) - set(flags) or (not chosen and default is None):
    accepted = f"one of {', '.join(choices)}" + (f", optionally with ,{' ,'.join(flags)}" if flags else "")
    raise ConfigError(f"{config_name}:{arg}: expected {accepted}")
  return (chosen.pop() if chosen else default), words & set(flags)


def load_module_config(name: str) -> Any:
  """Runs `get_config()` of config file `name`, or `get_config(arg)` for `name:arg` (e.g. 'isnet_sim:arcs')."""
  name, _, arg = name.partition(":")
  path = find_config_file(name)
  spec = importlib.util.spec_from_file_location(f"lensjax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function")
  return module.get_config(arg) if arg else module.get_config()


# ---------------------------------------------------------------------------------------------------
# The sections. Each concern owns its section; defaults follow the original project where it set them.


@dataclasses.dataclass
class SimConfig:
  """The built-in lens simulator (`lensjax.sim`): image geometry, instrument, priors and mask rule.

  Angles in arcsec; fluxes in the original data's "counts" (1 count = 0.1538 nJy, AB magnitude 33.43);
  see `docs/simulator.md`. `lensjax.sim.check_config` checks every range and names the field.
  Uniform priors are given as (min, max) pairs of fields; "log10" fields are decimal logarithms.
  """
  # Geometry and instrument.
  image_size: int = 125            # pixels per side (square stamps)
  pixel_scale: float = 0.031       # arcsec per pixel (JWST NIRCam short wavelength)
  supersampling: int = 1           # sub-pixels per pixel side; pixel = mean of sub-pixels x pixel area
  psf: Literal["none", "gaussian", "moffat"] = "gaussian"
  psf_fwhm: float = 0.04           # arcsec (NIRCam F115W)
  psf_truncation: float = 3.0      # kernel radius in Gaussian sigmas (sigma = FWHM / 2.3548), as lenstronomy
  moffat_beta: float = 3.0         # Moffat power-law index (dimensionless), used when psf = 'moffat'
  # Noise (off by default: the original "pristine" set). 'gaussian': lenstronomy's Gaussian approximation of
  # shot + sky + read noise; 'poisson': exact Poisson electrons plus Gaussian read noise.
  noise: Literal["none", "gaussian", "poisson"] = "none"
  exposure_time: float = 257.0     # seconds per exposure (lenstronomy's JWST F115W settings)
  num_exposures: int = 8           # exposures stacked
  read_noise: float = 15.77        # electrons per exposure and pixel
  sky_brightness: float = 30.96    # mag per arcsec^2
  magnitude_zero_point: float = 28.02   # AB magnitude giving 1 electron per second
  counts_zero_point: float = 33.43      # AB magnitude of one image count (0.1538 nJy)
  # Lens population.
  lens_fraction: float = 0.5       # fraction of images with a lensed source; the rest have no arc light
  theta_E_min: float = 0.5         # arcsec, Einstein radius (product-averaged), uniform
  theta_E_max: float = 1.5         # arcsec
  mass_q_min: float = 0.5          # SIE axis ratio ~ U(mass_q_min, 1); orientation uniform
  lens_center_sigma: float = 0.05  # arcsec, Gaussian scatter of the lens centre around the stamp centre
  shear_sigma: float = 0.03        # external shear gamma1, gamma2 ~ N(0, shear_sigma) each
  shear_max: float = 0.1           # |gamma| is capped at this value
  light_misalignment_sigma: float = 0.02   # lens light e1, e2 = mass e1, e2 + N(0, this)
  lens_R_sersic_min: float = 0.3   # arcsec, lens light half-light radius (product-averaged), uniform
  lens_R_sersic_max: float = 1.5   # arcsec
  lens_n_sersic_min: float = 2.0   # lens light Sersic index, uniform
  lens_n_sersic_max: float = 6.0
  lens_log10_flux_min: float = 4.5  # lens total flux, log10(counts), uniform
  lens_log10_flux_max: float = 6.0
  # Source population (a Sersic plus compact Gaussian clumps, lensed).
  source_position_max: float = 0.5  # source centre uniform in a disc of this radius x theta_E around the lens
  source_R_sersic_min: float = 0.05  # arcsec
  source_R_sersic_max: float = 0.35  # arcsec
  source_n_sersic_min: float = 0.5
  source_n_sersic_max: float = 2.5
  source_e_sigma: float = 0.15     # source e1, e2 ~ N(0, this) each
  source_e_max: float = 0.5        # |e| of the source is capped at this value
  source_log10_flux_ratio_min: float = -1.0   # unlensed source flux / lens flux, log10, uniform
  source_log10_flux_ratio_max: float = 1.0
  clumps_max: int = 4              # clumps per source ~ uniform integer in [0, clumps_max] (fixed slots)
  clump_sigma_min: float = 0.02    # arcsec, Gaussian clump sigma, uniform
  clump_sigma_max: float = 0.08    # arcsec
  clump_offset_max: float = 0.3    # arcsec, clump centres uniform in a disc of this radius around the source
  clump_flux_fraction_min: float = 0.1   # share of the source flux in its clumps (when it has any), uniform
  clump_flux_fraction_max: float = 0.4
  # 'irregular': the Sersic becomes a twisted, spiral-perturbed body with knots (same flux; docs/harder-simulations.md)
  source_model: Literal["sersic", "irregular"] = "sersic"
  # Field galaxies: Sersics in the observed channel only (not lensed, not in the masks).
  field_galaxies_mean: float = 2.0   # Poisson mean number per stamp
  field_galaxies_max: int = 4        # slots (cost scales with this); the Poisson draw is capped here
  field_R_sersic_min: float = 0.05   # arcsec
  field_R_sersic_max: float = 0.4    # arcsec
  field_n_sersic_min: float = 2.0
  field_n_sersic_max: float = 6.0
  field_e_sigma: float = 0.05        # field galaxy e1, e2 ~ N(0, this) each, |e| capped at 0.3
  field_log10_flux_mean: float = 3.5   # field galaxy total flux, log10(counts) ~ N(mean, sigma)
  field_log10_flux_sigma: float = 0.7
  crowd_galaxies_mean: float = 0.0   # crowded field: Poisson mean of extra faint field galaxies (10: JADES-like,
                                     # `simulate --crowded`); 0: off
  # Masks (computed on the noiseless lens and arcs channels; see `lensjax.sim.masks`).
  mask_rule: Literal["percentile", "noise", "peak_fraction"] = "percentile"
  lens_mask_percentile: float = 99.0   # 'percentile' rule, in [0, 100)
  arc_mask_percentile: float = 95.0
  mask_noise_k: float = 3.0        # 'noise' rule: pixels above k x the background sigma of the noise model
  mask_peak_fraction: float = 0.1  # 'peak_fraction' rule: pixels >= this fraction of the channel's peak
  # Rendering.
  render_chunk: int = 8            # images per device per compiled call; requests are padded to whole chunks.
                                   # Images are bit-identical by (seed, index) for a given render_chunk

  def check(self) -> None:
    # The simulator owns its ranges (they follow its numerics); imported here, when checked, because it needs JAX.
    from lensjax.sim import simulator  # pylint: disable=g-import-not-at-top
    try:
      simulator.check_config(self)
    except ValueError as error:
      raise ConfigError(str(error)) from None


@dataclasses.dataclass
class DataConfig:
  """Where the data come from and how they are turned into batches (`lensjax.data`).

  Sources (`source`):
    sim    the built-in simulator (`lensjax.sim`), rendered on the fly; splits are disjoint by seed.
    npy    the original project's arrays: one `images.npy` (N, H, W, 3: observed, lens, arcs) with masks made
           on load by the simulator's mask rule (`sim.mask_rule`, `sim.lens_mask_percentile`, ...), or with a
           `masks.npy` (N, H, W, 2: lens, arcs); or the split folders
           `{train,val,test}/images/*.npy` with `lens_mask/` and `arc_mask/`. Memory-mapped, never unpickled.
    png    `{train,val,test}/images/*.png` with `masks/*.png` of the same names (the original's CHAOS run).
    chaos  the CHAOS download (`CT/<id>/DICOM_anon` + `Ground`, `MR/<id>/T1DUAL|T2SPIR`); needs pydicom.
    fits   survey cutouts without masks (a 2-D image or an (N, H, W) cube per file), to run a trained model
           on; split 'test' only; needs astropy.

  Per-image preprocessing, in this order: normalize, arc_boost, resize_to, pad_to, augmentation (train
  split only), crop_size, channels, the Canny edge map (when the model takes one), input_scaling.
  """
  source: Literal["sim", "npy", "png", "chaos", "fits"] = "sim"
  path: str = ""                   # dataset file or folder, for the file sources
  # One mask channel per target. sim, npy: 'lens', 'arcs'. png, chaos: 'foreground' (any labelled pixel),
  # or organs decoded from the CHAOS MR grey levels: 'liver', 'right_kidney', 'left_kidney', 'spleen'
  # (a binary 0/255 mask read with organ targets would decode as spleen; use 'foreground' for those).
  # chaos CT ground truth is the liver only: 'liver' or 'foreground'. fits: ignored (no masks).
  targets: tuple[str, ...] = ("lens", "arcs")

  # Simulated source. Split s is rendered with simulator seed 3 * sim_seed + (0 train, 1 val, 2 test), so the
  # splits never share a scene, whatever their sizes.
  sim_seed: int = 0
  sim_train_size: int = 0          # images; 0: unbounded (the training stream never repeats a scene)
  sim_val_size: int = 256          # images
  sim_test_size: int = 256         # images

  # File sources.
  split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)   # train, val, test shares of one images.npy or of
                                                         # the CHAOS patients; must sum to 1
  split_seed: int = 0              # seed of the random assignment to splits above
  chaos_modality: Literal["CT", "T1DUAL_InPhase", "T1DUAL_OutPhase", "T2SPIR"] = "CT"
  ct_hu_range: tuple[float, ...] = (-160.0, 240.0)      # CT Hounsfield units mapped linearly to [0, 1] and
                                                        # clipped (abdominal window: level 40, width 400)

  # Preprocessing.
  # percentile: divide each image channel by its `normalize_percentile` percentile and clip to [0, 1] (not the
  # original's function); original: the original project's x / p99 -> (x - min) * 255 / max -> clip at the
  # recomputed p99, then / 255 (`transforms.original_normalize`); minmax: (x - min) / (max - min); none: as
  # read (png is already x / 255, chaos CT is windowed by ct_hu_range). auto: percentile for sim, npy, fits
  # and chaos MR; none for png and chaos CT.
  normalize: Literal["auto", "percentile", "original", "minmax", "none"] = "auto"
  normalize_percentile: float = 99.0
  # Arc-brightness boost (the original used 10; 1 disables it): pixels above the image's 95th percentile
  # are multiplied by arc_boost, those above the recomputed 99th percentile divided by it, and the image is
  # divided by arc_boost to stay in [0, 1]. With normalize='original' it is the original's own boost instead:
  # in 0-255 units after padding, clipped at 255, no overall division. Applied once per read (the original
  # compounded it every epoch).
  arc_boost: float = 1.0
  resize_to: int = 0               # pixels per side after reading (bilinear for images, nearest for masks);
                                   # 0 keeps the stored size (the original's CHAOS run resized to 256)
  pad_to: int = 128                # zero-pad smaller images and masks to this side at offset (pad_to - n) // 2,
                                   # i.e. (1, 1) for 125 -> 128 as the original; larger ones are kept; 0: off
  crop_size: int = 0               # pixels per side: a random crop for the train split, the central crop for
                                   # val/test; 0: off
  augment: Literal["none", "hflip", "d4"] = "d4"   # train split only. d4: the 8 flips and 90-degree rotations
                                   # (lens images have no preferred orientation; rotations need square images);
                                   # hflip: the original IS-Net's horizontal flip with p = 0.5
  input_channels: Literal[1, 3] = 1    # 3 repeats a grey image (the original IS-Net and CHAOS inputs);
                                       # 1 turns RGB into luma (ITU-R 601, as PIL's convert('L'))
  # unit: the normalised image, [0, 1]; centered: minus 0.5 (the original IS-Net's x / 255 - 0.5);
  # standardize: zero mean and unit variance per image and channel.
  input_scaling: Literal["unit", "centered", "standardize"] = "centered"

  # Loading.
  worker_count: int = 0            # Grain worker processes (0: read in the training process)
  worker_buffer_size: int = resumable(2)   # batches each worker process keeps ready
  read_threads: int = resumable(2)         # threads reading and preprocessing batches (per process)
  prefetch_batches: int = resumable(4)     # batches read ahead by those threads

  def check(self) -> None:
    if self.source != "sim" and not self.path:
      raise ConfigError(f"config.data.source={self.source!r} reads files: set data.path to the dataset "
                        "(e.g. --config.data.path=/data/lenses)")
    if not self.targets or len(set(self.targets)) != len(self.targets):
      raise ConfigError(f"config.data.targets={self.targets!r}: expected distinct target names, at least one")
    _check_range("data.sim_seed", self.sim_seed, 0, (2**32 - 3) // 3)
    _check_range("data.sim_train_size", self.sim_train_size, 0, None, "images, or 0 for an unbounded stream")
    _check_range("data.sim_val_size", self.sim_val_size, 1, None, "images")
    _check_range("data.sim_test_size", self.sim_test_size, 1, None, "images")
    fractions = self.split_fractions
    if len(fractions) != 3 or not all(f >= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
      raise ConfigError(f"config.data.split_fractions={fractions!r}: expected three non-negative shares "
                        "(train, val, test) that sum to 1")
    if len(self.ct_hu_range) != 2 or not self.ct_hu_range[0] < self.ct_hu_range[1]:
      raise ConfigError(f"config.data.ct_hu_range={self.ct_hu_range!r}: expected (low, high) with low < high")
    self.check_preprocessing()
    for name in ("worker_count", "worker_buffer_size", "read_threads", "prefetch_batches"):
      _check_range(f"data.{name}", getattr(self, name), 0, None, "a count")

  def check_preprocessing(self) -> None:
    """The checks of the per-image preprocessing fields alone (`lensjax.data.make_preprocessor` runs them for
    configs that are not checked whole, such as `predict`'s)."""
    _check_range("data.normalize_percentile", self.normalize_percentile, 0, 100, "a percentile", low_open=True)
    _check_range("data.arc_boost", self.arc_boost, 1, None, "a factor; 1 disables the boost")
    for name in ("resize_to", "pad_to", "crop_size"):
      _check_range(f"data.{name}", getattr(self, name), 0, None, "pixels, or 0 for off")


@dataclasses.dataclass
class ModelConfig:
  """Which network, and its size (`lensjax.models.build`); what each network accepts is in `lensjax.registry`."""
  name: str = "isnet"              # a network of `lensjax.registry`: isnet, msrfnet
  width: float = 1.0               # channel multiplier; 1.0 is the reference network, 0.125-0.25 for CPU runs
  depth: int = 6                   # IS-Net only: resolution levels 1..6 (6 is the reference); leave 6 for MSRF-Net
  wiring: str = "original"         # MSRF-Net only: sub-network wiring, 'original' or 'paper'
  refine_channels: int = 0         # IS-Net only: channels of a full-resolution head correcting d1
                                   # (`lensjax.models.isnet.Refinement`); 0 is the reference network
  dtype: str = "float32"           # compute dtype, float32 or bfloat16; parameters stay float32

  def check(self) -> None:
    _check_choice("model.name", self.name, registry.TRAINABLE_MODEL_NAMES)
    network = registry.network(self.name)
    if not (math.isfinite(self.width) and self.width > 0):
      raise ConfigError(f"config.model.width={self.width!r}: expected a positive channel multiplier "
                        "(1.0 is the reference network)")
    _check_choice("model.depth", self.depth, network.depths, f" for model.name={self.name!r}")
    _check_choice("model.wiring", self.wiring, network.wirings, f" for model.name={self.name!r}")
    _check_range("model.refine_channels", self.refine_channels, 0, None,
                 "channels of IS-Net's refinement head; 0 leaves it out")
    if self.refine_channels and not network.refines:
      raise ConfigError(f"config.model.refine_channels={self.refine_channels!r}: the refinement head is "
                        f"IS-Net's; leave it 0 for model.name={self.name!r}")
    _check_choice("model.dtype", self.dtype, network.dtypes, f" for model.name={self.name!r}")


@dataclasses.dataclass
class OptimConfig:
  """The optimizer and learning-rate schedule (optax)."""
  name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
  learning_rate: float = 1e-3
  schedule: Literal["constant", "warmup_cosine"] = "constant"
  warmup_steps: int = 0
  b1: float = 0.9                  # adam/adamw
  b2: float = 0.999                # adam/adamw
  eps: float = 1e-8
  weight_decay: float = 0.0        # adamw
  decay: float = 0.9               # rmsprop
  momentum: float = 0.0            # rmsprop, sgd
  grad_clip_norm: float = 0.0      # global-norm clipping; 0 disables it

  def check(self) -> None:
    _check_range("optim.learning_rate", self.learning_rate, 0, None, "a positive step size", low_open=True)
    _check_range("optim.warmup_steps", self.warmup_steps, 0, None, "steps")
    for name in ("b1", "b2", "decay", "momentum"):
      _check_range(f"optim.{name}", getattr(self, name), 0, 1, "a decay rate", high_open=True)
    _check_range("optim.eps", self.eps, 0, None, "a small positive number", low_open=True)
    _check_range("optim.weight_decay", self.weight_decay, 0, None, "a decay factor")
    _check_range("optim.grad_clip_norm", self.grad_clip_norm, 0, None, "a norm; 0 disables clipping")


@dataclasses.dataclass
class TrainConfig:
  """The training loop (`lensjax.train`)."""
  batch_size: int = 8              # global batch, over all devices and processes
  num_steps: int = 1000
  seed: int = 0
  log_every: int = resumable(50)
  eval_every: int = resumable(250)
  eval_batch_size: int = resumable(32)   # global batch for evaluation
  fsdp: bool = False               # shard parameters and optimizer state over the `data` axis
  target_weights: tuple[float, ...] = ()   # per-target loss weights (empty: equal)
  msrf_output_weights: tuple[float, ...] = registry.network("msrfnet").output_weights   # x, edge_out, pred2,
                                                                                       # pred4
  # MSRF-Net's targets. masks: the masks and their Canny edges. input: the original project's mistake, kept as
  # an opt-in bug-compatible mode: the network learns to reproduce its own input image (and the Canny edges of
  # the input), while validation still scores it against the masks (docs/results.md).
  msrfnet_targets: Literal["masks", "input"] = "masks"
  early_stop_evals: int = resumable(0)   # stop when validation checkpoint.best_metric has not improved for
                                         # this many evaluations in a row (the original: 20); 0: never
  feature_sync: bool = False       # IS-Net: DIS intermediate supervision with a ground-truth encoder
  gt_encoder_steps: int = 500      # stage 1: steps training the ground-truth encoder on the masks
  feature_sync_weight: float = 1.0 # weight of the feature-synchronisation MSE in stage 2
  isnet_dice_weight: float = 0.0   # IS-Net: add this weight x (1 - soft Dice) to each side output's BCE
                                   # (0: the original's BCE only)
  figure_images: int = resumable(4)   # validation images in the image / truth / prediction figure refreshed
                                      # at each evaluation (`predictions.png`); 0: only the curves (`curves.png`)
  tensorboard: bool = resumable(False)   # also write TensorBoard event files to <workdir>/tensorboard (needs the
                                         # optional tensorboardX: pip install 'lensjax[tensorboard]')

  def check(self) -> None:
    for name in ("batch_size", "eval_batch_size"):
      _check_range(f"train.{name}", getattr(self, name), 1, None, "images in the global batch")
    for name in ("num_steps", "log_every", "eval_every", "gt_encoder_steps"):
      _check_range(f"train.{name}", getattr(self, name), 1, None, "steps")
    _check_range("train.early_stop_evals", self.early_stop_evals, 0, None, "evaluations; 0 never stops early")
    _check_range("train.figure_images", self.figure_images, 0, None, "images")
    _check_range("train.feature_sync_weight", self.feature_sync_weight, 0, None, "a loss weight")
    _check_range("train.isnet_dice_weight", self.isnet_dice_weight, 0, None, "a loss weight")
    for name in ("target_weights", "msrf_output_weights"):
      weights = getattr(self, name)
      if weights and (min(weights) < 0 or not sum(weights) > 0 or not all(map(math.isfinite, weights))):
        raise ConfigError(f"config.train.{name}={weights!r}: expected non-negative weights with a positive sum")


@dataclasses.dataclass
class CheckpointConfig:
  """Orbax checkpoints of the run (`lensjax.checkpoint`), in <workdir>/checkpoints/<step>.

  A checkpoint is saved, asynchronously, every `every_steps` steps, at the last step, and when the run is
  asked to stop (SIGTERM, SIGUSR1). The `keep` most recent are kept, plus the best by `best_metric` among
  those saved at an evaluation step (a step that is a multiple of `train.eval_every`, or the last step):
  choose `every_steps` as a multiple or divisor of `train.eval_every` for the best to be tracked.
  """
  every_steps: int = resumable(250)   # steps between checkpoints; 0: only at the end and when asked to stop
  keep: int = resumable(2)            # most recent checkpoints kept (at least 1), plus the best
  best_metric: str = "iou/mean"    # validation metric that ranks checkpoints, as named in metrics.jsonl
                                   # (e.g. 'iou/arcs', 'dice/mean', 'loss')
  best_mode: Literal["max", "min"] = "max"   # whether a larger or a smaller best_metric is better

  def check(self) -> None:
    _check_range("checkpoint.every_steps", self.every_steps, 0, None,
                 "steps; 0 saves only at the end and when asked to stop")
    _check_range("checkpoint.keep", self.keep, 1, None, "checkpoints; the newest is what a rerun resumes from")
    if not self.best_metric:
      raise ConfigError("config.checkpoint.best_metric is empty: name a validation metric, e.g. iou/mean or loss")


@dataclasses.dataclass
class Config:
  """One experiment."""
  name: str = resumable("default")
  sim: SimConfig = dataclasses.field(default_factory=SimConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

  def check(self) -> None:
    """Raises ConfigError naming the first field out of its range, or the first broken rule between fields."""
    for section in (self.sim, self.data, self.model, self.optim, self.train, self.checkpoint):
      section.check()
    targets = self.data.targets
    if self.train.target_weights and len(self.train.target_weights) != len(targets):
      raise ConfigError(f"config.train.target_weights={self.train.target_weights!r}: expected one weight per "
                        f"target ({', '.join(targets)}), or none for equal weights")
    expected = registry.network(self.model.name).output_weights
    if expected and len(self.train.msrf_output_weights) != len(expected):
      raise ConfigError(f"config.train.msrf_output_weights={self.train.msrf_output_weights!r}: "
                        f"{self.model.name} has {len(expected)} outputs; give one weight each")
    if self.train.msrfnet_targets != "masks" and self.model.name != "msrfnet":
      raise ConfigError(f"config.train.msrfnet_targets={self.train.msrfnet_targets!r} applies to MSRF-Net only, "
                        f"not model.name={self.model.name!r}; leave it at 'masks'")
    is_isnet = registry.network(self.model.name).gt_encoder is not None
    if self.train.isnet_dice_weight and not is_isnet:
      raise ConfigError(f"config.train.isnet_dice_weight={self.train.isnet_dice_weight} applies to IS-Net only, "
                        f"not model.name={self.model.name!r} (MSRF-Net's loss has its Dice already); leave it at 0")
    if self.train.feature_sync and not is_isnet:
      raise ConfigError(f"config.train.feature_sync=true applies to IS-Net only, not "
                        f"model.name={self.model.name!r}")
    _, _, target = self.checkpoint.best_metric.partition("/")
    if target and target not in (*targets, "mean"):
      raise ConfigError(f"config.checkpoint.best_metric={self.checkpoint.best_metric!r}: no target '{target}'; "
                        f"the targets are {', '.join(targets)} (or 'mean')")
    if self.train.tensorboard and importlib.util.find_spec("tensorboardX") is None:
      raise ConfigError("config.train.tensorboard=true needs the optional tensorboardX package: pip install "
                        "'lensjax[tensorboard]' (or tensorboardX), or set train.tensorboard=false")

  def check_devices(self, num_devices: int) -> None:
    """Raises ConfigError when a global batch does not split evenly over `num_devices` devices."""
    for name in ("batch_size", "eval_batch_size"):
      size = getattr(self.train, name)
      if size % num_devices:
        raise ConfigError(f"config.train.{name}={size}: must be a multiple of the number of devices "
                          f"({num_devices})")


def load(name: str = "default", overrides: Sequence[str] = ()) -> Config:
  """Loads config file `name` and applies the `--config.KEY=VALUE` `overrides`: the one way commands, benchmarks
  and tests get a config. The result has passed every check (`validate`)."""
  config = load_module_config(name)
  if not isinstance(config, Config):
    raise ConfigError(f"get_config() of '{name}' returned {type(config).__name__}, not lensjax.config.Config")
  return parse_overrides(config, overrides)


def resumable_keys(cls: type | None = None, prefix: str = "") -> frozenset[str]:
  """The dotted keys of the fields declared with `resumable` (those a resumed run may change)."""
  keys = set()
  for field in dataclasses.fields(cls or Config):
    tp = _field_types(cls or Config)[field.name]
    if dataclasses.is_dataclass(tp):
      keys |= resumable_keys(tp, f"{prefix}{field.name}.")
    elif field.metadata.get(_RESUMABLE):
      keys.add(prefix + field.name)
  return frozenset(keys)


def config_from_json(text: str) -> Config:
  """The inverse of `json.dumps(to_dict(config))`, used to reload a run's saved config."""
  return from_dict(Config, json.loads(text))
