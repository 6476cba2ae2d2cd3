"""CHAOS organ segmentation from PNG slices, as the original project's medical run (docs/networks.md).

  python -m lensjax.data check data/chaos                       # validate the folders first
  python -m lensjax.train --config chaos:isnet --config.data.path=data/chaos
  python -m lensjax.train --config chaos:msrfnet --config.data.path=data/chaos
  python -m lensjax.train --config chaos:isnet,organs --config.data.path=data/chaos   # 4 MR organs as 4 heads
  python -m lensjax.train --config chaos:isnet,cpu --config.data.path=data/chaos      # CPU-sized

Layout: `{train,val,test}/images/*.png` with `masks/*.png` of the same names (0/255 or 0/1 masks, or CHAOS MR
grey levels); for the native CHAOS download use `--config.data.source=chaos`. As the original: RGB input resized
to 256 px, one foreground target; IS-Net with Adam 1e-3 at batch 8, MSRF-Net with RMSprop 1e-4 at batch 4 for 10
epochs of about 3,000 slices. The original reported Dice 0.963 (IS-Net) and 0.949 (MSRF-Net).
"""

from lensjax import config as cfg

ORGANS = ("liver", "right_kidney", "left_kidney", "spleen")


def get_config(arg: str = "isnet") -> cfg.Config:
  model, options = cfg.parse_config_arg("chaos", arg, ("isnet", "msrfnet"), flags=("organs", "cpu"))
  config = cfg.Config(name=f"chaos_{model}" + ("_organs" if "organs" in options else "")
                      + ("_cpu" if "cpu" in options else ""))
  config.data.source = "png"
  config.data.path = "data/chaos"
  config.data.targets = ORGANS if "organs" in options else ("foreground",)
  config.data.resize_to = 256
  config.data.pad_to = 0
  config.data.input_channels = 3
  config.data.augment = "hflip"
  if model == "isnet":
    config.model = cfg.ModelConfig(name="isnet", width=1.0, depth=6)
    config.optim = cfg.OptimConfig(name="adam", learning_rate=1e-3)
    config.data.input_scaling = "centered"
    config.train.batch_size, config.train.num_steps = 8, 4_000
  else:
    config.model = cfg.ModelConfig(name="msrfnet", width=1.0, wiring="original")
    config.optim = cfg.OptimConfig(name="rmsprop", learning_rate=1e-4, decay=0.9, momentum=0.9, eps=1e-7)
    config.data.input_scaling = "unit"
    config.train.batch_size, config.train.num_steps = 4, 7_500
  config.train.eval_batch_size = 16
  config.train.eval_every = config.checkpoint.every_steps = 500
  if "cpu" in options:
    config.model.width = 0.25 if model == "isnet" else 0.125
    if model == "isnet":
      config.model.depth = 4
    config.data.resize_to = 128
    config.train.num_steps = 1000
  return config
