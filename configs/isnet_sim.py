"""IS-Net on simulated lenses, as the original project trained it (docs/networks.md).

  python -m lensjax.train --config isnet_sim            # lens + arcs as two heads of one model
  python -m lensjax.train --config isnet_sim:arcs       # one binary model per target, as the original
  python -m lensjax.train --config isnet_sim:lens
  python -m lensjax.train --config isnet_sim:arcs,cpu   # a CPU-sized variant (width 0.25, depth 4)

The full network (44.0 M parameters) with one input channel, Adam 1e-3, batch 8, constant learning rate,
84,000 steps (the original's best arcs checkpoint), validation every 2,000 steps. It needs a GPU: the original's
A100 ran about 0.08 s per step (about 2 hours to 84k steps); the original reached mIoU 0.986 (lens) and 0.955
(arcs). Add `--config.train.feature_sync=true` for DIS intermediate supervision with a ground-truth encoder.
"""

from lensjax import config as cfg

TARGETS = {"both": ("lens", "arcs"), "lens": ("lens",), "arcs": ("arcs",)}


def get_config(arg: str = "both") -> cfg.Config:
  target, options = cfg.parse_config_arg("isnet_sim", arg, TARGETS, flags=("cpu",), default="both")
  config = cfg.Config(name=f"isnet_sim_{target}" + ("_cpu" if "cpu" in options else ""))
  config.model = cfg.ModelConfig(name="isnet", width=1.0, depth=6)
  config.data.targets = TARGETS[target]
  config.optim = cfg.OptimConfig(name="adam", learning_rate=1e-3)
  config.train.batch_size = 8
  config.train.num_steps = 84_000
  config.train.log_every = 100
  config.train.eval_every = 2_000
  config.checkpoint.every_steps = 2_000
  if "cpu" in options:
    config.model.width, config.model.depth = 0.25, 4
    config.train.num_steps, config.train.eval_every, config.checkpoint.every_steps = 1500, 250, 250
  return config
