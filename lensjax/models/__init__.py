"""The networks (Flax NNX, NHWC) and the factory that configs use to build them.

Networks:
  ISNet           IS-Net (`ISNetDIS`), `lensjax.models.isnet`
  ISNetGTEncoder  IS-Net's ground-truth encoder for feature synchronisation, `lensjax.models.isnet`
  MSRFNet         MSRF-Net, `lensjax.models.msrfnet` (imported on first use)

The model convention the training step relies on (every network follows it):
- A class attribute `input_keys: tuple[str, ...]` names the batch entries passed positionally to `__call__`:
  `("image",)` for ISNet, `("mask",)` for ISNetGTEncoder, `("image", "edge")` for MSRFNet. The step calls
  `model(*(batch[key] for key in model.input_keys))`; every input is (B, H, W, C) float, NHWC.
- `__call__(*inputs, rngs: nnx.Rngs | None = None)` returns the network's outputs (a pytree of logits and,
  for IS-Net, features); `rngs` feeds dropout only (IS-Net has none and ignores it).
- `prediction(outputs) -> jax.Array` returns the (B, H, W, K) logits of the final prediction (IS-Net: d1).
- Outputs are logits; apply the sigmoid outside (BCE-with-logits in the losses).
- BatchNorm: `model.train()` (the state after construction) uses and updates batch statistics;
  `model.eval()` or `nnx.view(model, use_running_average=True)` uses the running ones. Statistics are over
  the global batch under `jax.jit` with a batch sharded over devices (no `axis_name`).
- Parameters are float32; `dtype` is the compute dtype.

What the rest of lensjax knows about each network (its loss, logged terms, options, dtypes) is its entry in the
model registry, `lensjax.registry`. Build a network by name with `build("isnet", in_channels=1, out_channels=2, width=0.25, depth=4)`, or from
the `model` section of a config with `build_from_config(config.model, in_channels, out_channels, seed)`.
`python -m lensjax.models NAME` prints parameter counts, FLOPs, activation memory and compile times.
Upstream PyTorch IS-Net weights: `python -m lensjax.models.import_torch model.pth --out DIR` writes an Orbax
checkpoint that `lensjax.models.import_torch.load_isnet_checkpoint(DIR)` turns back into an `ISNet`.
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lensjax import registry
from lensjax.models.isnet import ISNet, ISNetGTEncoder

MODEL_NAMES = registry.MODEL_NAMES


def __getattr__(name: str) -> Any:
  # MSRFNet lives in its own module; importing it lazily keeps `lensjax.models` importable on its own.
  if name == "MSRFNet":
    return importlib.import_module("lensjax.models.msrfnet").MSRFNet
  raise AttributeError(f"module 'lensjax.models' has no attribute '{name}'")


def _model_rngs(seed: int | None, rngs: nnx.Rngs | None) -> nnx.Rngs:
  if (seed is None) == (rngs is None):
    raise ValueError("build: pass exactly one of seed= (an integer) or rngs= (an nnx.Rngs)")
  if rngs is not None:
    return rngs
  # RngBitGenerator keys ("rbg") compile their sampling much faster than threefry keys on CPU, and initialisation
  # samples once per parameter shape (docs/cpu-speed.md has the figures and the command). Initial values are
  # reproducible per seed on a given backend (not bit-identical CPU vs GPU).
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def build(name: str, *, in_channels: int, out_channels: int, width: float = 1.0, depth: int = 6,
          wiring: str = "original", refine_channels: int = 0, dtype: str | jnp.dtype = "float32",
          seed: int | None = None, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """Builds network `name` (a `lensjax.registry` name) with freshly initialised parameters.

  Args:
    in_channels: image channels (1 for the lens data, 3 for RGB); for "isnet_gt_encoder", mask channels.
    out_channels: K, the number of output maps (target masks, e.g. 2 for lens + arcs).
    width: channel multiplier; 1.0 is the reference network, 0.125-0.25 gives CPU-sized variants.
    depth: IS-Net only: resolution levels, 1..6 (6 is the reference; see `lensjax.models.isnet`).
    wiring: MSRF-Net only: "original" (the released code, 7 live DSDF blocks) or "paper" (all 10).
    refine_channels: IS-Net only: channels of its full-resolution `Refinement` head; 0 (the reference) leaves
      it out.
    dtype: compute dtype, one of the network's registry dtypes (float32, bfloat16); parameters are float32.
    seed, rngs: the initialisation randomness; exactly one of them.
  Returns:
    The network in train mode (BatchNorm uses batch statistics); call `.eval()` for inference.
  """
  network = registry.network(name)
  dtype_name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  for option, value, accepted in (("depth", depth, network.depths), ("wiring", wiring, network.wirings),
                                  ("dtype", dtype_name, network.dtypes)):
    if value not in accepted:
      raise ValueError(f"build: {option}={value!r} is not an option of {name}; choose one of "
                       f"{', '.join(map(repr, accepted))}")
  if refine_channels and not network.refines:
    raise ValueError(f"build: refine_channels={refine_channels!r} is not an option of {name}; leave it 0")
  options = dict(width=width, dtype=jnp.dtype(dtype_name), rngs=_model_rngs(seed, rngs))
  if network.refines:
    options["refine_channels"] = refine_channels
  if len(network.depths) > 1:
    options["depth"] = depth
  if len(network.wirings) > 1:
    options["wiring"] = wiring
  return network.cls(in_channels, out_channels, **options)


def build_from_config(model_config, in_channels: int, out_channels: int, seed: int) -> nnx.Module:
  """Builds the network a `lensjax.config.ModelConfig` describes; see `build` for the arguments."""
  return build(model_config.name, in_channels=in_channels, out_channels=out_channels, width=model_config.width,
               depth=model_config.depth, wiring=model_config.wiring,
               refine_channels=model_config.refine_channels, dtype=model_config.dtype, seed=seed)


def count_parameters(model: nnx.Module) -> tuple[int, int]:
  """(trainable parameters, BatchNorm statistics) of `model`, which may be abstract (`nnx.eval_shape`)."""
  def total(variable_type) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, variable_type)))
  return total(nnx.Param), total(nnx.BatchStat)


__all__ = ["ISNet", "ISNetGTEncoder", "MSRFNet", "MODEL_NAMES", "build", "build_from_config", "count_parameters"]
