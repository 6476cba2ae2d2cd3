"""`python -m lensjax.predict RUN_DIR INPUT... --out DIR`: masks of new images from a trained run.

  python -m lensjax.predict runs/default cutouts.npy --out predictions/
  python -m lensjax.predict runs/default survey/ --out predictions/ --threshold 0.3 --checkpoint last
  python -m lensjax.predict runs/default a.png b.fits --out predictions/ --batch-size 16

INPUT is any mix of
  .npy arrays          (H, W) one image; (N, H, W) N images; (N, H, W, C) N images of C = 1 or 3 channels
                       (read memory-mapped, never unpickled)
  PNG files            grey or RGB, 8 or 16 bit
  FITS files           a 2-D image or an (N, H, W) cube in the first image HDU (needs astropy)
  folders              every file of those kinds in the folder (not its subfolders)
Every image is checked before the network is loaded; an unreadable or malformed one stops the command with
its file named. Images may have any size. Each is preprocessed as the run's training data were (the run's
`data.normalize`, `arc_boost`, `resize_to`, `input_channels`, `input_scaling`, and the Canny edge map for
MSRF-Net; no augmentation), zero-padded to a square of side max(H, W, data.pad_to) rounded up to a multiple
of 32 (the networks halve the size up to five times), predicted in batches, and the probabilities are
cropped back (and resized back, if the run resized images) to the image's own H x W.

`--config.data.*` overrides change the preprocessing (e.g. `--config.data.normalize=minmax` for images in
other units than the training data); `--config` names the config of imported IS-Net weights (as for
`python -m lensjax.evaluate`).

Written to --out, per image NAME (the file's stem; `_<i>` numbers the images of an array or cube):
  NAME_<target>.png        the mask of each target at --threshold (0 or 255)
  NAME.npy                 (H, W, K) uint8 masks, 1 where the target is, channels in the run's target order
  NAME_probabilities.npy   (H, W, K) float32 predicted probabilities
  NAME_overlay.png         the image in grey with the mask outlines in colour (lens orange, arcs cyan)
  predictions.json         per image: its source, size and the predicted area of each target in pixels
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import jax
import numpy as np
from PIL import Image

from lensjax import cli, data, evaluate, parallel, plots, train_step
from lensjax.data import DataError

NPY_SUFFIX = ".npy"
PNG_SUFFIX = ".png"
# The padded side is a multiple of this: IS-Net and MSRF-Net halve the image size up to five times.
SIZE_MULTIPLE = 32


@dataclasses.dataclass
class InputImage:
  """One image to predict: where it comes from, its size, and how to read it ((H, W, C) float32)."""
  name: str
  source: str
  height: int
  width: int
  read: Callable[[], np.ndarray]


def _is_input_file(path: pathlib.Path) -> bool:
  return path.is_file() and (path.suffix.lower() in (NPY_SUFFIX, PNG_SUFFIX) or data.is_fits_file(path))


def _stem(path: pathlib.Path) -> str:
  name = path.name
  for suffix in sorted(data.FITS_SUFFIXES + (NPY_SUFFIX, PNG_SUFFIX), key=len, reverse=True):
    if name.lower().endswith(suffix):
      return name[:-len(suffix)]
  return path.stem


def _npy_images(path: pathlib.Path) -> list[InputImage]:
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
      image = np.asarray(array_of(handle["array"], i), np.float32)
      data.require_finite(image, f"{path}" + ("" if i is None else f"[{i}]"))
      return image
    return read

  stem = _stem(path)
  if count is None:
    return [InputImage(stem, str(path), height, width, reader(None))]
  digits = len(str(count - 1))
  return [InputImage(f"{stem}_{i:0{digits}d}", f"{path}[{i}]", height, width, reader(i)) for i in range(count)]


def _png_image(path: pathlib.Path) -> InputImage:
  try:
    with Image.open(path) as im:
      width, height = im.size
  except (OSError, ValueError) as error:
    raise DataError(f"{path}: is not a readable image ({error}). Re-save it as PNG or remove it") from None
  return InputImage(_stem(path), str(path), height, width, lambda: data.read_png_image(path))


def _fits_images(path: pathlib.Path) -> list[InputImage]:
  source = data.FitsSource(path, "test")
  height, width = source.image_shape[:2]
  stem = _stem(path)
  if len(source) == 1 and source.cutouts[0][2] is None:
    return [InputImage(stem, source.describe(0), height, width, lambda: source.read(0)["image"])]
  digits = len(str(len(source) - 1))
  return [InputImage(f"{stem}_{i:0{digits}d}", source.describe(i), height, width,
                     lambda i=i: source.read(i)["image"]) for i in range(len(source))]


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
  for file in files:
    try:
      if file.suffix.lower() == NPY_SUFFIX:
        found_images += _npy_images(file)
      elif file.suffix.lower() == PNG_SUFFIX:
        found_images.append(_png_image(file))
      else:
        found_images += _fits_images(file)
    except DataError as error:
      problems += error.problems
    except ImportError as error:            # astropy missing: say which file needed it
      problems.append(f"{file}: {error}")
  if problems:
    raise DataError(problems)
  seen: dict[str, int] = {}
  for image in found_images:              # a.png and a.npy would write the same files: number the repeats
    count = seen.get(image.name, 0)
    seen[image.name] = count + 1
    if count:
      image.name = f"{image.name}-{count + 1}"
  return found_images


def padded_side(height: int, width: int, preprocessor: data.Preprocessor) -> int:
  """The square side an image is padded to: max(size after resize_to, data.pad_to), up to a multiple of 32."""
  height, width = dataclasses.replace(preprocessor, pad_to=0, crop_size=0).output_size(height, width)
  return SIZE_MULTIPLE * math.ceil(max(height, width, preprocessor.pad_to) / SIZE_MULTIPLE)


def compile_forward(graphdef, mesh, state_sharding):
  """(state, batch) -> (B, H, W, K) probabilities, jitted: the network in inference mode on `batch`'s inputs."""

  def forward(state, batch):
    model = train_step.inference_network(graphdef, state)
    logits = model.prediction(train_step.apply_network(model, batch))
    return jax.nn.sigmoid(logits.astype(np.float32))

  return jax.jit(forward, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def _write_png(path: pathlib.Path, pixels: np.ndarray) -> None:
  Image.fromarray(pixels).save(path)


def predict(run: evaluate.LoadedRun, inputs: Sequence[InputImage], out: pathlib.Path, *, batch_size: int,
            threshold: float = 0.5, mesh: jax.sharding.Mesh | None = None,
            report: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Predicts every input and writes its files into `out`; returns the per-image summary (predictions.json)."""
  mesh = mesh or parallel.make_mesh()
  config = run.config
  targets = config.data.targets
  preprocessor = dataclasses.replace(data.make_preprocessor(config, with_edge=data.needs_edge(config)),
                                     crop_size=0, augment="none")
  forward = compile_forward(run.graphdef, mesh, run.state_sharding)
  out.mkdir(parents=True, exist_ok=True)
  groups: dict[int, list[InputImage]] = {}
  for image in inputs:
    groups.setdefault(padded_side(image.height, image.width, preprocessor), []).append(image)
  summary = []
  for side, members in sorted(groups.items()):
    padder = dataclasses.replace(preprocessor, pad_to=side)
    for start in range(0, len(members), batch_size):
      chunk = members[start:start + batch_size]
      raw = [image.read() for image in chunk]
      examples = [padder({"image": pixels}) for pixels in raw]
      batch = {key: np.stack([e[key] for e in examples]) for key in examples[0] if key in ("image", "edge")}
      rows = len(chunk)
      if rows < batch_size:              # one compiled shape per side: fill the last batch with copies
        batch = {k: np.concatenate([v, np.repeat(v[:1], batch_size - rows, axis=0)]) for k, v in batch.items()}
      probabilities = np.asarray(forward(run.state, parallel.global_batch(batch, mesh)))[:rows]
      for image, pixels, probs in zip(chunk, raw, probabilities):
        probs = _crop_back(probs, image, preprocessor, side)
        summary.append(_write_outputs(out, image, pixels, probs, targets, threshold))
      report(f"predicted {start + rows}/{len(members)} images of padded size {side}x{side}")
  (out / "predictions.json").write_text(json.dumps(
      {"run": str(run.path), "checkpoint": run.description, "threshold": threshold, "targets": list(targets),
       "images": summary}, indent=2) + "\n")
  return summary


def _crop_back(probabilities: np.ndarray, image: InputImage, preprocessor: data.Preprocessor,
               side: int) -> np.ndarray:
  """(side, side, K) -> (H, W, K): the image's own region of the padded prediction, at the image's size."""
  height, width = dataclasses.replace(preprocessor, pad_to=0, crop_size=0).output_size(image.height, image.width)
  top, left = data.pad_offset(height, side), data.pad_offset(width, side)
  region = probabilities[top:top + height, left:left + width]
  if (height, width) != (image.height, image.width):          # the run resized its images: undo it
    region = cv2.resize(np.ascontiguousarray(region), (image.width, image.height), interpolation=cv2.INTER_LINEAR)
    region = region.reshape(image.height, image.width, probabilities.shape[-1])
  return region.astype(np.float32)


def _write_outputs(out: pathlib.Path, image: InputImage, pixels: np.ndarray, probabilities: np.ndarray,
                   targets: Sequence[str], threshold: float) -> dict[str, Any]:
  masks = probabilities >= threshold
  for k, target in enumerate(targets):
    _write_png(out / f"{image.name}_{target}.png", masks[..., k].astype(np.uint8) * 255)
  np.save(out / f"{image.name}.npy", masks.astype(np.uint8))
  np.save(out / f"{image.name}_probabilities.npy", probabilities)
  _write_png(out / f"{image.name}_overlay.png", plots.overlay(pixels, masks))
  return {"name": image.name, "source": image.source, "height": image.height, "width": image.width,
          "area_pixels": {t: int(masks[..., k].sum()) for k, t in enumerate(targets)}}


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(
      prog="python -m lensjax.predict", description=__doc__.split("\n\n")[0],
      epilog="Preprocessing overrides: --config.data.FIELD=VALUE (e.g. --config.data.normalize=minmax).")
  parser.add_argument("run_dir", help="a run directory written by python -m lensjax.train (or imported weights)")
  parser.add_argument("inputs", nargs="+", metavar="INPUT", help=".npy, .png or FITS files, or folders of them")
  parser.add_argument("--out", required=True, help="folder for the masks, probabilities and overlays")
  parser.add_argument("--checkpoint", default="best", help="best (default), last, or a step number")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="images per network call (default: the run's train.eval_batch_size, at most the "
                           "number of images, rounded up to a multiple of the number of devices)")
  parser.add_argument("--threshold", type=float, default=0.5, help="probability above which a pixel is in a mask")
  parser.add_argument("--config", default=None, help="for imported weights only: the config of the data")
  args, overrides = cli.parse(parser, argv)
  if not 0.0 < args.threshold < 1.0:
    parser.error(f"--threshold {args.threshold}: expected a probability strictly between 0 and 1")
  if args.batch_size is not None and args.batch_size < 1:
    parser.error(f"--batch-size {args.batch_size}: expected a positive number of images")
  inputs = find_inputs(args.inputs)
  run = evaluate.load_run(args.run_dir, args.checkpoint, config_name=args.config, overrides=overrides)
  devices = jax.device_count()
  batch_size = min(args.batch_size or run.config.train.eval_batch_size, len(inputs))
  batch_size = devices * math.ceil(batch_size / devices)
  print(f"{len(inputs)} images; {run.description} of {run.path}")
  predict(run, inputs, pathlib.Path(args.out), batch_size=batch_size, threshold=args.threshold)
  print(f"wrote the masks, probabilities and overlays of {len(inputs)} images to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
