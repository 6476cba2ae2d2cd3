"""Datasets and the Grain input pipeline.

  make_source(config, split)      a Grain random-access source of preprocessed examples (no augmentation)
  make_loader(config, split, ...) the sharded, shuffled, augmented, prefetched batches of one process
  mask_source(config)             where the masks come from (a file, or made by the percentile rule), warnings
  python -m lensjax.data check PATH   validates a dataset and prints a summary, before anyone trains on it

Modules: `sources` (the simulated source, config -> source), `npy`, `images` (PNG, CHAOS DICOM), `fits`
(format readers), `transforms` (preprocessing, augmentation, Canny), `pipeline` (loaders), `check`.
Nothing here uses JAX (Grain imports it, but no backend starts); the simulated source imports `lensjax.sim`
when it renders.
"""

from lensjax.data.errors import DataError
from lensjax.data.pipeline import batches_per_epoch, make_loader
from lensjax.data.sources import input_channels, make_source, mask_source, needs_edge, num_examples, num_targets

__all__ = ["DataError", "batches_per_epoch", "input_channels", "make_loader", "make_source", "mask_source",
           "needs_edge", "num_examples", "num_targets"]
