"""`python -m lensjax.data check PATH`: validate a whole dataset before training and summarise it.

Every split is opened (the checks training runs before step 0: layout, pairing, shapes, dtypes and, for
.npy data, every pixel and mask value) and every example read (NaN/inf pixels, mask values, unreadable
files, for every format). Each distinct problem is listed once, naming its file (and index) and the fix,
with a count when several splits (or examples) hit the same one; the exit status is 1 if there are any.
The summary says where the masks come from (a file, or made by the percentile rule, with a warning for a
mask file under another name), then gives, per split, the number of examples, the stored image shape, the
pixel range, the fraction of pixels in each target's mask, and the shape the network will see after
preprocessing.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from typing import Callable

import numpy as np

from lensjax import cli
from lensjax import config as cfg
from lensjax.data import fits, npy, sources
from lensjax.data.errors import DataError

USAGE = """usage: python -m lensjax.data check PATH [--config=NAME] [--config.data.FIELD=VALUE ...]

Validates the dataset at PATH and prints a summary. The format (npy, png, chaos, fits) is recognised from
the layout unless --config.data.source is given; other --config.* overrides (targets, chaos_modality,
split_fractions, ...) apply as in training."""


@dataclasses.dataclass
class SplitSummary:
  """What `check` found in one split."""
  split: str
  examples: int = 0
  image_shape: tuple[int, ...] = ()
  input_shape: tuple[int, ...] = ()
  pixel_min: float = float("inf")
  pixel_max: float = float("-inf")
  mask_fraction: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CheckReport:
  """The summaries of the splits that could be opened, and every problem found (repeats included)."""
  source: str
  path: str
  splits: list[SplitSummary]
  problems: list[str]
  masks: str = ""                  # where the masks come from (`sources.mask_source`)
  warnings: list[str] = dataclasses.field(default_factory=list)


def infer_source(path: str | pathlib.Path) -> str:
  """The data.source ('npy', 'png', 'chaos', 'fits') that the layout at `path` is in."""
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: no such file or folder")
  if path.suffix == ".npy" or (path / npy.IMAGES_FILE).is_file():
    return "npy"
  if fits.is_fits_file(path) or (path.is_dir() and any(fits.is_fits_file(p) for p in path.iterdir())):
    return "fits"
  if any((path / name).is_dir() for name in ("CT", "MR", "Train_Sets")):
    return "chaos"
  for split in sources.SPLITS:
    images_dir = path / split / "images"
    if images_dir.is_dir():
      if any(images_dir.glob("*.npy")):
        return "npy"
      if any(images_dir.glob("*.png")):
        return "png"
  raise DataError(f"{path}: cannot tell the dataset format (expected images.npy, {{train,val,test}}/images/ "
                  "with .npy or .png files, CHAOS CT/ or MR/ folders, or FITS files); give it with "
                  "--config.data.source=npy|png|chaos|fits")


def check_dataset(config: cfg.Config) -> CheckReport:
  """Opens and reads every split of the dataset `config.data` names; collects problems instead of raising."""
  data = config.data
  splits = ("test",) if data.source == "fits" else sources.SPLITS
  summaries, problems = [], []
  for split in splits:
    try:
      source = sources.make_source(config, split, with_edge=False)
    except DataError as e:
      problems += e.problems
      continue
    raw = source.raw
    summary = SplitSummary(split, len(raw), raw.image_shape, source.element_shape)
    mask_sums = np.zeros(len(raw.targets) if raw.has_masks else 0)
    pixels_read = 0
    for index in range(len(raw)):
      try:
        example = raw.read(index)
      except DataError as e:
        problems += e.problems
        continue
      image = example["image"]
      summary.pixel_min = min(summary.pixel_min, float(image.min()))
      summary.pixel_max = max(summary.pixel_max, float(image.max()))
      if raw.has_masks:
        mask = example["mask"]
        mask_sums += mask.sum(axis=(0, 1))
        pixels_read += mask.shape[0] * mask.shape[1]
    if raw.has_masks:
      summary.mask_fraction = dict(zip(raw.targets, (mask_sums / max(pixels_read, 1)).tolist()))
    summaries.append(summary)
  try:
    masks, warnings = sources.mask_source(config)
  except DataError:                       # a layout problem, reported by make_source above
    masks, warnings = "-", []
  return CheckReport(data.source, data.path, summaries, problems, masks, warnings)


def format_report(report: CheckReport) -> str:
  """The summary table and the problem list, as printed by `check`."""
  lines = [f"dataset {report.path} (data.source={report.source})", f"masks: {report.masks}"]
  lines += [f"warning: {w}" for w in report.warnings] + [""]
  header = ["split", "examples", "stored HxWxC", "pixel range", "mask fraction", "network input"]
  rows = []
  for s in report.splits:
    fractions = ", ".join(f"{t} {f:.4f}" for t, f in s.mask_fraction.items()) or "no masks"
    pixel_range = f"[{s.pixel_min:.4g}, {s.pixel_max:.4g}]" if s.pixel_min <= s.pixel_max else "-"
    rows.append([s.split, str(s.examples), "x".join(map(str, s.image_shape)), pixel_range, fractions,
                 "x".join(map(str, s.input_shape))])
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  for row in [header] + rows:
    lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
  lines.append("")
  if report.problems:
    counts = collections.Counter(report.problems)      # in the order first found
    lines.append(f"{len(counts)} problem(s):")
    lines += [f"  {p}" + (f" (found {n} times)" if n > 1 else "") for p, n in counts.items()]
  else:
    lines.append("no problems found")
  return "\n".join(lines)


def main(argv: list[str], print_fn: Callable[[str], None] = print) -> int:
  """Runs `check` on command-line arguments (after the word 'check'); returns the exit status."""
  paths = [a for a in argv if not a.startswith("--")]
  options = [a for a in argv if a.startswith("--")]
  if len(paths) != 1 or any(a in ("--help", "-h") for a in options):
    print_fn(USAGE)
    return 2
  config_name = "default"
  overrides = []
  for option in options:
    if option.startswith("--config="):
      config_name = option.split("=", 1)[1]
    elif option.startswith("--config."):
      overrides.append(option)
    elif option != "--debug":     # --debug: `lensjax.cli`
      raise cli.UsageError(f"unknown option {option}; usage: python -m lensjax.data check PATH [--config NAME] "
                           "[--config.KEY=VALUE ...]")
  config = cfg.load(config_name, overrides)
  config.data.path = paths[0]
  if not any(o.startswith("--config.data.source=") for o in overrides):
    config.data.source = infer_source(paths[0])
  report = check_dataset(config)
  print_fn(format_report(report))
  return 1 if report.problems else 0

