"""The built-in strong-lens simulator: lenstronomy's physics in jax.numpy, batched and deterministic by index.

  profiles    SIE, external shear, elliptical Sersic and Gaussian light, ellipticity conventions
  instrument  pixel grid and supersampling, Gaussian and Moffat PSF, noise model
  scenes      priors, scene sampling, rendering one scene, conversion to lenstronomy kwargs
  masks       the lens/arc mask rules, for numpy arrays and inside jit
  simulator   `Simulator(config, seed).render(indices)`: images, masks and parameters by index

The command line `python -m lensjax.simulate --n N --out DIR` writes a dataset in the original format.
"""

from lensjax.sim import instrument, masks, profiles, scenes
from lensjax.sim.profiles import sersic_ellipse, shear_deflection, sie_deflection
from lensjax.sim.simulator import PARAM_KEYS, Simulator, check_config

__all__ = ["PARAM_KEYS", "Simulator", "check_config", "instrument", "masks", "profiles", "scenes",
           "sersic_ellipse", "shear_deflection", "sie_deflection"]
