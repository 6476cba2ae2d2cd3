"""Training and evaluation throughput of a lensjax config on 1..N devices, processes and nodes.

  python -m benchmarks.throughput --config default                    # every visible device, this process
  python -m benchmarks.throughput --devices 1,2,4 --scaling strong    # a sweep: one subprocess per point,
                                                                      # JAX_NUM_CPU_DEVICES=n on CPU
  python -m benchmarks.throughput --devices 2,4 --processes 2         # each point as 2 local processes
  python -m benchmarks.throughput --devices 1,2,4 --processes 1,2     # both: every count that splits
  srun -n 8 python -m benchmarks.throughput --scaling weak --batch-size 8   # under Slurm (jax.distributed)
  python -m benchmarks.throughput --config default --config.model.name=msrfnet --config.model.width=0.25

Per point (one device count, one process count):
  * the real train state (`lensjax.train_step.create_train_state`) and the real jitted steps
    (`lensjax.train_step.compile_train_step` / `compile_eval_step`; with `train.feature_sync`, IS-Net's stage-2
    step against a ground-truth encoder), compiled ahead of time with the compile time reported apart, the
    training steps run by the training loop itself (`lensjax.step_loop.run_steps`);
  * a synthetic batch with the shapes and dtypes of the real pipeline's batch, placed on the devices once, so the
    step and not the input is timed; `--warmup` untimed steps, then `--steps` (>= 20) timed ones, each one
    waited for: median and spread (10th/90th percentile, min, max) of the step time, images/s in total and per
    device. In a multi-process run each process times its own part; a step's time is the slowest process's;
  * FLOPs per image from XLA's cost analysis of the compiled step (`compiled.cost_analysis()` is per device:
    FLOPs x devices / global batch, so replicated work such as the optimizer update counts once per device),
    the achieved FLOP/s and the fraction of a peak: the nominal dense peak of
    the GPU (A100, H100, H200; TF32 for float32, as JAX computes float32 convolutions on them by default), or on
    CPU a matmul probe run over the same devices in the same process;
  * peak device memory: `device.memory_stats()['peak_bytes_in_use']` where the backend keeps it (GPU), else
    the compiled step's buffers from `compiled.memory_analysis()` (arguments + outputs - aliased + temporaries);
  * the collectives in the compiled step's HLO (`compiled.as_text()`): count and bytes (result sizes) of
    all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute;
  * the real input pipeline (`lensjax.data.make_loader`, the train split of the same config, this process's
    share of the batch) timed over `--input-batches` batches on every process, and whether it keeps up with the
    training step (the slowest process's images/s >= the step's images/s per process).

Scaling: `--scaling strong` keeps the global batch at `--batch-size` for every device count; `--scaling weak`
keeps `--batch-size` per device (global = batch x devices). Default batch: `config.train.batch_size`.
CPU "devices" made with JAX_NUM_CPU_DEVICES share the host's cores, so a CPU strong-scaling sweep measures the
overhead of splitting the step (and the collectives), not a speed-up; records say so (`hardware.note`).

One JSON record per run (all points of a sweep), written by process 0 to `--out`: the command, hardware (CPU
model, GPU name, hosts), versions, the resolved config and the points. `benchmarks/report.py` turns records into
tables and figures. Timings on a shared machine vary with other jobs: the load average is recorded before and
after.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.report import SCHEMA
from lensjax import cli, parallel
from lensjax import config as cfg

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
MIN_TIMED_STEPS = 20

# Nominal dense peaks per GPU in FLOP/s, from NVIDIA's data sheets, for the compute dtype of the model config.
# float32 maps to the TF32 tensor-core peak: on Ampere and later, JAX's default precision runs float32
# convolutions and matmuls in TF32. Keys are matched against `device.device_kind`, most specific first.
GPU_PEAK_FLOPS = (
    ("H100 PCIe", {"float32": 378e12, "bfloat16": 756e12}),
    ("H100", {"float32": 494.7e12, "bfloat16": 989.4e12}),     # SXM5
    ("H200", {"float32": 494.7e12, "bfloat16": 989.4e12}),
    ("A100", {"float32": 156e12, "bfloat16": 312e12}),         # SXM4 and PCIe, 40 and 80 GB
)

COLLECTIVE_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_HLO_BYTES_PER_ELEMENT = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                          "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# `%name = SHAPE op(`, `op-start(` or `op-done(`: asynchronous collectives (GPU) are counted at their start and
# sized by their done, whose result is the collective's output.
_COLLECTIVE_LINE = re.compile(
    r"=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVE_OPS) + r")(?P<phase>-start|-done)?\(")
_HLO_ARRAY = re.compile(r"\b(?P<dtype>[a-z][a-z0-9]*)\[(?P<dims>[0-9,]*)\]")


# ---------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, cfg.Config]:
  """The options and the resolved config."""
  parser = cli.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0])
  cli.add_config_argument(parser)
  parser.add_argument("--devices", default=None,
                      help="comma-separated device counts for a sweep (one subprocess group per count); "
                           "default: measure once on every visible device")
  parser.add_argument("--processes", default="1",
                      help="comma-separated local process counts of a sweep (jax.distributed on localhost; "
                           "default 1); each is paired with every --devices count that it divides")
  parser.add_argument("--scaling", choices=("strong", "weak"), default="strong",
                      help="strong: --batch-size is the global batch; weak: --batch-size is per device")
  parser.add_argument("--batch-size", type=int, default=None, help="default: config.train.batch_size")
  parser.add_argument("--steps", type=int, default=MIN_TIMED_STEPS, help=f"timed steps (>= {MIN_TIMED_STEPS})")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation (default 2)")
  parser.add_argument("--input-batches", type=int, default=10,
                      help="batches of the real input pipeline timed after its first (default 10)")
  parser.add_argument("--no-eval", action="store_true", help="skip the evaluation-step measurement")
  parser.add_argument("--out", default=None, help="record path (default runs/benchmarks/throughput-*.json)")
  parser.add_argument("--timeout", type=float, default=3600, help="seconds per sweep point (default 3600)")
  cli.add_process_arguments(parser)
  args, config = cli.parse_with_config(parser, argv)
  if args.steps < MIN_TIMED_STEPS:
    parser.error(f"--steps={args.steps}: time at least {MIN_TIMED_STEPS} steps for a median and a spread")
  if args.warmup < 1:
    parser.error(f"--warmup={args.warmup}: run at least one untimed step after compilation")
  if args.input_batches < 0:
    parser.error(f"--input-batches={args.input_batches}: expected a count >= 0")
  if args.batch_size is None:
    args.batch_size = config.train.batch_size
  if args.batch_size < 1:
    parser.error(f"--batch-size={args.batch_size}: expected a positive number of images")
  return args, config


def _counts(option: str, text: str) -> list[int]:
  try:
    counts = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise ValueError(f"{option}={text!r}: expected comma-separated positive counts such as 1,2,4")
  return counts


def sweep_points(devices: str, processes: str, batch_size: int, scaling: str) -> list[tuple[int, int]]:
  """(processes, devices) of a sweep from `--devices` ('1,2,4') and `--processes` ('1,2').

  Every process count is paired with each device count that it divides (a process count that divides none is an
  error); for strong scaling every device count must divide the global batch.
  """
  device_counts, process_counts = _counts("--devices", devices), _counts("--processes", processes)
  if scaling == "strong":
    for count in device_counts:
      if batch_size % count:
        raise ValueError(f"--batch-size={batch_size} (the global batch of a strong-scaling sweep) is not divisible "
                         f"by {count} devices; choose a batch that every count in --devices divides")
  points = []
  for process_count in process_counts:
    splits = [(process_count, count) for count in device_counts if count % process_count == 0]
    if not splits:
      raise ValueError(f"--processes={process_count}: none of --devices={devices} splits over {process_count} "
                       f"processes; use device counts that are multiples of it")
    points.extend(splits)
  return points


# ---------------------------------------------------------------------------------------------------------------
# Measurements that need no devices


def step_time_stats(seconds: np.ndarray) -> dict[str, float]:
  """Median and spread of step times (seconds)."""
  seconds = np.asarray(seconds, np.float64)
  p10, median, p90 = np.percentile(seconds, [10, 50, 90])
  return {"median": float(median), "p10": float(p10), "p90": float(p90), "min": float(seconds.min()),
          "max": float(seconds.max()), "mean": float(seconds.mean()), "count": int(seconds.size)}


def hlo_collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """Count and bytes of each collective in an HLO module's text (e.g. `compiled.as_text()`).

  Bytes are the sizes of the collectives' results, per device: an all-reduce's reduced arrays, an all-gather's
  gathered ones, a reduce-scatter's scattered shard. Returns {op: {"count": int, "bytes": int}} for every op in
  `COLLECTIVE_OPS`, zeros included.
  """
  found = {op: {"count": 0, "bytes": 0} for op in COLLECTIVE_OPS}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE_LINE.search(line)
    if not match:
      continue
    entry = found[match["op"]]
    if match["phase"] != "-done":
      entry["count"] += 1
    if match["phase"] != "-start":
      entry["bytes"] += sum(_array_bytes(m["dtype"], m["dims"]) for m in _HLO_ARRAY.finditer(match["shape"]))
  return found


def _array_bytes(dtype: str, dims: str) -> int:
  if dtype.startswith("f8"):        # the float8 variants (f8e4m3fn, f8e5m2, ...)
    dtype = "u8"
  if dtype not in _HLO_BYTES_PER_ELEMENT:
    raise ValueError(f"HLO element type {dtype!r} has no known size; add it to _HLO_BYTES_PER_ELEMENT")
  return _HLO_BYTES_PER_ELEMENT[dtype] * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))


def gpu_peak_flops(device_kind: str, dtype: str) -> tuple[float | None, str]:
  """(nominal dense peak FLOP/s of one GPU for the compute `dtype`, where the figure comes from)."""
  for key, peaks in GPU_PEAK_FLOPS:
    if key in device_kind:
      kind = "TF32 tensor core" if dtype == "float32" else f"{dtype} tensor core"
      return peaks[dtype], f"nominal {key} {kind} dense peak (NVIDIA data sheet)"
  return None, f"no nominal peak known for {device_kind!r}"


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
  from importlib import metadata
  from lensjax import host_memory
  found = {"python": platform.python_version(), "host_memory": host_memory.status()}
  for package in ("jax", "jaxlib", "flax", "optax", "grain", "orbax-checkpoint", "numpy"):
    try:
      found[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      found[package] = "not installed"
  try:
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    found["lensjax_commit"] = commit + ("+modified" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    found["lensjax_commit"] = "unknown (not a git checkout)"
  return found


def node_name() -> str:
  """The Slurm node this process runs on (emulated nodes share a host), else the host name."""
  return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


# ---------------------------------------------------------------------------------------------------------------
# One point: this process and its peers


def synthetic_batch(example_batch: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
  """Random arrays with the shapes and dtypes of a real batch: binary where the real one is 0/1 (masks, edges,
  `valid`), else normal with the real array's mean and standard deviation (images)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for key, value in example_batch.items():
    value = np.asarray(value)
    if value.dtype.kind != "f":
      batch[key] = value.copy()
    elif np.isin(value, (0.0, 1.0)).all():
      batch[key] = (rng.random(value.shape) < max(value.mean(), 0.05)).astype(value.dtype)
    else:
      batch[key] = rng.normal(value.mean(), value.std() + 1e-6, value.shape).astype(value.dtype)
  return batch


def _allgather(values: np.ndarray) -> np.ndarray:
  """(processes, ...) stack of every process's `values`, through the devices: float32, int32 or uint8 only
  (without jax_enable_x64, wider types would be narrowed on the way)."""
  import jax
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return np.asarray(values)[None]
  return np.asarray(multihost_utils.process_allgather(np.asarray(values)))


def _allgather_strings(text: str, width: int = 128) -> list[str]:
  encoded = np.zeros(width, np.uint8)
  raw = text.encode()[:width]
  encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
  return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in _allgather(encoded)]


def time_input_pipeline(config: cfg.Config, per_process_batch: int, batches: int) -> tuple[dict, dict]:
  """Times this process's train loader; returns (timings, the first batch)."""
  from lensjax import data
  start = time.perf_counter()
  iterator = iter(data.make_loader(config, "train", batch_size=per_process_batch, shuffle=True, num_epochs=None,
                                   seed=config.train.seed))
  first = next(iterator)
  first_batch_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  del iterator     # stop its prefetch threads before the step is timed
  timings = {"first_batch_s": first_batch_s, "batches": batches, "per_process_batch": per_process_batch,
             "images_per_s": batches * per_process_batch / seconds if batches else None}
  return timings, first


def _time_steps(run_step, count: int) -> np.ndarray:
  """Wall seconds of the calls `run_step(0)` ... `run_step(count - 1)`, each waited for."""
  import jax
  seconds = np.empty(count)
  for i in range(count):
    start = time.perf_counter()
    jax.block_until_ready(run_step(i))
    seconds[i] = time.perf_counter() - start
  return seconds


def matmul_probe(mesh, size: int = 1024, repeats: int = 5) -> dict[str, float]:
  """FLOP/s of a float32 (size x size) @ (size x size) matmul on every device of `mesh` at once (best of
  `repeats`): what the host's cores deliver to dense math, the CPU peak that step FLOP/s are compared with."""
  import jax
  import jax.numpy as jnp
  n = mesh.size
  sharding = parallel.batch_sharding(mesh)
  local = np.random.default_rng(0).random((n // jax.process_count(), size, size), dtype=np.float32)
  a = jax.make_array_from_process_local_data(sharding, local)
  multiply = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x), out_shardings=sharding)
  jax.block_until_ready(multiply(a))
  best = min(_time_steps(lambda _: multiply(a), repeats))
  return {"flops_per_s": 2.0 * n * size ** 3 / best, "size": size, "devices": n, "seconds": float(best)}


def _memory(compiled, devices) -> dict[str, Any]:
  stats = [d.memory_stats() for d in devices]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return {"peak_bytes": int(max(s["peak_bytes_in_use"] for s in stats)),
            "source": "device.memory_stats()['peak_bytes_in_use'] since the process started (simulator renders "
                      "included), max over devices"}
  analysis = compiled.memory_analysis()
  total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
           + analysis.temp_size_in_bytes)
  return {"peak_bytes": int(total),
          "source": "compiled.memory_analysis(): arguments + outputs - aliased + temporaries, per device"}


def _phase_record(compiled, seconds: np.ndarray, compile_s: float, trace_s: float, global_batch: int,
                  num_devices: int, peak: float | None, counted=None) -> dict[str, Any]:
  """The figures of one timed program (train or eval step) from every process's step times (P, steps); FLOPs
  from `counted` (the same step compiled without the CPU fast paths, see `plain_compile`) when given."""
  per_step = seconds.max(axis=0)      # a step is as slow as its slowest process
  stats = step_time_stats(per_step)
  images_per_s = global_batch / stats["median"]
  cost = (counted or compiled).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_image = float(cost["flops"]) * num_devices / global_batch
  achieved = flops_per_image * images_per_s
  return {
      "trace_s": trace_s, "compile_s": compile_s, "step_s": stats,
      "per_process_median_s": [float(np.median(s)) for s in seconds],
      "images_per_s": images_per_s, "images_per_s_per_device": images_per_s / num_devices,
      "flops_per_image": flops_per_image, "achieved_flops_per_s": achieved,
      "fraction_of_peak": achieved / peak if peak else None,
      "collectives": hlo_collectives(compiled.as_text()),
  }


def measure_point(config: cfg.Config, args: argparse.Namespace) -> dict[str, Any]:
  """Measures one point on every device of every process of this job; every process must call it."""
  import jax
  from flax import nnx
  from lensjax import feature_sync, step_loop, train_step
  from lensjax.models import layers, onednn

  load_before = os.getloadavg()
  num_devices, num_processes = jax.device_count(), jax.process_count()
  global_batch = args.batch_size * (num_devices if args.scaling == "weak" else 1)
  if global_batch % num_devices:
    raise ValueError(f"--batch-size={args.batch_size}: the global batch {global_batch} is not divisible by the "
                     f"{num_devices} devices; use a multiple of {num_devices} (or --scaling weak)")
  config.train.batch_size = global_batch
  per_process = global_batch // num_processes
  mesh = parallel.make_mesh()
  devices = jax.local_devices()

  pipeline, example = time_input_pipeline(config, per_process, args.input_batches)
  batch = parallel.global_batch(synthetic_batch(example, seed=jax.process_index()), mesh)

  train_state = train_step.create_train_state(config, mesh, config.train.seed)
  graphdef, state, state_sharding = train_state.graphdef, train_state.state, train_state.shardings
  parameters = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)))
  loss_fn = train_step.make_loss_fn(config)
  frozen = None
  if config.train.feature_sync:    # stage 2's step; the (untrained) encoder costs what a trained one does
    frozen = feature_sync.untrained_gt_encoder(config, mesh)
  frozen_state = None if frozen is None else frozen.state
  base_key = jax.random.key(config.train.seed)

  platform_name = jax.default_backend()
  dtype = config.model.dtype
  if platform_name == "gpu":
    probe = None
    peak_per_device, peak_source = gpu_peak_flops(devices[0].device_kind, dtype)
    peak = peak_per_device * num_devices if peak_per_device else None
  else:
    probe = matmul_probe(mesh)
    peak, peak_source = probe["flops_per_s"], "float32 matmul probe on the same devices, this process"

  def plain_compile(compile_step, *args):
    """The step compiled without the CPU fast paths, for its FLOP count only: XLA's cost analysis does not see
    inside the oneDNN convolutions' custom calls. None where they are not used (the count is the program's)."""
    if platform_name != "cpu" or not onednn.available():
      return None
    with layers.cpu_fast_paths(False):
      return compile_step().lower(*args).compile()

  start = time.perf_counter()
  lowered = train_step.compile_train_step(graphdef, loss_fn, mesh, state_sharding, frozen).lower(
      state, frozen_state, batch, base_key)
  traced = time.perf_counter()
  train_compiled = lowered.compile()
  compiled_at = time.perf_counter()

  def run_loop(state, steps: range) -> tuple[Any, np.ndarray]:
    """The training loop over `steps` on the placed batch; (state, wall seconds of each step, waited for)."""
    ends = []

    def wait(event: step_loop.StepEvent) -> None:
      jax.block_until_ready(event.state)
      ends.append(time.perf_counter())

    start = time.perf_counter()
    result = step_loop.run_steps(train_compiled, state, itertools.repeat(batch), base_key, steps=steps,
                                 batch_size=global_batch, targets=config.data.targets, log_every=len(steps),
                                 frozen_state=frozen_state, after_step=wait)
    return result.state, np.diff(np.array([start, *ends]))

  state, _ = run_loop(state, range(1, args.warmup + 1))
  state, train_seconds = run_loop(state, range(args.warmup + 1, args.warmup + args.steps + 1))
  holder = {"state": state}
  phases = {"train": (train_compiled, train_seconds, compiled_at - traced, traced - start,
                      plain_compile(lambda: train_step.compile_train_step(graphdef, loss_fn, mesh, state_sharding,
                                                                          frozen), state, frozen_state, batch,
                                    base_key))}

  if not args.no_eval:
    start = time.perf_counter()
    lowered = train_step.compile_eval_step(graphdef, loss_fn, mesh, state_sharding).lower(holder["state"], batch)
    traced = time.perf_counter()
    eval_compiled = lowered.compile()
    compiled_at = time.perf_counter()
    _time_steps(lambda _: eval_compiled(holder["state"], batch), args.warmup)
    eval_seconds = _time_steps(lambda _: eval_compiled(holder["state"], batch), args.steps)
    phases["eval"] = (eval_compiled, eval_seconds, compiled_at - traced, traced - start,
                      plain_compile(lambda: train_step.compile_eval_step(graphdef, loss_fn, mesh, state_sharding),
                                    holder["state"], batch))

  memory = _memory(train_compiled, devices)
  peak_bytes = _allgather(np.array(memory["peak_bytes"], np.float32))     # float32: exact to 1 part in 1e7
  nodes = _allgather_strings(node_name())
  hosts = _allgather_strings(socket.gethostname())
  pipeline_rates = _allgather(np.array(pipeline["images_per_s"] or np.nan, np.float32))

  point = {
      "processes": num_processes, "devices": num_devices, "devices_per_process": len(devices),
      "nodes": len(set(nodes)), "hosts": len(set(hosts)), "node_names": sorted(set(nodes)),
      "global_batch": global_batch, "per_device_batch": global_batch // num_devices, "per_process_batch": per_process,
      "platform": platform_name, "device_kind": devices[0].device_kind, "parameters": int(parameters),
      "peak_flops_per_s": peak, "peak_source": peak_source, "matmul_probe": probe,
      "memory": {"peak_bytes": int(peak_bytes.max()), "source": memory["source"]},
      "load_average_before": [round(x, 2) for x in load_before],
  }
  for name, (compiled, seconds, compile_s, trace_s, counted) in phases.items():
    point[name] = _phase_record(compiled, _allgather(seconds.astype(np.float32)), compile_s, trace_s, global_batch,
                                num_devices, peak, counted)
  needed = point["train"]["images_per_s"] / num_processes
  slowest = float(np.nanmin(pipeline_rates)) if np.isfinite(pipeline_rates).any() else None
  point["input_pipeline"] = {
      **pipeline, "images_per_s": slowest, "per_process_images_per_s": [float(r) for r in pipeline_rates],
      "needed_images_per_s": needed,
      "keeps_up": None if slowest is None else bool(slowest >= needed),
      "note": "images/s of the slowest process's train loader, against the training step's images/s per process",
  }
  point["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  return point


def hardware(point: dict[str, Any]) -> dict[str, Any]:
  info = {"platform": point["platform"], "device_kind": point["device_kind"], "cpu_model": cpu_model(),
          "cpu_count": os.cpu_count(), "hostname": socket.gethostname(), "machine": platform.machine()}
  if point["platform"] == "cpu":
    info["note"] = (f"CPU devices made with JAX_NUM_CPU_DEVICES share this host's {os.cpu_count()} cores: strong "
                    "scaling over them measures overhead, not speed-up")
  if point["nodes"] > point["hosts"]:
    info["note"] = info.get("note", "") + f"; {point['nodes']} Slurm nodes emulated on {point['hosts']} host(s)"
  return info


def make_record(config: cfg.Config, args: argparse.Namespace, points: list[dict[str, Any]],
                command: list[str]) -> dict[str, Any]:
  return {
      "schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": command, "config_name": args.config, "config": cfg.to_dict(config), "scaling": args.scaling,
      "batch_size_option": args.batch_size, "timed_steps": args.steps, "warmup_steps": args.warmup,
      "hardware": hardware(points[0]), "versions": versions(), "points": points,
  }


def default_out(config: cfg.Config) -> pathlib.Path:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return pathlib.Path("runs/benchmarks") / f"throughput-{config.name}-{config.model.name}-{stamp}.json"


def write_record(record: dict[str, Any], out: pathlib.Path) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2) + "\n")


def run_here(args: argparse.Namespace, config: cfg.Config, argv: list[str]) -> pathlib.Path | None:
  """Measures one point on this job's devices; process 0 writes the record and prints its summary line."""
  parallel.initialize(cli.distributed_options(args))
  point = measure_point(config, args)
  if not parallel.is_main_process():
    return None
  out = pathlib.Path(args.out) if args.out else default_out(config)
  write_record(make_record(config, args, [point], ["python", "-m", "benchmarks.throughput", *argv]), out)
  print(summary_line(point), flush=True)
  print(f"wrote {out}", flush=True)
  return out


def summary_line(point: dict[str, Any]) -> str:
  train = point["train"]
  line = (f"{point['processes']} process(es) x {point['devices_per_process']} device(s) on {point['nodes']} node(s), "
          f"batch {point['global_batch']}: train {train['step_s']['median'] * 1e3:.1f} ms/step "
          f"({train['step_s']['p10'] * 1e3:.1f}-{train['step_s']['p90'] * 1e3:.1f}), "
          f"{train['images_per_s']:.1f} images/s, {train['images_per_s_per_device']:.1f} per device, "
          f"compile {train['compile_s']:.1f} s")
  if "eval" in point:
    line += f"; eval {point['eval']['images_per_s']:.1f} images/s"
  keeps_up = point["input_pipeline"]["keeps_up"]
  if keeps_up is not None:
    line += f"; input pipeline {point['input_pipeline']['images_per_s']:.1f} images/s per process " + (
        "keeps up" if keeps_up else "does NOT keep up")
  return line


# ---------------------------------------------------------------------------------------------------------------
# Sweeps: one group of subprocesses per device count


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _detect_platform() -> tuple[str, list[str]]:
  """(backend, ids of the GPUs the children may use) without holding GPU memory that the children need."""
  saved = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"    # read once, when the backend starts
  try:
    import jax
    backend, count = jax.default_backend(), jax.device_count()
  finally:
    if saved is None:
      del os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"]
    else:
      os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = saved
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  gpu_ids = visible.split(",") if visible else [str(i) for i in range(count)]
  return backend, gpu_ids if backend == "gpu" else []


def _child_env(platform_name: str, devices_per_process: int, process_id: int, gpu_ids: list[str]) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
  if platform_name == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices_per_process)
    # an XLA_FLAGS device count would override JAX_NUM_CPU_DEVICES
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
  else:
    first = process_id * devices_per_process
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids[first:first + devices_per_process])
  for name in (*parallel.SLURM_VARIABLES, *(name for name, _, _ in parallel.LENSJAX_VARIABLES)):
    env.pop(name, None)   # children form their own job, never the caller's
  return env


def _child_argv(argv: list[str]) -> list[str]:
  """`argv` without the sweep options, which the children must not see."""
  drop_with_value = {"--devices", "--processes", "--out", "--coordinator-address", "--num-processes",
                     "--process-id"}
  kept, skip = [], False
  for arg in argv:
    if skip:
      skip = False
      continue
    name = arg.split("=", 1)[0]
    if name in drop_with_value:
      skip = "=" not in arg
      continue
    kept.append(arg)
  return kept


def sweep(args: argparse.Namespace, config: cfg.Config, argv: list[str]) -> pathlib.Path:
  """Runs each (processes, devices) of `sweep_points` as local processes; writes one merged record."""
  sweep_plan = sweep_points(args.devices, args.processes, args.batch_size, args.scaling)
  platform_name, gpu_ids = _detect_platform()
  if platform_name != "cpu" and max(count for _, count in sweep_plan) > len(gpu_ids):
    raise ValueError(f"--devices={args.devices}: only {len(gpu_ids)} {platform_name} devices are visible")
  points, child_records = [], []
  with tempfile.TemporaryDirectory(prefix="lensjax-throughput-") as tmp:
    for process_count, count in sweep_plan:
      per_process = count // process_count
      point_out = pathlib.Path(tmp) / f"processes{process_count}-devices{count}.json"
      base = [sys.executable, "-m", "benchmarks.throughput", *_child_argv(argv), "--out", str(point_out)]
      port = _free_port()
      children = []
      for process_id in range(process_count):
        command = list(base)
        if process_count > 1:
          command += ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(process_count),
                      "--process-id", str(process_id)]
        children.append(subprocess.Popen(command, cwd=os.getcwd(),   # relative paths in argv stay valid
                                         env=_child_env(platform_name, per_process, process_id, gpu_ids),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
      outputs = []
      for child in children:
        try:
          outputs.append(child.communicate(timeout=args.timeout)[0])
        except subprocess.TimeoutExpired:
          for other in children:
            other.kill()
          raise RuntimeError(f"the {process_count}-process {count}-device point ran past "
                             f"--timeout={args.timeout} s") from None
      for process_id, (child, output) in enumerate(zip(children, outputs)):
        if child.returncode != 0:
          raise RuntimeError(f"the {process_count}-process {count}-device point failed in process {process_id} "
                             f"(exit {child.returncode}):\n{output[-4000:]}")
      record = json.loads(point_out.read_text())
      child_records.append(record)
      points.extend(record["points"])
      print(summary_line(record["points"][-1]), flush=True)
  merged = make_record(config, args, points, ["python", "-m", "benchmarks.throughput", *argv])
  merged["hardware"] = child_records[0]["hardware"]
  merged["versions"] = child_records[0]["versions"]
  out = pathlib.Path(args.out) if args.out else default_out(config)
  write_record(merged, out)
  print(f"wrote {out}", flush=True)
  return out


@cli.command
def main(argv: list[str]) -> int:
  args, config = parse_args(argv)
  if args.devices:
    sweep(args, config, argv)
  else:
    run_here(args, config, argv)
  return 0


if __name__ == "__main__":
  sys.exit(main())
