"""Per convolution shape: oneDNN's kernels against XLA's, forward + input gradient + kernel gradient, on CPU.

  python -m benchmarks.conv_paths                      # IS-Net's and MSRF-Net's 3x3 shapes at 128 px, batch 8
  python -m benchmarks.conv_paths --batch-size 4 --repeats 20

For each (map size, in channels, out channels) the paths (`layers.cpu_fast_paths(True, onednn=...,
small_maps=False)`, and on the small maps where `layers.conv_general_dilated` takes it, the patch matmul) are
timed alternately on one jitted function computing the convolution and both its gradients, and the table gives
the medians and XLA time / oneDNN time. Writes JSON like the other benchmarks.
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lensjax import cli
from lensjax.models import layers, onednn

# (map side in px, in channels, out channels): the 3x3 convolutions of the networks at 128 px, width 1 and 0.25.
SHAPES = ((128, 16, 16), (128, 64, 16), (128, 32, 32), (128, 64, 64), (64, 8, 8), (64, 16, 16), (64, 32, 32),
          (64, 64, 64), (64, 128, 32), (64, 128, 128), (32, 16, 16), (32, 32, 32), (32, 64, 64), (32, 256, 64),
          (32, 256, 256), (16, 64, 64), (16, 128, 128), (16, 512, 128), (16, 512, 512), (8, 128, 128),
          (8, 512, 256), (8, 512, 512), (4, 512, 256), (4, 512, 512), (4, 1024, 512), (2, 512, 256),
          (2, 512, 512))


def timed_pair(side: int, cin: int, cout: int, batch: int, repeats: int) -> dict[str, float]:
  """Median seconds of conv + dX + dW on each path, calls alternating."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)) * 0.1, jnp.float32)
  g = jnp.asarray(rng.normal(size=(batch, side, side, cout)), jnp.float32)

  def build(use_onednn: bool, small_maps: bool = False):
    with layers.cpu_fast_paths(True, onednn=use_onednn, small_maps=small_maps):
      def loss(x, w):
        y = layers.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(y * g)
      return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w)

  programs = {"xla": build(False).compile(), "onednn": build(True).compile()}
  patches = build(True, small_maps=True)       # compiled only where the layer takes the patch matmul
  if "convolution" not in (text := patches.as_text()) and "custom_call" not in text:
    programs["patches"] = patches.compile()
  times = {name: [] for name in programs}
  for _ in range(2):
    for program in programs.values():
      jax.block_until_ready(program(x, w))
  for _ in range(repeats):
    for name, program in programs.items():
      start = time.perf_counter()
      jax.block_until_ready(program(x, w))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.ArgumentParser(prog="python -m benchmarks.conv_paths", description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch-size", type=int, default=8, help="images per call (default 8)")
  parser.add_argument("--repeats", type=int, default=10, help="timed alternating calls per shape (default 10)")
  parser.add_argument("--out", default=None, help="record path (default runs/benchmarks/conv_paths-*.json)")
  args, _ = cli.parse(parser, argv)
  if not onednn.available():
    parser.exit(2, f"error: the oneDNN kernels are not available ({onednn.status()}); build them with pip install "
                   "-e . (docs/cpu-speed.md)\n")
  rows = []
  print(f"{platform.processor() or platform.machine()}; batch {args.batch_size}; fwd + dX + dW of a 3x3 conv")
  print("| map | in x out | XLA | oneDNN | XLA / oneDNN | patch matmul (small maps) | oneDNN / patch matmul |\n"
        "|---|---|---|---|---|---|---|")
  for side, cin, cout in SHAPES:
    medians = timed_pair(side, cin, cout, args.batch_size, args.repeats)
    rows.append(dict(side=side, in_channels=cin, out_channels=cout, **medians))
    patches = (f"{medians['patches'] * 1e3:.2f} ms | {medians['onednn'] / medians['patches']:.2f}x"
               if "patches" in medians else "- | -")
    print(f"| {side}² | {cin} x {cout} | {medians['xla'] * 1e3:.2f} ms | {medians['onednn'] * 1e3:.2f} ms | "
          f"{medians['xla'] / medians['onednn']:.2f}x | {patches} |", flush=True)
  out = pathlib.Path(args.out or f"runs/benchmarks/conv_paths-{time.strftime('%Y%m%d-%H%M%S')}.json")
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(batch_size=args.batch_size, repeats=args.repeats, rows=rows), indent=1) + "\n")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
