"""Images per second the input pipeline delivers, per source, with 0, 1 and 2 Grain worker processes.

  python -m benchmarks.input_pipeline                               # sim, npy, png; 0, 1, 2 workers
  python -m benchmarks.input_pipeline --sources=sim --workers=0,2 --batches=100

Each run builds the training loader of the default config (unbounded, shuffled, D4 augmentation, 125 -> 128
padding, batch 8 per process) for one source and reads `--batches` batches after a warm-up of one batch per
worker process (so every worker has started and, for simulated data, compiled the simulator; the warm-up
time is reported separately). The
file sources read datasets written to a temporary folder first: `npy` an images.npy of simulated 125x125x3
lenses (`lensjax.sim`) with masks made on load, `png` 256x256 grey slices with 0/255 masks resized to 128.

Target: at least 5x the images/s the default training step consumes on the same machine; `python -m
benchmarks.throughput` times that step and the simulated pipeline in one run. Prints a table and writes JSON
(`--out`), with the load average, since timings on a shared machine vary with other jobs.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from lensjax import cli
from lensjax import config as cfg
from lensjax import sim
from lensjax import data as lensdata


def _write_npy(root: pathlib.Path, count: int) -> None:
  """An images.npy in the original format (N, 125, 125, 3: observed, lens, arcs), rendered by the simulator."""
  rendered = sim.Simulator(cfg.SimConfig(), seed=0).render(np.arange(count))
  np.save(root / "images.npy", np.stack([rendered["observed"], rendered["lens"], rendered["arcs"]], axis=-1))


def _write_png(root: pathlib.Path, count: int) -> None:
  rng = np.random.default_rng(0)
  for split in ("train", "val", "test"):
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    for i in range(count if split == "train" else 2):
      image = (rng.random((256, 256)) * 255).astype(np.uint8)
      Image.fromarray(image).save(root / split / "images" / f"{i:05d}.png")
      Image.fromarray(((image > 200) * 255).astype(np.uint8)).save(root / split / "masks" / f"{i:05d}.png")


def _config(source: str, path: pathlib.Path | None, workers: int, read_threads: int) -> cfg.Config:
  config = cfg.load("default")
  config.data.source = source
  config.data.worker_count = workers
  config.data.read_threads = read_threads
  if source == "npy":
    config.data.path = str(path)
  elif source == "png":
    config.data.path, config.data.targets, config.data.resize_to = str(path), ("foreground",), 128
  return config


def measure(config: cfg.Config, batch_size: int, batches: int, with_edge: bool) -> dict:
  """Images/s over `batches` batches of the train loader, after one warm-up batch per worker process."""
  start = time.perf_counter()
  loader = lensdata.make_loader(config, "train", batch_size=batch_size, shuffle=True, num_epochs=None, seed=0,
                                with_edge=with_edge)
  iterator = iter(loader)
  for _ in range(max(1, config.data.worker_count)):    # Grain takes batches from the workers in turn
    next(iterator)
  warm_up_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  del iterator
  return {"warm_up_s": round(warm_up_s, 3), "images_per_s": round(batches * batch_size / elapsed, 1),
          "seconds": round(elapsed, 3)}


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__.split("\n")[0])
  parser.add_argument("--sources", default="sim,npy,png")
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--batches", type=int, default=100)
  parser.add_argument("--read-threads", type=int, default=cfg.DataConfig().read_threads)
  parser.add_argument("--edge", action="store_true", help="also compute the Canny edge map (MSRF-Net)")
  parser.add_argument("--out", default="runs/benchmarks/input_pipeline.json")
  args = parser.parse_args(argv)
  sources = args.sources.split(",")
  worker_counts = [int(w) for w in args.workers.split(",")]

  results = []
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    paths = {"sim": None}
    if "npy" in sources:
      paths["npy"] = pathlib.Path(tmp) / "npy"
      paths["npy"].mkdir()
      _write_npy(paths["npy"], 1000)
    if "png" in sources:
      paths["png"] = pathlib.Path(tmp) / "png"
      _write_png(paths["png"], 400)
    for source in sources:
      for workers in worker_counts:
        config = _config(source, paths[source], workers, args.read_threads)
        result = measure(config, args.batch_size, args.batches, args.edge)
        results.append({"source": source, "workers": workers, **result})
        print(f"{source:5s} workers={workers}: {result['images_per_s']:8.1f} images/s "
              f"(warm-up {result['warm_up_s']:.2f} s)", flush=True)

  report = {
      "benchmark": "input_pipeline", "batch_size": args.batch_size, "batches": args.batches,
      "read_threads": args.read_threads, "edge": args.edge, "cpu_count": os.cpu_count(),
      "machine": platform.processor() or platform.machine(),
      "load_average_before": [round(x, 2) for x in load_before],
      "load_average_after": [round(x, 2) for x in os.getloadavg()], "results": results,
  }
  print()
  print(f"{'source':8s}{'workers':>8s}{'images/s':>12s}{'warm-up s':>12s}")
  for r in results:
    print(f"{r['source']:8s}{r['workers']:>8d}{r['images_per_s']:>12.1f}{r['warm_up_s']:>12.2f}")
  print(f"load average before/after: {report['load_average_before']} / {report['load_average_after']} "
        f"on {os.cpu_count()} CPUs")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=2))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
