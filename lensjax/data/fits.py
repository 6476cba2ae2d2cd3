"""FITS cutouts from a survey, without masks, for running a trained model on real images (needs astropy).

`data.path` is one FITS file or a folder of them (`*.fits`, `*.fit`, `*.fts`, optionally gzipped). In each
file the first HDU holding an image is read: a 2-D image is one cutout, a 3-D cube (N, H, W) is N cutouts.
Pixels are read memory-mapped as stored (BSCALE/BZERO applied), in the survey's units; the 'auto'
normalisation divides each cutout by its 99th percentile as for simulated images. NaN pixels (masked in
many surveys) are an error: fill them before predicting. Only the 'test' split exists.

`python -m lensjax.predict` writes its masks back as FITS (`write_images`) with the input's header, so they
overlay the cutout exactly; `celestial_wcs` and `pixel_scale_arcsec` give the catalog its sky positions and
sizes in arcsec.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from lensjax.data import sources, validation
from lensjax.data.errors import DataError, raise_if_any

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
# Header cards describing the stored array rather than the sky: astropy writes them anew for each output
# array (BITPIX, NAXISn, ...), or they would misdescribe a mask (BSCALE, BZERO, BLANK, DATAMIN, checksums).
_ARRAY_CARDS = ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "EXTNAME", "EXTVER",
                "BSCALE", "BZERO", "BLANK", "BUNIT", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM")


def is_fits_file(path: pathlib.Path) -> bool:
  return path.is_file() and path.name.lower().endswith(FITS_SUFFIXES)


def _image_hdu(hdus, path: pathlib.Path) -> tuple[int, tuple[int, ...]]:
  """(HDU number, data shape) of the first HDU of `hdus` holding a 2-D image or 3-D cube."""
  for number, hdu in enumerate(hdus):
    naxis = int(hdu.header.get("NAXIS", 0))
    if hdu.is_image and naxis >= 2:
      shape = tuple(int(hdu.header[f"NAXIS{axis}"]) for axis in range(naxis, 0, -1))
      if naxis > 3:
        raise DataError(f"{path}: HDU {number} has {naxis} axes {shape}; expected a 2-D cutout or an (N, H, W) "
                        "cube")
      return number, shape
  raise DataError(f"{path}: no HDU holds an image; expected a 2-D cutout or an (N, H, W) cube")


class FitsSource(sources.RawSource):
  """Cutouts from FITS files: `image` (H, W, 1) float32 and `index`; no masks."""

  has_masks = False

  def __init__(self, path: str | pathlib.Path, split: str):
    fits = validation.import_optional("astropy.io.fits", "fits", "fits")
    if split != "test":
      raise ValueError(f"split={split!r}: FITS cutouts have no masks, so they serve prediction only; read "
                       "them as split 'test'")
    self.path, self.targets = pathlib.Path(path), ()
    if self.path.is_dir():
      files = sorted(p for p in self.path.iterdir() if is_fits_file(p))
      if not files:
        raise DataError(f"{self.path}: no FITS files ({', '.join(FITS_SUFFIXES)}) in this folder")
    elif is_fits_file(self.path):
      files = [self.path]
    else:
      raise DataError(f"{self.path}: neither a FITS file ({', '.join(FITS_SUFFIXES)}) nor a folder of them")
    problems = []
    # One entry per cutout: (file, HDU number, index in the cube or None for a 2-D image).
    self.cutouts: list[tuple[pathlib.Path, int, int | None]] = []
    sizes = {}
    for file in files:
      try:
        with fits.open(file, memmap=True, lazy_load_hdus=True) as hdus:
          number, shape = _image_hdu(hdus, file)
      except DataError as e:
        problems += e.problems
        continue
      except Exception as e:  # astropy raises many types for a broken file  # pylint: disable=broad-except
        problems.append(f"{file}: is not a readable FITS file ({type(e).__name__}: {e})")
        continue
      sizes.setdefault(shape[-2:], file)
      if len(shape) == 2:
        self.cutouts.append((file, number, None))
      else:
        self.cutouts += [(file, number, i) for i in range(shape[0])]
    if len(sizes) > 1:
      listed = ", ".join(f"{h}x{w} ({f.name})" for (h, w), f in sizes.items())
      problems.append(f"{self.path}: cutouts of different sizes: {listed}; set data.resize_to to bring them "
                      "to one size")
    raise_if_any(problems)
    if not self.cutouts:
      raise DataError(f"{self.path}: the FITS cubes hold no cutouts")
    (height, width), = list(sizes)[:1]
    self.image_shape = (height, width, 1)

  def __len__(self) -> int:
    return len(self.cutouts)

  def describe(self, index: int) -> str:
    file, number, plane = self.cutouts[index]
    return f"{file}[HDU {number}]" + ("" if plane is None else f"[{plane}]")

  def read(self, index: int) -> dict[str, Any]:
    fits = validation.import_optional("astropy.io.fits", "fits", "fits")
    file, number, plane = self.cutouts[index]
    if getattr(self, "_handle_files", None) is None:
      self._handle_files = {}
    try:
      if file not in self._handle_files:
        self._handle_files[file] = fits.open(file, memmap=True)
      data = self._handle_files[file][number].data
      pixels = np.asarray(data if plane is None else data[plane], np.float32)
    except Exception as e:  # astropy raises many types for a broken file  # pylint: disable=broad-except
      raise DataError(f"{self.describe(index)}: cannot read the pixels ({type(e).__name__}: {e})") from None
    validation.require_finite(pixels, self.describe(index))
    return {"image": pixels[..., None], "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"FitsSource({self.path}, cutouts={len(self.cutouts)})"


def image_header(path: pathlib.Path, hdu_number: int):
  """A copy of the header of HDU `hdu_number` of FITS file `path` (an `astropy.io.fits.Header`)."""
  fits = validation.import_optional("astropy.io.fits", "fits", "fits")
  with fits.open(path, memmap=True, lazy_load_hdus=True) as hdus:
    return hdus[hdu_number].header.copy()


def celestial_wcs(header):
  """The sky part (RA/Dec axes) of `header`'s WCS as an `astropy.wcs.WCS` of 2 pixel axes (x = column,
  y = row), or None when the header has no celestial WCS."""
  if header is None:
    return None
  wcs = validation.import_optional("astropy.wcs", "fits", "fits")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # astropy's FITSFixedWarning about cards it repairs while reading
    try:
      sky = wcs.WCS(header).celestial
    except Exception:  # astropy raises many types for a malformed WCS  # pylint: disable=broad-except
      return None
  return sky if sky.has_celestial and sky.naxis == 2 else None


def pixel_scale_arcsec(sky_wcs) -> float:
  """The side of a square pixel of the same area as `sky_wcs`'s pixels at its reference point, in arcsec."""
  from astropy.wcs import utils  # pylint: disable=g-import-not-at-top
  return float(np.sqrt(utils.proj_plane_pixel_area(sky_wcs)) * 3600.0)


def sky_position(sky_wcs, x: float, y: float) -> tuple[float, float]:
  """(RA, Dec) in degrees of zero-based pixel position (x = column, y = row)."""
  ra, dec = sky_wcs.wcs_pix2world([[x, y]], 0)[0]
  return float(ra), float(dec)


def write_images(file: BinaryIO, planes: Mapping[str, np.ndarray], header, cards: Mapping[str, Any]) -> None:
  """Writes a FITS file to open binary `file`: an empty primary HDU, then each array of `planes` as an image
  HDU named by its key.

  Every image HDU carries the cards of `header` (the input's sky and instrument cards, unchanged; None for an
  input without a header) but those describing the stored array (_ARRAY_CARDS, astropy writes them anew),
  then `cards`, which the primary HDU holds too.

  Args:
    planes: EXTNAME -> (H, W) image or (N, H, W) cube in numpy order (FITS NAXIS1 = W).
    header: an `astropy.io.fits.Header` or None.
    cards: keyword (at most 8 characters) -> value, or (value, comment).
  """
  fits = validation.import_optional("astropy.io.fits", "fits", "fits")
  kept = fits.Header()
  if header is not None:
    for card in header.cards:
      if card.keyword and card.keyword not in _ARRAY_CARDS and not card.keyword.startswith("NAXIS"):
        kept.append(card)
  primary = fits.PrimaryHDU()
  for keyword, value in cards.items():
    kept[keyword] = value
    primary.header[keyword] = value
  fits.HDUList([primary] + [fits.ImageHDU(np.asarray(data), header=kept.copy(), name=name)
                            for name, data in planes.items()]).writeto(file)
