"""Writers of small datasets in every format `lensjax.data` reads, for the data tests."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from lensjax import config as cfg

# CHAOS MR grey levels of the organs, in lensjax.data.images.ORGANS order.
MR_CODES = {"liver": 63, "right_kidney": 126, "left_kidney": 189, "spleen": 252}


def config_for(source: str, path: pathlib.Path | str, **data_fields) -> cfg.Config:
  """A default config reading `source` at `path`, with `data_fields` overridden."""
  config = cfg.Config()
  config.data.source = source
  config.data.path = str(path)
  for name, value in data_fields.items():
    setattr(config.data, name, value)
  return cfg.validate(config)


def lens_like_images(count: int, size: int, seed: int) -> np.ndarray:
  """(count, size, size, 3) float32 (observed, lens, arcs): a Gaussian lens and a ring of arc light.

  Every odd image is a non-lens: its arc channel is all zeros, as in the original dataset.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  out = np.zeros((count, size, size, 3), np.float32)
  for i in range(count):
    cx, cy = rng.uniform(0.4 * size, 0.6 * size, 2)
    r = np.hypot(xx - cx, yy - cy)
    lens = 1000.0 * np.exp(-0.5 * (r / (0.08 * size)) ** 2)
    arcs = 300.0 * np.exp(-0.5 * ((r - 0.3 * size) / 1.5) ** 2) if i % 2 == 0 else np.zeros_like(r)
    out[i] = np.stack([lens + arcs + rng.uniform(0, 1, r.shape), lens, arcs], axis=-1)
  return out


def write_npy_array(root: pathlib.Path, count: int = 20, size: int = 24, *, with_masks: bool = True,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
  """`root/images.npy` (count, size, size, 3) and, if asked, `root/masks.npy` (count, size, size, 2) 0/255."""
  root.mkdir(parents=True, exist_ok=True)
  images = lens_like_images(count, size, seed)
  np.save(root / "images.npy", images)
  masks = None
  if with_masks:
    masks = np.stack([images[..., 1] > 500, images[..., 2] > 150], axis=-1).astype(np.uint8) * 255
    np.save(root / "masks.npy", masks)
  return images, masks


def write_npy_folders(root: pathlib.Path, counts=None, size: int = 20, seed: int = 0) -> dict:
  """The original's split folders; returns {split: [(name, image, lens_mask, arc_mask), ...]}."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in (counts or {"train": 5, "val": 3, "test": 2}).items():
    for folder in ("images", "lens_mask", "arc_mask"):
      (root / split / folder).mkdir(parents=True, exist_ok=True)
    written[split] = []
    for i in range(count):
      image = (rng.random((size, size)) * 255).astype(np.float64)
      lens, arcs = (image > 200).astype(np.uint8), (image < 30).astype(np.uint8) * 255
      name = f"img_{i:03d}.npy"
      np.save(root / split / "images" / name, image)
      np.save(root / split / "lens_mask" / name, lens)
      np.save(root / split / "arc_mask" / name, arcs)
      written[split].append((name, image, lens, arcs))
  return written


def write_png_folders(root: pathlib.Path, counts=None, size: int = 24, *, masks: str = "binary255",
                      rgb: bool = False, seed: int = 0) -> dict:
  """`{split}/images/*.png` + `{split}/masks/*.png`; the masks are drawn from the images.

  masks: 'binary255' (image > 128 -> 255), 'binary1' (-> 1), or 'chaos' (MR organ codes by brightness band).
  Returns {split: [(name, image uint8 (H, W[, 3]), mask uint8 (H, W)), ...]}.
  """
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in (counts or {"train": 4, "val": 2, "test": 2}).items():
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    written[split] = []
    for i in range(count):
      image = rng.integers(0, 256, (size, size, 3) if rgb else (size, size)).astype(np.uint8)
      grey = image.mean(axis=-1) if rgb else image
      if masks == "chaos":
        mask = np.zeros((size, size), np.uint8)
        for band, code in enumerate(MR_CODES.values()):
          mask[(grey >= 64 * band) & (grey < 64 * (band + 1))] = code
        mask[grey < 16] = 0
      else:
        mask = (grey > 128).astype(np.uint8) * (255 if masks == "binary255" else 1)
      name = f"slice_{i:03d}.png"
      Image.fromarray(image).save(root / split / "images" / name)
      Image.fromarray(mask).save(root / split / "masks" / name)
      written[split].append((name, image, mask))
  return written


def write_dicom(path: pathlib.Path, pixels: np.ndarray, *, slope: float = 1.0, intercept: float = 0.0) -> None:
  """A minimal single-frame 16-bit MONOCHROME2 DICOM file holding `pixels` (H, W) uint16."""
  import pydicom  # pylint: disable=g-import-not-at-top
  from pydicom.dataset import FileMetaDataset  # pylint: disable=g-import-not-at-top
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
  meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
  meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
  ds = pydicom.Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality = "CT"
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
  ds.PixelData = np.ascontiguousarray(pixels, np.uint16).tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def write_chaos(root: pathlib.Path, *, patients: int = 4, slices: int = 3, size: int = 16, seed: int = 0) -> dict:
  """A CHAOS `Train_Sets` tree with CT (liver 0/255) and MR T2SPIR (organ codes) patients.

  CT pixels are stored with slope 1 and intercept -1024, so HU = pixel - 1024. Returns
  {('CT' | 'T2SPIR', patient): [(stored pixels uint16, mask uint8), ...]}.
  """
  rng = np.random.default_rng(seed)
  written = {}
  for p in range(1, patients + 1):
    ct = root / "Train_Sets" / "CT" / str(p)
    mr = root / "Train_Sets" / "MR" / str(p) / "T2SPIR"
    written["CT", str(p)], written["T2SPIR", str(p)] = [], []
    for s in range(slices):
      pixels = rng.integers(700, 1400, (size, size)).astype(np.uint16)
      liver = ((pixels > 1100).astype(np.uint8)) * 255
      write_dicom(ct / "DICOM_anon" / f"i{s:04d},0000b.dcm", pixels, intercept=-1024.0)
      (ct / "Ground").mkdir(parents=True, exist_ok=True)
      Image.fromarray(liver).save(ct / "Ground" / f"liver_GT_{s:03d}.png")
      written["CT", str(p)].append((pixels, liver))
      mr_pixels = rng.integers(0, 2000, (size, size)).astype(np.uint16)
      organs = np.zeros((size, size), np.uint8)
      organs[mr_pixels > 1500] = MR_CODES["liver"]
      organs[mr_pixels < 200] = MR_CODES["spleen"]
      write_dicom(mr / "DICOM_anon" / f"IMG-{p:04d}-{s + 1:05d}.dcm", mr_pixels)
      (mr / "Ground").mkdir(parents=True, exist_ok=True)
      Image.fromarray(organs).save(mr / "Ground" / f"IMG-{p:04d}-{s + 1:05d}.png")
      written["T2SPIR", str(p)].append((mr_pixels, organs))
  return written


def write_fits(path: pathlib.Path, data: np.ndarray) -> None:
  """`data` (H, W) or (N, H, W) as the primary HDU of a new FITS file."""
  from astropy.io import fits  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  fits.PrimaryHDU(data).writeto(path, overwrite=True)
