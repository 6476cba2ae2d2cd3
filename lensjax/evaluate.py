"""`python -m lensjax.evaluate RUN_DIR`: a trained run's metrics on a split, as a Markdown table and as JSON.

  python -m lensjax.evaluate runs/default                           # test split, best checkpoint
  python -m lensjax.evaluate runs/default --split val --checkpoint last
  python -m lensjax.evaluate runs/default --checkpoint 1000 --out results/default_1000
  python -m lensjax.evaluate runs/default --config.sim.noise=gaussian      # the same model on noisy images
  python -m lensjax.evaluate weights/isnet --config isnet_sim:arcs         # imported IS-Net weights

The table has the layout of the original project's results table: one row per target, columns Dice, mIoU,
precision and recall, with lensjax's definitions (confusion counts summed over every pixel of the split;
`lensjax.metrics`) and the original's per-image mIoU beside them, then IoU, max F and MAE. For simulated data
it adds where the model fails: the per-image IoU averaged in quantile bins of the Einstein radius theta_E
(arcsec), of the arcs' matched-filter signal-to-noise arc_snr and of their flux arc_flux (counts), over the
lenses, with the non-lenses (no arcs) in a row of their own, and how well the catalog's Einstein-radius proxy
(`python -m lensjax.predict`'s arc-light-weighted radius, `lensjax.catalog`) follows the true theta_E: the
median absolute error in arcsec over the lenses whose arcs it finds, and a scatter plot.

Files: `<RUN_DIR>/evaluation_<split>_step<N>.md` and `.json` (or `--out PATH` -> PATH.md, PATH.json), and for
simulated data the theta_E scatter plot beside them (`..._theta_E.png`). The table is printed before they are
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

from lensjax import catalog, checkpoint, cli, data, evaluation, parallel, plots, run_directory, train_step
from lensjax import config as cfg
from lensjax.models import import_torch

# Per-image simulation parameters IoU is binned by: (key, label with units).
BINNED_PARAMETERS = (("theta_E", "θ_E (arcsec)"), ("arc_snr", "arc S/N"), ("arc_flux", "arc flux (counts)"))
# The table's columns: (metric prefix in `lensjax.metrics.summarize`, column title).
TABLE_COLUMNS = (("dice", "Dice"), ("miou", "mIoU"), ("orig_miou", "mIoU (original, per image)"),
                 ("precision", "Precision"), ("recall", "Recall"), ("iou", "IoU"), ("maxf", "max F"),
                 ("mae", "MAE"))
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


def evaluate_run(run: LoadedRun, split: str, *, batch_size: int | None = None, num_bins: int = 4,
                 mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Evaluates `run` on `split`; returns the report (what the JSON file holds)."""
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
  step = train_step.compile_eval_step(run.graphdef, train_step.make_loss_fn(config), mesh, run.state_sharding)
  result = evaluation.evaluate_split(step, run.state, loader, mesh, config.data.targets)
  bins = {}
  for key, _ in BINNED_PARAMETERS:
    binned = binned_iou(result.per_image, config.data.targets, key, num_bins)
    if binned is not None:
      bins[key] = binned
  return {"run": str(run.path), "checkpoint": run.description, "step": run.step, "split": split,
          "data": config.data.source, "images": int(result.per_image["iou"].shape[0]),
          "targets": list(config.data.targets), "metrics": result.metrics, "iou_bins": bins,
          "theta_E_proxy": theta_e_proxy(run, split)}


def _row(cells: Sequence[Any]) -> str:
  return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(report: dict[str, Any]) -> str:
  """The report as Markdown: the results table, then the binned IoU tables."""
  metrics = report["metrics"]
  lines = [f"# {report['run']}: {report['split']} split ({report['images']} images, {report['data']} data)", "",
           f"Checkpoint: {report['checkpoint']}.", "",
           _row(["Target", *(title for _, title in TABLE_COLUMNS)]), _row(["---"] * (1 + len(TABLE_COLUMNS)))]
  for target in [*report["targets"], "mean"]:
    lines.append(_row([target if target != "mean" else "*mean*",
                       *(f"{metrics[f'{name}/{target}']:.4f}" for name, _ in TABLE_COLUMNS)]))
  lines += ["", "Dice, mIoU (mean of foreground and background IoU), precision, recall and IoU count pixels over "
            "the whole split at probability 0.5; the original's mIoU is its per-image IoU after min-max "
            "normalising each probability map, averaged over images; max F is the best F-beta (beta^2 = 0.3) "
            "over thresholds; MAE the mean absolute error of the probabilities."]
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
  args, overrides = cli.parse(parser, argv)
  parallel.initialize(parallel.options_from_env())
  run = load_run(args.run_dir, args.checkpoint, config_name=args.config, overrides=overrides)
  report = evaluate_run(run, args.split, batch_size=args.batch_size, num_bins=args.bins)
  if parallel.is_main_process():
    # The table first: a run directory that cannot be written to (read-only, full) costs only the files.
    text = markdown(report)
    print(text, flush=True)
    markdown_path, json_path = output_paths(pathlib.Path(args.run_dir), report, args.out)
    try:
      write_report(text, report, markdown_path, json_path)
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
