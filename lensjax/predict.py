"""`python -m lensjax.predict RUN_DIR INPUT... --out DIR`: masks, a catalog and FITS files of new images.

  python -m lensjax.predict runs/default cutouts.npy --out predictions/
  python -m lensjax.predict runs/default survey/ --out predictions/ --threshold 0.3 --checkpoint last
  python -m lensjax.predict runs/default cutout.fits --out predictions/ --lenstronomy-mask --sheet 8

INPUT is any mix of
  .npy arrays          (H, W) one image; (N, H, W) N images; (N, H, W, C) N images of C = 1 or 3 channels
                       (read memory-mapped, never unpickled)
  PNG files            grey or RGB, 8 or 16 bit
  FITS files           a 2-D image or an (N, H, W) cube in the first image HDU (needs astropy)
  folders              every file of those kinds in the folder (not its subfolders)
Every image is checked before the network is loaded; an unreadable or malformed one stops the command with
its file named. Images may have any size. Each is preprocessed as the run's training data were (the run's
`data.normalize`, `arc_boost`, `resize_to`, `input_channels`, `input_scaling`, and the Canny edge map for
MSRF-Net; no augmentation), zero-padded on each side separately to max(side, data.pad_to) rounded up to a
multiple of 32 (the networks halve the size up to five times: a 4000 x 97 strip becomes 4000 x 128), and the
probabilities are cropped back (and resized back, if the run resized images) to the image's own H x W.
Images larger than --tile pixels on a side are predicted in overlapping tiles of that side, blended with
linear ramps across the overlaps, so memory stays bounded whatever the image size.

Written to --out, per image NAME (the file's stem; `_<i>` numbers the images of an array or cube):
  NAME_<target>.png             the mask of each target at --threshold (0 or 255)
  NAME_masks.npy                (H, W, K) uint8 masks, 1 where the target is, channels in the run's target order
  NAME_probabilities.npy        (H, W, K) float32 predicted probabilities
  NAME_overlay.png              the image in grey with the mask outlines in colour (lens orange, arcs cyan)
  NAME_likelihood_mask.npy      with --lenstronomy-mask: (H, W) bool, the arcs mask dilated by --mask-dilation
                                pixels, lenstronomy's image_likelihood_mask on the image's own pixel grid
  predictions.csv, .json        the catalog, one row per image (`lensjax.catalog`): arcs found, arc area, lens
                                centroid, arc-light-weighted radius (an Einstein-radius proxy), in pixels and,
                                with a WCS or --pixel-scale, arcsec and RA/Dec
  sheet.png                     with --sheet N: the N most and the N least confident predictions' overlays
For FITS inputs (and with --format fits for any input) the masks and probabilities go, instead of the two
.npy files, into NAME.fits, one per input file (NAME its stem): an empty primary HDU, then per target the image HDUs
<TARGET>_MASK (uint8) and <TARGET>_PROB (float32) of the input's shape (a cube stays a cube), each with the
input header's sky and instrument cards unchanged (so they overlay the cutout exactly in DS9 or astropy) and
the cards LJVERSN, LJRUNDIR, LJSTEP, LJTHRESH (lensjax version, run directory, checkpoint step, threshold).

Nothing is ever written over an input: a command whose output would land on one of its inputs (e.g. `--out`
the input folder holding an earlier prediction, or FITS inputs with `--out` their own folder) is refused
before anything is written. Every file is written to a
temporary name in --out and renamed, so a reader never sees half a file.

`--config.data.*` overrides change the preprocessing (e.g. `--config.data.normalize=minmax` for images in
other units than the training data); `--config` names the config of imported IS-Net weights (as for
`python -m lensjax.evaluate`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import cv2
import jax
import numpy as np
from PIL import Image

import lensjax
from lensjax import catalog, cli, data, evaluate, parallel, plots, train_step
from lensjax import config as cfg
from lensjax.data import DataError

NPY_SUFFIX = ".npy"
PNG_SUFFIX = ".png"
# Padded sides are multiples of this: IS-Net and MSRF-Net halve the image size up to five times.
SIZE_MULTIPLE = 32
DEFAULT_TILE = 512
DEFAULT_TILE_OVERLAP = 64
FORMATS = ("npy", "fits")
CATALOG_CSV = "predictions.csv"
CATALOG_JSON = "predictions.json"
SHEET_FILE = "sheet.png"


@dataclasses.dataclass
class InputImage:
  """One image to predict: where it comes from, its size, and how to read it ((H, W, C) float32).

  `stem` names the outputs of its file (a FITS file holds all the images of a cube), `name` those of the
  image; `plane` is its index in the file's array or cube (None for a file of one image), `hdu` the FITS HDU
  it comes from (None for other formats).
  """
  name: str
  source: str
  height: int
  width: int
  read: Callable[[], np.ndarray]
  file: pathlib.Path | None = None
  stem: str = ""
  plane: int | None = None
  hdu: int | None = None


@dataclasses.dataclass(frozen=True)
class Options:
  """What `predict` writes besides the masks, probabilities and overlays (the command-line flags)."""
  threshold: float = 0.5               # probability at and above which a pixel is in a mask
  format: str | None = None            # 'npy' or 'fits'; None: fits for FITS inputs, npy for the others
  lenstronomy_mask: bool = False       # also write NAME_likelihood_mask.npy
  mask_dilation: int = 3               # pixels the arcs mask grows by in the likelihood mask
  min_arc_area: float = 100.0          # probability-weighted arc area (pixels) from which arcs count as found
  pixel_scale: float | None = None     # arcsec per pixel of inputs without a WCS
  sheet: int = 0                       # the N most and least confident predictions in sheet.png; 0: none
  tile: int = DEFAULT_TILE             # images larger than this on a side are predicted in tiles of this side
  tile_overlap: int = DEFAULT_TILE_OVERLAP

  def check(self) -> None:
    """ValueError naming the flag of the first bad value."""
    if not 0.0 < self.threshold < 1.0:
      raise ValueError(f"--threshold {self.threshold}: expected a probability strictly between 0 and 1")
    if self.format not in (None, *FORMATS):
      raise ValueError(f"--format {self.format}: expected one of {', '.join(FORMATS)}")
    if self.mask_dilation < 0 or self.sheet < 0 or self.min_arc_area < 0:
      raise ValueError("--mask-dilation, --sheet and --min-arc-area take numbers >= 0")
    if self.pixel_scale is not None and not self.pixel_scale > 0:
      raise ValueError(f"--pixel-scale {self.pixel_scale}: expected arcsec per pixel > 0")
    if self.tile < 2 * SIZE_MULTIPLE or self.tile % SIZE_MULTIPLE:
      raise ValueError(f"--tile {self.tile}: expected a multiple of {SIZE_MULTIPLE} of at least {2 * SIZE_MULTIPLE}")
    if not 0 <= self.tile_overlap <= self.tile // 2:
      raise ValueError(f"--tile-overlap {self.tile_overlap}: expected 0 to half the tile ({self.tile // 2})")


# ---------------------------------------------------------------------------------------------------
# Inputs.


def _is_input_file(path: pathlib.Path) -> bool:
  return path.is_file() and (path.suffix.lower() in (NPY_SUFFIX, PNG_SUFFIX) or data.is_fits_file(path))


def _stem(path: pathlib.Path) -> str:
  name = path.name
  for suffix in sorted(data.FITS_SUFFIXES + (NPY_SUFFIX, PNG_SUFFIX), key=len, reverse=True):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return path.stem


def _numbered(stem: str, file: pathlib.Path, sources_of: Sequence[str], read_of: Callable[[int], Callable],
              height: int, width: int, hdu: int | None = None) -> list[InputImage]:
  """The images of an array or cube file, image i described by sources_of[i], read by read_of(i) and named
  stem_<i> (zero-padded to one width)."""
  digits = len(str(len(sources_of) - 1))
  return [InputImage(f"{stem}_{i:0{digits}d}", source, height, width, read_of(i), file, stem, i, hdu)
          for i, source in enumerate(sources_of)]


def _npy_images(path: pathlib.Path, stem: str) -> list[InputImage]:
  shape, dtype = data.npy_header(path)
  problems = data.check_image_dtype(dtype, str(path))
  if problems:
    raise DataError(problems)
  if len(shape) == 2:
    array_of = lambda array, i: array[..., None]
    count, (height, width) = None, shape
  elif len(shape) == 3:
    array_of = lambda array, i: array[i][..., None]
    count, height, width = shape
  elif len(shape) == 4 and shape[-1] in (1, 3):
    array_of = lambda array, i: array[i]
    count, height, width = shape[:3]
  else:
    raise DataError(f"{path}: has shape {shape}; expected (H, W), (N, H, W) or (N, H, W, C) with C = 1 or 3")
  if min(height, width) < 1 or count == 0:
    raise DataError(f"{path}: has shape {shape}, which holds no image")
  handle: dict[str, np.ndarray] = {}

  def reader(i: int | None) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
      if "array" not in handle:
        handle["array"] = data.load_npy(path)
      image = np.array(array_of(handle["array"], i), np.float32)    # a copy: nothing keeps the map alive
      data.require_finite(image, f"{path}" + ("" if i is None else f"[{i}]"))
      return image
    return read

  if count is None:
    return [InputImage(stem, str(path), height, width, reader(None), path, stem)]
  return _numbered(stem, path, [f"{path}[{i}]" for i in range(count)], reader, height, width)


def _png_image(path: pathlib.Path, stem: str) -> InputImage:
  try:
    with Image.open(path) as im:
      width, height = im.size
  except (OSError, ValueError) as error:
    raise DataError(f"{path}: is not a readable image ({error}). Re-save it as PNG or remove it") from None
  return InputImage(stem, str(path), height, width, lambda: data.read_png_image(path), path, stem)


def _fits_images(path: pathlib.Path, stem: str) -> list[InputImage]:
  source = data.FitsSource(path, "test")
  height, width = source.image_shape[:2]
  hdu = source.cutouts[0][1]
  read_of = lambda i: lambda: source.read(i)["image"]
  if len(source) == 1 and source.cutouts[0][2] is None:
    return [InputImage(stem, source.describe(0), height, width, read_of(0), path, stem, None, hdu)]
  return _numbered(stem, path, [source.describe(i) for i in range(len(source))], read_of, height, width, hdu)


def _unique(names: list[str]) -> list[str]:
  """`names` with repeats numbered (a.png and a.npy would write the same files): a, a-2, a-3, ..."""
  seen: dict[str, int] = {}
  out = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
  return out


def find_inputs(paths: Sequence[str | pathlib.Path]) -> list[InputImage]:
  """Every image the command-line INPUTs name, checked from the files' headers; DataError for a bad one."""
  files = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found = sorted(p for p in path.iterdir() if _is_input_file(p))
      if not found:
        raise DataError(f"{path}: no .npy, .png or FITS files in this folder")
      files += found
    elif not path.exists():
      raise DataError(f"{path}: no such file or folder")
    elif not _is_input_file(path):
      raise DataError(f"{path}: not an input lensjax reads; expected .npy, .png or FITS "
                      f"({', '.join(data.FITS_SUFFIXES)}) files, or a folder of them")
    else:
      files.append(path)
  found_images: list[InputImage] = []
  problems = []
  for file, stem in zip(files, _unique([_stem(f) for f in files])):
    try:
      if file.suffix.lower() == NPY_SUFFIX:
        found_images += _npy_images(file, stem)
      elif file.suffix.lower() == PNG_SUFFIX:
        found_images.append(_png_image(file, stem))
      else:
        found_images += _fits_images(file, stem)
    except DataError as error:
      problems += error.problems
    except ImportError as error:            # astropy missing: say which file needed it
      problems.append(f"{file}: {error}")
  if problems:
    raise DataError(problems)
  for image, name in zip(found_images, _unique([i.name for i in found_images])):
    image.name = name
  return found_images


# ---------------------------------------------------------------------------------------------------
# Network inputs: padding each side, tiles.


def prediction_preprocessor(config: cfg.Config) -> data.Preprocessor:
  """The run's preprocessing without augmentation or crop (padding is done per side, see `canvas_shape`)."""
  return dataclasses.replace(data.make_preprocessor(config, with_edge=data.needs_edge(config)),
                             crop_size=0, augment="none")


def canvas_shape(height: int, width: int, preprocessor: data.Preprocessor) -> tuple[int, int]:
  """(H, W) an image is zero-padded to: each side max(its size after resize_to, data.pad_to), rounded up to a
  multiple of 32."""
  sizes = dataclasses.replace(preprocessor, pad_to=0, crop_size=0).output_size(height, width)
  return tuple(SIZE_MULTIPLE * math.ceil(max(side, preprocessor.pad_to) / SIZE_MULTIPLE) for side in sizes)


def network_inputs(pixels: np.ndarray, preprocessor: data.Preprocessor, canvas: tuple[int, int]
                   ) -> dict[str, np.ndarray]:
  """The network's `image` (and, for MSRF-Net, `edge`) of (H, W, C) `pixels`, centred on a zero `canvas`.

  The same steps as the run's training data (`data.Preprocessor`), with the padding per side: zeros in
  display units are padded before the Canny map and the input scaling, as in training.
  """
  display = dataclasses.replace(preprocessor, pad_to=0, input_scaling="unit", with_edge=False)(
      {"image": pixels})["image"]
  height, width = display.shape[:2]
  top, left = (canvas[0] - height) // 2, (canvas[1] - width) // 2
  padded = np.zeros((*canvas, display.shape[-1]), np.float32)
  padded[top:top + height, left:left + width] = display
  out = {"image": data.scale_input(padded, preprocessor.input_scaling)}
  if preprocessor.with_edge:
    out["edge"] = data.canny_edges(padded)
  return out


def tile_windows(length: int, tile: int, overlap: int) -> list[tuple[int, np.ndarray]]:
  """(start, weights) of the tiles covering `length` pixels of one axis.

  One tile of the whole length when it fits in `tile`; else evenly spaced tiles of `tile` pixels, neighbours
  sharing at least `overlap` pixels, each weighted (tile,) by a linear ramp from ~0 to 1 across every overlap
  (neighbouring ramps sum to 1), so that the blend passes smoothly from one tile's prediction to the next.
  """
  if length <= tile:
    return [(0, np.ones(length, np.float32))]
  count = math.ceil((length - overlap) / (tile - overlap))
  starts = np.round(np.linspace(0, length - tile, count)).astype(int)
  windows = []
  for i, start in enumerate(starts):
    weights = np.ones(tile, np.float32)
    if i > 0:
      shared = starts[i - 1] + tile - start
      weights[:shared] = np.minimum(weights[:shared], (np.arange(shared) + 0.5) / shared)
    if i < count - 1:
      shared = start + tile - starts[i + 1]
      weights[tile - shared:] = np.minimum(weights[tile - shared:], (shared - np.arange(shared) - 0.5) / shared)
    windows.append((int(start), weights))
  return windows


def compile_forward(graphdef, mesh, state_sharding):
  """(state, batch) -> (B, H, W, K) probabilities, jitted: the network in inference mode on `batch`'s inputs."""

  def forward(state, batch):
    return train_step.predicted_probabilities(train_step.inference_network(graphdef, state), batch)

  return jax.jit(forward, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


@dataclasses.dataclass
class _Blend:
  """The weighted sum of an image's tile predictions on its canvas, until every tile has come back."""
  image: InputImage
  pixels: np.ndarray
  canvas: tuple[int, int]
  tiles_left: int
  probability_sum: np.ndarray | None = None     # (canvas H, canvas W, K), from the first tile back
  weight_sum: np.ndarray | None = None          # (canvas H, canvas W)

  def add(self, top: int, left: int, weights: np.ndarray, probabilities: np.ndarray) -> None:
    if self.probability_sum is None:
      self.probability_sum = np.zeros((*self.canvas, probabilities.shape[-1]), np.float32)
      self.weight_sum = np.zeros(self.canvas, np.float32)
    height, width = weights.shape
    self.probability_sum[top:top + height, left:left + width] += probabilities * weights[..., None]
    self.weight_sum[top:top + height, left:left + width] += weights
    self.tiles_left -= 1


def _crop_back(probabilities: np.ndarray, image: InputImage, preprocessor: data.Preprocessor) -> np.ndarray:
  """(canvas H, canvas W, K) -> (H, W, K): the image's own region of the canvas, at the image's size."""
  height, width = dataclasses.replace(preprocessor, pad_to=0, crop_size=0).output_size(image.height, image.width)
  top, left = (probabilities.shape[0] - height) // 2, (probabilities.shape[1] - width) // 2
  region = probabilities[top:top + height, left:left + width]
  if (height, width) != (image.height, image.width):          # the run resized its images: undo it
    region = cv2.resize(np.ascontiguousarray(region), (image.width, image.height), interpolation=cv2.INTER_LINEAR)
    region = region.reshape(image.height, image.width, probabilities.shape[-1])
  return np.ascontiguousarray(region, np.float32)


def _batch_size(config: cfg.Config, tile_shape: tuple[int, int], requested: int | None, tiles: int) -> int:
  """Tiles per network call: `requested`, else as many as hold the pixels of train.eval_batch_size training
  images (a size evaluation is known to fit in memory); at most `tiles` (all there are), at least one, and
  a multiple of the number of devices."""
  if requested is None:
    side = max(config.data.crop_size, config.data.resize_to, config.data.pad_to) or 4 * SIZE_MULTIPLE
    requested = config.train.eval_batch_size * side * side // (tile_shape[0] * tile_shape[1])
  devices = jax.device_count()
  return devices * math.ceil(max(1, min(requested, tiles)) / devices)


def predict_images(run: evaluate.LoadedRun, inputs: Sequence[InputImage], *, batch_size: int | None = None,
                   tile: int = DEFAULT_TILE, tile_overlap: int = DEFAULT_TILE_OVERLAP,
                   mesh: jax.sharding.Mesh | None = None, report: Callable[[str], None] = print
                   ) -> Iterator[tuple[InputImage, np.ndarray, np.ndarray]]:
  """Yields (image, its pixels (H, W, C) as read, probabilities (H, W, K) float32) for every input.

  Images are grouped by network input shape (one compiled shape each): the canvas (`canvas_shape`), or
  tile x tile tiles (`tile_windows`) along the sides longer than `tile`. Tiles of several images share a
  network call; an image is yielded as soon as its last tile is back, so at most one batch of tiles and the
  images they come from are held at a time.
  """
  mesh = mesh or parallel.make_mesh()
  preprocessor = prediction_preprocessor(run.config)
  forward = compile_forward(run.graphdef, mesh, run.state_sharding)
  groups: dict[tuple[int, int], list[tuple[InputImage, tuple[int, int]]]] = {}
  for image in inputs:
    canvas = canvas_shape(image.height, image.width, preprocessor)
    groups.setdefault((min(tile, canvas[0]), min(tile, canvas[1])), []).append((image, canvas))
  for shape, members in sorted(groups.items()):
    tile_count = sum(len(tile_windows(height, tile, tile_overlap)) * len(tile_windows(width, tile, tile_overlap))
                     for _, (height, width) in members)
    rows = _batch_size(run.config, shape, batch_size, tile_count)
    queue: collections.deque = collections.deque()
    done, tiles = 0, 0

    def run_batch() -> Iterator[tuple[InputImage, np.ndarray, np.ndarray]]:
      nonlocal done, tiles
      chunk = [queue.popleft() for _ in range(min(rows, len(queue)))]
      batch = {key: np.stack([t[4][key] for t in chunk]) for key in chunk[0][4]}
      if len(chunk) < rows:              # one compiled shape per group: fill the last batch with copies
        batch = {k: np.concatenate([v, np.repeat(v[:1], rows - len(chunk), axis=0)]) for k, v in batch.items()}
      probabilities = np.asarray(forward(run.state, parallel.global_batch(batch, mesh)))
      tiles += len(chunk)
      for (blend, top, left, weights, _), probs in zip(chunk, probabilities):
        blend.add(top, left, weights, probs)
        if not blend.tiles_left:
          done += 1
          blended = blend.probability_sum / blend.weight_sum[..., None]
          yield blend.image, blend.pixels, _crop_back(blended, blend.image, preprocessor)
      report(f"predicted {done}/{len(members)} images in {shape[0]}x{shape[1]} network inputs ({tiles} tiles)")

    for image, canvas in members:
      pixels = image.read()
      arrays = network_inputs(pixels, preprocessor, canvas)
      windows = [(top, left, wy[:, None] * wx[None, :])
                 for top, wy in tile_windows(canvas[0], tile, tile_overlap)
                 for left, wx in tile_windows(canvas[1], tile, tile_overlap)]
      blend = _Blend(image, pixels, canvas, len(windows))
      for top, left, weights in windows:
        height, width = weights.shape
        queue.append((blend, top, left, weights,
                      {k: v[top:top + height, left:left + width] for k, v in arrays.items()}))
        if len(queue) >= rows:
          yield from run_batch()
    while queue:
      yield from run_batch()


# ---------------------------------------------------------------------------------------------------
# Outputs.


def write_atomically(path: pathlib.Path, write: Callable[[BinaryIO], None]) -> None:
  """Calls write(file) on a temporary file beside `path`, then renames it to `path` (never half a file, and a
  file that is read, even memory-mapped, keeps its contents: the rename replaces the name, not the data)."""
  temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    with open(temporary, "wb") as file:
      write(file)
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def _png(pixels: np.ndarray) -> Callable[[BinaryIO], None]:
  return lambda file: Image.fromarray(pixels).save(file, format="PNG")


def _npy(array: np.ndarray) -> Callable[[BinaryIO], None]:
  return lambda file: np.save(file, array, allow_pickle=False)


def _array_format(image: InputImage, options: Options) -> str:
  if options.format:
    return options.format
  return "fits" if image.hdu is not None else "npy"


def image_outputs(image: InputImage, targets: Sequence[str], options: Options) -> list[str]:
  """The names of the files `predict` writes for `image` (its FITS file is one per input file)."""
  names = [f"{image.name}_{target}.png" for target in targets] + [f"{image.name}_overlay.png"]
  if _array_format(image, options) == "npy":
    names += [f"{image.name}_masks.npy", f"{image.name}_probabilities.npy"]
  else:
    names.append(f"{image.stem}.fits")
  if options.lenstronomy_mask:
    names.append(f"{image.name}_likelihood_mask.npy")
  return names


def refuse_overwriting_inputs(inputs: Sequence[InputImage], out: pathlib.Path, targets: Sequence[str],
                              options: Options) -> None:
  """DataError naming the first output of `predict` that would replace one of its input files."""
  input_files = {image.file.resolve(): image.file for image in inputs if image.file is not None}
  names = [CATALOG_CSV, CATALOG_JSON] + ([SHEET_FILE] if options.sheet else [])
  names += [name for image in inputs for name in image_outputs(image, targets, options)]
  for name in dict.fromkeys(names):
    if (out / name).resolve() in input_files:
      raise DataError(f"{out / name}: predict would write this output over the input "
                      f"{input_files[(out / name).resolve()]}; choose an --out folder that holds no input "
                      f"(e.g. --out {out / 'predictions'})")


class _Writer:
  """Writes each predicted image's files as it comes, collects the catalog, and the FITS file of each input
  file once its last image is in."""

  def __init__(self, run: evaluate.LoadedRun, inputs: Sequence[InputImage], out: pathlib.Path, options: Options):
    self.run, self.out, self.options = run, out, options
    self.targets = tuple(run.config.data.targets)
    self.rows: list[dict[str, Any]] = []
    self.planes_left = collections.Counter(image.stem for image in inputs if _array_format(image, options) == "fits")
    self.planes: dict[str, dict[int | None, np.ndarray]] = collections.defaultdict(dict)
    self.headers: dict[str, Any] = {}

  def _header(self, image: InputImage):
    if image.hdu is None:
      return None
    if image.stem not in self.headers:
      self.headers[image.stem] = data.image_header(image.file, image.hdu)
    return self.headers[image.stem]

  def add(self, image: InputImage, pixels: np.ndarray, probabilities: np.ndarray) -> None:
    out, name, options = self.out, image.name, self.options
    masks = probabilities >= options.threshold
    for k, target in enumerate(self.targets):
      write_atomically(out / f"{name}_{target}.png", _png(masks[..., k].astype(np.uint8) * 255))
    write_atomically(out / f"{name}_overlay.png", _png(plots.overlay(pixels, masks)))
    if options.lenstronomy_mask:
      arcs = masks[..., self.targets.index(catalog.ARCS_TARGET)]
      write_atomically(out / f"{name}_likelihood_mask.npy",
                       _npy(catalog.likelihood_mask(arcs, options.mask_dilation)))
    if _array_format(image, options) == "npy":
      write_atomically(out / f"{name}_masks.npy", _npy(masks.astype(np.uint8)))
      write_atomically(out / f"{name}_probabilities.npy", _npy(probabilities))
    else:
      self._add_plane(image, probabilities)
    sky = data.celestial_wcs(self._header(image))
    scale = data.pixel_scale_arcsec(sky) if sky is not None else options.pixel_scale
    to_sky = (lambda x, y: data.sky_position(sky, x, y)) if sky is not None else None
    row = {"name": name, "source": image.source, "height": image.height, "width": image.width,
           **catalog.measure(pixels, probabilities, self.targets, threshold=options.threshold,
                             min_arc_area=options.min_arc_area, pixel_scale=scale, to_sky=to_sky)}
    row["area_pixels"] = {t: int(masks[..., k].sum()) for k, t in enumerate(self.targets)}
    self.rows.append(row)

  def _add_plane(self, image: InputImage, probabilities: np.ndarray) -> None:
    self.planes[image.stem][image.plane] = probabilities
    self.planes_left[image.stem] -= 1
    if self.planes_left[image.stem]:
      return
    planes = self.planes.pop(image.stem)
    stack = planes[None] if None in planes else np.stack([planes[i] for i in sorted(planes)])
    arrays = {}
    for k, target in enumerate(self.targets):
      arrays[f"{target.upper()}_MASK"] = (stack[..., k] >= self.options.threshold).astype(np.uint8)
      arrays[f"{target.upper()}_PROB"] = stack[..., k]
    cards = {"LJVERSN": (lensjax.__version__, "lensjax version"),
             "LJRUNDIR": (str(self.run.path), "lensjax run directory"),
             "LJSTEP": (self.run.step if self.run.step is not None else "imported", "checkpoint step"),
             "LJTHRESH": (self.options.threshold, "probability threshold of the masks")}
    write_atomically(self.out / f"{image.stem}.fits",
                     lambda file: data.write_images(file, arrays, self._header(image), cards))

  def finish(self) -> list[dict[str, Any]]:
    """Writes the catalog (CSV and JSON) and the contact sheet; returns the catalog rows."""
    rows = self.rows
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(catalog.CATALOG_COLUMNS)
    writer.writerows([catalog.csv_cell(row[c]) for c in catalog.CATALOG_COLUMNS] for row in rows)
    write_atomically(self.out / CATALOG_CSV, lambda file: file.write(text.getvalue().encode()))
    summary = {"run": str(self.run.path), "checkpoint": self.run.description, "threshold": self.options.threshold,
               "targets": list(self.targets), "images": rows}
    write_atomically(self.out / CATALOG_JSON, lambda file: file.write((json.dumps(summary, indent=2) + "\n").encode()))
    if self.options.sheet:
      self._contact_sheet()
    return rows

  def _contact_sheet(self) -> None:
    """sheet.png: a row of the `sheet` most confident predictions' overlays, a row of the least confident."""
    ranked = sorted(self.rows, key=lambda row: -row["confidence"])
    count = self.options.sheet
    panels = {"most confident": ranked[:count], "least confident": ranked[max(count, len(ranked) - count):][::-1]}
    plots.plot_contact_sheet(
        {label: [(self.out / f"{row['name']}_overlay.png", f"{row['name']}\nconfidence {row['confidence']:.3f}")
                 for row in chosen] for label, chosen in panels.items() if chosen},
        self.out / SHEET_FILE, title=f"{len(ranked)} predictions of {self.run.path}")


def predict(run: evaluate.LoadedRun, inputs: Sequence[InputImage], out: pathlib.Path, *,
            batch_size: int | None = None, options: Options = Options(), mesh: jax.sharding.Mesh | None = None,
            report: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Predicts every input and writes its files into `out`; returns the catalog rows (predictions.json's)."""
  options.check()
  targets = run.config.data.targets
  if options.lenstronomy_mask and catalog.ARCS_TARGET not in targets:
    raise ValueError(f"--lenstronomy-mask: the run predicts no arcs (its targets: {', '.join(targets)})")
  refuse_overwriting_inputs(inputs, out, targets, options)
  out.mkdir(parents=True, exist_ok=True)
  writer = _Writer(run, inputs, out, options)
  for image, pixels, probabilities in predict_images(run, inputs, batch_size=batch_size, tile=options.tile,
                                                     tile_overlap=options.tile_overlap, mesh=mesh, report=report):
    writer.add(image, pixels, probabilities)
  return writer.finish()


def _parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m lensjax.predict", description=__doc__.split("\n\n")[0],
      epilog="Preprocessing overrides: --config.data.FIELD=VALUE (e.g. --config.data.normalize=minmax).")
  parser.add_argument("run_dir", help="a run directory written by python -m lensjax.train (or imported weights)")
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy, .png or FITS files, or folders of them")
  parser.add_argument("--out", required=True, help="folder for the masks, probabilities, overlays and catalog")
  parser.add_argument("--checkpoint", default="best", help="best (default), last, or a step number")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="network inputs per call (default: as many as hold the pixels of the run's "
                           "train.eval_batch_size training images)")
  parser.add_argument("--threshold", type=float, default=0.5, help="probability above which a pixel is in a mask")
  parser.add_argument("--format", choices=FORMATS, default=None,
                      help="masks and probabilities as .npy or as FITS (default: fits for FITS inputs)")
  parser.add_argument("--lenstronomy-mask", action="store_true",
                      help="also write NAME_likelihood_mask.npy, lenstronomy's image_likelihood_mask")
  parser.add_argument("--mask-dilation", type=int, default=Options.mask_dilation,
                      help=f"pixels the arcs mask grows by in the likelihood mask (default {Options.mask_dilation})")
  parser.add_argument("--min-arc-area", type=float, default=Options.min_arc_area,
                      help="probability-weighted arc area (pixels) from which the catalog says arcs_found "
                           f"(default {Options.min_arc_area:g})")
  parser.add_argument("--pixel-scale", type=float, default=None,
                      help="arcsec per pixel of inputs without a WCS (for the catalog's arcsec columns)")
  parser.add_argument("--sheet", type=int, default=0, metavar="N",
                      help="write sheet.png: the N most and N least confident predictions")
  parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                      help=f"larger images are predicted in tiles of this side (default {DEFAULT_TILE})")
  parser.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                      help=f"pixels shared by neighbouring tiles (default {DEFAULT_TILE_OVERLAP})")
  parser.add_argument("--config", default=None, help="for imported weights only: the config of the data")
  return parser


@cli.command
def main(argv: list[str]) -> int:
  parser = _parser()
  args, overrides = cli.parse(parser, argv)
  if args.batch_size is not None and args.batch_size < 1:
    parser.error(f"--batch-size {args.batch_size}: expected a positive number of images")
  options = Options(args.threshold, args.format, args.lenstronomy_mask, args.mask_dilation, args.min_arc_area,
                    args.pixel_scale, args.sheet, args.tile, args.tile_overlap)
  options.check()
  inputs = find_inputs(args.inputs)
  run = evaluate.load_run(args.run_dir, args.checkpoint, config_name=args.config, overrides=overrides)
  print(f"{len(inputs)} images; {run.description} of {run.path}")
  predict(run, inputs, pathlib.Path(args.out), batch_size=args.batch_size, options=options)
  print(f"wrote the masks, probabilities, overlays and catalog of {len(inputs)} images to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
