"""`python -m lensjax.evaluate RUN_DIR`: a trained run's metrics on a split, as a Markdown table and as JSON.

  python -m lensjax.evaluate runs/default                           # test split, best checkpoint
  python -m lensjax.evaluate runs/default --split val --checkpoint last
  python -m lensjax.evaluate runs/default --checkpoint 1000 --out results/default_1000
  python -m lensjax.evaluate runs/default --config.sim.noise=gaussian      # the same model on noisy images
  python -m lensjax.evaluate weights/isnet --config isnet_sim:arcs         # imported IS-Net weights
  python -m lensjax.evaluate runs/original_isnet_arcs_cpu --protocol original          # beside the original's table
  python -m lensjax.evaluate runs/original_isnet_arcs_cpu --source irregular --crowded --noise jwst   # harder set
  python -m lensjax.evaluate runs/original_isnet_arcs_cpu --protocol original --tta d4  # mean of 8 rotated views

The table has one row per target and lensjax's definitions (confusion counts summed over every pixel of the
split; `lensjax.metrics`): Dice, mean fg/bg IoU, the per-image min-max IoU (the original IS-Net rule, over
every image), precision, recall, IoU, max F and MAE. `--protocol original` puts first the rows of the original's
table this run reproduces, each under that row's own definitions (they differ from row to row:
docs/results.md), with the original's number and the difference. `--tta hflip` or `--tta d4` (test-time
augmentation) scores the mean probability map of each image and its left-right mirror, or of its 8 rotations and
mirrors (`train_step.predicted_probabilities`; the losses stay those of the image alone). `--source`,
`--crowded` and `--noise` evaluate on harder simulated scenes (as `python -m lensjax.simulate`'s options; docs/harder-simulations.md). For simulated data
it adds where the model fails: the per-image IoU averaged in quantile bins of the Einstein radius theta_E
(arcsec), of the arcs' matched-filter signal-to-noise arc_snr and of their flux arc_flux (counts), over the
lenses, with the non-lenses (no arcs) in a row of their own, and how well the catalog's Einstein-radius proxy
(`python -m lensjax.predict`'s arc-light-weighted radius, `lensjax.catalog`) follows the true theta_E: the
median absolute error in arcsec over the lenses whose arcs it finds, and a scatter plot.

Files: `<RUN_DIR>/evaluation_<split>_step<N>.md` and `.json` (or `--out PATH` -> PATH.md, PATH.json), and beside
them the hardest images (`..._hardest.png`) and, for simulated data, per-image IoU against theta_E and arc S/N
(`..._iou.png`) and the theta_E proxy's scatter plot (`..._theta_E.png`). The table is printed before they are
written, so a run directory that cannot be written to (read-only) loses nothing: one error line names the path
and `--out`, exit status 2. `--checkpoint best` (default) is the best by the run's `checkpoint.best_metric` (the
latest when no checkpoint was saved at an evaluation step), `last` the newest, or a step number.

RUN_DIR can also be a directory of imported IS-Net weights (`python -m lensjax.models.import_torch`:
model.json + state/); then `--config` names the config whose data and targets to use.
`--config.sim.*` and `--config.data.*` overrides change the data evaluated on (not the model).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from lensjax import catalog, checkpoint, cli, data, evaluation, metrics, parallel, plots, run_directory, simulate
from lensjax import train_step
from lensjax import config as cfg
from lensjax.models import import_torch

# Per-image simulation parameters IoU is binned by: (key, label with units).
BINNED_PARAMETERS = (("theta_E", "θ_E (arcsec)"), ("arc_snr", "arc S/N"), ("arc_flux", "arc flux (counts)"))
# The table's columns: (metric prefix in `lensjax.metrics.summarize`, column title).
TABLE_COLUMNS = (("dice", "Dice"), ("miou", "mean fg/bg IoU"), ("orig_miou", "per-image min-max IoU"),
                 ("precision", "Precision"), ("recall", "Recall"), ("iou", "IoU"), ("maxf", "max F"),
                 ("mae", "MAE"))
# `--protocol original`: the original's columns, each under the row's own definition (`metrics.original_row_scores`).
ORIGINAL_COLUMNS = (("dice", "Dice"), ("miou", "mIoU"), ("precision", "Precision"), ("recall", "Recall"))
PROTOCOLS = ("lensjax", "original")
HARDEST_IMAGES = 6       # images in the hardest-cases panel
OVERRIDABLE_SECTIONS = ("sim", "data")
IMPORTED_MODEL_FILE = "model.json"


@dataclasses.dataclass
class LoadedRun:
  """A trained network ready for inference."""
  config: cfg.Config
  graphdef: Any
  state: Any                   # (model, optimizer) state of a training run, or the model's for imported weights
  state_sharding: Any
  step: int | None             # None for imported weights
  description: str             # which checkpoint, and why (e.g. 'step 1500, best iou/mean 0.83')
  path: pathlib.Path


def select_step(checkpoints: checkpoint.Checkpoints, which: str) -> tuple[int, str]:
  """The step `which` ('best', 'last' or a step number) names, and a description of the choice."""
  steps = checkpoints.steps
  if not steps:
    raise checkpoint.CheckpointError(f"{checkpoints.directory}: no checkpoints; train the run first")
  if which == "last":
    return steps[-1], f"step {steps[-1]}, the newest checkpoint"
  if which == "best":
    best = checkpoints.best_step()
    metric = checkpoints.options.best_metric
    if best is None:
      return steps[-1], f"step {steps[-1]}, the newest (no checkpoint has a validation {metric})"
    return best, f"step {best}, best validation {metric} = {checkpoints.metrics(best)[metric]:.4f}"
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f"--checkpoint {which!r}: expected best, last or a step number") from None
  if step not in steps:
    raise checkpoint.CheckpointError(f"{checkpoints.directory}: no checkpoint of step {step}; the checkpoints "
                                     f"are of steps {', '.join(map(str, steps))}")
  return step, f"step {step}"


def load_run(run_dir: str | pathlib.Path, which: str = "best", *, config_name: str | None = None,
             overrides: Sequence[str] = (), mesh: jax.sharding.Mesh | None = None) -> LoadedRun:
  """Restores a trained network from a run directory (or imported IS-Net weights), replicated on `mesh`.

  Args:
    run_dir: a `python -m lensjax.train` run directory, or an `import_torch` weights directory.
    which: 'best', 'last' or a step number (run directories only).
    config_name: the config for imported weights (their data and targets); not used for run directories.
    overrides: `--config.sim.*` / `--config.data.*` overrides of the data settings.
    mesh: default `parallel.make_mesh()`.
  """
  run_dir = pathlib.Path(run_dir)
  mesh = mesh or parallel.make_mesh()
  if (run_dir / IMPORTED_MODEL_FILE).is_file():
    if which != "best":
      raise ValueError(f"--checkpoint {which}: {run_dir} holds one set of imported weights; drop --checkpoint")
    return _load_imported(run_dir, config_name, overrides, mesh)
  if not (run_dir / checkpoint.CHECKPOINTS_DIR).is_dir():
    raise checkpoint.CheckpointError(
        f"{run_dir}: neither a run directory (no {checkpoint.CHECKPOINTS_DIR}/) nor imported weights (no "
        f"{IMPORTED_MODEL_FILE})")
  if config_name is not None:
    raise ValueError(f"--config {config_name}: a run directory carries its own config; use --config.data.* "
                     "overrides to change the data")
  # The run's own `checkpoint` section says what 'best' means: from config.json, else the newest checkpoint.
  if (run_dir / run_directory.CONFIG_FILE).is_file():
    config = cfg.config_from_json((run_dir / run_directory.CONFIG_FILE).read_text())
  else:
    with checkpoint.Checkpoints(run_dir / checkpoint.CHECKPOINTS_DIR, cfg.CheckpointConfig(),
                                read_only=True) as probe:
      if probe.latest_step is None:
        raise checkpoint.CheckpointError(f"{run_dir / checkpoint.CHECKPOINTS_DIR}: no checkpoints; train the run "
                                         "first")
      config = cfg.from_dict(cfg.Config, probe.saved_config(probe.latest_step))
  with checkpoint.Checkpoints(run_dir / checkpoint.CHECKPOINTS_DIR, config.checkpoint, read_only=True) as store:
    step, description = select_step(store, which)
    config = cfg.from_dict(cfg.Config, store.saved_config(step))
    cfg.parse_overrides(config, overrides, sections=OVERRIDABLE_SECTIONS)
    replicated = dataclasses.replace(config, train=dataclasses.replace(config.train, fsdp=False))
    target = train_step.create_train_state(replicated, mesh, seed=0, abstract=True)
    restored = store.restore(step, target.state)
  return LoadedRun(config, target.graphdef, restored.state, target.shardings, step,
                   f"{description} ({restored.path})", run_dir)


def _load_imported(weights_dir: pathlib.Path, config_name: str | None, overrides: Sequence[str],
                   mesh: jax.sharding.Mesh) -> LoadedRun:
  if config_name is None:
    raise ValueError(f"{weights_dir} holds imported weights without a training config: pass --config NAME "
                     "(e.g. --config isnet_sim:arcs) for the data and targets to use")
  config = cfg.parse_overrides(cfg.load_module_config(config_name), overrides, sections=OVERRIDABLE_SECTIONS)
  model = import_torch.load_isnet_checkpoint(weights_dir)
  if len(config.data.targets) != model.out_channels:
    raise ValueError(f"{weights_dir}: the network has {model.out_channels} outputs but config {config_name} "
                     f"has {len(config.data.targets)} targets ({', '.join(config.data.targets)}); choose a config "
                     "with as many targets")
  if config.data.input_channels != model.in_channels:
    config.data.input_channels = model.in_channels
  config.model = dataclasses.replace(config.model, name="isnet", width=model.width, depth=model.depth)
  graphdef, state = nnx.split(model)
  sharding = parallel.state_shardings(state, mesh, fsdp=False)
  return LoadedRun(config, graphdef, jax.device_put(state, sharding), sharding, None,
                   f"imported weights {weights_dir}", weights_dir)


# ---------------------------------------------------------------------------------------------------
# Binning.


def binned_iou(per_image: dict[str, np.ndarray], targets: Sequence[str], key: str, num_bins: int
               ) -> dict[str, Any] | None:
  """Per-image IoU averaged in quantile bins of simulation parameter `key`, over the lenses.

  Args:
    per_image: `iou` (N, K) and the simulation parameters (N,), e.g. from `evaluation.evaluate_split`.
    key: the parameter, e.g. 'theta_E'.
    num_bins: bins with (about) equal numbers of lenses; ties can merge bins.
  Returns:
    {"parameter", "bins": [{"low", "high", "images", "iou": {target: mean}}], "non_lenses": {"images", "iou"}},
    or None when the images carry no such parameter or there is no lens.
  """
  if key not in per_image or "is_lens" not in per_image:
    return None
  lens = per_image["is_lens"] > 0.5
  iou = np.asarray(per_image["iou"], np.float64)
  values = np.asarray(per_image[key], np.float64)[lens]
  if not values.size:
    return None

  def means(rows: np.ndarray) -> dict[str, float]:
    return {t: float(np.mean(iou[rows, k])) for k, t in enumerate(targets)}

  edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, num_bins + 1)))
  if edges.size == 1:
    edges = np.array([edges[0], edges[0]])
  which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, edges.size - 2)
  lens_rows = np.flatnonzero(lens)
  bins = []
  for b in range(edges.size - 1):
    rows = lens_rows[which == b]
    if rows.size:
      bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "images": int(rows.size),
                   "iou": means(rows)})
  non_lenses = np.flatnonzero(~lens)
  return {"parameter": key, "bins": bins,
          "non_lenses": {"images": int(non_lenses.size), "iou": means(non_lenses) if non_lenses.size else {}}}


def theta_e_proxy(run: LoadedRun, split: str, chunk: int = 256) -> dict[str, Any] | None:
  """The catalog's arc-light-weighted radius against the simulator's theta_E, over the lenses of `split`.

  Each image is predicted as `python -m lensjax.predict` does and measured by `catalog.measure` at threshold 0.5,
  in arcsec at the simulator's pixel scale. Returns {"lenses", "found" (lenses whose arcs the catalog finds),
  "non_lenses", "non_lenses_found" (non-lenses it finds arcs in), "median_abs_error_arcsec", "theta_E",
  "radius_arcsec" (per found lens)}, or None for data other than simulated, a run without an arcs target, or
  several processes (prediction runs in one).
  """
  from lensjax import predict  # pylint: disable=g-import-not-at-top  (predict imports this module)
  config = run.config
  if config.data.source != "sim" or catalog.ARCS_TARGET not in config.data.targets or jax.process_count() > 1:
    return None
  raw = data.make_raw_source(config, split)
  lenses, non_lenses_found, theta_e, radius = 0, 0, [], []
  for start in range(0, len(raw), chunk):
    examples = raw._getitems(range(start, min(start + chunk, len(raw))))     # Grain's batched read
    images = [predict.InputImage(str(i), raw.describe(start + i), *e["image"].shape[:2], lambda e=e: e["image"])
              for i, e in enumerate(examples)]
    for image, pixels, probabilities in predict.predict_images(run, images, report=lambda _: None):
      example = examples[int(image.name)]
      row = catalog.measure(pixels, probabilities, config.data.targets, threshold=0.5,
                            min_arc_area=predict.Options.min_arc_area, pixel_scale=config.sim.pixel_scale)
      if example["is_lens"] < 0.5:
        non_lenses_found += row["arcs_found"]
        continue
      lenses += 1
      if row["arcs_found"] and row["arc_radius_arcsec"] is not None:
        theta_e.append(float(example["theta_E"]))
        radius.append(row["arc_radius_arcsec"])
  error = float(np.median(np.abs(np.subtract(radius, theta_e)))) if radius else None
  return {"lenses": lenses, "found": len(radius), "non_lenses": len(raw) - lenses,
          "non_lenses_found": non_lenses_found, "median_abs_error_arcsec": error, "theta_E": theta_e,
          "radius_arcsec": radius}


# ---------------------------------------------------------------------------------------------------
# The report.


def original_dataset(config: cfg.Config, target: str) -> str:
  """The dataset column of the original's table that `target` of `config`'s data belongs to."""
  return "chaos" if config.data.source in ("png", "chaos") else target


def original_protocol(config: cfg.Config, result: evaluation.Evaluation) -> list[dict[str, Any]]:
  """The rows of the original's table this run reproduces, each under that row's own definitions.

  IS-Net rows: per-image scores of the min-max normalised map at 0.5, averaged over the test images; for the
  arcs over the lenses only, as the original. MSRF-Net rows: per-image Dice (empty vs empty = 1) and global IoU,
  precision and recall over every image. Each row holds `lensjax`, `original` and `difference` (lensjax minus
  original) dicts of Dice, mIoU, precision and recall, and the number of `images` averaged over; and
  `other_definitions`: the same maps scored under the other network's row of the same dataset (`network`,
  `images`, `lensjax`), so that the two networks can be compared under one definition.
  """
  network, rows = config.model.name, []
  for k, target in enumerate(config.data.targets):
    dataset = original_dataset(config, target)
    if (network, dataset) not in metrics.ORIGINAL_TABLE:
      continue

    def scores_under(definitions: str) -> tuple[int, dict[str, float]]:
      include = None
      if definitions == "isnet" and target == "arcs" and "is_lens" in result.per_image:
        include = result.per_image["is_lens"] > 0.5
      images = int(result.maps["mask"].shape[0] if include is None else np.sum(include))
      return images, metrics.original_row_scores(definitions, result.maps["probabilities"][..., k],
                                                 result.maps["mask"][..., k], include)

    images, scores = scores_under(network)
    other = next(name for name in NETWORK_TITLES if name != network)
    other_images, other_scores = scores_under(other)
    original = metrics.ORIGINAL_TABLE[(network, dataset)]
    rows.append({"network": network, "dataset": dataset, "target": target, "images": images,
                 "lensjax": scores, "original": original,
                 "difference": {name: scores[name] - original[name] for name in original},
                 "other_definitions": {"network": other, "images": other_images, "lensjax": other_scores}})
  if not rows:
    raise ValueError(f"--protocol original: the original's table has no row for model {network!r} with targets "
                     f"{', '.join(config.data.targets)} on {config.data.source} data; its rows are "
                     + ", ".join(f"{n} {d}" for n, d in metrics.ORIGINAL_TABLE))
  return rows


def hardest_cases(result: evaluation.Evaluation, count: int = HARDEST_IMAGES) -> dict[str, np.ndarray]:
  """The `count` images with the lowest mean IoU over targets (lenses only where the split says which are):
  `image` (n, H, W, 1), `mask`, `probabilities` (n, H, W, K) and their split `index` (n,), hardest first."""
  iou = np.mean(result.per_image["iou"], axis=1)
  candidates = np.arange(iou.size)
  if "is_lens" in result.per_image and np.any(result.per_image["is_lens"] > 0.5):
    candidates = candidates[result.per_image["is_lens"] > 0.5]
  rows = candidates[np.argsort(iou[candidates], kind="stable")[:count]]
  maps = result.maps
  return {"image": np.asarray(maps["image"][rows, ..., None], np.float32), "mask": maps["mask"][rows],
          "probabilities": maps["probabilities"][rows], "index": result.per_image["index"][rows]}


def evaluate_run(run: LoadedRun, split: str, *, batch_size: int | None = None, num_bins: int = 4,
                 mesh: jax.sharding.Mesh | None = None, protocol: str = "lensjax", tta: str = "none"
                 ) -> tuple[dict[str, Any], evaluation.Evaluation]:
  """Evaluates `run` on `split`; returns the report (what the JSON file holds) and the evaluation (per-image
  results and the probability maps). `protocol='original'` adds the original's table rows (`original_protocol`);
  `tta` averages each image's probabilities over views (`train_step.predicted_probabilities`)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"--protocol {protocol}: expected one of {', '.join(PROTOCOLS)}")
  if tta not in train_step.TTA_VIEWS:
    raise ValueError(f"--tta {tta}: expected one of {', '.join(train_step.TTA_VIEWS)}")
  config = run.config
  if config.data.source == "fits":
    raise ValueError("data.source='fits' has no masks to evaluate against; use python -m lensjax.predict")
  if num_bins < 1:
    raise ValueError(f"--bins {num_bins}: expected at least 1")
  mesh = mesh or parallel.make_mesh()
  batch_size = batch_size or config.train.eval_batch_size
  if batch_size % jax.device_count():
    raise ValueError(f"--batch-size {batch_size} must be a multiple of the number of devices "
                     f"({jax.device_count()})")
  loader = data.make_loader(config, split, batch_size=batch_size // jax.process_count(), shuffle=False,
                            num_epochs=1, seed=0, with_edge=data.needs_edge(config))
  step = train_step.compile_eval_step(run.graphdef, train_step.make_loss_fn(config), mesh, run.state_sharding,
                                      maps=True, tta=tta)
  result = evaluation.evaluate_split(step, run.state, loader, mesh, config.data.targets)
  bins = {}
  for key, _ in BINNED_PARAMETERS:
    binned = binned_iou(result.per_image, config.data.targets, key, num_bins)
    if binned is not None:
      bins[key] = binned
  report = {"run": str(run.path), "checkpoint": run.description, "step": run.step, "split": split,
            "data": config.data.source, "images": int(result.per_image["iou"].shape[0]), "tta": tta,
            "targets": list(config.data.targets), "metrics": result.metrics, "iou_bins": bins,
            "theta_E_proxy": theta_e_proxy(run, split), "sim": describe_sim(config)}
  if protocol == "original":
    report["original_protocol"] = original_protocol(config, result)
  return report, result


def describe_sim(config: cfg.Config) -> str | None:
  """The simulated scenes in a few words (source model, field, noise), None for data from files."""
  if config.data.source != "sim":
    return None
  sim = config.sim
  field = f"crowded field ({sim.crowd_galaxies_mean:g} extra galaxies)" if sim.crowd_galaxies_mean else "field"
  noise = "pristine" if sim.noise == "none" else (
      f"{sim.noise} noise, {sim.num_exposures} x {sim.exposure_time:g} s, sky {sim.sky_brightness:g} mag/arcsec^2")
  return f"{sim.source_model} sources, {field}, {noise}"


def _row(cells: Sequence[Any]) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


ORIGINAL_DEFINITIONS = {
    "isnet": ("per image, the probability map min-max normalised to [0, 1] and thresholded at 0.5; mIoU and Dice "
              "are per-image IoU and Dice of that mask (smoothing 1e-15) averaged over the images; precision and "
              "recall are means over the images and over 255 thresholds of the normalised map (the original's "
              "IS-Net code computes no Dice: this one uses the same mask)"),
    "msrfnet": ("prediction = probability >= 0.5; Dice per image, an empty prediction of an empty mask scoring 1, "
                "averaged over the images; mIoU one global foreground IoU over every pixel of the split; precision "
                "and recall global"),
}
NETWORK_TITLES = {"isnet": "IS-Net", "msrfnet": "MSRF-Net"}
DATASET_TITLES = {"lens": "lenses", "arcs": "arcs", "chaos": "CHAOS"}


def original_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
  """The `--protocol original` table: per row lensjax's value, the original's and the difference."""
  lines = ["## The original's table, under its own protocol", "",
           _row(["Dataset", "Network", "", *(title for _, title in ORIGINAL_COLUMNS)]),
           _row(["---"] * (3 + len(ORIGINAL_COLUMNS)))]
  for row in rows:
    name = [DATASET_TITLES.get(row["dataset"], row["dataset"]), NETWORK_TITLES.get(row["network"], row["network"])]
    lines.append(_row([*name, "lensjax", *(f"{row['lensjax'][k]:.4f}" for k, _ in ORIGINAL_COLUMNS)]))
    lines.append(_row(["", "", "original", *(f"{row['original'][k]:.4f}" for k, _ in ORIGINAL_COLUMNS)]))
    lines.append(_row(["", "", "difference", *(f"{row['difference'][k]:+.4f}" for k, _ in ORIGINAL_COLUMNS)]))
    other = row["other_definitions"]
    lines.append(_row(["", "", f"lensjax, {NETWORK_TITLES[other['network']]}'s definitions",
                       *(f"{other['lensjax'][k]:.4f}" for k, _ in ORIGINAL_COLUMNS)]))
  lines.append("")
  for row in rows:
    lines.append(f"{DATASET_TITLES.get(row['dataset'], row['dataset'])}, "
                 f"{NETWORK_TITLES.get(row['network'], row['network'])}: over {row['images']} images"
                 + (" (the lenses only, as the original)" if row["network"] == "isnet" and row["target"] == "arcs"
                    else "") + f"; {ORIGINAL_DEFINITIONS[row['network']]}.")
  lines.append("The last line of each row scores the same maps under the other network's row of the same dataset "
               "(over every image, or the lenses only for IS-Net's arcs), to compare the two networks under one "
               "definition.")
  return lines + [""]


def markdown(report: dict[str, Any]) -> str:
  """The report as Markdown: the original's table (`--protocol original`), lensjax's table, the binned IoU."""
  values = report["metrics"]
  lines = [f"# {report['run']}: {report['split']} split ({report['images']} images, {report['data']} data)", "",
           f"Checkpoint: {report['checkpoint']}." + (f" Scenes: {report['sim']}." if report.get("sim") else "")
           + (f" Test-time augmentation: {report['tta']}, the mean of {train_step.TTA_VIEWS[report['tta']]} views."
              if report.get("tta", "none") != "none" else ""), ""]
  if report.get("original_protocol"):
    lines += original_markdown(report["original_protocol"]) + ["## lensjax's metrics", ""]
  lines += [_row(["Target", *(title for _, title in TABLE_COLUMNS)]), _row(["---"] * (1 + len(TABLE_COLUMNS)))]
  for target in [*report["targets"], "mean"]:
    lines.append(_row([target if target != "mean" else "*mean*",
                       *(f"{values[f'{name}/{target}']:.4f}" for name, _ in TABLE_COLUMNS)]))
  lines += ["", "Dice, mean fg/bg IoU (the mean of the foreground and the background IoU), precision, recall and "
            "IoU (foreground) count pixels over the whole split at probability 0.5; per-image min-max IoU is the "
            "original IS-Net rule (each probability map min-max normalised, thresholded at 0.5, IoU per image) "
            "averaged over every image, non-lenses included; max F is the best F-beta (beta^2 = 0.3) over "
            "thresholds; MAE the mean absolute error of the probabilities."]
  labels = dict(BINNED_PARAMETERS)
  for key, binned in report["iou_bins"].items():
    targets = report["targets"]
    lines += ["", f"## Per-image IoU by {labels[key]}, lenses in quantile bins", "",
              _row([labels[key], "images", *(f"IoU {t}" for t in targets)]), _row(["---"] * (2 + len(targets)))]
    for row in binned["bins"]:
      lines.append(_row([f"{row['low']:.3g} – {row['high']:.3g}", row["images"],
                         *(f"{row['iou'][t]:.4f}" for t in targets)]))
    others = binned["non_lenses"]
    if others["images"]:
      lines.append(_row(["non-lenses", others["images"], *(f"{others['iou'][t]:.4f}" for t in targets)]))
  if report["iou_bins"]:
    lines += ["", "A non-lens has no arcs: its arcs IoU is 1 when nothing is predicted and 0 otherwise."]
  proxy = report.get("theta_E_proxy")
  if proxy and proxy["found"]:
    lines += ["", "## Einstein-radius proxy", "",
              f"The arc-light-weighted radius of `python -m lensjax.predict`'s catalog against the true θ_E: median "
              f"absolute error {proxy['median_abs_error_arcsec']:.3f} arcsec over the {proxy['found']} of "
              f"{proxy['lenses']} lenses whose arcs it finds (scatter plot: `*_theta_E.png`); it finds arcs in "
              f"{proxy['non_lenses_found']} of the {proxy['non_lenses']} non-lenses."]
  return "\n".join(lines) + "\n"


def write_figures(report: dict[str, Any], result: evaluation.Evaluation, config: cfg.Config,
                  markdown_path: pathlib.Path) -> None:
  """Beside the Markdown file: `*_hardest.png` (the hardest cases) and, for simulated data, `*_iou.png`
  (per-image IoU against theta_E and arc S/N)."""
  stem, title = markdown_path.with_suffix(""), f"{report['run']}, {report['split']} split"
  hardest = hardest_cases(result)
  plots.plot_predictions(hardest["image"], hardest["mask"], hardest["probabilities"], config.data.targets,
                         stem.with_name(stem.name + "_hardest.png"),
                         title=f"{title}:\nthe {len(hardest['index'])} hardest images (indices "
                               f"{', '.join(map(str, hardest['index']))})")
  shown = [(key, label) for key, label in BINNED_PARAMETERS[:2] if key in result.per_image]
  if shown and "is_lens" in result.per_image and np.any(result.per_image["is_lens"] > 0.5):
    plots.plot_iou_vs_parameters(result.per_image, config.data.targets, shown, stem.with_name(stem.name + "_iou.png"),
                                 title=title)


def output_paths(run_dir: pathlib.Path, report: dict[str, Any], out: str | None) -> tuple[pathlib.Path, pathlib.Path]:
  """(markdown, json) paths: `--out PATH` -> PATH.md, PATH.json; default in the run directory."""
  if out:
    base = pathlib.Path(out)
    if base.suffix in (".md", ".json"):
      base = base.with_suffix("")
  else:
    step = "imported" if report["step"] is None else f"step{report['step']}"
    base = run_dir / f"evaluation_{report['split']}_{step}"
  return base.with_name(base.name + ".md"), base.with_name(base.name + ".json")


def write_report(text: str, report: dict[str, Any], markdown_path: pathlib.Path, json_path: pathlib.Path) -> None:
  """Writes the Markdown table and the JSON report, each through a temporary file renamed into place."""
  markdown_path.parent.mkdir(parents=True, exist_ok=True)
  for path, contents in ((markdown_path, text), (json_path, json.dumps(report, indent=2) + "\n")):
    partial = path.with_name(path.name + ".partial")
    partial.write_text(contents)
    partial.replace(path)


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m lensjax.evaluate", description=__doc__.split("\n\n")[0],
                              epilog="Data overrides: --config.sim.FIELD=VALUE, --config.data.FIELD=VALUE.")
  parser.add_argument("run_dir", help="a run directory written by python -m lensjax.train")
  parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="default: test")
  parser.add_argument("--checkpoint", default="best", help="best (default), last, or a step number")
  parser.add_argument("--out", default=None, help="write PATH.md and PATH.json (default: in RUN_DIR)")
  parser.add_argument("--batch-size", type=int, default=None, help="default: the run's train.eval_batch_size")
  parser.add_argument("--bins", type=int, default=4, help="quantile bins of the binned IoU tables (default 4)")
  parser.add_argument("--config", default=None, help="for imported weights only: the config of the data")
  parser.add_argument("--protocol", default="lensjax", choices=PROTOCOLS,
                      help="original: also the original's table rows under its own definitions, beside its numbers")
  parser.add_argument("--tta", default="none", choices=tuple(train_step.TTA_VIEWS),
                      help="test-time augmentation: score the mean map of each image's mirrors (hflip) or of its 8 "
                           "rotations and mirrors (d4); default none")
  simulate.add_scene_arguments(parser)
  args, overrides = cli.parse(parser, argv)
  parallel.initialize(parallel.options_from_env())
  overrides = [f"--config.sim.{k}={v}" for k, v in simulate.scene_fields(args).items()] + list(overrides)
  run = load_run(args.run_dir, args.checkpoint, config_name=args.config, overrides=overrides)
  report, result = evaluate_run(run, args.split, batch_size=args.batch_size, num_bins=args.bins,
                                protocol=args.protocol, tta=args.tta)
  if parallel.is_main_process():
    # The table first: a run directory that cannot be written to (read-only, full) costs only the files.
    text = markdown(report)
    print(text, flush=True)
    markdown_path, json_path = output_paths(pathlib.Path(args.run_dir), report, args.out)
    try:
      write_report(text, report, markdown_path, json_path)
      write_figures(report, result, run.config, markdown_path)
      if report["theta_E_proxy"] and report["theta_E_proxy"]["found"]:
        plots.plot_theta_e_proxy(report["theta_E_proxy"]["theta_E"], report["theta_E_proxy"]["radius_arcsec"],
                                 markdown_path.with_name(markdown_path.stem + "_theta_E.png"),
                                 title=f"{report['run']}, {report['split']} split")
    except OSError as error:
      parser.exit(2, f"error: cannot write {error.filename or markdown_path} ({error.strerror or error}); the "
                     "results are printed above: pass --out PATH to write PATH.md and PATH.json into a writable "
                     "folder\n")
    print(f"wrote {markdown_path} and {json_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
