"""The default run: a CPU-sized IS-Net learning the lens and arcs masks of simulated lenses at once.

  python -m lensjax.train                                  # into ./runs/default, about 10 minutes on 2 cores
  python -m lensjax.train --config.train.num_steps=300     # a quicker look

This is `isnet_sim:both,cpu`: IS-Net at width 0.25 and depth 4 (0.37 M parameters instead of 44 M), one input
channel (the observed image), two multi-label heads (lens, arcs), the original's Adam 1e-3 at batch 8, on an
unbounded stream of simulated 125 -> 128 px lenses (half of them non-lenses without arcs).
"""

from lensjax import config as cfg


def get_config() -> cfg.Config:
  config = cfg.load_module_config("isnet_sim:both,cpu")
  config.name = "default"
  return config
