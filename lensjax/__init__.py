"""lensjax: strong-lens segmentation with IS-Net and MSRF-Net in JAX/Flax NNX.

Modules, one concern each:
  sim            lens physics (SIE, shear, Sersic), PSF, noise, scene sampler, masks; `python -m lensjax.simulate`
  data           Grain sources (simulated, .npy, PNG/CHAOS, DICOM, FITS), transforms, the sharded loader
  models         IS-Net, its ground-truth encoder, MSRF-Net (Flax NNX) and the factory `build`
  losses         the deep-supervision losses of each network
  metrics        confusion-count metrics and the original per-image mIoU
  config         typed experiment configs and command-line overrides
  parallel       distributed start-up, the device mesh, shardings
  train_step     the jitted, sharded training and evaluation steps
  train          the training loop (`python -m lensjax.train`); feature_sync: IS-Net's DIS stage 1
  checkpoint     Orbax checkpoints, exact resume, stop signals
  evaluate       `python -m lensjax.evaluate`; predict: `python -m lensjax.predict`; plots: figures
  progress       progress bars and log lines
  host_memory    huge pages for XLA's host buffers: a lensjax command restarts itself with them, once
"""

__version__ = "0.1.0"

from lensjax import host_memory as _host_memory  # pylint: disable=g-import-not-at-top

_host_memory.restart_with_huge_pages()
