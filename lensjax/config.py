"""Typed experiment configs: dataclasses loaded from `configs/*.py` and overridden from the command line.

A config file is a Python module with a `get_config()` that returns a `Config` (see `configs/default.py`).
Any field can be overridden as `--config.SECTION.FIELD=VALUE`, e.g. `--config.train.batch_size=16`;
an unknown key or a value of the wrong type raises `ConfigError`, naming the key and the valid choices.

The machinery here is generic over any tree of dataclasses: each concern owns its section's dataclass
(`SimConfig`, `DataConfig`, ... below), and `Config` composes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import types
import typing
from collections.abc import Sequence
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


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  """`parser`'s arguments and the `--config.KEY=VALUE` overrides among `argv`; other unknown arguments are errors."""
  args, rest = parser.parse_known_args(list(argv))
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)}")
  return args, rest


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
  # 'irregular': the Sersic becomes a twisted, spiral-perturbed body with knots (same flux; docs/simulator.md)
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
  worker_buffer_size: int = 2      # batches each worker process keeps ready
  read_threads: int = 2            # threads reading and preprocessing batches (per process)
  prefetch_batches: int = 4        # batches read ahead by those threads


@dataclasses.dataclass
class ModelConfig:
  """Which network, and its size (`lensjax.models.build`)."""
  name: Literal["isnet", "msrfnet"] = "isnet"
  width: float = 1.0               # channel multiplier; 1.0 is the reference network, 0.125-0.25 for CPU runs
  depth: int = 6                   # IS-Net only: resolution levels 1..6 (6 is the reference); leave 6 for MSRF-Net
  wiring: Literal["original", "paper"] = "original"   # MSRF-Net only: sub-network wiring
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
  eval_batch_size: int = 32        # global batch for evaluation
  fsdp: bool = False               # shard parameters and optimizer state over the `data` axis
  target_weights: tuple[float, ...] = ()   # per-target loss weights (empty: equal)
  msrf_output_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0)   # MSRF-Net: x, edge_out, pred2, pred4
  feature_sync: bool = False       # IS-Net: DIS intermediate supervision with a ground-truth encoder
  gt_encoder_steps: int = 500      # stage 1: steps training the ground-truth encoder on the masks
  feature_sync_weight: float = 1.0 # weight of the feature-synchronisation MSE in stage 2
  figure_images: int = 4           # validation images in the image / truth / prediction figure refreshed at
                                   # each evaluation (`predictions.png`); 0: only the curves (`curves.png`)
  tensorboard: bool = False        # also write TensorBoard event files to <workdir>/tensorboard (needs the
                                   # optional tensorboardX: pip install 'lensjax[tensorboard]')


@dataclasses.dataclass
class CheckpointConfig:
  """Orbax checkpoints of the run (`lensjax.checkpoint`), in <workdir>/checkpoints/<step>.

  A checkpoint is saved, asynchronously, every `every_steps` steps, at the last step, and when the run is
  asked to stop (SIGTERM, SIGUSR1). The `keep` most recent are kept, plus the best by `best_metric` among
  those saved at an evaluation step (a step that is a multiple of `train.eval_every`, or the last step):
  choose `every_steps` as a multiple or divisor of `train.eval_every` for the best to be tracked.
  """
  every_steps: int = 250           # steps between checkpoints; 0: only at the end and when asked to stop
  keep: int = 2                    # most recent checkpoints kept (at least 1), plus the best
  best_metric: str = "iou/mean"    # validation metric that ranks checkpoints, as named in metrics.jsonl
                                   # (e.g. 'iou/arcs', 'dice/mean', 'loss')
  best_mode: Literal["max", "min"] = "max"   # whether a larger or a smaller best_metric is better


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
