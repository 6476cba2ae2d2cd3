"""Image-file datasets: PNG image/mask folders (the original's CHAOS run) and the CHAOS download (DICOM).

PNG folders: `{split}/images/NAME.png` with `{split}/masks/NAME.png`. Images are grey (1 channel) or RGB
(3 channels), 8-bit (x / 255) or 16-bit (x / 65535), so in [0, 1]. Masks are binary (0/1 or 0/255; target
'foreground') or CHAOS MR ground truth, whose grey levels code the organs and are decoded by range as
nnU-Net does: liver 63 in (55, 70], right kidney 126 in (110, 135], left kidney 189 in (175, 200], spleen 252
in (240, 255]. Any other value is an error. (The original read these masks as `>= 0.5 * 255`, which kept only
the left kidney and the spleen.)

CHAOS download (`data.path` = `Train_Sets`, or the folder holding it), needs pydicom:
  CT/<id>/DICOM_anon/iNNNN,0000b.dcm + CT/<id>/Ground/liver_GT_NNN.png   liver only, 0/255; paired by NNN
  MR/<id>/T1DUAL/DICOM_anon/{InPhase,OutPhase}/*.dcm + MR/<id>/T1DUAL/Ground/*.png   (one label stack for both)
  MR/<id>/T2SPIR/DICOM_anon/*.dcm + MR/<id>/T2SPIR/Ground/*.png           MR: paired by sorted order
Patients are assigned to splits at random (`data.split_fractions`, `data.split_seed`), so no patient's slices
are in two splits. CT pixels become Hounsfield units (pixel * RescaleSlope + RescaleIntercept), mapped from
`data.ct_hu_range` onto [0, 1]; MR pixels are read as stored. In-plane orientation is kept as stored in
both the DICOM pixel data and the PNG masks.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

from lensjax import config as cfg
from lensjax.data import sources, validation
from lensjax.data.errors import DataError, raise_if_any

FOREGROUND = "foreground"
# CHAOS MR ground-truth grey levels: organ -> (low, high], the accepted range around the nominal value.
ORGANS = {"liver": (55, 70), "right_kidney": (110, 135), "left_kidney": (175, 200), "spleen": (240, 255)}
MASK_TARGETS = (FOREGROUND, *ORGANS)
# Full scale of the PNG sample depths lensjax reads.
_PNG_FULL_SCALE = {"L": 255.0, "RGB": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}
# CHAOS series folders per modality: (modality folder, DICOM folder, ground-truth folder) under a patient.
CHAOS_SERIES = {
    "CT": ("CT", "DICOM_anon", "Ground"),
    "T1DUAL_InPhase": ("MR", "T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground"),
    "T1DUAL_OutPhase": ("MR", "T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground"),
    "T2SPIR": ("MR", "T2SPIR/DICOM_anon", "T2SPIR/Ground"),
}


def check_mask_targets(targets: Sequence[str], source: str, allowed: Sequence[str] = MASK_TARGETS) -> None:
  targets = tuple(targets)
  ok = targets == (FOREGROUND,) or (targets and len(set(targets)) == len(targets)
                                    and all(t in ORGANS and t in allowed for t in targets))
  if not ok:
    raise ValueError(f"data.targets={targets} for data.source={source!r}: expected 'foreground' alone, or "
                     f"distinct organs from {', '.join(o for o in ORGANS if o in allowed)}")


def decode_mask(values: np.ndarray, targets: Sequence[str], where: str) -> np.ndarray:
  """(H, W) integer mask values -> (H, W, K) float32 in {0, 1}, one channel per target."""
  organ_masks = {organ: (values > low) & (values <= high) for organ, (low, high) in ORGANS.items()}
  any_organ = np.logical_or.reduce(list(organ_masks.values()))
  if tuple(targets) == (FOREGROUND,):
    bad = ~((values == 0) | (values == 1) | any_organ)
  else:
    bad = ~((values == 0) | any_organ)
  if bad.any():
    shown = ", ".join(str(v) for v in np.unique(values[bad])[:5])
    hint = ("binary masks are 0/1 or 0/255; CHAOS MR masks use the organ grey levels 63, 126, 189, 252"
            if tuple(targets) == (FOREGROUND,) else
            "with organ targets, masks hold the CHAOS MR grey levels 63 liver, 126 right kidney, 189 left "
            "kidney, 252 spleen; for binary 0/1 or 0/255 masks set data.targets=foreground")
    raise DataError(f"{where}: mask values {shown} are not allowed ({hint})")
  if tuple(targets) == (FOREGROUND,):
    return (values > 0)[..., None].astype(np.float32)
  return np.stack([organ_masks[t] for t in targets], axis=-1).astype(np.float32)


def _png_info(path: pathlib.Path) -> tuple[tuple[int, int], str]:
  """((height, width), mode) from the header of the image file at `path`."""
  try:
    with Image.open(path) as im:
      return (im.height, im.width), im.mode
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: is not a readable image ({e}). Re-save it as PNG or remove it") from None


def read_png_image(path: pathlib.Path) -> np.ndarray:
  """The image at `path` as (H, W, 1) or (H, W, 3) float32 in [0, 1]; alpha is dropped, palettes expanded."""
  try:
    with Image.open(path) as im:
      if im.mode in ("LA", "1"):
        im = im.convert("L")
      elif im.mode not in _PNG_FULL_SCALE:
        im = im.convert("RGB")
      full_scale = _PNG_FULL_SCALE[im.mode]
      pixels = np.asarray(im, np.float32)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: is not a readable image ({e}). Re-save it as PNG or remove it") from None
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  return pixels / np.float32(full_scale)


def read_png_mask(path: pathlib.Path) -> np.ndarray:
  """The mask at `path` as (H, W) integers; colour masks are taken to grey first, as the original did."""
  try:
    with Image.open(path) as im:
      if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
        im = im.convert("L")
      return np.asarray(im).astype(np.int32)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: is not a readable image ({e}). Re-save it as PNG or remove it") from None


def _natural_key(path: pathlib.Path) -> list[Any]:
  """Sort key that orders IMG-2 before IMG-10."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class PngFolderSource(sources.RawSource):
  """`{split}/images/NAME.png` with `{split}/masks/NAME.png` under `root`."""

  def __init__(self, root: str | pathlib.Path, split: str, targets: Sequence[str], *,
               allow_mixed_sizes: bool = False):
    check_mask_targets(targets, "png")
    self.root, self.split, self.targets = pathlib.Path(root), split, tuple(targets)
    images_dir, masks_dir = self.root / split / "images", self.root / split / "masks"
    for folder in (images_dir, masks_dir):
      if not folder.is_dir():
        found = [s for s in sources.SPLITS if (self.root / s / "images").is_dir()]
        raise DataError(f"{folder}: no such folder; the PNG layout is {{train,val,test}}/images/NAME.png with "
                        f"masks/NAME.png (found splits: {', '.join(found) or 'none'})")
    self.image_files = sorted(images_dir.glob("*.png"))
    if not self.image_files:
      raise DataError(f"{images_dir}: empty folder; expected the {split} images as NAME.png files")
    names = {f.name for f in self.image_files}
    problems = [f"{f}: image has no mask {masks_dir / f.name}. Add the mask or remove the image"
                for f in self.image_files if not (masks_dir / f.name).is_file()]
    problems += [f"{m}: mask has no image {images_dir / m.name}. Add the image or remove the mask"
                 for m in sorted(masks_dir.glob("*.png")) if m.name not in names]
    raise_if_any(problems)
    self.mask_files = [masks_dir / f.name for f in self.image_files]
    sizes, channels = {}, {}
    for image_file, mask_file in zip(self.image_files, self.mask_files):
      try:
        (size, mode), (mask_size, _) = _png_info(image_file), _png_info(mask_file)
      except DataError as e:
        problems += e.problems
        continue
      sizes.setdefault(size, image_file)
      channels.setdefault(3 if mode in ("RGB", "RGBA", "P", "CMYK") else 1, image_file)
      if mask_size != size:
        problems.append(f"{mask_file}: is {mask_size[0]}x{mask_size[1]}, its image {size[0]}x{size[1]}; a mask "
                        "must match its image pixel for pixel")
    if len(sizes) > 1 and not allow_mixed_sizes:
      listed = ", ".join(f"{h}x{w} ({f.name})" for (h, w), f in sizes.items())
      problems.append(f"{images_dir}: images of different sizes: {listed}; set data.resize_to to bring them "
                      "to one size")
    raise_if_any(problems)
    (height, width), = list(sizes)[:1]
    self.image_shape = (height, width, max(channels))

  def __len__(self) -> int:
    return len(self.image_files)

  def describe(self, index: int) -> str:
    return str(self.image_files[index])

  def read(self, index: int) -> dict[str, Any]:
    mask_file = self.mask_files[index]
    return {"image": read_png_image(self.image_files[index]),
            "mask": decode_mask(read_png_mask(mask_file), self.targets, str(mask_file)),
            "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"PngFolderSource({self.root}, split={self.split!r}, targets={self.targets})"


def _first_number(path: pathlib.Path) -> int | None:
  match = re.search(r"\d+", path.stem)
  return int(match.group()) if match else None


class ChaosSource(sources.RawSource):
  """Slices of the CHAOS download for one modality and the patients of one split (see the module docstring)."""

  def __init__(self, data: cfg.DataConfig, split: str):
    pydicom = validation.import_optional("pydicom", "dicom", "chaos")
    self.modality, self.targets = data.chaos_modality, tuple(data.targets)
    check_mask_targets(self.targets, f"chaos ({self.modality})",
                       ("liver",) if self.modality == "CT" else MASK_TARGETS)
    if len(data.ct_hu_range) != 2 or data.ct_hu_range[0] >= data.ct_hu_range[1]:
      raise ValueError(f"data.ct_hu_range={tuple(data.ct_hu_range)}: expected (low, high) Hounsfield units, "
                       "low < high")
    self.hu_range = tuple(data.ct_hu_range)
    root = pathlib.Path(data.path)
    if (root / "Train_Sets").is_dir():
      root = root / "Train_Sets"
    modality_dir, series_dir, ground_dir = CHAOS_SERIES[self.modality]
    self.root = root
    if not (root / modality_dir).is_dir():
      raise DataError(f"{root / modality_dir}: no such folder; data.path should be CHAOS Train_Sets (holding "
                      f"CT/ and MR/) for data.chaos_modality={self.modality!r}")
    patients = sorted((p for p in (root / modality_dir).iterdir() if p.is_dir()), key=_natural_key)
    if not patients:
      raise DataError(f"{root / modality_dir}: empty folder; expected one folder per patient")
    chosen = [patients[i] for i in sources.split_rows(len(patients), data.split_fractions, data.split_seed,
                                                      split)]
    if not chosen:
      raise DataError(f"{root / modality_dir}: its {len(patients)} patients leave none for the {split} split "
                      f"with data.split_fractions={tuple(data.split_fractions)}")
    self.slices: list[tuple[pathlib.Path, pathlib.Path]] = []
    problems = []
    for patient in chosen:
      try:
        self.slices += self._pair_slices(patient / series_dir, patient / ground_dir)
      except DataError as e:
        problems += e.problems
    raise_if_any(problems)
    shapes = {}
    for dicom_file, _ in self.slices:
      try:
        header = pydicom.dcmread(dicom_file, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        shapes.setdefault((int(header.Rows), int(header.Columns)), dicom_file)
      except Exception as e:  # pydicom raises many types for a broken file  # pylint: disable=broad-except
        problems.append(f"{dicom_file}: is not a readable DICOM file ({type(e).__name__}: {e})")
    if len(shapes) > 1 and not data.resize_to:
      listed = ", ".join(f"{h}x{w} ({f.parent.parent.name}/{f.name})" for (h, w), f in shapes.items())
      problems.append(f"{root / modality_dir}: slices of different sizes: {listed}; set data.resize_to to "
                      "bring them to one size")
    raise_if_any(problems)
    (height, width), = list(shapes)[:1]
    self.image_shape = (height, width, 1)

  def _pair_slices(self, series: pathlib.Path, ground: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
    for folder in (series, ground):
      if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; each CHAOS patient has its DICOM series and its Ground/ "
                        "masks")
    dicoms = sorted(series.glob("*.dcm"), key=_natural_key)
    masks = sorted(ground.glob("*.png"), key=_natural_key)
    if not dicoms:
      raise DataError(f"{series}: empty folder; expected the slices as .dcm files")
    if self.modality != "CT":
      if len(dicoms) != len(masks):
        raise DataError(f"{series}: {len(dicoms)} slices but {len(masks)} masks in {ground}; MR slices pair "
                        "with masks in sorted order, so the counts must match")
      return list(zip(dicoms, masks))
    by_number = {_first_number(m): m for m in masks}
    numbers = {_first_number(d) for d in dicoms}
    problems = [f"{d}: slice has no mask liver_GT_{_first_number(d):03d}.png in {ground}. Add it or remove the "
                "slice" for d in dicoms if _first_number(d) not in by_number]
    problems += [f"{m}: mask has no slice i{n:04d},0000b.dcm in {series}. Add it or remove the mask"
                 for n, m in by_number.items() if n not in numbers]
    raise_if_any(problems)
    return [(d, by_number[_first_number(d)]) for d in dicoms]

  def __len__(self) -> int:
    return len(self.slices)

  def describe(self, index: int) -> str:
    return str(self.slices[index][0])

  def read(self, index: int) -> dict[str, Any]:
    pydicom = validation.import_optional("pydicom", "dicom", "chaos")
    dicom_file, mask_file = self.slices[index]
    try:
      dataset = pydicom.dcmread(dicom_file)
      pixels = np.asarray(dataset.pixel_array, np.float32)
    except Exception as e:  # pydicom raises many types for a broken file  # pylint: disable=broad-except
      raise DataError(f"{dicom_file}: cannot decode the DICOM pixels ({type(e).__name__}: {e}). Replace the "
                      "file or remove the slice") from None
    if pixels.ndim != 2:
      raise DataError(f"{dicom_file}: pixel data of shape {pixels.shape}; expected one 2-D slice")
    if self.modality == "CT":
      hounsfield = (pixels * np.float32(getattr(dataset, "RescaleSlope", 1.0))
                    + np.float32(getattr(dataset, "RescaleIntercept", 0.0)))
      low, high = self.hu_range
      pixels = np.clip((hounsfield - low) / (high - low), 0.0, 1.0).astype(np.float32)
    mask_values = read_png_mask(mask_file)
    if mask_values.shape != pixels.shape:
      raise DataError(f"{mask_file}: is {mask_values.shape[0]}x{mask_values.shape[1]}, its slice "
                      f"{dicom_file.name} {pixels.shape[0]}x{pixels.shape[1]}; a mask must match its slice")
    if self.modality == "CT":
      # CT ground truth is the liver alone, 0/255: 'liver' and 'foreground' are the same channel.
      mask = validation.binary_mask(mask_values, str(mask_file))[..., None]
    else:
      mask = decode_mask(mask_values, self.targets, str(mask_file))
    return {"image": pixels[..., None], "mask": mask, "index": np.int64(index)}

  def __repr__(self) -> str:
    return f"ChaosSource({self.root}, modality={self.modality}, slices={len(self.slices)}, targets={self.targets})"
