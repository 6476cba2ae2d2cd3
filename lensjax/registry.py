"""The model registry: one entry per network, holding everything the rest of lensjax needs to know about it.

The trainer, the config gate, the progress display, the benchmarks and `python -m lensjax.models` ask this
registry (`network(name)`) instead of comparing model names. An entry names its class (imported on first use,
so this module, `lensjax.config` and `lensjax.data` stay free of JAX), the batch entries it takes, its loss in `lensjax.losses`, the loss terms it logs and which of them says whether
the model learns, its default output weights, the option ranges it accepts and its compute dtypes.

Adding a network: write its module under `lensjax/models/` (a class following the convention documented in
`lensjax.models`, and its loss in `lensjax.losses` with the signature of `losses.isnet_batch_loss`), add one
`Network` entry to `NETWORKS` below, and a config in `configs/`.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable
from typing import Any

# Compute dtypes every network supports; parameters and BatchNorm statistics stay float32.
COMPUTE_DTYPES = ("float32", "bfloat16")


def scaled_channels(channels: int, width: float) -> int:
  """`channels * width` rounded half up, at least 1: the channel count of a `width`-scaled layer.

  Width 1.0 is the reference network; 0.125 turns IS-Net's 64-channel stem into 8 channels.
  """
  return max(1, math.floor(channels * width + 0.5))


@dataclasses.dataclass(frozen=True)
class Network:
  """What lensjax knows about one network."""
  name: str
  module: str                        # the module defining `class_name`
  class_name: str
  input_keys: tuple[str, ...]        # the batch entries the network takes, in call order (the class's
                                     # `input_keys`): `image`, `edge` (the Canny map) or `mask`
  loss_name: str                     # a function of `lensjax.losses`: (outputs, batch, target_weights,
                                     # output_weights) -> (loss, terms)
  main_loss: str                     # the logged term that says whether the model learns
  default_in_channels: int           # input channels of the original project's build (`python -m lensjax.models`)
  output_weights: tuple[float, ...] = ()   # default weights of the outputs in the loss (empty: not weighted)
  depths: tuple[int, ...] = (6,)     # the `model.depth` values it accepts
  wirings: tuple[str, ...] = ("original",)   # the `model.wiring` values it accepts
  refines: bool = False              # whether it takes `model.refine_channels` > 0 (IS-Net's `Refinement` head)
  dtypes: tuple[str, ...] = COMPUTE_DTYPES
  trainable: bool = True             # a `model.name` a config may choose (the GT encoder is built by IS-Net's
                                     # feature synchronisation only)
  gt_encoder: str | None = None      # the network feature synchronisation trains for it, if it supports it

  @property
  def cls(self) -> type:
    return getattr(importlib.import_module(self.module), self.class_name)

  @property
  def loss(self) -> Callable[..., Any]:
    return getattr(importlib.import_module("lensjax.losses"), self.loss_name)


ISNET_DEPTHS = (1, 2, 3, 4, 5, 6)
NETWORKS = {
    "isnet": Network(
        "isnet", "lensjax.models.isnet", "ISNet", input_keys=("image",), loss_name="isnet_batch_loss",
        main_loss="loss/d1", default_in_channels=3, depths=ISNET_DEPTHS, refines=True,
        gt_encoder="isnet_gt_encoder"),
    "isnet_gt_encoder": Network(
        "isnet_gt_encoder", "lensjax.models.isnet", "ISNetGTEncoder", input_keys=("mask",),
        loss_name="isnet_batch_loss", main_loss="loss/d1", default_in_channels=1, depths=ISNET_DEPTHS,
        trainable=False),
    "msrfnet": Network(
        "msrfnet", "lensjax.models.msrfnet", "MSRFNet", input_keys=("image", "edge"),
        loss_name="msrfnet_batch_loss", main_loss="loss/x", default_in_channels=1,
        output_weights=(2.0, 1.0, 1.0, 1.0), wirings=("original", "paper")),
}
MODEL_NAMES = tuple(NETWORKS)
TRAINABLE_MODEL_NAMES = tuple(name for name, entry in NETWORKS.items() if entry.trainable)


def network(name: str) -> Network:
  """The registry entry of `name`; a ValueError listing the names for an unknown one."""
  if name not in NETWORKS:
    raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(MODEL_NAMES)}")
  return NETWORKS[name]
