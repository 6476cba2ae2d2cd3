"""Writes a simulated lens dataset in the original project's format.

  python -m lensjax.simulate --n 20000 --out data/sim              # SimConfig defaults, seed 0
  python -m lensjax.simulate --n 1000 --out /tmp/s --noise gaussian --size 64 --seed 3
  python -m lensjax.simulate --n 100 --out /tmp/s --config.sim.field_galaxies_mean=5   # any SimConfig field
  python -m lensjax.simulate --n 1000 --out /tmp/hard --source irregular --crowded --noise jwst   # harder set

Files in --out:
  images.npy   (N, H, W, 3) float32: observed, lens light, lensed arcs (counts per pixel)
  masks.npy    (N, H, W, 2) uint8: lens, arcs (the configured mask rule on the noiseless channels)
  params.csv   one row per image: index and `lensjax.sim.PARAM_KEYS`
  sim_config.json   the SimConfig and seed that made them (image i is `Simulator(config, seed)` index i)

The arrays are written chunk by chunk into memory-mapped .npy files, so the dataset never sits in memory.
Existing dataset files are not overwritten unless --force is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import os
import pathlib
import sys
import time

import numpy as np

from lensjax import cli
from lensjax import config as cfg

OUTPUT_FILES = ("images.npy", "masks.npy", "params.csv", "sim_config.json")
_NAMED_OPTIONS = dict(image_size="--size", pixel_scale="--pixel-scale", noise="--noise",
                      lens_fraction="--lens-fraction", source_model="--source", crowd_galaxies_mean="--crowded")


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m lensjax.simulate", description=__doc__.split("\n\n")[0],
      epilog="Any SimConfig field can also be set as --config.sim.FIELD=VALUE.")
  parser.add_argument("--n", type=int, required=True, help="number of images (> 0)")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder (created if missing)")
  parser.add_argument("--seed", type=int, default=0, help="dataset seed in [0, 2^32) (default 0)")
  parser.add_argument("--size", type=int, help="stamp size in pixels (default: SimConfig.image_size, 125)")
  parser.add_argument("--pixel-scale", type=float, help="arcsec per pixel (default: SimConfig, 0.031)")
  parser.add_argument("--lens-fraction", type=float, help="fraction of lenses (default: SimConfig, 0.5)")
  add_scene_arguments(parser)
  parser.add_argument("--chunk", type=int, default=1024, help="images rendered and written per step (> 0)")
  parser.add_argument("--force", action="store_true", help="overwrite an existing dataset in --out")
  return parser


def add_scene_arguments(parser: argparse.ArgumentParser) -> None:
  """The harder-scene options shared by `simulate` and `evaluate`: --noise, --source, --crowded."""
  parser.add_argument("--noise", choices=("none", "gaussian", "poisson", "jwst"),
                      help="noise model (default: none); jwst: poisson with a deep F115W exposure and sky "
                           "(lensjax.sim.instrument.JWST_F115W_DEEP)")
  parser.add_argument("--source", choices=("sersic", "irregular"),
                      help="source morphology: Sersic + clumps (default) or irregular (twisted spiral body, knots)")
  parser.add_argument("--crowded", action="store_true",
                      help="crowded field: JADES-like density of extra faint field galaxies "
                           "(config.sim.crowd_galaxies_mean=10)")


def scene_fields(args: argparse.Namespace) -> dict[str, object]:
  """The SimConfig fields that `add_scene_arguments`' options set (only those given)."""
  from lensjax.sim.instrument import JWST_F115W_DEEP
  from lensjax.sim.scenes import CROWDED_FIELD_GALAXIES
  fields = dict(noise=args.noise, source_model=args.source,
                crowd_galaxies_mean=CROWDED_FIELD_GALAXIES if args.crowded else None)
  if args.noise == "jwst":
    fields.update(JWST_F115W_DEEP)
  return {k: v for k, v in fields.items() if v is not None}


def sim_config_from_args(args: argparse.Namespace, overrides: list[str]) -> cfg.SimConfig:
  """SimConfig defaults, then the named options, then --config.sim.* overrides (any other section is refused);
  a value out of range is a ConfigError naming the field and its option."""
  config = cfg.Config()
  named = dict(image_size=args.size, pixel_scale=args.pixel_scale, lens_fraction=args.lens_fraction,
               **scene_fields(args))
  config.sim = dataclasses.replace(config.sim, **{k: v for k, v in named.items() if v is not None})
  try:
    cfg.parse_overrides(config, overrides, sections=("sim",))
  except cfg.ConfigError as error:
    message = str(error)
    for field, option in _NAMED_OPTIONS.items():
      message = message.replace(f"config.sim.{field} ", f"config.sim.{field} (option {option}) ")
    raise cfg.ConfigError(message) from None
  return config.sim


def _check_output(out: pathlib.Path, force: bool) -> None:
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} exists and is not a folder")
  existing = [name for name in OUTPUT_FILES if (out / name).exists()]
  if existing and not force:
    raise ValueError(f"--out {out} already holds {', '.join(existing)}; pass --force to overwrite")


def write_dataset(sim_config: cfg.SimConfig, seed: int, n: int, out: pathlib.Path, chunk: int,
                  progress: bool = True) -> dict[str, float]:
  """Renders images 0..n-1 of `Simulator(sim_config, seed)` into `out`; returns timing figures."""
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

  from lensjax.sim import PARAM_KEYS, Simulator

  simulator = Simulator(sim_config, seed)
  size = sim_config.image_size
  out.mkdir(parents=True, exist_ok=True)
  images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.float32, shape=(n, size, size, 3))
  masks = np.lib.format.open_memmap(out / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 2))
  (out / "sim_config.json").write_text(json.dumps(dict(seed=seed, n=n, sim=dataclasses.asdict(sim_config)),
                                                  indent=1) + "\n")
  start = time.perf_counter()
  with open(out / "params.csv", "w", newline="") as params_file, Progress(
      TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
      TimeRemainingColumn(), disable=not progress) as bar:
    writer = csv.writer(params_file)
    writer.writerow(("index",) + PARAM_KEYS)
    task = bar.add_task("simulating", total=n, rate="")

    def write(first: int, batch: dict) -> None:
      last = first + len(batch["lens"])
      images[first:last] = np.stack([batch["observed"], batch["lens"], batch["arcs"]], axis=-1)
      masks[first:last] = batch["masks"]
      columns = [batch["params"][name] for name in PARAM_KEYS]
      writer.writerows([index] + [f"{column[row]:.9g}" for column in columns]
                       for row, index in enumerate(range(first, last)))

    # One writer thread: chunk i is written to disk while chunk i + 1 renders (both release the GIL).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as writer_thread:
      pending = None
      for first in range(0, n, chunk):
        batch = simulator.render(np.arange(first, min(first + chunk, n)))
        if pending is not None:
          pending.result()
        pending = writer_thread.submit(write, first, batch)
        done = first + len(batch["lens"])
        bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - start):.0f} images/s")
      pending.result()
  images.flush()
  masks.flush()
  del images, masks
  elapsed = time.perf_counter() - start
  return dict(images=n, seconds=elapsed, images_per_second=n / elapsed)


@cli.command
def main(argv: list[str]) -> int:
  args, overrides = cli.parse(_parser(), argv)
  if args.n <= 0:
    raise cfg.ConfigError(f"--n must be a positive number of images; got {args.n}")
  if args.chunk <= 0:
    raise cfg.ConfigError(f"--chunk must be a positive number of images; got {args.chunk}")
  if not 0 <= args.seed < 2**32:
    raise cfg.ConfigError(f"--seed must lie in [0, 2^32); got {args.seed}")
  sim_config = sim_config_from_args(args, overrides)
  _check_output(args.out, args.force)
  figures = write_dataset(sim_config, args.seed, args.n, args.out, args.chunk)
  print(f"wrote {args.n} images to {args.out} in {figures['seconds']:.1f} s "
        f"({figures['images_per_second']:.0f} images/s)")
  return 0


if __name__ == "__main__":
  # One JAX CPU device per core, so the simulator renders a chunk per core at once (its per-image mask
  # search is single-threaded XLA code). Set before JAX starts; export the variable to override it.
  os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(os.cpu_count() or 1))
  sys.exit(main())
