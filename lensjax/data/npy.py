"""The original project's .npy datasets, memory-mapped and read without unpickling.

Two layouts, found from `data.path`:
  * one array: `images.npy` (N, H, W, 3) with channels (observed, lens light, arc light), in counts. Masks
    come from `masks.npy` (N, H, W, 2: lens, arcs; 0/1 or 0/255) beside it when present, otherwise they are
    made on load from the lens and arc channels by the simulator's mask rule (`config.sim.mask_rule`, by
    default lens >= 99th and arcs >= 95th percentile, an empty channel giving an empty mask).
    `data.path` is the folder or the `images.npy` file; the rows are split at random by
    `data.split_fractions` and `data.split_seed`. The original also split lenses and non-lenses separately;
    that needs every arc channel read up front, so the split here is not stratified.
  * split folders: `{train,val,test}/images/NAME.npy` (H, W) or (H, W, 1) with masks of the same names
    in `lens_mask/` and `arc_mask/`.

Opening a split checks every value it will read, before anything trains on it: each file's header (shape,
dtype, a size that holds the array it announces), then every pixel (finite) and every mask value (0/1 or
0/255) in one vectorised pass over the memory maps, chunk by chunk so memory stays bounded.

Masks are read from `masks.npy` only: another `.npy` beside `images.npy` whose name suggests masks
(`mask.npy`, `Masks.npy`, `labels.npy`, ...) is not read, and `mask_source` says so.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from lensjax import config as cfg
from lensjax.data import sources, validation
from lensjax.data.errors import DataError, raise_if_any

IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
# Split-folder layout: the folder holding each target's masks.
MASK_FOLDERS = {"lens": "lens_mask", "arcs": "arc_mask"}
# Parts of a file name that suggest masks saved under another name than MASKS_FILE.
MASK_LIKE_NAMES = ("mask", "label", "seg", "truth", "target", "gt")


def npy_header(path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype]:
  """(shape, dtype) of the .npy file at `path`, from its header alone; DataError if it is not one."""
  try:
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
      data_offset = f.tell()
      file_size = os.fstat(f.fileno()).st_size
  except (ValueError, OSError) as e:
    raise DataError(f"{path}: is not a readable .npy array ({e}). Re-save it with np.save") from None
  if dtype.hasobject:
    raise DataError(f"{path}: holds Python objects, which would have to be unpickled; lensjax reads plain "
                    "numeric arrays only. Save the data with np.save(path, array.astype(np.float32))")
  expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if file_size < expected:
    raise DataError(f"{path}: is cut short: {file_size} bytes, but its header announces a {tuple(shape)} {dtype} "
                    f"array of {expected} bytes. Copy or save it again")
  return tuple(shape), dtype


class NpyArraySource(sources.RawSource):
  """The `split` rows of one `images.npy` (N, H, W, 3), with masks from `masks.npy` or the percentile rules."""

  def __init__(self, images_path: pathlib.Path, masks_path: pathlib.Path | None, split: str,
               config: cfg.Config):
    data = config.data
    self.images_path, self.masks_path = images_path, masks_path
    self.targets = tuple(data.targets)
    self._channels = [sources.SIM_TARGETS.index(t) for t in self.targets]
    self.sim_config = config.sim       # its mask rule makes the masks when there is no masks.npy
    shape, dtype = npy_header(images_path)
    problems = validation.check_image_dtype(dtype, str(images_path))
    if len(shape) != 4 or shape[-1] != 3:
      problems.append(f"{images_path}: has shape {shape}; expected (N, H, W, 3) with channels (observed, "
                      "lens light, arc light)")
    elif masks_path is not None:
      mask_shape, mask_dtype = npy_header(masks_path)
      problems += validation.check_mask_dtype(mask_dtype, str(masks_path))
      if mask_shape != (*shape[:3], 2):
        problems.append(f"{masks_path}: has shape {mask_shape}; expected {(*shape[:3], 2)}: one (lens, arcs) "
                        f"mask pair per image of {images_path.name}")
    raise_if_any(problems)
    self.image_shape = (shape[1], shape[2], 1)
    self.rows = sources.split_rows(shape[0], data.split_fractions, data.split_seed, split)
    if not len(self.rows):
      raise DataError(f"{images_path}: its {shape[0]} images leave none for the {split} split with "
                      f"data.split_fractions={tuple(data.split_fractions)}")
    problems = validation.scan_rows(validation.load_npy(images_path), self.rows, images_path, "image")
    if masks_path is not None:
      problems += validation.scan_rows(validation.load_npy(masks_path), self.rows, masks_path, "mask")
    raise_if_any(problems)

  def __len__(self) -> int:
    return len(self.rows)

  def describe(self, index: int) -> str:
    return f"{self.images_path}[{self.rows[index]}]"

  def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
    if getattr(self, "_handle_arrays", None) is None:
      masks = validation.load_npy(self.masks_path) if self.masks_path is not None else None
      self._handle_arrays = validation.load_npy(self.images_path), masks
    return self._handle_arrays

  def _mask_rule(self):
    if getattr(self, "_handle_mask_rule", None) is None:
      from lensjax.sim import simulator  # pylint: disable=g-import-not-at-top
      self._handle_mask_rule = simulator.mask_rule(self.sim_config)
    return self._handle_mask_rule

  def read(self, index: int) -> dict[str, Any]:
    images, masks = self._arrays()
    row = self.rows[index]
    where = self.describe(index)
    channels = np.asarray(images[row], np.float32)
    validation.require_finite(channels, where)
    if masks is not None:
      mask = validation.binary_mask(masks[row][..., self._channels], f"{self.masks_path}[{row}]")
    else:
      both = self._mask_rule().apply(channels[..., 1], channels[..., 2])
      mask = both[..., self._channels].astype(np.float32)
    return {"image": channels[..., :1], "mask": mask, "index": np.int64(index)}

  def __repr__(self) -> str:
    return (f"NpyArraySource({self.images_path}, masks={self.masks_path}, rows={len(self.rows)}, "
            f"targets={self.targets})")


class NpyFolderSource(sources.RawSource):
  """The original's split folders: `{split}/images/NAME.npy` with `{split}/lens_mask/NAME.npy`, `arc_mask/`."""

  def __init__(self, root: pathlib.Path, split: str, targets: Sequence[str]):
    self.root, self.split, self.targets = root, split, tuple(targets)
    images_dir = root / split / "images"
    if not images_dir.is_dir():
      found = [s for s in sources.SPLITS if (root / s / "images").is_dir()]
      raise DataError(f"{images_dir}: no such folder; the split-folder layout needs {split}/images/*.npy "
                      f"(found splits: {', '.join(found) or 'none'})")
    self.image_files = sorted(images_dir.glob("*.npy"))
    if not self.image_files:
      raise DataError(f"{images_dir}: empty folder; expected the {split} images as NAME.npy files")
    problems = []
    for target in self.targets:
      mask_dir = root / split / MASK_FOLDERS[target]
      if not mask_dir.is_dir():
        problems.append(f"{mask_dir}: no such folder; the {target} masks of {images_dir} go there, one "
                        "NAME.npy per image")
        continue
      names = {f.name for f in self.image_files}
      problems += [f"{f}: image has no {target} mask {mask_dir / f.name}. Add the mask or remove the image"
                   for f in self.image_files if not (mask_dir / f.name).is_file()]
      problems += [f"{m}: {target} mask has no image {images_dir / m.name}. Add the image or remove the mask"
                   for m in sorted(mask_dir.glob("*.npy")) if m.name not in names]
    raise_if_any(problems)
    shapes = {}
    for f in self.image_files:
      try:
        shape, dtype = npy_header(f)
      except DataError as e:
        problems += e.problems
        continue
      dtype_problems = validation.check_image_dtype(dtype, str(f))
      problems += dtype_problems
      if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
      if len(shape) != 2:
        problems.append(f"{f}: has shape {shape}; expected one (H, W) or (H, W, 1) image per file")
        continue
      shapes.setdefault(shape, f)
      if not dtype_problems:
        problems += validation.image_problems(validation.load_npy(f), str(f))
      for target in self.targets:
        mask_file = root / split / MASK_FOLDERS[target] / f.name
        try:
          mask_shape, mask_dtype = npy_header(mask_file)
        except DataError as e:
          problems += e.problems
          continue
        dtype_problems = validation.check_mask_dtype(mask_dtype, str(mask_file))
        problems += dtype_problems
        if mask_shape not in (shape, (*shape, 1)):
          problems.append(f"{mask_file}: has shape {mask_shape}; expected {shape}, the shape of its image")
        elif not dtype_problems:
          problems += validation.mask_problems(validation.load_npy(mask_file), str(mask_file))
    if len(shapes) > 1:
      listed = ", ".join(f"{shape} ({f.name})" for shape, f in shapes.items())
      problems.append(f"{images_dir}: images of different shapes: {listed}; batches need one shape")
    raise_if_any(problems)
    (shape,) = shapes
    self.image_shape = (shape[0], shape[1], 1)

  def __len__(self) -> int:
    return len(self.image_files)

  def describe(self, index: int) -> str:
    return str(self.image_files[index])

  def read(self, index: int) -> dict[str, Any]:
    image_file = self.image_files[index]
    image = np.asarray(validation.load_npy(image_file), np.float32).reshape(self.image_shape)
    validation.require_finite(image, str(image_file))
    masks = []
    for target in self.targets:
      mask_file = self.root / self.split / MASK_FOLDERS[target] / image_file.name
      masks.append(validation.binary_mask(validation.load_npy(mask_file), str(mask_file)).reshape(
          self.image_shape[:2]))
    return {"image": image, "mask": np.stack(masks, axis=-1), "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"NpyFolderSource({self.root}, split={self.split!r}, targets={self.targets})"


def _images_file(path: pathlib.Path) -> pathlib.Path | None:
  """The `images.npy` that `data.path` names (the file, or the folder holding it); None for split folders."""
  if path.suffix == ".npy":
    images_path = path
  elif (path / IMAGES_FILE).is_file():
    images_path = path / IMAGES_FILE
  elif any((path / s / "images").is_dir() for s in sources.SPLITS):
    return None
  else:
    raise DataError(f"{path}: holds neither {IMAGES_FILE} nor {{train,val,test}}/images/*.npy split folders; "
                    "point data.path at the dataset folder or at its images.npy")
  if not images_path.is_file():
    raise DataError(f"{images_path}: no such file")
  return images_path


def open_npy(config: cfg.Config, split: str) -> sources.RawSource:
  """The .npy layout at `config.data.path`: an `images.npy` (file or folder holding it) or split folders."""
  images_path = _images_file(pathlib.Path(config.data.path))
  if images_path is None:
    return NpyFolderSource(pathlib.Path(config.data.path), split, config.data.targets)
  masks_path = images_path.with_name(MASKS_FILE)
  return NpyArraySource(images_path, masks_path if masks_path.is_file() else None, split, config)


def mask_source(path: str | pathlib.Path) -> tuple[str, list[str]]:
  """Where the masks of the .npy dataset at `path` come from, and warnings about mask files that are not read.

  Looks at file names only (nothing is opened): ('masks.npy', []) or ('made from the lens and arc channels by
  the percentile rule (no masks.npy)', [a warning per near-miss such as mask.npy or labels.npy]).
  """
  images_path = _images_file(pathlib.Path(path))
  if images_path is None:
    return f"{'/, '.join(MASK_FOLDERS.values())}/ (one NAME.npy per image)", []
  if images_path.with_name(MASKS_FILE).is_file():
    return MASKS_FILE, []
  near_misses = sorted(f for f in images_path.parent.glob("*.npy")
                       if f != images_path and any(part in f.stem.lower() for part in MASK_LIKE_NAMES))
  warnings = [f"{f}: not read; masks are read from {images_path.with_name(MASKS_FILE)} only. Rename it to "
              f"{MASKS_FILE} to train on it, or remove it to silence this warning" for f in near_misses]
  return f"made from the lens and arc channels by the percentile rule (no {MASKS_FILE})", warnings
