"""The built-in strong-lens simulator: lenstronomy's physics in jax.numpy, batched and deterministic by index.

  profiles    SIE, external shear, elliptical Sersic and Gaussian light, ellipticity conventions
  instrument  pixel grid and supersampling, Gaussian and Moffat PSF, noise model
  scenes      priors, scene sampling, rendering one scene, conversion to lenstronomy kwargs, crowded fields
  irregular   procedural irregular sources: twisted, spiral-perturbed Sersic bodies with knots and companions
  masks       the lens/arc mask rules, for numpy arrays and inside jit
  simulator   `Simulator(config, seed).render(indices)`: images, masks and parameters by index

Typical use:

  from lensjax.config import SimConfig
  from lensjax.sim import Simulator, mask_rule, masks
  batch = Simulator(SimConfig(), seed=0).render(np.arange(32))   # see Simulator.render for the contract
  masks.percentile_mask(lens_channels, 99.0)                     # original rule, numpy, (..., H, W)
  mask_rule(SimConfig()).apply(lens_channels, arc_channels)      # the configured rule -> (..., H, W, 2)

The command line `python -m lensjax.simulate --n N --out DIR` writes a dataset in the original format.
"""

from lensjax.sim import instrument, irregular, masks, profiles, scenes
from lensjax.sim.profiles import sersic_ellipse, shear_deflection, sie_deflection
from lensjax.sim.simulator import PARAM_KEYS, Simulator, check_config, mask_rule, noise_model

__all__ = ["PARAM_KEYS", "Simulator", "check_config", "instrument", "irregular", "mask_rule", "masks",
           "noise_model", "profiles", "scenes", "sersic_ellipse", "shear_deflection", "sie_deflection"]
