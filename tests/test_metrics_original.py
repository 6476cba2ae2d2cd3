"""The original project's per-row metrics (`lensjax.metrics.original_*`) on tiny hand-computed examples."""

import numpy as np
import pytest

from lensjax import metrics

# Three 2 x 2 images: a lens (one mask pixel), a constant map with an empty mask, a non-lens ramp (empty mask).
PROBABILITIES = np.array([[[0.2, 0.9], [0.6, 0.1]],
                          [[0.3, 0.3], [0.3, 0.3]],
                          [[0.1, 0.2], [0.3, 0.4]]], np.float32)
MASKS = np.array([[[0, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]], np.uint8)


def test_isnet_miou_is_a_per_image_iou_after_min_max_normalisation():
  # Image 0 normalises to [[.125, 1], [.625, 0]]: 2 pixels predicted, 1 right -> 1/2. Image 1 is constant:
  # nothing predicted, nothing to find -> 1. Image 2 normalises to [[0, 1/3], [2/3, 1]]: 2 pixels against an
  # empty mask -> 1e-15 / 2 ~ 0.
  assert metrics.original_isnet_miou(PROBABILITIES, MASKS) == pytest.approx((0.5 + 1 + 0) / 3)
  assert metrics.original_isnet_miou(PROBABILITIES, MASKS, include=[True, False, False]) == pytest.approx(0.5)
  assert metrics.original_isnet_miou(PROBABILITIES, MASKS, include=[True, True, False]) == pytest.approx(0.75)
  assert np.isnan(metrics.original_isnet_miou(PROBABILITIES, MASKS, include=[False] * 3))


def test_isnet_precision_and_recall_are_means_over_255_thresholds():
  # Normalised x 255: [[0, 255], [127.5, 63.75]] -> bins 0, 254, 127, 63; mask pixels in bins 254 and 127.
  probabilities = np.array([[[0.0, 1.0], [0.5, 0.25]]], np.float32)
  masks = np.array([[[0, 1], [1, 0]]])
  eps = 1e-4
  # Thresholds 254..128 (127 of them): 1 TP, 0 FP; 127..64 (64): 2 TP; 63..1 (63): 2 TP, 1 FP; 0: 2 TP, 2 FP.
  precision = [1 / (1 + eps)] * 127 + [2 / (2 + eps)] * 64 + [2 / (3 + eps)] * 63 + [2 / (4 + eps)]
  recall = [1 / (2 + eps)] * 127 + [2 / (2 + eps)] * 128
  scores = metrics.original_isnet_precision_recall(probabilities, masks)
  assert scores["precision"] == pytest.approx(np.mean(precision), rel=1e-12)
  assert scores["recall"] == pytest.approx(np.mean(recall), rel=1e-12)
  both = 2 / (2 + eps)
  assert scores["max_f"] == pytest.approx(1.3 * both * both / (1.3 * both + 1e-8), rel=1e-12)


def test_isnet_precision_and_recall_of_a_constant_map_are_zero():
  scores = metrics.original_isnet_precision_recall(PROBABILITIES[1:2], np.ones((1, 2, 2)))
  assert scores == dict(precision=0.0, recall=0.0, max_f=0.0)


def test_msrfnet_dice_is_per_image_with_empty_vs_empty_1_and_iou_is_global():
  scores = metrics.original_msrfnet_scores(PROBABILITIES, MASKS)
  # Thresholded at 0.5: image 0 predicts 0.9 and 0.6 (1 of them right): Dice 2/3; images 1 and 2 predict
  # nothing of an empty mask: 1 each. Globally 1 TP, 1 FP, 0 FN.
  assert scores["dice"] == pytest.approx((2 / 3 + 1 + 1) / 3)
  assert scores["iou"] == pytest.approx(0.5)
  assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(1.0)
  # An all-empty split: Dice 1 per image, IoU 1 by the smoothing, precision and recall undefined.
  empty = metrics.original_msrfnet_scores(np.zeros((2, 3, 3)), np.zeros((2, 3, 3)))
  assert empty["dice"] == 1.0 and empty["iou"] == 1.0
  assert np.isnan(empty["precision"]) and np.isnan(empty["recall"])


def test_isnet_dice_uses_the_same_min_max_mask():
  # Image 0: 2 predicted, 1 mask pixel, 1 shared -> 2/3; image 1 (constant, empty mask) -> 1; image 2 -> ~0.
  assert metrics.original_isnet_dice(PROBABILITIES, MASKS) == pytest.approx((2 / 3 + 1 + 0) / 3)
  assert metrics.original_isnet_dice(PROBABILITIES, MASKS, include=[True, False, True]) == pytest.approx(1 / 3)


def test_a_row_of_the_table_uses_that_rows_definitions_over_the_included_images():
  lenses = np.array([True, False, False])
  isnet = metrics.original_row_scores("isnet", PROBABILITIES, MASKS, include=lenses)
  assert isnet["miou"] == pytest.approx(0.5) and isnet["dice"] == pytest.approx(2 / 3)
  curves = metrics.original_isnet_precision_recall(PROBABILITIES[:1], MASKS[:1])
  assert (isnet["precision"], isnet["recall"]) == (curves["precision"], curves["recall"])
  # MSRF-Net rows always count every image: global IoU 1/2, per-image Dice (2/3 + 1 + 1) / 3.
  msrfnet = metrics.original_row_scores("msrfnet", PROBABILITIES, MASKS, include=lenses)
  assert msrfnet["miou"] == pytest.approx(0.5) and msrfnet["dice"] == pytest.approx((2 / 3 + 1 + 1) / 3)
  assert set(metrics.ORIGINAL_TABLE) == {(n, d) for n in ("isnet", "msrfnet") for d in ("lens", "arcs", "chaos")}
  assert metrics.ORIGINAL_TABLE[("isnet", "lens")]["miou"] == 0.9859
  assert metrics.ORIGINAL_TABLE[("isnet", "arcs")]["miou"] == 0.9547
