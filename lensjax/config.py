"""Typed experiment configs: dataclasses loaded from `configs/*.py` and overridden from the command line.

A config file is a Python module with a `get_config()` that returns a `Config` (see `configs/default.py`).
Any field can be overridden as `--config.SECTION.FIELD=VALUE`, e.g. `--config.train.batch_size=16`;
an unknown key or a value of the wrong type raises `ConfigError`, naming the key and the valid choices.

The machinery here is generic over any tree of dataclasses: each concern owns its section's dataclass
(`lensjax.sim.SimConfig`, `lensjax.data.DataConfig`, ...), and `Config` composes them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import types
import typing
from typing import Any, Literal

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


def _parse_scalar(text: str, tp: Any, key: str) -> Any:
  """Parses the command-line text `text` as a value of type `tp`."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if type(None) in args and text.lower() in ("none", "null", ""):
      return None
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _parse_scalar(text, arg, key)
      except ConfigError:
        pass
    raise ConfigError(f"--config.{key}={text!r}: expected {_type_name(tp)}")
  if origin is Literal:
    choices = typing.get_args(tp)
    for choice in choices:
      if str(choice) == text:
        return choice
    raise ConfigError(f"--config.{key}={text!r}: expected one of {', '.join(map(repr, choices))}")
  if origin in (tuple, list):
    (elem,) = typing.get_args(tp)[:1] or (str,)
    items = [t.strip() for t in text.split(",") if t.strip()] if text.strip() else []
    values = [_parse_scalar(t, elem, key) for t in items]
    return tuple(values) if origin is tuple else values
  if tp is bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes", "on"):
      return True
    if lowered in ("false", "0", "no", "off"):
      return False
    raise ConfigError(f"--config.{key}={text!r}: expected true or false")
  if tp is int:
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f"--config.{key}={text!r}: expected an integer") from None
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f"--config.{key}={text!r}: expected a number") from None
  if tp is str:
    return text
  raise ConfigError(f"--config.{key}: fields of type {_type_name(tp)} cannot be set from the command line")


def _check_value(value: Any, tp: Any, key: str) -> Any:
  """Checks (and lightly coerces) a Python value against the annotated type `tp`."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = typing.get_args(tp)
    if value is None and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _check_value(value, arg, key)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"config.{key}={value!r}: expected {_type_name(tp)}")
  if origin is Literal:
    if value not in typing.get_args(tp):
      raise ConfigError(f"config.{key}={value!r}: expected one of {', '.join(map(repr, typing.get_args(tp)))}")
    return value
  if origin in (tuple, list):
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
      raise ConfigError(f"config.{key}={value!r}: expected a tuple")
    (elem,) = typing.get_args(tp)[:1] or (Any,)
    items = [_check_value(v, elem, key) for v in value]
    return tuple(items) if origin is tuple else items
  if tp is Any:
    return value
  if dataclasses.is_dataclass(tp):
    if isinstance(value, tp):
      return value
    if isinstance(value, dict):
      return from_dict(tp, value, prefix=key + ".")
    raise ConfigError(f"config.{key}: expected a {tp.__name__} section")
  if tp is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if tp is bool and not isinstance(value, bool):
    raise ConfigError(f"config.{key}={value!r}: expected true or false")
  if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
    raise ConfigError(f"config.{key}={value!r}: expected an integer")
  if isinstance(tp, type) and not isinstance(value, tp):
    raise ConfigError(f"config.{key}={value!r}: expected {_type_name(tp)}")
  return value


def validate(config: Any, prefix: str = "") -> Any:
  """Checks every field of a dataclass tree against its annotation; returns the config."""
  for name, tp in _field_types(type(config)).items():
    value = getattr(config, name)
    checked = _check_value(value, tp, prefix + name)
    if checked is not value:
      object.__setattr__(config, name, checked)
    if dataclasses.is_dataclass(checked):
      validate(checked, prefix + name + ".")
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
      if dataclasses.is_dataclass(tp):
        raise ConfigError(f"config key '{key}' is a section; set one of its fields: "
                          + ", ".join(f"{key}.{f.name}" for f in dataclasses.fields(tp)))
      setattr(node, part, _parse_scalar(text, tp, key))
    else:
      node = getattr(node, part)
      if not dataclasses.is_dataclass(node):
        raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:depth + 1])}' is not a section")


def parse_overrides(config: Any, args: list[str]) -> list[str]:
  """Applies every `--config.KEY=VALUE` in `args` to `config`; returns the other arguments."""
  rest = []
  for arg in args:
    if arg.startswith("--config."):
      key, sep, text = arg[len("--config."):].partition("=")
      if not sep:
        raise ConfigError(f"{arg}: write overrides as --config.KEY=VALUE")
      override(config, key, text)
    else:
      rest.append(arg)
  validate(config)
  return rest


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
  kwargs = {k: _check_value(v, types_[k], prefix + k) for k, v in data.items()}
  return cls(**kwargs)


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


def load_module_config(name: str) -> Any:
  """Runs `get_config()` of the config file `name` (see `find_config_file`)."""
  path = find_config_file(name)
  spec = importlib.util.spec_from_file_location(f"lensjax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function")
  return module.get_config()


# ---------------------------------------------------------------------------------------------------
# The sections. Each concern owns its section; defaults follow the original project where it set them.


@dataclasses.dataclass
class SimConfig:
  """The built-in lens simulator (`lensjax.sim`): image geometry, instrument, priors and mask rule.

  Angles in arcsec; fluxes in the original data's "counts" (1 count = 0.1538 nJy, AB magnitude 33.43);
  see `../shared/reference/simulator.md`. `lensjax.sim.check_config` checks every range and names the field.
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
  # Masks (computed on the noiseless lens and arcs channels; see `lensjax.sim.masks`).
  mask_rule: Literal["percentile", "noise", "peak_fraction"] = "percentile"
  lens_mask_percentile: float = 99.0   # 'percentile' rule, in [0, 100)
  arc_mask_percentile: float = 95.0
  mask_noise_k: float = 3.0        # 'noise' rule: pixels above k x the background sigma of the noise model
  mask_peak_fraction: float = 0.1  # 'peak_fraction' rule: pixels >= this fraction of the channel's peak
  # Rendering.
  render_chunk: int = 8            # images per device per compiled call; requests are padded to whole chunks.
                                   # Images are bit-identical by (seed, index) for a given render_chunk


@dataclasses.dataclass
class DataConfig:
  """Where the data come from and how they are turned into batches (`lensjax.data`)."""
  source: Literal["sim", "npy", "png", "chaos", "fits"] = "sim"
  path: str = ""                   # dataset file or folder, for the file sources
  targets: tuple[str, ...] = ("lens", "arcs")   # one mask channel per target
  worker_count: int = 0            # Grain worker processes (0: read in the training process)


@dataclasses.dataclass
class ModelConfig:
  """Which network, and its size (`lensjax.models.build`)."""
  name: Literal["isnet", "msrfnet"] = "isnet"
  width: float = 1.0               # channel multiplier; 1.0 is the reference network
  depth: int = 6                   # IS-Net: encoder stages (6 in the reference)
  wiring: Literal["original", "paper"] = "original"   # MSRF-Net sub-network wiring
  dtype: Literal["float32", "bfloat16"] = "float32"   # compute dtype; parameters stay float32


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


@dataclasses.dataclass
class TrainConfig:
  """The training loop (`lensjax.train`)."""
  batch_size: int = 8              # global batch, over all devices and processes
  num_steps: int = 1000
  seed: int = 0
  log_every: int = 50
  eval_every: int = 250
  fsdp: bool = False               # shard parameters and optimizer state over the `data` axis


@dataclasses.dataclass
class CheckpointConfig:
  """Orbax checkpoints of the run."""
  every_steps: int = 250
  keep: int = 2                    # most recent checkpoints kept (plus the best)


@dataclasses.dataclass
class Config:
  """One experiment."""
  name: str = "default"
  sim: SimConfig = dataclasses.field(default_factory=SimConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)


def load(name: str = "default", args: list[str] | None = None) -> tuple[Config, list[str]]:
  """Loads config file `name`, applies `--config.*` overrides from `args`; returns (config, other args)."""
  config = load_module_config(name)
  if not isinstance(config, Config):
    raise ConfigError(f"get_config() of '{name}' returned {type(config).__name__}, not lensjax.config.Config")
  rest = parse_overrides(config, list(args or []))
  return config, rest


def config_from_json(text: str) -> Config:
  """The inverse of `json.dumps(to_dict(config))`, used to reload a run's saved config."""
  return from_dict(Config, json.loads(text))
