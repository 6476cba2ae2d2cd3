"""Where a training step's time goes: XLA's HLO ops of the compiled step, timed by the JAX profiler.

  python -m benchmarks.profile_step                                  # the default config's step, 5 profiled steps
  python -m benchmarks.profile_step --config isnet_sim:lens --steps 3 --top 25
  python -m benchmarks.profile_step --config msrfnet_sim:lens --batch-size 4 --config.model.width=0.5
  python -m benchmarks.profile_step --infer                          # the eval-mode forward instead
  python -m benchmarks.profile_step --plain                          # without lensjax's CPU fast paths
  python -m benchmarks.profile_step --compare-plain --no-onednn      # the fast paths with XLA's convolutions

It compiles the real training step (`lensjax.train_step.compile_train_step`) on a random batch with the shapes
of the config's batches, runs `--warmup` steps, then `--steps` steps under `jax.profiler.trace`, and reads the
trace back (`jax.profiler.ProfileData`). Each event is an HLO instruction of the compiled program (a
convolution, a dot, a fusion of elementwise ops, a copy, ...); its instruction in `compiled.as_text()` says
what it is:
- direction: `backward` when JAX's metadata names a transpose (reverse-mode) of the op, `forward` when it
  names the forward of a differentiated function, else `other` (the optax update, metrics, the eval forward,
  and instructions XLA made without metadata, such as its rewrite of the max-pool gradient);
- kind: `conv` (forward), `conv dX` (input gradient), `conv dW` (weight gradient: a backward conv whose window
  is larger than its result, a whole feature map), `oneDNN conv`, `oneDNN conv dX`, `oneDNN conv dW` (the custom
  calls of `lensjax.models.onednn`), `dot`, `select-and-scatter`
  (max-pool gradient), `reduce-window`, `fusion:<ops in it>` for fusions, else the opcode.
Prints the time per (direction, kind) and the `--top` instructions, and writes JSON (`--out`). With
`--compare-plain` it also compiles the same program with lensjax's CPU fast paths turned off and times the two
alternately (`--steps` x 2 calls each): the A/B ratio of the fast paths on this machine.
"""

from __future__ import annotations

import collections
import datetime
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Any

import numpy as np

from lensjax import cli

SCHEMA = "lensjax.profile_step/1"
# `%name = f32[8,64,64,32]{3,2,1,0} opcode(...), ..., metadata={op_name="..."}` in `compiled.as_text()`.
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s+(?P<opcode>[\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="(?P<op_name>[^"]*)"')
_WINDOW = re.compile(r"window=\{size=(?P<size>[0-9x]+)")
_CALLS = re.compile(r"calls=%?(?P<callee>[\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="(?P<target>[^"]*)"')
# The kinds of lensjax's oneDNN convolutions (`lensjax.models.onednn`), custom calls in the HLO.
_ONEDNN_KINDS = {"lensjax_onednn_conv_forward": "oneDNN conv", "lensjax_onednn_conv_backward_data": "oneDNN conv dX",
                 "lensjax_onednn_conv_backward_weights": "oneDNN conv dW"}
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_INTERESTING_FUSED = ("convolution", "dot", "reduce-window", "select-and-scatter", "reduce", "scatter", "gather",
                      "transpose", "concatenate", "pad")


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """{instruction name: {opcode, shape, op_name, out_labels, fused}} for every instruction of an HLO module;
  `fused` lists the notable opcodes inside a fusion's computation."""
  computations: dict[str, list[str]] = collections.defaultdict(list)
  instructions = {}
  current = None
  for line in text.splitlines():
    header = _COMPUTATION.match(line)
    if header and "=" not in line.split("{")[0]:
      current = header["name"]
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    op_name = _OP_NAME.search(line)
    window = _WINDOW.search(line)
    callee = _CALLS.search(line)
    target = _TARGET.search(line)
    instructions[match["name"]] = {
        "opcode": match["opcode"], "shape": match["shape"].split("{")[0],
        "op_name": op_name["op_name"] if op_name else "",
        "window": _area(window["size"]) if window else None, "callee": callee["callee"] if callee else None,
        "target": target["target"] if target else None}
    if current is not None:
      computations[current].append(match["name"])
  for info in instructions.values():
    if info["opcode"] == "fusion" and info["callee"]:
      fused = [instructions[name] for name in computations.get(info["callee"], []) if name in instructions]
      info["fused"] = sorted({op["opcode"] for op in fused if op["opcode"] in _INTERESTING_FUSED})
      windows = [op["window"] for op in fused if op["opcode"] == "convolution" and op["window"]]
      info["window"] = windows[0] if windows else None
  return instructions


def _area(size: str) -> int:
  return int(np.prod([int(n) for n in size.split("x")]))


def _spatial_area(shape: str) -> int:
  """The product of the dimensions between the first and the last of an HLO array shape `f32[8,64,64,32]`."""
  dims = [int(n) for n in re.findall(r"\d+", shape.split("[", 1)[-1].split("]")[0])]
  return int(np.prod(dims[1:-1])) if len(dims) > 2 else 1


def classify(info: dict[str, Any]) -> tuple[str, str]:
  """(direction, kind) of one HLO instruction (see the module docstring)."""
  op_name = info["op_name"]
  if "transpose(" in op_name:
    direction = "backward"
  elif "jvp(" in op_name:
    direction = "forward"
  else:
    direction = "other"
  opcode = info["opcode"]
  fused = info.get("fused", [])
  if info.get("target") in _ONEDNN_KINDS:
    kind = _ONEDNN_KINDS[info["target"]]
    direction = "backward" if kind != "oneDNN conv" else direction
  elif opcode == "convolution" or "convolution" in fused:
    if direction != "backward":
      kind = "conv"
    else:
      # A kernel gradient slides the output gradient over the input: its window is a whole feature map.
      window = info.get("window") or 1
      kind = "conv dW" if window > _spatial_area(info["shape"]) else "conv dX"
  elif opcode == "fusion":
    kind = "fusion:" + ("+".join(fused) if fused else "elementwise")
  else:
    kind = opcode
  return direction, kind


def profile_events(trace_dir: str) -> dict[str, float]:
  """Total seconds per event name in the trace written under `trace_dir`."""
  from jax.profiler import ProfileData
  totals: dict[str, float] = collections.defaultdict(float)
  files = sorted(pathlib.Path(trace_dir).rglob("*.xplane.pb"))
  if not files:
    raise RuntimeError(f"jax.profiler.trace wrote no *.xplane.pb under {trace_dir}")
  data = ProfileData.from_file(str(files[-1]))
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        totals[event.name] += event.duration_ns * 1e-9
  return totals


def parse_args(argv: list[str]):
  parser = cli.ArgumentParser(prog="python -m benchmarks.profile_step", description=__doc__.split("\n\n")[0])
  cli.add_config_argument(parser)
  parser.add_argument("--batch-size", type=int, default=None, help="default: config.train.batch_size")
  parser.add_argument("--steps", type=int, default=5, help="profiled steps (default 5)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
  parser.add_argument("--top", type=int, default=20, help="instructions listed (default 20)")
  parser.add_argument("--image-size", type=int, default=128, help="pixels per side of the batch (default 128)")
  parser.add_argument("--infer", action="store_true", help="profile the eval-mode forward, not the training step")
  parser.add_argument("--plain", action="store_true",
                      help="profile the program traced without lensjax's CPU fast paths (the 'before')")
  parser.add_argument("--compare-plain", action="store_true",
                      help="also time the program traced without lensjax's CPU fast paths "
                           "(`lensjax.models.layers.cpu_fast_paths(False)`), alternating with the fast one")
  parser.add_argument("--no-onednn", action="store_true",
                      help="keep XLA's convolutions where oneDNN's would run (`cpu_fast_paths(..., onednn=False)`)")
  parser.add_argument("--out", default=None, help="JSON path (default runs/benchmarks/profile_step-*.json)")
  args, config = cli.parse_with_config(parser, argv)
  if args.steps < 1 or args.warmup < 1:
    parser.error("--steps and --warmup must be at least 1")
  if args.batch_size:
    config.train.batch_size = args.batch_size
  return args, config


def compiled_call(config, image_size: int, infer: bool):
  """(the compiled program, a function running it once and waiting for it)."""
  from benchmarks import vs_torch
  from lensjax import data

  part = vs_torch.Part("profile", "", config.model.name, config.model.width, config.model.depth,
                       data.input_channels(config), len(config.data.targets), config.train.batch_size,
                       image_size)
  phase = "infer" if infer else "train"
  programs, _ = vs_torch.compile_programs(config, vs_torch.random_batch(part), (phase,))
  compiled, run, _ = programs[phase]
  return compiled, run


def compare(run_plain, run_fast, calls: int, warmup: int) -> dict[str, float]:
  """Median seconds of `calls` calls of each program, alternating plain, fast, plain, ..."""
  for _ in range(warmup):
    run_plain()
    run_fast()
  plain, fast = [], []
  for _ in range(calls):
    for run, times in ((run_plain, plain), (run_fast, fast)):
      start = time.perf_counter()
      run()
      times.append(time.perf_counter() - start)
  return {"plain_s": float(np.median(plain)), "fast_s": float(np.median(fast)),
          "speedup": float(np.median(plain) / np.median(fast)), "calls": calls}


@cli.command
def main(argv: list[str]) -> int:
  import jax
  args, config = parse_args(argv)
  from benchmarks import vs_torch
  from lensjax.models import layers
  with layers.cpu_fast_paths(not args.plain, onednn=not args.no_onednn):
    compiled, run = compiled_call(config, args.image_size, args.infer)
  instructions = parse_hlo(compiled.as_text())
  comparison = None
  if args.compare_plain:
    with layers.cpu_fast_paths(False):
      _, run_plain = compiled_call(config, args.image_size, args.infer)
    comparison = compare(run_plain, run, 2 * args.steps, args.warmup)
    print(f"plain {comparison['plain_s'] * 1e3:.1f} ms, fast paths {comparison['fast_s'] * 1e3:.1f} ms per call "
          f"(medians of {2 * args.steps}, alternating): {comparison['speedup']:.2f}x")
  for _ in range(args.warmup):
    run()
  with tempfile.TemporaryDirectory(prefix="lensjax-profile-") as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(args.steps):
        run()
    wall = (time.perf_counter() - start) / args.steps
    events = profile_events(trace_dir)

  by_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
  ops = []
  for name, seconds in events.items():
    info = instructions.get(name)
    if info is None:
      continue
    direction, kind = classify(info)
    per_step = seconds / args.steps
    by_kind[(direction, kind)] += per_step
    ops.append({"name": name, "direction": direction, "kind": kind, "shape": info["shape"],
                "op_name": info["op_name"][-120:], "seconds_per_step": per_step})
  ops.sort(key=lambda op: -op["seconds_per_step"])
  op_total = sum(by_kind.values())
  print(f"{config.name}: {'eval-mode forward' if args.infer else 'training step'}, batch "
        f"{config.train.batch_size}: {wall * 1e3:.1f} ms per step (wall, profiled), {op_total * 1e3:.1f} ms in "
        f"HLO ops (summed over threads and ops run side by side)")
  print("\n| direction | kind | ms per step | share |\n|---|---|---|---|")
  for (direction, kind), seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
    print(f"| {direction} | {kind} | {seconds * 1e3:.1f} | {seconds / op_total:.1%} |")
  print(f"\n| top {args.top} instructions | direction | kind | result | ms per step |\n|---|---|---|---|---|")
  for op in ops[:args.top]:
    print(f"| {op['name']} | {op['direction']} | {op['kind']} | {op['shape']} | {op['seconds_per_step'] * 1e3:.2f} |")
  record = {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": ["python", "-m", "benchmarks.profile_step", *argv], "config_name": config.name,
            "program": "infer" if args.infer else "train",
            "cpu_fast_paths": not args.plain, "onednn": vs_torch.onednn_status(args.plain or args.no_onednn),
            "wall_s_per_step": wall, "op_s_per_step": op_total,
            "by_kind": [{"direction": d, "kind": k, "seconds_per_step": s} for (d, k), s in by_kind.items()],
            "compare_plain": comparison, "ops": ops}
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  out = pathlib.Path(args.out) if args.out else pathlib.Path("runs/benchmarks") / f"profile_step-{stamp}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2) + "\n")
  print(f"\nwrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
