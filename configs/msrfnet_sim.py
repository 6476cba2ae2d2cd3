"""MSRF-Net on simulated lenses, with the original's optimizer and loss but the real masks as targets.

  python -m lensjax.train --config msrfnet_sim            # lens + arcs as two heads
  python -m lensjax.train --config msrfnet_sim:arcs       # one binary model per target, as the original
  python -m lensjax.train --config msrfnet_sim:arcs,cpu   # a CPU-sized variant (width 0.125)

The original wiring (18.6 M parameters, 7 live DSDF blocks), RMSprop 1e-4 (decay 0.9, momentum 0.9, eps 1e-7
inside the square root, as Keras), loss 2·(BCE + Dice)(x) + BCE(edge) + (BCE + Dice)(pred4) + (BCE + Dice)(pred2),
batch 4, 60,000 steps (the original's 15 epochs of 16,000 images). Inputs as the original: [0, 1] images with the
×10 arc-brightness boost applied once, and their Canny edge map. The original trained these models on their own
inputs by mistake (docs/networks.md) and reported Dice 0.13 (lens) and 0.52 (arcs); lensjax trains on
the masks. About 35 GFLOP per 128 px image forward: a GPU job.
"""

from lensjax import config as cfg

TARGETS = {"both": ("lens", "arcs"), "lens": ("lens",), "arcs": ("arcs",)}


def get_config(arg: str = "both") -> cfg.Config:
  target, options = cfg.parse_config_arg("msrfnet_sim", arg, TARGETS, flags=("cpu",), default="both")
  config = cfg.Config(name=f"msrfnet_sim_{target}" + ("_cpu" if "cpu" in options else ""))
  config.model = cfg.ModelConfig(name="msrfnet", width=1.0, wiring="original")
  config.data.targets = TARGETS[target]
  config.data.arc_boost = 10.0
  config.data.input_scaling = "unit"
  config.optim = cfg.OptimConfig(name="rmsprop", learning_rate=1e-4, decay=0.9, momentum=0.9, eps=1e-7)
  config.train.batch_size = 4
  config.train.eval_batch_size = 16
  config.train.num_steps = 60_000
  config.train.log_every = 100
  config.train.eval_every = 4_000
  config.checkpoint.every_steps = 4_000
  if "cpu" in options:
    config.model.width = 0.125
    config.train.batch_size, config.train.num_steps = 8, 1000
    config.train.eval_every = config.checkpoint.every_steps = 250
  return config
