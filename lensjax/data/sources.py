"""Grain random-access sources: `make_source(config, split)` for every kind of dataset lensjax reads.

Two layers:
  * a raw source per format (`SimSource` here, `npy.py`, `images.py`, `fits.py`) validates the dataset
    cheaply when built (shapes, dtypes, pairing: a bad dataset fails before the first step) and returns raw
    examples: `image` (H, W, C) float32 in the format's units, `mask` (H, W, K) float32 in {0, 1} (one channel
    per target; absent for FITS), `index` and, for simulated data, scalar metadata;
  * `Source` applies the deterministic preprocessing (`transforms.Preprocessor`, no augmentation) on top.
    The loader (`pipeline.make_loader`) reads the raw source in batches and preprocesses with augmentation.

Raw sources read lazily (memory maps, open files, the simulator) and drop those handles when pickled, so
Grain worker processes (started with spawn) reopen them. Nothing here uses JAX (Grain imports it but starts
no backend); the simulated source imports `lensjax.sim` in the process that renders.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from typing import Any, Sequence

import grain
import numpy as np

from lensjax import config as cfg
from lensjax import registry
from lensjax.data import transforms

SPLITS = ("train", "val", "test")
SIM_TARGETS = ("lens", "arcs")           # the simulator's mask channels, in this order
# Per-image simulation parameters passed on with each example, so evaluation can bin by them.
SIM_METADATA = ("is_lens", "theta_E", "arc_flux", "arc_peak", "arc_snr", "magnification")
# An unbounded simulated split: indices run up to this (a fresh scene per index, for years of training).
UNBOUNDED_SIM_SIZE = 2**31 - 1
# Simulator seed of split s is SIM_SEEDS_PER_RUN * sim_seed + offset: distinct for every (sim_seed, split).
SIM_SEEDS_PER_RUN = 3
_SIM_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}
# Held while a simulator renders a batch size for the first time (and compiles for it): Grain's read
# threads would otherwise compile the same renderer concurrently, each taking the full compile time.
_FIRST_RENDER_LOCK = threading.Lock()


class RawSource(grain.sources.RandomAccessDataSource):
  """Base of the format readers: random access to raw examples, batched reads, lazy file handles.

  Subclasses set `image_shape` (H, W, C) and `targets` in `__init__` and implement `__len__`, `read(index)`
  and `describe(index)` (the file, and row, an example comes from). Attributes whose names start with
  `_handle` are process-local (open files, memory maps, the simulator) and are not pickled.
  """

  image_shape: tuple[int, int, int]
  targets: tuple[str, ...]
  has_masks: bool = True

  def read(self, index: int) -> dict[str, Any]:
    raise NotImplementedError

  def describe(self, index: int) -> str:
    raise NotImplementedError

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self!r} ({len(self)} examples)")
    return self.read(index)

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Grain's batched read; sources that can read many examples at once (the simulator) override it."""
    return [self[i] for i in indices]

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if not k.startswith("_handle")}


class Source(grain.sources.RandomAccessDataSource):
  """What `make_source` returns: preprocessed examples, without augmentation.

  Elements are dicts of numpy arrays: `image` (S, S, C) float32, `mask` (S, S, K) float32 in {0, 1} (not for
  FITS), `edge` (S, S, 1) and `mask_edge` (S, S, K) float32 when the preprocessor makes them, `index` int64
  and the raw source's scalars.
  """

  def __init__(self, raw: RawSource, preprocessor: transforms.Preprocessor, split: str):
    self.raw = raw
    self.preprocessor = preprocessor
    self.split = split

  def __len__(self) -> int:
    return len(self.raw)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.preprocessor(self.raw[index])

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self.preprocessor(example) for example in self.raw._getitems(indices)]

  @property
  def element_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the `image` of every element."""
    height, width = self.preprocessor.output_size(*self.raw.image_shape[:2])
    return height, width, self.preprocessor.input_channels

  def __repr__(self) -> str:
    return f"Source(split={self.split!r}, raw={self.raw!r}, preprocessor={self.preprocessor!r})"


# ---------------------------------------------------------------------------------------------------
# The simulated source.


def sim_seed(data: cfg.DataConfig, split: str) -> int:
  """The simulator seed of `split`: different for every (data.sim_seed, split), so splits never overlap."""
  if not 0 <= SIM_SEEDS_PER_RUN * data.sim_seed + 2 < 2**32:
    raise ValueError(f"data.sim_seed={data.sim_seed}: expected an integer in [0, {(2**32 - 3) // 3}]")
  return SIM_SEEDS_PER_RUN * data.sim_seed + _SIM_SPLIT_OFFSET[split]


def sim_size(data: cfg.DataConfig, split: str) -> int:
  """Images in the simulated `split` (UNBOUNDED_SIM_SIZE for an unbounded training stream)."""
  size = {"train": data.sim_train_size, "val": data.sim_val_size, "test": data.sim_test_size}[split]
  if size < 0 or (size == 0 and split != "train"):
    raise ValueError(f"data.sim_{split}_size={size}: expected a positive number of images"
                     + (" (or 0 for an unbounded training stream)" if split == "train" else ""))
  return size or UNBOUNDED_SIM_SIZE


class SimSource(RawSource):
  """Simulated lenses, a pure function of (seed, index): `lensjax.sim.Simulator(sim_config, seed)`.

  Examples: `image` (125, 125, 1) float32, the observed channel in counts; `mask` (125, 125, K) float32, the
  simulator's masks (made on the noiseless channels) for `targets`; `index`; and the SIM_METADATA
  parameters (is_lens 0/1, theta_E in arcsec, arc_flux in counts, arc_peak in counts per pixel, arc_snr,
  magnification) as float32 scalars, so evaluation can bin by them. `_getitems` renders a whole batch in one
  simulator call, far faster than one image at a time.
  """

  def __init__(self, sim_config: cfg.SimConfig, seed: int, size: int, targets: Sequence[str]):
    self.sim_config = sim_config
    self.seed = seed
    self.size = size
    self.targets = tuple(targets)
    self._channels = [SIM_TARGETS.index(t) for t in self.targets]
    self.image_shape = (sim_config.image_size, sim_config.image_size, 1)

  def __len__(self) -> int:
    return self.size

  def describe(self, index: int) -> str:
    return f"simulated scene {index} (seed {self.seed})"

  def read(self, index: int) -> dict[str, Any]:
    return self._getitems([index])[0]

  def _render(self, indices: np.ndarray) -> dict[str, Any]:
    with _FIRST_RENDER_LOCK:
      if getattr(self, "_handle_simulator", None) is None:
        if multiprocessing.parent_process() is not None:
          # A Grain worker process: render on the CPU so that workers never claim accelerator memory; the
          # training process keeps the accelerator.
          import jax  # pylint: disable=g-import-not-at-top
          jax.config.update("jax_platforms", "cpu")
        from lensjax import sim  # pylint: disable=g-import-not-at-top
        self._handle_simulator = sim.Simulator(self.sim_config, self.seed)
        self._handle_rendered_sizes = set()
      if len(indices) not in self._handle_rendered_sizes:
        self._handle_rendered_sizes.add(len(indices))
        return self._handle_simulator.render(indices)
    return self._handle_simulator.render(indices)

  def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.size):
      raise IndexError(f"indices {indices.min()}..{indices.max()} out of range for {self!r}")
    rendered = self._render(indices)
    observed = np.asarray(rendered["observed"], np.float32)
    masks = np.asarray(rendered["masks"])[..., self._channels].astype(np.float32)
    params = {name: np.asarray(rendered["params"][name], np.float32) for name in SIM_METADATA}
    return [{"image": observed[i, :, :, None], "mask": masks[i], "index": np.int64(index),
             **{name: values[i] for name, values in params.items()}}
            for i, index in enumerate(indices)]

  def __repr__(self) -> str:
    return f"SimSource(seed={self.seed}, size={self.size}, targets={self.targets})"


# ---------------------------------------------------------------------------------------------------
# Choosing a source from the config.


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")


def split_rows(count: int, fractions: Sequence[float], seed: int, split: str) -> np.ndarray:
  """Sorted rows of `split` when `count` items are assigned at random (seeded) in `fractions` (train, val, test).

  val and test get round(share x count) items, at least one each when their share is positive (so 4 CHAOS
  patients still give a validation patient); train gets the rest.
  """
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
    raise ValueError(f"data.split_fractions={tuple(fractions)}: expected three non-negative shares "
                     "(train, val, test) that sum to 1")
  n_val, n_test = (max(int(round(f * count)), 1 if f > 0 else 0) for f in fractions[1:])
  n_train = max(count - n_val - n_test, 0)
  bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, n_train + n_val + n_test)}
  order = np.random.default_rng(seed).permutation(count)
  start, stop = bounds[split]
  return np.sort(order[start:stop])


def _check_targets(targets: Sequence[str], allowed: Sequence[str], source: str) -> None:
  if not targets or len(set(targets)) != len(targets) or any(t not in allowed for t in targets):
    raise ValueError(f"data.targets={tuple(targets)} for data.source={source!r}: expected distinct names from "
                     f"{', '.join(allowed)}")


def make_raw_source(config: cfg.Config, split: str) -> RawSource:
  """The raw reader for `config.data.source` and `split` (validated; see the module docstring)."""
  # The file formats import their readers (pydicom, astropy) only when used.
  from lensjax.data import fits, images, npy  # pylint: disable=g-import-not-at-top
  check_split(split)
  data = config.data
  if data.source == "sim":
    _check_targets(data.targets, SIM_TARGETS, "sim")
    return SimSource(config.sim, sim_seed(data, split), sim_size(data, split), data.targets)
  if not data.path:
    raise ValueError(f"data.source={data.source!r} reads files: set data.path to the dataset "
                     "(e.g. --config.data.path=/data/lenses)")
  if data.source == "npy":
    _check_targets(data.targets, SIM_TARGETS, "npy")
    return npy.open_npy(config, split)
  if data.source == "png":
    return images.PngFolderSource(data.path, split, data.targets, allow_mixed_sizes=data.resize_to > 0)
  if data.source == "chaos":
    return images.ChaosSource(data, split)
  if data.source == "fits":
    return fits.FitsSource(data.path, split)
  raise ValueError(f"data.source={data.source!r}: expected sim, npy, png, chaos or fits")


def mask_source(config: cfg.Config) -> tuple[str, list[str]]:
  """Where the masks of `config.data` come from, for the start-up log and `data check`, and warnings.

  Looks at names only (no file is read), e.g. ('masks.npy', []) or ('made from the lens and arc channels by
  the percentile rule (no masks.npy)', ['.../mask.npy: not read; ...']).
  """
  from lensjax.data import npy  # pylint: disable=g-import-not-at-top
  data = config.data
  if data.source == "npy" and data.path:
    return npy.mask_source(data.path)
  described = {"sim": "the simulator's (config.sim.mask_rule)", "npy": "masks.npy",
               "png": "masks/NAME.png beside images/NAME.png", "chaos": "the CHAOS Ground/ PNGs",
               "fits": "none (FITS cutouts have no masks)"}
  return described.get(data.source, "unknown"), []


def resolved_normalize(data: cfg.DataConfig) -> str:
  """`data.normalize` with 'auto' resolved: 'none' for png and chaos CT (already in [0, 1]), else 'percentile'."""
  if data.normalize != "auto":
    return data.normalize
  if data.source == "png" or (data.source == "chaos" and data.chaos_modality == "CT"):
    return "none"
  return "percentile"


def needs_edge(config: cfg.Config) -> bool:
  """Whether the model takes the Canny edge map as an input (MSRF-Net; its `lensjax.registry` entry says)."""
  return "edge" in registry.network(config.model.name).input_keys


def make_preprocessor(config: cfg.Config, *, with_edge: bool) -> transforms.Preprocessor:
  """The `transforms.Preprocessor` that `config.data` describes."""
  data = config.data
  data.check_preprocessing()
  return transforms.Preprocessor(
      normalize=resolved_normalize(data), normalize_percentile=data.normalize_percentile,
      arc_boost=data.arc_boost, resize_to=data.resize_to, pad_to=data.pad_to, crop_size=data.crop_size,
      augment=data.augment, input_channels=data.input_channels, input_scaling=data.input_scaling,
      with_edge=with_edge)


def make_source(config: cfg.Config, split: str, *, with_edge: bool | None = None) -> Source:
  """The Grain random-access source of `split` ('train', 'val' or 'test') of the dataset `config.data` names.

  Elements: `image` (S, S, C) float32, `mask` (S, S, K) float32 in {0, 1} with one channel per
  `config.data.targets` entry (not for FITS), `edge` (S, S, 1) float32 when `with_edge` (default: when the
  model is MSRF-Net), `index` int64, and for simulated data the per-image simulation parameters. No
  augmentation: `make_loader` adds it for the train split. Raises DataError for a bad dataset and
  ValueError for a bad config, before anything is read.
  """
  raw = make_raw_source(config, split)
  preprocessor = make_preprocessor(config, with_edge=needs_edge(config) if with_edge is None else with_edge)
  if preprocessor.crop_size:
    before = dataclasses.replace(preprocessor, crop_size=0).output_size(*raw.image_shape[:2])
    if preprocessor.crop_size > min(before):
      raise ValueError(f"data.crop_size={preprocessor.crop_size} is larger than the {before[0]}x{before[1]} "
                       "images (after resize_to and pad_to): lower it or set it to 0")
  return Source(raw, preprocessor, split)


def num_examples(config: cfg.Config, split: str) -> int | None:
  """Examples in `split`; None for an unbounded simulated training stream."""
  check_split(split)
  if config.data.source == "sim":
    size = sim_size(config.data, split)
    return None if size == UNBOUNDED_SIM_SIZE else size
  return len(make_raw_source(config, split))


def input_channels(config: cfg.Config) -> int:
  """Channels of the network input image (1 or 3)."""
  return config.data.input_channels


def num_targets(config: cfg.Config) -> int:
  """K, the channels of the mask and of the network output: one per `config.data.targets` entry."""
  return len(config.data.targets)
