"""lensjax: strong-lens segmentation with IS-Net and MSRF-Net in JAX/Flax NNX.

Modules, one concern each:
  sim          lens physics (SIE, shear, Sersic), PSF, noise, scene sampler, masks
  data         Grain sources (simulated, .npy, PNG/CHAOS, DICOM, FITS), transforms, pipeline
  models       IS-Net, its ground-truth encoder, MSRF-Net (Flax NNX)
  losses       deep-supervision losses of each network
  metrics      confusion-count metrics and the original per-image mIoU
  config       typed experiment configs and command-line overrides
  train        the training loop (`python -m lensjax.train`)
"""

__version__ = "0.1.0"
