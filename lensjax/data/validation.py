"""Checks shared by the format readers; each raises DataError naming the file (and index) and the fix."""

from __future__ import annotations

import importlib
import pathlib
from types import ModuleType

import numpy as np

from lensjax.data.errors import DataError, raise_if_any


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


# Bytes of an array the dataset scans read at a time: memory stays bounded whatever the dataset's size.
SCAN_CHUNK_BYTES = 16 * 2**20


def image_problems(image: np.ndarray, where: str) -> list[str]:
  """Problems with the pixels of one image: NaN or infinite values."""
  if image.dtype.kind != "f":
    return []
  bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
  if not bad:
    return []
  return [f"{where}: {bad} NaN or infinite pixels. Replace them (e.g. with 0 or the background level) or drop the "
          "image; `python -m lensjax.data check PATH` lists every such image"]


def mask_problems(values: np.ndarray, where: str) -> list[str]:
  """Problems with the values of one mask: anything but 0/1 or 0/255, or 1 and 255 mixed."""
  values = np.asarray(values)
  if values.dtype == bool:
    return []
  is_one, is_full = values == 1, values == 255
  bad = ~((values == 0) | is_one | is_full)
  if bad.any():
    shown = ", ".join(f"{v:g}" for v in np.unique(values[bad])[:5])
    return [f"{where}: mask values {shown} are not allowed; masks hold 0/1 or 0/255 (a resized or interpolated "
            "mask must be thresholded first)"]
  if is_one.any() and is_full.any():
    return [f"{where}: mask mixes the values 1 and 255; use 0/1 or 0/255 throughout"]
  return []


def require_finite(image: np.ndarray, where: str) -> None:
  """Raises DataError if `image` holds NaN or infinite pixels."""
  raise_if_any(image_problems(image, where))


def binary_mask(values: np.ndarray, where: str) -> np.ndarray:
  """A 0/1 or 0/255 mask (any dtype, any shape) as float32 0/1; other values raise DataError."""
  values = np.asarray(values)
  raise_if_any(mask_problems(values, where))
  return (values > 0).astype(np.float32)


def scan_rows(array: np.ndarray, rows: np.ndarray, path: pathlib.Path, kind: str) -> list[str]:
  """Checks the rows `rows` of a memory-mapped (N, ...) array of images or masks, every value, in chunks.

  A vectorised test per chunk of SCAN_CHUNK_BYTES finds the suspect rows (`kind` 'image': a NaN or infinite
  pixel; 'mask': a value other than 0, 1 and 255, or both 1 and 255); only those are examined one by one for
  the message, which names `path[row]`.
  """
  if (kind == "image" and array.dtype.kind != "f") or (kind == "mask" and array.dtype == bool):
    return []
  row_bytes = max(int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize, 1)
  step = max(SCAN_CHUNK_BYTES // row_bytes, 1)
  problems = []
  for start in range(0, len(rows), step):
    chunk_rows = np.asarray(rows[start:start + step])
    chunk = np.asarray(array[chunk_rows]).reshape(len(chunk_rows), -1)
    if kind == "image":
      suspect = ~np.isfinite(chunk).all(axis=1)
    else:
      is_one, is_full = chunk == 1, chunk == 255
      suspect = ~((chunk == 0) | is_one | is_full).all(axis=1) | (is_one.any(axis=1) & is_full.any(axis=1))
    for i in np.flatnonzero(suspect):
      where = f"{path}[{chunk_rows[i]}]"
      problems += image_problems(chunk[i], where) if kind == "image" else mask_problems(chunk[i], where)
  return problems


def import_optional(module: str, extra: str, source: str) -> ModuleType:
  """Imports `module`, needed only by data.source=`source`; says which extra installs it if missing."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ImportError(f"data.source={source!r} needs {module}: pip install 'lensjax[{extra}]'") from None
