"""What a predicted lens measures: the catalog row of one image, and the masks lens-modelling tools take.

`measure` turns an image and its predicted probabilities into one row of `predictions.csv`:

  arcs_found            whether the probability-weighted arc area (the sum of the arcs probability over the
                        image, in pixels) reaches `min_arc_area`
  arc_area_px           pixels of the arcs mask (probability >= threshold); arc_area_arcsec2 with a pixel scale
  lens_x_px, lens_y_px  the lens centroid, zero-based pixel coordinates (x = column, y = row): the light-weighted
                        centre of the lens mask, or of the whole image when the run predicts no lens mask or
                        the mask is empty; lens_ra_deg, lens_dec_deg with a sky WCS
  arc_radius_px         the arc-light-weighted mean distance of the arcs mask's pixels from the lens centroid,
                        a cheap proxy of the Einstein radius (arcs of a lens lie near it); arc_radius_arcsec with
                        a pixel scale
  confidence            the mean of |2p - 1| over the pixels where some target's probability exceeds 0.1 (1 when
                        none does): 1 when the network is sure of every such pixel, 0 when all sit at 0.5

"Light" is the image's channel mean minus its median (the sky level of a cutout), clipped at 0. Sizes and
positions in arcsec need a pixel scale: the input's WCS, or `--pixel-scale` for inputs without one.

`likelihood_mask` is the arcs mask dilated by a number of pixels, as the boolean `image_likelihood_mask` that
lenstronomy's likelihood takes (True where the model is compared with the data), on the image's own grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

CATALOG_COLUMNS = ("name", "source", "height", "width", "arcs_found", "arc_weighted_area_px", "arc_area_px",
                   "arc_area_arcsec2", "lens_x_px", "lens_y_px", "lens_ra_deg", "lens_dec_deg", "arc_radius_px",
                   "arc_radius_arcsec", "pixel_scale_arcsec", "confidence")
LENS_TARGET = "lens"
ARCS_TARGET = "arcs"
# Probabilities above this mark the pixels `confidence` is averaged over.
CONFIDENCE_FLOOR = 0.1


def _light(image: np.ndarray) -> np.ndarray:
  """(H, W) light above the sky: the channel mean minus its median, clipped at 0."""
  grey = np.asarray(image, np.float64)
  grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
  return np.clip(grey - np.median(grey), 0.0, None)


def _weighted_centre(weights: np.ndarray) -> tuple[float, float] | None:
  """(x, y) centre of (H, W) non-negative `weights`, or None when they sum to 0."""
  total = weights.sum()
  if not total > 0:
    return None
  rows, columns = np.indices(weights.shape)
  return float((weights * columns).sum() / total), float((weights * rows).sum() / total)


def confidence(probabilities: np.ndarray) -> float:
  """Mean of |2p - 1| over the pixels where some target's (H, W, K) probability exceeds CONFIDENCE_FLOOR."""
  considered = (probabilities > CONFIDENCE_FLOOR).any(axis=-1)
  if not considered.any():
    return 1.0
  return float(np.abs(2.0 * probabilities[considered] - 1.0).mean())


def measure(image: np.ndarray, probabilities: np.ndarray, targets: Sequence[str], *, threshold: float,
            min_arc_area: float, pixel_scale: float | None = None,
            to_sky: Callable[[float, float], tuple[float, float]] | None = None) -> dict[str, Any]:
  """The catalog fields (CATALOG_COLUMNS less name, source, height, width) of one predicted image.

  Args:
    image: (H, W) or (H, W, C) pixels in the input's units.
    probabilities: (H, W, K) predicted probabilities, channels in `targets` order.
    threshold: probability at and above which a pixel is in a mask.
    min_arc_area: probability-weighted arc area (pixels) from which arcs count as found.
    pixel_scale: arcsec per pixel, or None (the arcsec fields are then None).
    to_sky: zero-based (x, y) pixel -> (RA, Dec) in degrees, or None (no sky position).
  Fields the run's targets cannot give (no arcs target, no arc pixel) are None.
  """
  light = _light(image)
  probabilities = np.asarray(probabilities, np.float64)
  centre = None
  if LENS_TARGET in targets:
    lens = probabilities[..., targets.index(LENS_TARGET)]
    centre = _weighted_centre(np.where(lens >= threshold, lens * light, 0.0))
  centre = centre or _weighted_centre(light) or ((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2)
  row: dict[str, Any] = dict.fromkeys(CATALOG_COLUMNS[4:])
  row.update(lens_x_px=centre[0], lens_y_px=centre[1], pixel_scale_arcsec=pixel_scale,
             confidence=confidence(probabilities))
  if to_sky is not None:
    row["lens_ra_deg"], row["lens_dec_deg"] = to_sky(*centre)
  if ARCS_TARGET in targets:
    arcs = probabilities[..., targets.index(ARCS_TARGET)]
    mask = arcs >= threshold
    row.update(arc_weighted_area_px=float(arcs.sum()), arc_area_px=int(mask.sum()),
               arcs_found=bool(arcs.sum() >= min_arc_area))
    weights = np.where(mask, arcs * light, 0.0)
    if not weights.sum() > 0:
      weights = np.where(mask, arcs, 0.0)
    if weights.sum() > 0:
      rows, columns = np.indices(mask.shape)
      distance = np.hypot(columns - centre[0], rows - centre[1])
      row["arc_radius_px"] = float((weights * distance).sum() / weights.sum())
    if pixel_scale is not None:
      row["arc_area_arcsec2"] = row["arc_area_px"] * pixel_scale**2
      if row["arc_radius_px"] is not None:
        row["arc_radius_arcsec"] = row["arc_radius_px"] * pixel_scale
  return row


def likelihood_mask(arc_mask: np.ndarray, dilation: int) -> np.ndarray:
  """(H, W) bool: `arc_mask` grown by `dilation` pixels (a disc), for lenstronomy's image_likelihood_mask."""
  arc_mask = np.asarray(arc_mask, bool)
  if dilation <= 0:
    return arc_mask.copy()
  side = 2 * dilation + 1
  disc = (np.hypot(*np.indices((side, side)) - dilation) <= dilation).astype(np.uint8)
  return cv2.dilate(arc_mask.astype(np.uint8), disc, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def csv_cell(value: Any) -> str:
  """One CSV cell: '' for a missing value, numbers in full (RA/Dec need their every digit)."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  return str(value)
