"""Datasets and the Grain input pipeline.

  make_source(config, split)      a Grain random-access source of preprocessed examples (no augmentation)
  make_raw_source(config, split)  the same examples as stored (with the simulator's parameters), unprocessed
  make_loader(config, split, ...) the sharded, shuffled, augmented, prefetched batches of one process
  mask_source(config)             where the masks come from (a file, or made by the percentile rule), warnings
  python -m lensjax.data check PATH   validates a dataset and prints a summary, before anyone trains on it
  make_preprocessor(config, ...)  the per-image preprocessing of a config, for images read one by one
  read_png_image, npy_header, load_npy, FitsSource, is_fits_file, check_image_dtype, require_finite
                                  readers and checks of single image files (`python -m lensjax.predict`)
  image_header, celestial_wcs, pixel_scale_arcsec, sky_position, write_images
                                  FITS headers and WCS in, mask and probability FITS files out
  scale_input, canny_edges        the network-input steps of preprocessing, for inputs padded by the caller

Modules: `sources` (the simulated source, config -> source), `npy`, `images` (PNG, CHAOS DICOM), `fits`
(format readers), `transforms` (preprocessing, augmentation, Canny), `pipeline` (loaders), `check`.
Nothing here uses JAX (Grain imports it, but no backend starts); the simulated source imports `lensjax.sim`
when it renders.
"""

from lensjax.data.errors import DataError
from lensjax.data.fits import (FITS_SUFFIXES, FitsSource, celestial_wcs, image_header, is_fits_file,
                               pixel_scale_arcsec, sky_position, write_images)
from lensjax.data.images import read_png_image
from lensjax.data.npy import npy_header
from lensjax.data.pipeline import batches_per_epoch, make_loader
from lensjax.data.sources import (input_channels, make_preprocessor, make_raw_source, make_source, mask_source,
                                  needs_edge, num_examples, num_targets)
from lensjax.data.transforms import Preprocessor, canny_edges, pad_offset, scale_input
from lensjax.data.validation import check_image_dtype, load_npy, require_finite

__all__ = ["DataError", "FITS_SUFFIXES", "FitsSource", "Preprocessor", "batches_per_epoch", "canny_edges",
           "celestial_wcs", "check_image_dtype", "image_header", "input_channels", "is_fits_file", "load_npy",
           "make_loader", "make_preprocessor", "make_raw_source", "make_source", "mask_source", "needs_edge",
           "npy_header", "num_examples", "num_targets", "pad_offset", "pixel_scale_arcsec", "read_png_image",
           "require_finite", "scale_input", "sky_position", "write_images"]
