"""Figures of a run: learning curves, image / truth / prediction panels, and mask outlines over images.

The training loop (process 0) writes two PNGs into the run directory and rewrites them at each evaluation:

  curves.png        training loss, validation loss (both on log axes: the first steps' loss would flatten
                    the rest), and IoU per target (validation solid, training dashed) against the step,
                    from `metrics.jsonl`
  predictions.png   a fixed set of validation images (the first `train.figure_images` of the split): the
                    network input, then per target the ground truth and the predicted probability, with the
                    image's IoU at the 0.5 threshold

`overlay` draws mask outlines in colour over an image and `plot_contact_sheet` lays out such overlays (both for
`python -m lensjax.predict`); `plot_theta_e_proxy` compares the catalog's Einstein-radius proxy with the
simulator's theta_E (for `python -m lensjax.evaluate`).

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing here changes the process's
matplotlib backend or keeps figures alive between calls.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

CURVES_FILE = "curves.png"
PREDICTIONS_FILE = "predictions.png"
# Outline colours (RGB, 0-255) of the targets, in `data.targets` order; they repeat past the fourth.
TARGET_COLORS = ((255, 140, 0), (0, 200, 255), (255, 0, 200), (120, 255, 0))
_DPI = 100


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """The records of a `metrics.jsonl` (one JSON object per line); [] if the file does not exist yet."""
  path = pathlib.Path(path)
  if not path.is_file():
    return []
  records = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not a JSON object ({error})") from None
  return records


def _series(records: Sequence[dict[str, Any]], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  rows = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
  if not rows:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*rows)
  return np.asarray(steps, float), np.asarray(values, float)


def _save(figure: Figure, path: pathlib.Path) -> pathlib.Path:
  """Writes `figure` to `path` through a temporary file, so a reader never sees half a PNG."""
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.tmp")
  FigureCanvasAgg(figure).print_png(str(temporary))
  os.replace(temporary, path)
  return path


def curves_figure(records: Sequence[dict[str, Any]], targets: Sequence[str], title: str = "") -> Figure:
  """Training loss, validation loss (log axes when every loss is positive) and IoU per target against the step.

  Args:
    records: `metrics.jsonl` records: dicts with `step`, `split` ('train' or 'val'), `loss`, `iou/<target>`.
    targets: the target names, for the IoU panel.
    title: a line above the panels (e.g. the run directory).
  """
  figure = Figure(figsize=(15, 4.2), dpi=_DPI, layout="constrained")
  train_loss, val_loss, iou = figure.subplots(1, 3)
  for axes, split, name in ((train_loss, "train", "training loss"), (val_loss, "val", "validation loss")):
    steps, values = _series(records, split, "loss")
    axes.plot(steps, values, color="tab:orange", marker="o" if len(steps) < 30 else None, markersize=3)
    axes.set_title(name)
    axes.set_xlabel("step")
    if len(values) and values.min() > 0:
      axes.set_yscale("log")
  for number, target in enumerate(targets):
    color = np.asarray(TARGET_COLORS[number % len(TARGET_COLORS)]) / 255
    steps, values = _series(records, "val", f"iou/{target}")
    iou.plot(steps, values, color=color, marker="o", markersize=3, label=f"{target} (validation)")
    steps, values = _series(records, "train", f"iou/{target}")
    iou.plot(steps, values, color=color, linestyle="--", linewidth=0.8, alpha=0.7, label=f"{target} (training)")
  iou.set_title("IoU at threshold 0.5")
  iou.set_xlabel("step")
  iou.set_ylim(-0.02, 1.02)
  iou.legend(fontsize="small", loc="lower right")
  for axes in (train_loss, val_loss, iou):
    axes.grid(alpha=0.3)
  if title:
    figure.suptitle(title)
  return figure


def plot_curves(records: Sequence[dict[str, Any]], targets: Sequence[str], path: str | pathlib.Path,
                title: str = "") -> pathlib.Path:
  """`curves_figure` written as a PNG at `path`."""
  return _save(curves_figure(records, targets, title), pathlib.Path(path))


def display_image(image: np.ndarray) -> np.ndarray:
  """(H, W, C) network input -> (H, W) grey in [0, 1] for display: channel mean, stretched per image."""
  grey = np.asarray(image, np.float32).mean(axis=-1)
  low, high = np.percentile(grey, [0.5, 99.5])
  if high <= low:
    return np.zeros_like(grey)
  return np.clip((grey - low) / (high - low), 0.0, 1.0)


def _iou(prediction: np.ndarray, truth: np.ndarray) -> float:
  union = np.logical_or(prediction, truth).sum()
  return float(np.logical_and(prediction, truth).sum() / union) if union else 1.0


def plot_predictions(images: np.ndarray, masks: np.ndarray, probabilities: np.ndarray, targets: Sequence[str],
                     path: str | pathlib.Path, title: str = "") -> pathlib.Path:
  """One row per image: the input, then per target its ground truth and predicted probability.

  Args:
    images: (N, H, W, C) network inputs.
    masks: (N, H, W, K) ground truth in {0, 1}.
    probabilities: (N, H, W, K) predicted probabilities in [0, 1].
    targets: the K target names.
    path: where to write the PNG.
    title: a line above the panels (e.g. the step).
  """
  images, masks, probabilities = (np.asarray(a) for a in (images, masks, probabilities))
  count, num_targets = probabilities.shape[0], probabilities.shape[-1]
  if not (images.shape[0] == masks.shape[0] == count and masks.shape[-1] == num_targets == len(targets)):
    raise ValueError(f"plot_predictions: images {images.shape}, masks {masks.shape} and probabilities "
                     f"{probabilities.shape} do not describe the same {len(targets)} targets of the same images")
  columns = 1 + 2 * num_targets
  figure = Figure(figsize=(2.2 * columns, 2.3 * count + (0.4 if title else 0)), dpi=_DPI, layout="constrained")
  grid = figure.subplots(count, columns, squeeze=False)
  for row in range(count):
    grid[row, 0].imshow(display_image(images[row]), cmap="gray", vmin=0, vmax=1)
    grid[row, 0].set_title("image", fontsize="small")
    for k, target in enumerate(targets):
      truth = masks[row, ..., k] >= 0.5
      grid[row, 1 + 2 * k].imshow(truth, cmap="gray", vmin=0, vmax=1)
      grid[row, 1 + 2 * k].set_title(f"{target}: truth", fontsize="small")
      grid[row, 2 + 2 * k].imshow(probabilities[row, ..., k], cmap="gray", vmin=0, vmax=1)
      iou = _iou(probabilities[row, ..., k] >= 0.5, truth)
      grid[row, 2 + 2 * k].set_title(f"{target}: prediction, IoU {iou:.2f}", fontsize="small")
  for axes in grid.ravel():
    axes.set_xticks([])
    axes.set_yticks([])
  if title:
    figure.suptitle(title)
  return _save(figure, pathlib.Path(path))


def outline(mask: np.ndarray) -> np.ndarray:
  """The boundary pixels of (H, W) boolean `mask`: inside the mask, next to a pixel outside it (8-neighbours)."""
  mask = np.asarray(mask, bool)
  eroded = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                     borderValue=0).astype(bool)
  return mask & ~eroded


def overlay(image: np.ndarray, masks: np.ndarray, min_size: int = 256) -> np.ndarray:
  """The image in grey with each mask's outline in its target colour, as (H', W', 3) uint8 RGB.

  Args:
    image: (H, W) or (H, W, C) image in any units (stretched for display as `display_image` does).
    masks: (H, W, K) masks, true where the target is.
    min_size: small images are enlarged by an integer factor (nearest neighbour) until their shorter side
      reaches this many pixels, so that 1-pixel outlines stay visible; 0 keeps the size.
  """
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  masks = np.asarray(masks, bool)
  if masks.shape[:2] != image.shape[:2]:
    raise ValueError(f"overlay: masks {masks.shape} do not match the image {image.shape}")
  scale = max(1, math.ceil(min_size / min(image.shape[:2]))) if min_size else 1
  grey = np.repeat(np.repeat(display_image(image), scale, axis=0), scale, axis=1)
  rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
  for k in range(masks.shape[-1]):
    enlarged = np.repeat(np.repeat(masks[..., k], scale, axis=0), scale, axis=1)
    rgb[outline(enlarged)] = TARGET_COLORS[k % len(TARGET_COLORS)]
  return rgb


def plot_contact_sheet(rows: dict[str, Sequence[tuple[pathlib.Path, str]]], path: str | pathlib.Path,
                       title: str = "") -> pathlib.Path:
  """A grid of PNG images (e.g. `overlay`s written by predict): one row per entry of `rows`, labelled by its key.

  Args:
    rows: row label -> [(PNG file, caption)], in display order.
    path: where to write the PNG.
  """
  columns = max(len(panels) for panels in rows.values())
  figure = Figure(figsize=(2.4 * columns, 2.7 * len(rows) + (0.4 if title else 0)), dpi=_DPI, layout="constrained")
  grid = figure.subplots(len(rows), columns, squeeze=False)
  for number, (label, panels) in enumerate(rows.items()):
    for column, axes in enumerate(grid[number]):
      axes.set_xticks([])
      axes.set_yticks([])
      if column < len(panels):
        file, caption = panels[column]
        with Image.open(file) as image:
          axes.imshow(np.asarray(image.convert("RGB")))
        axes.set_title(caption, fontsize="small")
      else:
        axes.set_axis_off()
    grid[number, 0].set_ylabel(label)
  if title:
    figure.suptitle(title)
  return _save(figure, pathlib.Path(path))


def plot_theta_e_proxy(theta_e: np.ndarray, proxy: np.ndarray, path: str | pathlib.Path,
                       title: str = "") -> pathlib.Path:
  """Scatter of an Einstein-radius estimate against the true theta_E (both (N,) arcsec), with the 1:1 line
  and the median absolute error in the legend."""
  theta_e, proxy = np.asarray(theta_e, float), np.asarray(proxy, float)
  figure = Figure(figsize=(5, 5), dpi=_DPI, layout="constrained")
  axes = figure.subplots()
  error = np.median(np.abs(proxy - theta_e)) if theta_e.size else float("nan")
  axes.scatter(theta_e, proxy, s=10, alpha=0.6, label=f"{theta_e.size} lenses, median |error| {error:.3f}\"")
  high = max(float(np.nanmax(np.concatenate([theta_e, proxy]))) if theta_e.size else 1.0, 0.1) * 1.05
  axes.plot([0, high], [0, high], color="grey", linewidth=0.8, label="1:1")
  axes.set_xlim(0, high)
  axes.set_ylim(0, high)
  axes.set_xlabel("true θ_E (arcsec)")
  axes.set_ylabel("arc-light-weighted radius (arcsec)")
  axes.legend(loc="upper left", fontsize="small")
  axes.grid(alpha=0.3)
  if title:
    axes.set_title(title, fontsize="small")
  return _save(figure, pathlib.Path(path))


__all__ = ["CURVES_FILE", "PREDICTIONS_FILE", "TARGET_COLORS", "curves_figure", "display_image", "outline",
           "overlay", "plot_contact_sheet", "plot_curves", "plot_predictions", "plot_theta_e_proxy", "read_metrics"]


def plot_iou_vs_parameters(per_image: dict[str, np.ndarray], targets: Sequence[str],
                           parameters: Sequence[tuple[str, str]], path: str | pathlib.Path, title: str = "",
                           num_bins: int = 8) -> pathlib.Path:
  """Per-image IoU of the lenses against simulation parameters: one panel per parameter, a dot per lens and
  target, and the mean in `num_bins` quantile bins as a line.

  Args:
    per_image: `iou` (N, K), `is_lens` (N,) and each parameter (N,), as `evaluation.evaluate_split` returns.
    parameters: (key, axis label) pairs, e.g. ('theta_E', 'θ_E (arcsec)'); a key named `*snr*` or `*flux*` gets a
      logarithmic axis.
  """
  lens = np.asarray(per_image["is_lens"]) > 0.5
  iou = np.asarray(per_image["iou"], np.float64)[lens]
  figure = Figure(figsize=(4.2 * len(parameters), 3.4 + (0.3 if title else 0)), dpi=_DPI, layout="constrained")
  grid = figure.subplots(1, len(parameters), squeeze=False)[0]
  for axes, (key, label) in zip(grid, parameters):
    values = np.asarray(per_image[key], np.float64)[lens]
    logarithmic = ("snr" in key or "flux" in key) and values.size and np.all(values > 0)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, num_bins + 1))) if values.size else np.zeros(1)
    for k, target in enumerate(targets):
      color = np.asarray(TARGET_COLORS[k % len(TARGET_COLORS)]) / 255
      axes.scatter(values, iou[:, k], s=4, alpha=0.3, color=color, linewidths=0)
      which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(edges.size - 2, 0))
      centres = [np.median(values[which == b]) for b in range(edges.size - 1) if np.any(which == b)]
      means = [np.mean(iou[which == b, k]) for b in range(edges.size - 1) if np.any(which == b)]
      axes.plot(centres, means, "-o", color=color, markersize=3, label=f"{target}: mean per bin")
    if logarithmic:
      axes.set_xscale("log")
    axes.set_xlabel(label)
    axes.set_ylabel("per-image IoU")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize="small", loc="lower right")
  if title:
    figure.suptitle(title)
  return _save(figure, pathlib.Path(path))
