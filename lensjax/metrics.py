"""Segmentation metrics from confusion counts, summed exactly over batches, devices and processes.

`batch_sums` turns one batch of logits and masks into additive sums per target (pixel confusion counts, absolute
errors, probability histograms, the original's per-image IoU). Inside `jax.jit` on a batch sharded over devices the
sums are global (XLA reduces across devices and processes). `accumulate` adds them on the host in float64/int64,
and `summarize` turns the totals into ratios once, so every metric is over all pixels of the whole split rather
than a mean of per-batch ratios.

Definitions, per target (prediction = sigmoid(logit) >= 0.5, truth = mask >= 0.5):
  dice = 2TP / (2TP + FP + FN)            iou = TP / (TP + FP + FN)
  miou = (iou + TN / (TN + FN + FP)) / 2  (mean over foreground and background)
  precision = TP / (TP + FP)              recall = TP / (TP + FN)
  mae = mean |sigmoid(logit) - mask|      maxf = max over 256 thresholds of 1.3·P·R / (0.3·P + R)
A ratio 0/0 (nothing predicted and nothing to find) counts as 1.
`orig_miou` is the original project's "mIOU" (docs/networks.md): per image, min-max normalise the
probabilities, threshold at 0.5, IoU with 1e-15 smoothing (empty vs empty = 1), mean over images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NUM_BINS = 256          # probability histogram bins for max-F
F_BETA_SQUARED = 0.3    # the DIS/U²-Net convention


def batch_sums(logits: jax.Array, mask: jax.Array, valid: jax.Array | None = None) -> dict[str, jax.Array]:
  """Additive sums for one batch.

  Args:
    logits: (B, H, W, K) prediction logits.
    mask: (B, H, W, K) targets in [0, 1].
    valid: (B,) 1 for real examples and 0 for padding rows (None: all real).
  Returns:
    dict of arrays: `tp`, `fp`, `fn`, `tn`, `abs_error`, `pixels`, `orig_iou` (K,); `pos_hist`, `neg_hist` (K, 256);
    `images` () the number of valid images.
  """
  logits = logits.astype(jnp.float32)
  batch, height, width, num_targets = logits.shape
  weight = jnp.ones((batch,), jnp.float32) if valid is None else valid.astype(jnp.float32)
  pixel_weight = weight[:, None, None, None]
  probs = jax.nn.sigmoid(logits)
  pred = (logits >= 0).astype(jnp.float32)
  truth = (mask >= 0.5).astype(jnp.float32)

  def count(x):
    return jnp.sum(x * pixel_weight, axis=(0, 1, 2))

  bins = jnp.clip(jnp.floor(probs * NUM_BINS), 0, NUM_BINS - 1).astype(jnp.int32)

  def histogram(selected):   # (B, H, W, K) weights -> (K, NUM_BINS)
    per_target = lambda b, w: jnp.bincount(b.ravel(), weights=w.ravel(), length=NUM_BINS)
    return jax.vmap(per_target, in_axes=(3, 3))(bins, selected * pixel_weight)

  # The original per-image mIoU: min-max normalised probabilities; a constant map normalises to NaN -> empty.
  lo = jnp.min(probs, axis=(1, 2), keepdims=True)
  hi = jnp.max(probs, axis=(1, 2), keepdims=True)
  normalised = (probs - lo) / (hi - lo)
  orig_pred = (normalised >= 0.5).astype(jnp.float32)
  inter = jnp.sum(orig_pred * truth, axis=(1, 2))
  union = jnp.sum(orig_pred, axis=(1, 2)) + jnp.sum(truth, axis=(1, 2)) - inter
  orig_iou = (inter + 1e-15) / (union + 1e-15)             # (B, K)

  return {
      "tp": count(pred * truth),
      "fp": count(pred * (1 - truth)),
      "fn": count((1 - pred) * truth),
      "tn": count((1 - pred) * (1 - truth)),
      "abs_error": count(jnp.abs(probs - mask.astype(jnp.float32))),
      "pixels": jnp.sum(weight) * height * width * jnp.ones((num_targets,), jnp.float32),
      "pos_hist": histogram(truth),
      "neg_hist": histogram(1 - truth),
      "orig_iou": jnp.sum(orig_iou * weight[:, None], axis=0),
      "images": jnp.sum(weight),
  }


def per_image_iou(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """IoU of each image and target at the 0.5 threshold, (B, H, W, K) -> (B, K); empty vs empty = 1."""
  pred = logits >= 0
  truth = mask >= 0.5
  inter = jnp.sum(pred & truth, axis=(1, 2))
  union = jnp.sum(pred | truth, axis=(1, 2))
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)


def accumulate(totals: dict[str, np.ndarray] | None, sums: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """Adds one batch's `sums` (device arrays) into host `totals` in float64."""
  host = {k: np.asarray(jax.device_get(v), np.float64) for k, v in sums.items()}
  if totals is None:
    return host
  return {k: totals[k] + host[k] for k in totals}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def summarize(totals: Mapping[str, np.ndarray], targets: Sequence[str]) -> dict[str, float]:
  """Metric values from accumulated totals: `'{metric}/{target}'` for each target and `'{metric}/mean'`."""
  tp, fp, fn, tn = (np.asarray(totals[k]) for k in ("tp", "fp", "fn", "tn"))
  iou = _ratio(tp, tp + fp + fn)
  per_metric = {
      "dice": _ratio(2 * tp, 2 * tp + fp + fn),
      "iou": iou,
      "miou": 0.5 * (iou + _ratio(tn, tn + fn + fp)),
      "precision": _ratio(tp, tp + fp),
      "recall": _ratio(tp, tp + fn),
      "mae": _ratio(np.asarray(totals["abs_error"]), np.asarray(totals["pixels"])),
      "maxf": max_f(totals["pos_hist"], totals["neg_hist"]),
      "orig_miou": _ratio(np.asarray(totals["orig_iou"]), np.full_like(tp, float(totals["images"]))),
  }
  if len(targets) != tp.shape[0]:
    raise ValueError(f"{len(targets)} target names for {tp.shape[0]} targets")
  summary = {}
  for name, values in per_metric.items():
    for target, value in zip(targets, values):
      summary[f"{name}/{target}"] = float(value)
    summary[f"{name}/mean"] = float(np.mean(values))
  return summary


def max_f(pos_hist: np.ndarray, neg_hist: np.ndarray) -> np.ndarray:
  """Max over thresholds of F_beta (beta² = 0.3) from (K, NUM_BINS) histograms of positive/negative pixels."""
  tp = np.cumsum(pos_hist[:, ::-1], axis=1)     # predicted positive: probability bin >= threshold bin
  fp = np.cumsum(neg_hist[:, ::-1], axis=1)
  positives = np.sum(pos_hist, axis=1, keepdims=True)
  precision = _ratio(tp, tp + fp)
  recall = _ratio(tp, np.broadcast_to(positives, tp.shape))
  den = F_BETA_SQUARED * precision + recall
  f = np.where(den > 0, (1 + F_BETA_SQUARED) * precision * recall / np.where(den > 0, den, 1), 0.0)
  return np.max(f, axis=1)


# The original project's own definitions, one set per row of its results table; they differ from the ones
# above (per-image vs global, smoothing, min-max normalisation, thresholds). Inputs: probabilities (N, H, W)
# in [0, 1] and masks (N, H, W), a pixel being foreground where mask >= 0.5; plain numpy, for a split gathered
# on the host.
ORIGINAL_IOU_SMOOTHING = 1e-15       # added to intersection and union (empty vs empty scores 1)
ORIGINAL_PR_THRESHOLDS = 255         # IS-Net precision/recall: thresholds 0, 1, ..., 254 on the 0-255 scale
ORIGINAL_PR_SMOOTHING = 1e-4         # IS-Net precision/recall denominators
ORIGINAL_F_SMOOTHING = 1e-8          # IS-Net F-measure of the mean precision and recall


def _min_max_normalised(probabilities: np.ndarray) -> np.ndarray:
  """Per image (p - min) / (max - min) in float32; a constant map gives NaN (no pixel passes any threshold)."""
  probabilities = np.asarray(probabilities, np.float32)
  low = probabilities.min(axis=(1, 2), keepdims=True)
  high = probabilities.max(axis=(1, 2), keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (probabilities - low) / (high - low)


def _min_max_overlaps(probabilities: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per image (intersection, predicted pixels, mask pixels), (N,) float64 each, of the min-max normalised map
  thresholded at 0.5 against the mask."""
  predicted = _min_max_normalised(probabilities) >= 0.5
  truth = np.asarray(masks) >= 0.5
  return (np.sum(predicted & truth, axis=(1, 2), dtype=np.float64), np.sum(predicted, axis=(1, 2), dtype=np.float64),
          np.sum(truth, axis=(1, 2), dtype=np.float64))


def _mean_over(values: np.ndarray, include: np.ndarray | None) -> float:
  selected = values if include is None else values[np.asarray(include, bool)]
  return float(np.mean(selected)) if selected.size else float("nan")


def original_isnet_miou(probabilities: np.ndarray, masks: np.ndarray, include: np.ndarray | None = None) -> float:
  """The IS-Net row's "mIoU": per image, IoU of (min-max normalised map >= 0.5) with the mask, averaged.

  IoU = (intersection + 1e-15) / (union + 1e-15), so an empty mask scores ~0 against any non-constant map and 1
  against a constant one. `include` (N,) bool selects the images averaged over: the original's arcs row
  averaged over lenses only. Returns NaN when no image is selected.
  """
  intersection, predicted, truth = _min_max_overlaps(probabilities, masks)
  union = predicted + truth - intersection
  return _mean_over((intersection + ORIGINAL_IOU_SMOOTHING) / (union + ORIGINAL_IOU_SMOOTHING), include)


def original_isnet_dice(probabilities: np.ndarray, masks: np.ndarray, include: np.ndarray | None = None) -> float:
  """A Dice for the IS-Net row, whose code computes none: per image 2|P & T| / (|P| + |T|) of the same
  binarisation as `original_isnet_miou` (min-max normalised map >= 0.5), with the same 1e-15 smoothing, averaged
  over the `include`d images (NaN when none)."""
  intersection, predicted, truth = _min_max_overlaps(probabilities, masks)
  return _mean_over((2 * intersection + ORIGINAL_IOU_SMOOTHING) / (predicted + truth + ORIGINAL_IOU_SMOOTHING),
                    include)


def original_isnet_precision_recall(probabilities: np.ndarray, masks: np.ndarray) -> dict[str, float]:
  """The IS-Net row's precision and recall: means over images and over 255 thresholds; and max F.

  Per image, the min-max normalised map times 255 is binned into 255 unit bins (255 joins the top bin); at
  each threshold bin b (254 down to 0), precision = TP / (TP + FP + 1e-4) and recall = TP / (P + 1e-4) over
  pixels in bins >= b. The per-threshold curves are averaged over images; `precision` and `recall` are then
  the means over thresholds, and `max_f` the maximum over thresholds of 1.3 P R / (0.3 P + R + 1e-8).
  """
  scaled = _min_max_normalised(probabilities) * np.float32(255)
  truth = np.asarray(masks) >= 0.5
  counted = ~np.isnan(scaled)
  bins = np.minimum(np.floor(np.where(counted, scaled, 0)), ORIGINAL_PR_THRESHOLDS - 1).astype(np.int64)
  precision, recall = [], []
  for image_bins, image_truth, image_counted in zip(bins, truth, counted):
    positive = np.bincount(image_bins[image_truth & image_counted], minlength=ORIGINAL_PR_THRESHOLDS)
    negative = np.bincount(image_bins[~image_truth & image_counted], minlength=ORIGINAL_PR_THRESHOLDS)
    true_positives = np.cumsum(positive[::-1])       # pixels in bins >= b, b = 254 ... 0
    false_positives = np.cumsum(negative[::-1])
    precision.append(true_positives / (true_positives + false_positives + ORIGINAL_PR_SMOOTHING))
    recall.append(true_positives / (image_truth.sum() + ORIGINAL_PR_SMOOTHING))
  mean_precision, mean_recall = np.mean(precision, axis=0), np.mean(recall, axis=0)
  f_measure = ((1 + F_BETA_SQUARED) * mean_precision * mean_recall
               / (F_BETA_SQUARED * mean_precision + mean_recall + ORIGINAL_F_SMOOTHING))
  return dict(precision=float(mean_precision.mean()), recall=float(mean_recall.mean()), max_f=float(f_measure.max()))


def original_msrfnet_scores(probabilities: np.ndarray, masks: np.ndarray) -> dict[str, float]:
  """The MSRF-Net row: prediction = probability >= 0.5, then
    dice       per-image 2 |P & T| / (|P| + |T|), where an empty prediction of an empty mask scores 1, averaged;
    iou        one global (intersection + 1e-15) / (union + 1e-15) over every pixel of the split;
    precision, recall   global TP / (TP + FP) and TP / (TP + FN) (NaN where the denominator is 0, as there).
  """
  predicted = np.asarray(probabilities) >= 0.5
  truth = np.asarray(masks) >= 0.5
  intersection = np.sum(predicted & truth, axis=(1, 2), dtype=np.float64)
  sizes = np.sum(predicted, axis=(1, 2), dtype=np.float64) + np.sum(truth, axis=(1, 2), dtype=np.float64)
  dice = np.where(sizes > 0, 2 * intersection / np.where(sizes > 0, sizes, 1), 1.0)
  true_positives = intersection.sum()
  union = sizes.sum() - true_positives
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = true_positives / np.float64(predicted.sum())
    recall = true_positives / np.float64(truth.sum())
  return dict(dice=float(dice.mean()),
              iou=float((true_positives + ORIGINAL_IOU_SMOOTHING) / (union + ORIGINAL_IOU_SMOOTHING)),
              precision=float(precision), recall=float(recall))


# The original project's results table (docs/results.md): (network, dataset) -> its Dice, mIoU, precision and
# recall, each under that row's own definitions.
ORIGINAL_TABLE = {
    ("msrfnet", "chaos"): dict(dice=0.9493, miou=0.9232, precision=0.9660, recall=0.9542),
    ("isnet", "chaos"): dict(dice=0.9633, miou=0.9486, precision=0.9826, recall=0.9712),
    ("msrfnet", "lens"): dict(dice=0.1346, miou=0.0947, precision=0.1335, recall=0.2457),
    ("isnet", "lens"): dict(dice=0.9813, miou=0.9859, precision=0.9867, recall=0.9913),
    ("msrfnet", "arcs"): dict(dice=0.5233, miou=0.1845, precision=0.3676, recall=0.2702),
    ("isnet", "arcs"): dict(dice=0.9602, miou=0.9547, precision=0.9642, recall=0.9704),
}


def original_row_scores(network: str, probabilities: np.ndarray, masks: np.ndarray,
                        include: np.ndarray | None = None) -> dict[str, float]:
  """Dice, mIoU, precision and recall of one row of the original's table, under that row's definitions.

  network: 'isnet' (`original_isnet_dice`, `original_isnet_miou`, `original_isnet_precision_recall`, over the
  `include`d images: the arcs row's lenses) or 'msrfnet' (`original_msrfnet_scores`, over every image, as the
  original did). probabilities, masks: (N, H, W) of one target.
  """
  if network == "msrfnet":
    scores = original_msrfnet_scores(probabilities, masks)
    return dict(dice=scores["dice"], miou=scores["iou"], precision=scores["precision"], recall=scores["recall"])
  if include is not None:
    include = np.asarray(include, bool)
    probabilities, masks = np.asarray(probabilities)[include], np.asarray(masks)[include]
  curves = original_isnet_precision_recall(probabilities, masks)
  return dict(dice=original_isnet_dice(probabilities, masks), miou=original_isnet_miou(probabilities, masks),
              precision=curves["precision"], recall=curves["recall"])
