"""Model summary: parameters, FLOPs and activation memory per image, and compile times, of one network.

  python -m lensjax.models isnet                      # the reference IS-Net, 3 -> 1, batch 8 of 128 x 128
  python -m lensjax.models isnet --in-channels 1 --out-channels 2 --width 0.25 --depth 4 --size 125
  python -m lensjax.models isnet_gt_encoder --in-channels 1
  python -m lensjax.models msrfnet --wiring paper
  python -m lensjax.models isnet --params-only        # counts only, no compilation

Nothing is allocated: the model is built with `nnx.eval_shape`, and both programs are lowered on abstract
inputs and compiled for the current backend (`JAX_PLATFORMS=cpu` or a GPU). The figures come from XLA's
analysis of the compiled programs, divided by the batch size (the network's options, dtypes and default input
channels come from its `lensjax.registry` entry):
- forward: the network in eval mode (running BatchNorm statistics);
- train step: the network in train mode, `nnx.value_and_grad` of a stand-in loss -- the sum, over every
  output map at the input resolution (IS-Net's side logits), of the mean sigmoid BCE-with-logits -- and an
  `optax.adam(1e-3)` update of the parameters. The project's losses (`lensjax.losses`) add little compute
  to this: IS-Net's is this sum of six BCEs (plus optional feature MSEs).
Both programs are compiled without lensjax's CPU fast paths (`layers.cpu_fast_paths(False)`): the oneDNN
convolutions are custom calls whose work XLA's cost analysis does not see, and the plain program computes the
same network, so the figures below hold for every backend and setting.
FLOPs are `compiled.cost_analysis()["flops"]`: 2 per multiply-add, plus the elementwise work (BatchNorm,
ReLU, resizing, the optimizer). XLA counts only the kernel taps that land on the input, not on zero padding,
whereas the conv-only counts in `docs/networks.md` (torch's FlopCounterMode on the upstream network) count
every tap. IS-Net's RSU-4F blocks run
dilation-8 kernels on 4 x 4 and 2 x 2 maps at 128 px, so XLA's figure is the lower one there.
Activation memory is `compiled.memory_analysis().temp_size_in_bytes`: the program's scratch buffers, i.e.
everything XLA allocates besides parameters, optimizer state, inputs and outputs. For the train step that
includes the parameter gradients (batch-independent), so per image it reads high at small batches.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lensjax import cli, registry
from lensjax import config as cfg
from lensjax.models import build, count_parameters, layers

# Channels of each batch entry a network may take (see `input_keys` in `lensjax.models`). The Canny edge
# map MSRF-Net takes is one binary channel; IS-Net's GT encoder takes the K mask channels as in_channels.
EDGE_CHANNELS = 1


def _input_channels(key: str, in_channels: int) -> int:
  return EDGE_CHANNELS if key == "edge" else in_channels


def _full_resolution_maps(outputs, batch: int, size: int) -> list[jax.Array]:
  """The output arrays at the input resolution, (B, size, size, K): the logits the stand-in loss fits."""
  return [leaf for leaf in jax.tree.leaves(outputs) if leaf.ndim == 4 and leaf.shape[:3] == (batch, size, size)]


def _lower_and_compile(function, *abstract_args) -> tuple[jax.stages.Compiled, float, float]:
  """Compiles `jax.jit(function)` for `abstract_args` without the CPU fast paths; returns (compiled, trace
  seconds, compile seconds)."""
  start = time.perf_counter()
  with layers.cpu_fast_paths(False):
    lowered = jax.jit(function).lower(*abstract_args)
  traced = time.perf_counter()
  compiled = lowered.compile()
  return compiled, traced - start, time.perf_counter() - traced


def summarize(name: str, *, in_channels: int, out_channels: int, width: float = 1.0, depth: int = 6,
              wiring: str = "original", refine_channels: int = 0, dtype: str = "float32", size: int = 128,
              batch: int = 8, params_only: bool = False) -> dict[str, float]:
  """The figures `python -m lensjax.models` prints, as a dict (FLOPs and bytes per image, times in seconds)."""
  if size < 2 or batch < 1:
    raise cfg.ConfigError(f"--size must be at least 2 and --batch at least 1, got size={size}, batch={batch}")
  options = dict(in_channels=in_channels, out_channels=out_channels, width=width, depth=depth, wiring=wiring,
                 refine_channels=refine_channels, dtype=dtype)
  model = nnx.eval_shape(lambda: build(name, **options, seed=0))
  trainable, batch_stats = count_parameters(model)
  summary = {"parameters": trainable, "batch_norm_statistics": batch_stats}
  if params_only:
    return summary

  inputs = tuple(jax.ShapeDtypeStruct((batch, size, size, _input_channels(key, in_channels)), jnp.float32)
                 for key in type(model).input_keys)

  model.eval()
  graphdef, state = nnx.split(model)

  def forward(state, inputs):
    return nnx.merge(graphdef, state)(*inputs)

  compiled, trace_s, compile_s = _lower_and_compile(forward, state, inputs)
  summary.update(forward_flops=compiled.cost_analysis()["flops"] / batch,
                 forward_activation_bytes=compiled.memory_analysis().temp_size_in_bytes / batch,
                 forward_trace_s=trace_s, forward_compile_s=compile_s)

  targets = [jax.ShapeDtypeStruct(output.shape, jnp.float32) for output in
             _full_resolution_maps(jax.eval_shape(forward, state, inputs), batch, size)]
  if not targets:
    raise ValueError(f"{name} has no output at the input resolution {size} x {size} for the stand-in loss")
  model.train()
  model_and_optimizer = (model, nnx.eval_shape(lambda: nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)))
  graphdef, state = nnx.split(model_and_optimizer)

  def train_step(state, inputs, targets):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
      outputs = model(*inputs, rngs=nnx.Rngs(dropout=0))
      logits = _full_resolution_maps(outputs, batch, size)
      return sum(optax.sigmoid_binary_cross_entropy(l, t).mean() for l, t in zip(logits, targets))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  compiled, trace_s, compile_s = _lower_and_compile(train_step, state, inputs, targets)
  summary.update(train_flops=compiled.cost_analysis()["flops"] / batch,
                 train_activation_bytes=compiled.memory_analysis().temp_size_in_bytes / batch,
                 train_trace_s=trace_s, train_compile_s=compile_s)
  return summary


def _decimal(value: float, unit: str) -> str:
  """`value` with an SI prefix: 4.392e9 FLOP -> '4.392 GFLOP'."""
  for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(value) >= scale:
      return f"{value / scale:.4g} {prefix}{unit}"
  return f"{value:.4g} {unit}"


def _binary(size: float) -> str:
  """A byte count with a binary prefix: 20656128 -> '19.7 MiB'."""
  for scale, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
    if size >= scale:
      return f"{size / scale:.4g} {prefix}"
  return f"{size:.4g} B"


def format_summary(name: str, options: dict, summary: dict[str, float]) -> str:
  """The table `python -m lensjax.models` prints for `summary` (from `summarize`) and its `options`."""
  settings = " ".join(f"{key}={value}" for key, value in options.items())
  lines = [f"{name}  {settings}",
           f"parameters: {summary['parameters']:,} trainable + {summary['batch_norm_statistics']:,} "
           f"BatchNorm statistics ({_decimal(4 * summary['parameters'], 'B')} in float32)"]
  if "forward_flops" in summary:
    lines += [
        f"per image at {options['size']} x {options['size']}, batch {options['batch']}, backend "
        f"{jax.default_backend()}:",
        f"{'':24}{'forward (eval)':>18}{'train step':>18}",
        f"{'FLOPs':24}{_decimal(summary['forward_flops'], 'FLOP'):>18}{_decimal(summary['train_flops'], 'FLOP'):>18}",
        f"{'activation memory':24}{_binary(summary['forward_activation_bytes']):>18}"
        f"{_binary(summary['train_activation_bytes']):>18}",
        f"{'trace + compile time':24}{summary['forward_trace_s']:>10.1f} + {summary['forward_compile_s']:.1f} s"
        f"{summary['train_trace_s']:>10.1f} + {summary['train_compile_s']:.1f} s",
        "train step = value_and_grad of a stand-in loss (sum of mean BCE-with-logits over the full-resolution "
        "outputs) + optax.adam update"]
  return "\n".join(lines)


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m lensjax.models", description=__doc__.split("\n\n")[0])
  parser.add_argument("name", choices=registry.MODEL_NAMES)
  parser.add_argument("--in-channels", type=int, default=None,
                      help="input channels (default: as the original project built it: 3 for isnet, 1 for "
                           "isnet_gt_encoder and msrfnet)")
  parser.add_argument("--out-channels", type=int, default=1, help="output maps K (default 1)")
  parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0, the reference)")
  parser.add_argument("--depth", type=int, default=6, help="IS-Net resolution levels, 1..6 (default 6)")
  parser.add_argument("--wiring", default="original", choices=("original", "paper"), help="MSRF-Net only")
  parser.add_argument("--refine-channels", type=int, default=0,
                      help="IS-Net only: channels of the full-resolution refinement head (default 0: none)")
  parser.add_argument("--dtype", default="float32", choices=registry.COMPUTE_DTYPES, help="compute dtype")
  parser.add_argument("--size", type=int, default=128, help="input height and width in pixels (default 128)")
  parser.add_argument("--batch", type=int, default=8, help="batch size the programs are compiled for (default 8)")
  parser.add_argument("--params-only", action="store_true", help="print the parameter counts only")
  args = parser.parse_args(argv)
  in_channels = args.in_channels or registry.network(args.name).default_in_channels
  options = dict(in_channels=in_channels, out_channels=args.out_channels, width=args.width,
                 depth=args.depth, wiring=args.wiring, refine_channels=args.refine_channels, dtype=args.dtype,
                 size=args.size, batch=args.batch)
  summary = summarize(args.name, **options, params_only=args.params_only)
  print(format_summary(args.name, options, summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
