"""Images per second of `lensjax.sim.Simulator.render` against lenstronomy on the same scenes.

  python -m benchmarks.simulator --out runs/benchmarks/simulator.json
  python -m benchmarks.simulator --batch-sizes 64,256 --repeats 3 --config.sim.field_galaxies_max=0

For each batch size: `render` of that many new indices (observed, lens, arcs, masks, parameters), compile
excluded (one warm-up call per size), median over --repeats. When lenstronomy is importable (the `bench`
extra) the same scenes, converted with `scenes.scene_to_lenstronomy`, are rendered by lenstronomy 1.14 in
float64 with the same grid, PSF and supersampling: three `ImageModel`s built once (lensed source, lens
light, field galaxies) with every clump and field slot present (unused ones at zero amplitude, as the JAX
renderer evaluates them). lenstronomy makes the three channels only; the headline ratio compares that with
the JAX render *including* its masks. The two renderings are also compared pixel by pixel on a few scenes.
--breakdown times the scene with parts switched off (field galaxies, clumps, percentile masks, PSF), with
lenstronomy on the same reduced scenes, to show where the time goes and the ratio per scene content;
--options times the harder scenes (irregular sources, crowded fields) against the configured ones, interleaved.
lenstronomy has no irregular source: with source_model 'irregular' the figures are JAX only.
Set JAX_NUM_CPU_DEVICES (default here: one device per CPU core) to change how the batch is split over cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time

os.environ.setdefault("JAX_NUM_CPU_DEVICES", str(os.cpu_count() or 1))

import jax  # noqa: E402  (after JAX_NUM_CPU_DEVICES)
import numpy as np  # noqa: E402

from lensjax import cli  # noqa: E402
from lensjax import config as cfg  # noqa: E402
from lensjax.sim import Simulator, scenes  # noqa: E402


def time_jax(simulator: Simulator, batch_size: int, repeats: int) -> dict[str, float]:
  """Median seconds of `render` over `repeats` fresh index ranges, after one warm-up (compile) call."""
  start = time.perf_counter()
  simulator.render(np.arange(batch_size))
  compile_seconds = time.perf_counter() - start
  seconds = []
  for repeat in range(1, repeats + 1):
    indices = np.arange(repeat * batch_size, (repeat + 1) * batch_size)
    start = time.perf_counter()
    simulator.render(indices)
    seconds.append(time.perf_counter() - start)
  median = statistics.median(seconds)
  return dict(batch_size=batch_size, median_seconds=median, images_per_second=batch_size / median,
              first_call_seconds=compile_seconds)


class LenstronomyRenderer:
  """lenstronomy's rendering of `Simulator` scenes: the same grid, PSF, supersampling and profile slots."""

  def __init__(self, sim_config: cfg.SimConfig):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    size, scale = sim_config.image_size, sim_config.pixel_scale
    origin = -(size - 1) / 2 * scale   # lensjax centres the grid; no x flip (docs/simulator.md)
    data = ImageData(image_data=np.zeros((size, size)), ra_at_xy_0=origin, dec_at_xy_0=origin,
                     transform_pix2angle=np.diag([scale, scale]))
    if sim_config.psf == "gaussian":
      psf = PSF(psf_type="GAUSSIAN", fwhm=sim_config.psf_fwhm, truncation=sim_config.psf_truncation)
    elif sim_config.psf == "none":
      psf = PSF(psf_type="NONE")
    else:
      raise ValueError("the lenstronomy comparison supports psf 'gaussian' or 'none'")
    numerics = dict(supersampling_factor=sim_config.supersampling)
    self.clump_slots = sim_config.clumps_max
    self.field_slots = sim_config.field_galaxies_max + scenes.crowd_slots(sim_config)
    self.arcs = ImageModel(data, psf, lens_model_class=LensModel(["SIE", "SHEAR"]),
                           source_model_class=LightModel(["SERSIC_ELLIPSE"] + ["GAUSSIAN"] * self.clump_slots),
                           kwargs_numerics=numerics)
    self.lens = ImageModel(data, psf, lens_light_model_class=LightModel(["SERSIC_ELLIPSE"]),
                           kwargs_numerics=numerics)
    self.field = ImageModel(data, psf, lens_light_model_class=LightModel(["SERSIC_ELLIPSE"] * self.field_slots),
                            kwargs_numerics=numerics) if self.field_slots else None

  def render(self, scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One scene (per-image entries of `Simulator.scenes`) -> float64 observed, lens, arcs."""
    kwargs = scenes.scene_to_lenstronomy(scene, keep_empty_slots=True)
    arcs = self.arcs.image(kwargs_lens=kwargs["lens"][1], kwargs_source=kwargs["source_light"][1])
    lens = self.lens.image(kwargs_lens_light=kwargs["lens_light"][1])
    observed = lens + arcs
    if self.field is not None:
      observed = observed + self.field.image(kwargs_lens_light=kwargs["field_light"][1])
    return dict(observed=observed, lens=lens, arcs=arcs)


def time_lenstronomy(renderer: LenstronomyRenderer, batch_scenes: dict[str, np.ndarray],
                     repeats: int) -> dict[str, float]:
  """Median seconds per image of lenstronomy over the scenes, `repeats` passes."""
  count = len(batch_scenes["theta_E"])
  per_image = [{name: values[i] for name, values in batch_scenes.items()} for i in range(count)]
  renderer.render(per_image[0])
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    for scene in per_image:
      renderer.render(scene)
    seconds.append(time.perf_counter() - start)
  median = statistics.median(seconds)
  return dict(images=count, median_seconds=median, images_per_second=count / median)


def time_numpy_masks(simulator: Simulator, indices: np.ndarray, repeats: int) -> float:
  """Median seconds per image of the numpy mask rule (what lenstronomy users add to get the same outputs)."""
  batch = simulator.render(indices)
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    simulator.masks.apply(batch["lens"], batch["arcs"])
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds) / len(indices)


# Scene content switched off one part at a time, to show where the time goes.
BREAKDOWN = {
    "full scene": {},
    "no field galaxies": dict(field_galaxies_max=0),
    "no clumps": dict(clumps_max=0),
    "peak-fraction masks (no percentile search)": dict(mask_rule="peak_fraction"),
    "no PSF": dict(psf="none"),
    "lens + lensed Sersic only, peak-fraction masks, no PSF": dict(
        field_galaxies_max=0, clumps_max=0, mask_rule="peak_fraction", psf="none"),
}


# The harder scenes (docs/harder-simulations.md), each against the configured scene.
OPTIONS = {
    "configured scene": {},
    "irregular source": dict(source_model="irregular"),
    "crowded field": dict(crowd_galaxies_mean=scenes.CROWDED_FIELD_GALAXIES),
    "irregular source, crowded field": dict(source_model="irregular",
                                            crowd_galaxies_mean=scenes.CROWDED_FIELD_GALAXIES),
}


def lenstronomy_comparable(sim_config: cfg.SimConfig) -> bool:
  """Whether lenstronomy can render these scenes: it is installed, the PSF is not Moffat, the source Sersic."""
  return lenstronomy_available() and sim_config.psf != "moffat" and sim_config.source_model == "sersic"


def time_breakdown(sim_config: cfg.SimConfig, seed: int, batch_size: int, repeats: int,
                   lenstronomy_images: int, variants: dict = BREAKDOWN) -> dict[str, dict[str, float]]:
  """images/s of `render` (and of lenstronomy on the same scenes, if it can) for each of `variants`.

  The JAX repeats are interleaved over the variants, so drifts in the machine's load hit all alike.
  """
  simulators = {name: Simulator(dataclasses.replace(sim_config, **changes), seed)
                for name, changes in variants.items()}
  for simulator in simulators.values():
    simulator.render(np.arange(batch_size))
  seconds = {name: [] for name in simulators}
  for repeat in range(1, repeats + 1):
    for name, simulator in simulators.items():
      start = time.perf_counter()
      simulator.render(np.arange(repeat * batch_size, (repeat + 1) * batch_size))
      seconds[name].append(time.perf_counter() - start)
  rows = {name: dict(jax_images_per_second=batch_size / statistics.median(values))
          for name, values in seconds.items()}
  scene_indices = np.arange(10**6, 10**6 + lenstronomy_images)
  for name, simulator in simulators.items():
    if lenstronomy_comparable(simulator.config):
      timing = time_lenstronomy(LenstronomyRenderer(simulator.config), simulator.scenes(scene_indices), 1)
      rows[name]["lenstronomy_images_per_second"] = timing["images_per_second"]
      rows[name]["ratio"] = rows[name]["jax_images_per_second"] / timing["images_per_second"]
  return rows


def lenstronomy_available() -> bool:
  try:
    import lenstronomy  # noqa: F401
  except ImportError:
    return False
  return True


def compare(simulator: Simulator, renderer: LenstronomyRenderer, indices: np.ndarray) -> dict[str, float]:
  """Largest |JAX - lenstronomy| per channel, relative to that channel's peak, over the scenes `indices`."""
  ours = simulator.render(indices)
  batch_scenes = simulator.scenes(indices)
  worst = dict(observed=0.0, lens=0.0, arcs=0.0)
  for i in range(len(indices)):
    theirs = renderer.render({name: values[i] for name, values in batch_scenes.items()})
    for channel in worst:
      peak = max(np.abs(theirs[channel]).max(), 1e-30)
      worst[channel] = max(worst[channel], float(np.abs(ours[channel][i] - theirs[channel]).max() / peak))
  return worst


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m benchmarks.simulator", description=__doc__.split("\n\n")[0],
                              epilog="Any SimConfig field can be set as --config.sim.FIELD=VALUE.")
  parser.add_argument("--batch-sizes", default="1,4,16,64,256,1024", help="comma-separated batch sizes")
  parser.add_argument("--repeats", type=int, default=5, help="timed repeats per batch size (median)")
  parser.add_argument("--lenstronomy-images", type=int, default=64, help="scenes timed with lenstronomy")
  parser.add_argument("--check-images", type=int, default=8, help="scenes compared pixel by pixel")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--breakdown", action="store_true",
                      help="also time the scene with parts switched off (field galaxies, clumps, masks, PSF)")
  parser.add_argument("--options", action="store_true",
                      help="also time the harder scenes (irregular source, crowded field) against this one")
  parser.add_argument("--out", type=pathlib.Path, help="write the figures as JSON here")
  args, overrides = cli.parse(parser, argv)
  config = cfg.parse_overrides(cfg.Config(), overrides, sections=("sim",))
  sim_config = config.sim
  batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  if min(batch_sizes) < 1 or args.repeats < 1:
    parser.error("batch sizes and --repeats must be positive")

  simulator = Simulator(sim_config, args.seed)
  results = dict(
      config=cfg.to_dict(config)["sim"], seed=args.seed, jax=jax.__version__, python=platform.python_version(),
      devices=[str(d) for d in jax.local_devices()], cpu_count=os.cpu_count(),
      load_average_before=os.getloadavg(), jax_render=[])
  print(f"lensjax simulator: {sim_config.image_size}x{sim_config.image_size} px, psf {sim_config.psf}, "
        f"supersampling {sim_config.supersampling}, noise {sim_config.noise}; "
        f"{len(jax.local_devices())} {jax.default_backend()} device(s); load average {os.getloadavg()}")
  for batch_size in batch_sizes:
    results["jax_render"].append(time_jax(simulator, batch_size, args.repeats))

  if not lenstronomy_available():
    print("lenstronomy is not installed (pip install lensjax[bench]): JAX figures only")
  elif not lenstronomy_comparable(sim_config):
    print("the lenstronomy comparison covers psf 'gaussian' and 'none' and Sersic sources: JAX figures only")
  else:
    import lenstronomy
    renderer = LenstronomyRenderer(sim_config)
    scene_indices = np.arange(10**6, 10**6 + args.lenstronomy_images)
    lenstronomy_timing = time_lenstronomy(renderer, simulator.scenes(scene_indices), max(1, args.repeats // 2))
    results["lenstronomy"] = dict(version=lenstronomy.__version__, **lenstronomy_timing)
    results["max_relative_difference"] = compare(simulator, renderer, np.arange(args.check_images))
    mask_seconds = time_numpy_masks(simulator, scene_indices, max(1, args.repeats // 2))
    results["lenstronomy"]["with_numpy_masks_images_per_second"] = 1 / (
        1 / lenstronomy_timing["images_per_second"] + mask_seconds)
  if args.breakdown:
    batch_size = max(batch_sizes)
    results["breakdown_batch_size"] = batch_size
    results["breakdown"] = time_breakdown(sim_config, args.seed, batch_size, args.repeats,
                                          args.lenstronomy_images)
  if args.options:
    results["options_batch_size"] = max(batch_sizes)
    results["options"] = time_breakdown(sim_config, args.seed, max(batch_sizes), args.repeats,
                                        args.lenstronomy_images, OPTIONS)
  results["load_average_after"] = os.getloadavg()

  reference = results.get("lenstronomy", {}).get("images_per_second")
  print(f"{'batch':>6} {'images/s':>10} {'ms/batch':>10} {'first call s':>13}"
        + (f" {'x lenstronomy':>14}" if reference else ""))
  for row in results["jax_render"]:
    line = (f"{row['batch_size']:>6} {row['images_per_second']:>10.0f} {row['median_seconds'] * 1e3:>10.1f} "
            f"{row['first_call_seconds']:>13.1f}")
    if reference:
      row["speedup_vs_lenstronomy"] = row["images_per_second"] / reference
      line += f" {row['speedup_vs_lenstronomy']:>14.1f}"
    print(line)
  if reference:
    with_masks = results["lenstronomy"]["with_numpy_masks_images_per_second"]
    best = max(row["images_per_second"] for row in results["jax_render"])
    print(f"lenstronomy {results['lenstronomy']['version']}: {reference:.0f} images/s "
          f"({results['lenstronomy']['images']} scenes, observed + lens + arcs, no masks; the ratio column); "
          f"{with_masks:.0f} images/s with numpy percentile masks added (best JAX batch: "
          f"{best / with_masks:.1f}x that)")
    differences = ", ".join(f"{k} {v:.1e}" for k, v in results["max_relative_difference"].items())
    print(f"max |JAX - lenstronomy| / channel peak over {args.check_images} scenes: {differences}")
  if args.breakdown:
    print(f"breakdown at batch {results['breakdown_batch_size']}, parts switched off (images/s):")
    print(f"  {'JAX':>8} {'lenstr.':>8} {'ratio':>6}  scene")
    for name, row in results["breakdown"].items():
      print(f"  {row['jax_images_per_second']:>8.0f} {row.get('lenstronomy_images_per_second', float('nan')):>8.0f} "
            f"{row.get('ratio', float('nan')):>6.1f}  {name}")
  if args.options:
    print(f"harder scenes at batch {results['options_batch_size']} (images/s, and relative to the configured one):")
    configured = results["options"]["configured scene"]["jax_images_per_second"]
    for name, row in results["options"].items():
      row["relative_to_configured"] = row["jax_images_per_second"] / configured
      print(f"  {row['jax_images_per_second']:>8.0f} {row['relative_to_configured']:>6.2f}  {name}")
  print(f"load average after: {os.getloadavg()}")
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
