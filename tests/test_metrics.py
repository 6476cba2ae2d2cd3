"""Metrics against a direct numpy computation, including empty masks and padding rows."""

import jax
import numpy as np
import pytest

from lensjax import metrics

TARGETS = ("lens", "arcs")


def direct_metrics(logits, mask):
  """Straight-from-the-definition numpy metrics over all pixels; logits/mask (N, H, W, K)."""
  probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
  pred, truth = logits >= 0, mask >= 0.5
  out = {}
  for k, name in enumerate(TARGETS):
    p, t = pred[..., k], truth[..., k]
    tp, fp, fn, tn = (np.sum(p & t), np.sum(p & ~t), np.sum(~p & t), np.sum(~p & ~t))
    div = lambda a, b: a / b if b else 1.0
    out[f"iou/{name}"] = div(tp, tp + fp + fn)
    out[f"dice/{name}"] = div(2 * tp, 2 * tp + fp + fn)
    out[f"miou/{name}"] = (div(tp, tp + fp + fn) + div(tn, tn + fn + fp)) / 2
    out[f"precision/{name}"] = div(tp, tp + fp)
    out[f"recall/{name}"] = div(tp, tp + fn)
    out[f"mae/{name}"] = np.mean(np.abs(probs[..., k] - mask[..., k]))
    best = 0.0
    for threshold in range(metrics.NUM_BINS):
      sel = np.floor(probs[..., k] * metrics.NUM_BINS).clip(0, metrics.NUM_BINS - 1) >= threshold
      tp_t, fp_t = np.sum(sel & t), np.sum(sel & ~t)
      prec, rec = div(tp_t, tp_t + fp_t), div(tp_t, np.sum(t))
      if 0.3 * prec + rec > 0:
        best = max(best, 1.3 * prec * rec / (0.3 * prec + rec))
    out[f"maxf/{name}"] = best
    ious = []
    for i in range(len(logits)):
      pr = probs[i, ..., k]
      with np.errstate(invalid="ignore", divide="ignore"):
        norm = (pr - pr.min()) / (pr.max() - pr.min())
      yp, yt = norm >= 0.5, t[i]
      inter = np.sum(yp & yt)
      ious.append((inter + 1e-15) / (np.sum(yp) + np.sum(yt) - inter + 1e-15))
    out[f"orig_miou/{name}"] = np.mean(ious)
  return out


def run_batches(logits, mask, batch_size, pad_last=True):
  totals = None
  sums_fn = jax.jit(metrics.batch_sums)
  for start in range(0, len(logits), batch_size):
    lg, mk = logits[start:start + batch_size], mask[start:start + batch_size]
    valid = np.ones(len(lg), np.float32)
    if pad_last and len(lg) < batch_size:        # padding rows full of garbage, flagged invalid
      extra = batch_size - len(lg)
      lg = np.concatenate([lg, np.full((extra,) + lg.shape[1:], 5.0, np.float32)])
      mk = np.concatenate([mk, np.zeros((extra,) + mk.shape[1:], np.float32)])
      valid = np.concatenate([valid, np.zeros(extra, np.float32)])
    totals = metrics.accumulate(totals, sums_fn(lg, mk, valid))
  return metrics.summarize(totals, TARGETS)


def test_metrics_match_numpy_over_batches_with_padding():
  rng = np.random.default_rng(0)
  mask = (rng.random((7, 12, 10, 2)) < 0.3).astype(np.float32)
  logits = (rng.normal(size=mask.shape) + 2.5 * (mask - 0.5)).astype(np.float32)
  got = run_batches(logits, mask, batch_size=3)
  want = direct_metrics(logits, mask)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
  assert got["iou/mean"] == pytest.approx((want["iou/lens"] + want["iou/arcs"]) / 2)


def test_empty_masks():
  mask = np.zeros((4, 8, 8, 2), np.float32)
  logits = np.full(mask.shape, -3.0, np.float32)
  logits[0, 2, 2, 1] = 3.0                    # one false positive in the arcs target
  got = run_batches(logits, mask, batch_size=4)
  want = direct_metrics(logits, mask)
  assert got["iou/lens"] == 1.0 and got["dice/lens"] == 1.0 and got["recall/lens"] == 1.0
  assert got["iou/arcs"] == 0.0 and got["precision/arcs"] == 0.0
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_per_image_iou():
  mask = np.zeros((2, 4, 4, 1), np.float32)
  mask[0, :2] = 1
  logits = np.full(mask.shape, -1.0, np.float32)
  logits[0, :1] = 1
  iou = np.asarray(metrics.per_image_iou(logits, mask))
  assert iou[:, 0].tolist() == [0.5, 1.0]
