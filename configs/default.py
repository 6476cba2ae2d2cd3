"""The default run: a CPU-sized IS-Net learning lens and arcs masks from simulated lenses.

  python -m lensjax.train                       # into ./runs/default
  python -m lensjax.train --config.train.num_steps=200
"""

from lensjax import config as cfg


def get_config() -> cfg.Config:
  return cfg.Config(name="default")
