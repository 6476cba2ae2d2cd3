"""Checks shared by the format readers; each raises DataError naming the file (and index) and the fix."""

from __future__ import annotations

import importlib
import pathlib
from types import ModuleType

import numpy as np

from lensjax.data.errors import DataError


def load_npy(path: pathlib.Path) -> np.ndarray:
  """Memory-maps the .npy file at `path` without unpickling anything (a data file is untrusted input)."""
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except ValueError as e:
    if "allow_pickle" in str(e):
      raise DataError(f"{path}: holds Python objects, which would have to be unpickled; lensjax reads plain "
                      "numeric arrays only. Save the data with np.save(path, array.astype(np.float32))") from None
    raise DataError(f"{path}: is not a readable .npy array ({e}). Re-save it with np.save") from None
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e})") from None


def check_image_dtype(dtype: np.dtype, where: str) -> list[str]:
  """Problems with an image dtype: images must be real numbers (float or integer)."""
  if dtype.kind in "fiu":
    return []
  return [f"{where}: images have dtype {dtype}; expected a float or integer array (e.g. float32)"]


def check_mask_dtype(dtype: np.dtype, where: str) -> list[str]:
  """Problems with a mask dtype: masks must be bool, integer or float 0/1 or 0/255 arrays."""
  if dtype.kind in "biuf":
    return []
  return [f"{where}: masks have dtype {dtype}; expected bool, uint8 or float values 0/1 or 0/255"]


def require_finite(image: np.ndarray, where: str) -> None:
  """Raises DataError if `image` holds NaN or infinite pixels."""
  if image.dtype.kind == "f" and not np.isfinite(image).all():
    bad = int(np.size(image) - np.isfinite(image).sum())
    raise DataError(f"{where}: {bad} NaN or infinite pixels. Replace them (e.g. with 0 or the background "
                    "level) or drop the image; `python -m lensjax.data check PATH` lists every such image")


def binary_mask(values: np.ndarray, where: str) -> np.ndarray:
  """A 0/1 or 0/255 mask (any dtype, any shape) as float32 0/1; other values raise DataError."""
  values = np.asarray(values)
  if values.dtype == bool:
    return values.astype(np.float32)
  is_one, is_full = values == 1, values == 255
  bad = ~((values == 0) | is_one | is_full)
  if bad.any():
    shown = ", ".join(f"{v:g}" for v in np.unique(values[bad])[:5])
    raise DataError(f"{where}: mask values {shown} are not allowed; masks hold 0/1 or 0/255 (a resized or "
                    "interpolated mask must be thresholded first)")
  if is_one.any() and is_full.any():
    raise DataError(f"{where}: mask mixes the values 1 and 255; use 0/1 or 0/255 throughout")
  return (values > 0).astype(np.float32)


def import_optional(module: str, extra: str, source: str) -> ModuleType:
  """Imports `module`, needed only by data.source=`source`; says which extra installs it if missing."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ImportError(f"data.source={source!r} needs {module}: pip install 'lensjax[{extra}]'") from None
