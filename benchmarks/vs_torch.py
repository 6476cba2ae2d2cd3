"""lensjax against PyTorch on the same CPU, each in its own process: training steps and inference, side by side.

  python -m benchmarks.vs_torch                                   # everything: about 6-8 minutes on 2 cores
  python -m benchmarks.vs_torch --parts isnet --repeats 3         # a quick look: IS-Net only, about 2 minutes
  python -m benchmarks.vs_torch --plain                           # lensjax without its CPU fast paths (the 'before')
  python -m benchmarks.vs_torch --no-onednn                       # the fast paths, with XLA's convolutions
  python -m benchmarks.vs_torch --dtype bfloat16                  # mixed precision on both sides (AMX here)
  python -m benchmarks.vs_torch --dtype bfloat16 --torch-dtype float32   # against the original's float32
  python -m benchmarks.vs_torch --parts msrfnet --baseline keras  # MSRF-Net against Keras, as the original ran it

Parts (`--parts`, default all three):
  isnet          IS-Net 1 -> 1 at the original's shape: 128 px, batch 8, full width (44.0 M parameters); training
                 step = the six side BCE losses and Adam 1e-3 (`isnet_sim:lens`).
  isnet_default  the default config's network and batch (`python -m lensjax.train`: IS-Net width 0.25, depth 4,
                 1 -> 2, 128 px, batch 8).
  msrfnet        MSRF-Net, original wiring, 1 -> 1, 128 px, batch 4, its four losses and RMSprop
                 (`msrfnet_sim:lens`).
Each part times a training step (`train`) and a forward pass in eval mode (`infer`; `--phases` picks).

`--baseline keras` (MSRF-Net only; `pip install -e ".[keras]"`) times the Keras MSRF-Net of
`benchmarks/keras_models.py` on TensorFlow instead of PyTorch's: the framework the original trained MSRF-Net in,
with its `train_on_batch` (the original's losses and RMSprop, a compiled TensorFlow graph) and
`predict_on_batch`, TensorFlow's intra- and inter-op thread pools at the cores JAX uses. Rows and the record then
say `keras` where they say `torch`.

`--dtype bfloat16` is mixed precision: lensjax's `model.dtype` (float32 parameters, optimizer and losses;
bfloat16 activations and convolutions) and, unless `--torch-dtype` says otherwise, PyTorch's own
`torch.autocast("cpu", dtype=torch.bfloat16)` around the forward pass and the loss.

The lensjax side is whatever `import lensjax` gives (the real jitted training step of
`lensjax.train_step.compile_train_step` on the part's config, and a jitted eval-mode forward), run in this
process; the PyTorch side is the independent networks of `benchmarks/torch_models.py` in eager mode, NCHW, with
`torch.set_num_threads` equal to the cores JAX uses (the cores this process may run on), the original's loss and
optimizer, run in a child process of its own (`BaselineProcess`), so that the two frameworks' thread pools (XLA's,
PyTorch's OpenMP, and the OpenMP runtime of lensjax's oneDNN convolutions) never share a process: in one process
PyTorch ran 1.3-3x slower once oneDNN had run. Both get the same random batch. The child builds its network once
per part and, on request, runs one call and sends back its seconds; this process alternates those requests with
its own timed calls, so only one framework computes at any moment. After `--warmup` untimed calls each, the two
take turns for `--repeats` rounds, torch first: a turn is `--turn` back-to-back calls of one framework, whose first
call (the one right after the other framework's) is kept apart and the rest timed, so that load from other
processes falls on both alike and neither is timed in the wake of the other. On a virtual machine that hands
freed memory back to its host (free page reporting: `/sys/module/page_reporting`, recorded as
`hardware.free_page_reporting`), the first call after an idle second or two is slow: XLA frees each call's
temporaries, the guest reports them, the host takes them back, and the next call faults them in from the host
again (docs/performance.md). lensjax waits while the other framework runs, so its call right after a switch ran
up to 2x slower here. The record keeps those first calls apart (`after_switch`). `--turn 1` is the plain
alternation, torch, lensjax, torch, ..., every call timed. The record keeps the median and the spread of each
and the ratio torch median / lensjax median (> 1: lensjax is faster). The child ends with the run, also when it
fails.

FLOPs per call come from XLA's cost analysis of lensjax's program compiled without its CPU fast paths (compiled
only, never run: the cost analysis counts nothing inside the oneDNN custom calls, so the plain program gives the
same count with or without them) and are used for both frameworks (they compute the same network); FLOP/s are
compared with a float32 matmul probe of each framework, each in its own process, on the same cores. The record
(JSON, `--out`) has the command, the CPU model and flags, versions, thread counts, both process ids, probes and one
row per (part, phase).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lensjax import cli

SCHEMA = "lensjax.vs_torch/1"
PARTS = ("isnet", "isnet_default", "msrfnet")
BASELINES = ("torch", "keras")
BASELINE_TITLES = {"torch": "PyTorch", "keras": "Keras"}
PHASES = ("train", "infer")
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")


@dataclasses.dataclass(frozen=True)
class Part:
  """One network at one shape: the lensjax config it comes from and the sizes both frameworks run."""
  name: str
  config: str              # a config name in configs/, with its argument
  model: str               # "isnet" or "msrfnet"
  width: float
  depth: int
  in_channels: int
  out_channels: int
  batch: int
  size: int


def parts_table(width: float | None, image_size: int | None, batch_size: int | None) -> dict[str, Part]:
  """The parts at their documented sizes, or with the overrides (tiny sizes for tests)."""
  parts = {
      "isnet": Part("isnet", "isnet_sim:lens", "isnet", 1.0, 6, 1, 1, 8, 128),
      "isnet_default": Part("isnet_default", "default", "isnet", 0.25, 4, 1, 2, 8, 128),
      "msrfnet": Part("msrfnet", "msrfnet_sim:lens", "msrfnet", 1.0, 6, 1, 1, 4, 128),
  }
  overrides = {k: v for k, v in (("width", width), ("size", image_size), ("batch", batch_size)) if v is not None}
  return {name: dataclasses.replace(part, **overrides) for name, part in parts.items()}


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog="python -m benchmarks.vs_torch", description=__doc__.split("\n\n")[0])
  parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
  parser.add_argument("--phases", default=",".join(PHASES), help="train, infer or both (default)")
  parser.add_argument("--repeats", type=int, default=5, help="alternating rounds per phase (default 5)")
  parser.add_argument("--turn", type=int, default=3,
                      help="back-to-back calls of one framework per round, the first untimed (default 3; 1: every "
                           "call timed, the frameworks alternating call by call)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls of each framework first (default 2)")
  parser.add_argument("--width", type=float, default=None, help="override every part's width (tests)")
  parser.add_argument("--image-size", type=int, default=None, help="override the 128 px images (multiple of 8)")
  parser.add_argument("--batch-size", type=int, default=None, help="override every part's batch")
  parser.add_argument("--plain", action="store_true",
                      help="trace lensjax without its CPU fast paths (`lensjax.models.layers.cpu_fast_paths`)")
  parser.add_argument("--no-onednn", action="store_true",
                      help="keep XLA's convolutions where oneDNN's would run (`cpu_fast_paths(..., onednn=False)`)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="lensjax's compute dtype, config.model.dtype (default float32)")
  parser.add_argument("--torch-dtype", default=None, choices=("float32", "bfloat16"),
                      help="the baseline's: bfloat16 = torch.autocast or Keras's mixed_bfloat16 policy "
                           "(default: as --dtype)")
  parser.add_argument("--baseline", default="torch", choices=BASELINES,
                      help="the framework lensjax runs against: torch (default) or keras (MSRF-Net only)")
  parser.add_argument("--out", default=None, help="record path (default runs/benchmarks/vs_torch-*.json)")
  args = parser.parse_args(argv)
  args.torch_dtype = args.torch_dtype or args.dtype
  args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
  if not args.parts or set(args.parts) - set(PARTS):
    parser.error(f"--parts={','.join(args.parts)}: choose from {', '.join(PARTS)}")
  if not args.phases or set(args.phases) - set(PHASES):
    parser.error(f"--phases={','.join(args.phases)}: choose from {', '.join(PHASES)}")
  if args.repeats < 1 or args.warmup < 1 or args.turn < 1:
    parser.error("--repeats, --turn and --warmup must be at least 1")
  if args.baseline == "keras" and args.parts != ["msrfnet"]:
    parser.error("--baseline keras: the original ran only MSRF-Net in Keras; add --parts msrfnet")
  if args.image_size is not None and (args.image_size < 8 or args.image_size % 8):
    parser.error(f"--image-size={args.image_size}: MSRF-Net needs a multiple of 8")
  return args


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def random_batch(part: Part, seed: int = 0) -> dict[str, np.ndarray]:
  """NHWC arrays with the keys and dtypes of lensjax's batches: a normal image, binary masks and edges."""
  rng = np.random.default_rng(seed)
  b, s = part.batch, part.size
  binary = lambda channels, p: (rng.random((b, s, s, channels)) < p).astype(np.float32)
  return {"image": rng.standard_normal((b, s, s, part.in_channels)).astype(np.float32),
          "mask": binary(part.out_channels, 0.2), "mask_edge": binary(part.out_channels, 0.05),
          "edge": binary(1, 0.05), "valid": np.ones(b, np.float32), "index": np.arange(b, dtype=np.int32)}


def nchw(array: np.ndarray):
  import torch
  return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


# ---------------------------------------------------------------------------------------------------------------
# The two frameworks


def lensjax_calls(part: Part, batch: dict[str, np.ndarray], phases: Sequence[str], plain: bool,
                  dtype: str = "float32") -> dict[str, Any]:
  """lensjax's compiled `phases` (training step, eval-mode forward) on `batch` with compute dtype `dtype`:
  {phase: (call, flops, compile_s)} and the parameter count. `plain`: the programs are traced without the CPU
  fast paths (their own FLOPs count)."""
  from lensjax import config as cfg

  config = cfg.load_module_config(part.config)
  config.model.width, config.model.depth, config.model.dtype = part.width, part.depth, dtype
  config.train.batch_size = part.batch
  if part.out_channels != len(config.data.targets):
    raise ValueError(f"part {part.name}: config {part.config} has {len(config.data.targets)} targets, "
                     f"not {part.out_channels}")
  programs, parameters = compile_programs(config, batch, phases)
  flops = {phase: _flops(compiled) for phase, (compiled, _, _) in programs.items()} if plain else \
      plain_flops(config, batch, phases)
  calls: dict[str, Any] = {"parameters": parameters}
  for phase, (_, call, compile_s) in programs.items():
    calls[phase] = (call, flops[phase], compile_s)
  return calls


def compile_programs(config, batch: dict[str, np.ndarray], phases: Sequence[str]) -> tuple[dict[str, Any], int]:
  """The real programs of `config` on `batch`, on every device: ({phase: (compiled, call running it once and
  waiting, compile seconds)}, trainable parameters). 'train' is the jitted training step on a fresh state,
  'infer' the eval-mode network of the current training state."""
  import jax
  from flax import nnx
  from lensjax import models, parallel, registry, train_step

  mesh = parallel.make_mesh()
  train_state = train_step.create_train_state(config, mesh, seed=0)
  graphdef = train_state.graphdef
  parameters, _ = models.count_parameters(nnx.merge(graphdef, train_state.state)[0])
  device_batch = parallel.global_batch(batch, mesh)
  holder = {"state": train_state.state}      # the training step donates and replaces the state's buffers
  programs: dict[str, Any] = {}
  if "train" in phases:
    start = time.perf_counter()
    step = train_step.compile_train_step(graphdef, train_step.make_loss_fn(config), mesh, train_state.shardings)
    compiled = step.lower(holder["state"], None, device_batch, jax.random.key(0)).compile()

    def train_once():
      holder["state"], step_metrics = compiled(holder["state"], None, device_batch, jax.random.key(1))
      jax.block_until_ready((holder["state"], step_metrics))

    programs["train"] = (compiled, train_once, time.perf_counter() - start)
  if "infer" in phases:
    inputs = [device_batch[key] for key in registry.network(config.model.name).input_keys]
    start = time.perf_counter()
    forward = jax.jit(lambda s, *xs: train_step.inference_network(graphdef, s)(*xs)).lower(
        holder["state"], *inputs).compile()
    programs["infer"] = (forward, lambda: jax.block_until_ready(forward(holder["state"], *inputs)),
                         time.perf_counter() - start)
  return programs, int(parameters)


def plain_flops(config, batch: dict[str, np.ndarray], phases: Sequence[str]) -> dict[str, float]:
  """{phase: FLOPs per call} of `config`'s programs traced without lensjax's CPU fast paths, compiled for XLA's
  cost analysis and never run. The fast paths' oneDNN convolutions are custom calls whose work the cost analysis
  does not see; the plain program computes the same network, so its count holds for every setting."""
  from lensjax.models import layers
  with layers.cpu_fast_paths(False):
    programs, _ = compile_programs(config, batch, phases)
  return {phase: _flops(compiled) for phase, (compiled, _, _) in programs.items()}


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def torch_calls(part: Part, batch: dict[str, np.ndarray], dtype: str = "float32") -> dict[str, Any]:
  """The PyTorch network's training step (original loss and optimizer) and inference-mode forward; with `dtype`
  bfloat16, the forward passes and the loss run under `torch.autocast` (float32 parameters and optimizer)."""
  import contextlib
  import torch
  import torch.nn.functional as F
  from benchmarks import torch_models

  torch.manual_seed(0)
  if part.model == "isnet":
    model = torch_models.ISNetDIS(part.in_channels, part.out_channels, width=part.width, depth=part.depth)
    inputs = [nchw(batch["image"])]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    mask = nchw(batch["mask"])

    def loss_fn(outputs):
      side_logits, _ = outputs
      return sum(F.binary_cross_entropy_with_logits(logits, mask) for logits in side_logits)
  else:
    model = torch_models.MSRFNet(part.in_channels, part.out_channels, width=part.width)
    inputs = [nchw(batch["image"]), nchw(batch["edge"])]
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, alpha=0.9, eps=1e-7, momentum=0.9)
    mask, mask_edge = nchw(batch["mask"]), nchw(batch["mask_edge"])

    def seg_loss(logits):        # mean BCE + (1 - soft Dice over the whole batch, smooth 1)
      p = torch.sigmoid(logits)
      dice = (2 * (mask * p).sum() + 1) / (mask.sum() + p.sum() + 1)
      return F.binary_cross_entropy_with_logits(logits, mask) + 1 - dice

    def loss_fn(outputs):
      x, edge_out, pred2, pred4 = outputs
      return 2 * seg_loss(x) + F.binary_cross_entropy_with_logits(edge_out, mask_edge) + seg_loss(pred2) \
          + seg_loss(pred4)

  autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext

  def train_once():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(model(*inputs))
    loss.backward()
    optimizer.step()

  def infer_once():
    model.eval()
    with torch.inference_mode(), autocast():
      model(*inputs)

  return {"parameters": sum(p.numel() for p in model.parameters()), "train": train_once, "infer": infer_once}


def keras_calls(part: Part, batch: dict[str, np.ndarray], dtype: str = "float32") -> dict[str, Any]:
  """The Keras MSRF-Net's training step (`train_on_batch`: the original's losses, weights and RMSprop) and its
  `predict_on_batch`; with `dtype` bfloat16 under Keras's mixed_bfloat16 policy (float32 variables)."""
  import keras
  from benchmarks import keras_models

  keras.utils.set_random_seed(0)
  keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
  model = keras_models.msrfnet(part.size, part.in_channels, part.out_channels, width=part.width)
  model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-4, rho=0.9, momentum=0.9, epsilon=1e-7),
                loss={"x": keras_models.seg_loss, "edge_out": "binary_crossentropy", "pred2": keras_models.seg_loss,
                      "pred4": keras_models.seg_loss},
                loss_weights={"x": 2.0, "edge_out": 1.0, "pred2": 1.0, "pred4": 1.0})
  inputs = [batch["image"], batch["edge"]]
  targets = {"x": batch["mask"], "edge_out": batch["mask_edge"], "pred2": batch["mask"], "pred4": batch["mask"]}
  return {"parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
          "train": lambda: model.train_on_batch(inputs, targets),
          "infer": lambda: model.predict_on_batch(inputs)}


def _framework_start(framework: str, threads: int) -> dict[str, Any]:
  """Sets the baseline framework's threads; its version, threads and float32 matmul probe."""
  a = np.random.default_rng(0).random((PROBE_SIZE, PROBE_SIZE), dtype=np.float32)
  if framework == "torch":
    import torch
    torch.set_num_threads(threads)
    t = torch.from_numpy(a)
    return {"version": torch.__version__, "threads": torch.get_num_threads(),
            "matmul_flops_per_s": matmul_flops_per_s(lambda: t @ t)}
  import keras
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  t = tf.constant(a)
  return {"version": f"tensorflow {tf.__version__}, keras {keras.__version__}",
          "threads": tf.config.threading.get_intra_op_parallelism_threads(),
          "matmul_flops_per_s": matmul_flops_per_s(lambda: tf.linalg.matmul(t, t).numpy())}


def _baseline_worker(connection, framework: str, threads: int) -> None:
  """The child process of `BaselineProcess`: answers requests until told to close or until the parent is gone.

  Requests (tuples) and replies ("ok", value) or ("error", traceback):
    ("start",)        -> {"pid", "version" (of the framework), "threads", "matmul_flops_per_s"}
    ("build", part, dtype) -> the parameter count of the part's network in `dtype`, built on `random_batch(part)`
    ("call", phase)   -> wall seconds of one call of the built network's phase
    ("close",)        -> no reply; the process ends
  """
  calls: dict[str, Any] = {}
  network_calls = torch_calls if framework == "torch" else keras_calls

  def start():
    return {"pid": os.getpid(), **_framework_start(framework, threads)}

  def build(part: Part, dtype: str):
    calls.clear()                    # the previous part's network goes before the next is built
    calls.update(network_calls(part, random_batch(part), dtype))
    return calls["parameters"]

  handlers = {"start": start, "build": build, "call": lambda phase: _seconds(calls[phase])}
  with connection:
    while True:
      try:
        request, *arguments = connection.recv()
      except EOFError:               # the parent ended
        return
      if request == "close":
        return
      try:
        reply = ("ok", handlers[request](*arguments))
      except Exception:  # pylint: disable=broad-except  # sent to the parent, which raises it
        reply = ("error", traceback.format_exc())
      try:
        connection.send(reply)
      except OSError:                # the parent ended while this call ran
        return


class BaselineProcess:
  """The baseline framework (`framework`: 'torch' or 'keras') in a child process of its own ('spawn': a fresh
  interpreter that never imports JAX's runtime or lensjax's oneDNN), on `threads` threads, answering one request
  at a time (`_baseline_worker`). Use it as a context manager: leaving the block ends the child, at once when the
  block raised. The child also ends by itself when this process ends (its end of the pipe closes)."""

  def __init__(self, threads: int, framework: str = "torch"):
    context = multiprocessing.get_context("spawn")
    self._connection, child_end = context.Pipe()
    self._process = context.Process(target=_baseline_worker, args=(child_end, framework, threads),
                                    name=f"vs_torch-{framework}", daemon=True)
    self._process.start()
    child_end.close()

  @property
  def pid(self) -> int:
    return self._process.pid

  def request(self, *message) -> Any:
    """Sends one request and waits for its reply; raises RuntimeError when the child failed or died."""
    try:
      self._connection.send(message)
      status, value = self._connection.recv()
    except (EOFError, OSError) as error:
      self._process.join(timeout=10)
      raise RuntimeError(f"the baseline process (pid {self.pid}) ended during {message[0]!r} with exit code "
                         f"{self._process.exitcode}") from error
    if status == "error":
      raise RuntimeError(f"the baseline process failed during {message[0]!r}:\n{value}")
    return value

  def close(self, wait: bool = True) -> None:
    """Ends the child: asks it to close and waits for it (`wait`), else or after 30 s terminates it."""
    if wait and self._process.is_alive():
      try:
        self._connection.send(("close",))
      except OSError:
        pass
      self._process.join(timeout=30)
    if self._process.is_alive():
      self._process.terminate()
      self._process.join()
    self._connection.close()

  def __enter__(self) -> BaselineProcess:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(wait=exc_type is None)


# ---------------------------------------------------------------------------------------------------------------
# Timing


def stats(seconds: list[float]) -> dict[str, float]:
  values = np.asarray(seconds, np.float64)
  p10, median, p90 = np.percentile(values, [10, 50, 90])
  return {"median": float(median), "p10": float(p10), "p90": float(p90), "min": float(values.min()),
          "max": float(values.max()), "count": int(values.size)}


def _seconds(call) -> float:
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


def interleaved(torch_timed: Callable[[], float], lensjax_timed: Callable[[], float], repeats: int,
                warmup: int, turn: int = 1) -> dict[str, dict[str, list[float]]]:
  """Seconds of each framework's calls (each callable runs one call and returns its wall seconds), taking turns.

  First `warmup` untimed calls of each, alternating; then `repeats` rounds in which torch, then lensjax, runs
  `turn` calls back to back. Returns {"torch": ..., "lensjax": ...}, each {"timed": [...], "after_switch": [...]}:
  `after_switch` holds the first call of every turn, `timed` the others (every call where `turn` is 1, so that
  `timed` is never empty).
  """
  for _ in range(warmup):
    torch_timed()
    lensjax_timed()
  seconds = {name: {"timed": [], "after_switch": []} for name in ("torch", "lensjax")}
  for _ in range(repeats):
    for name, timed_call in (("torch", torch_timed), ("lensjax", lensjax_timed)):
      calls = [timed_call() for _ in range(turn)]
      seconds[name]["after_switch"].append(calls[0])
      seconds[name]["timed"] += calls[1:] if turn > 1 else calls
  return seconds


PROBE_SIZE = 1024                    # the float32 matmul probe multiplies two (PROBE_SIZE x PROBE_SIZE) matrices


def matmul_flops_per_s(multiply: Callable[[], Any], repeats: int = 5) -> float:
  """FLOP/s of the probe's matmul, `multiply()` running it once and waiting (best of `repeats` after one)."""
  return 2.0 * PROBE_SIZE ** 3 / min(_seconds(multiply) for _ in range(repeats + 1))


def lensjax_matmul_flops_per_s() -> float:
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(np.random.default_rng(0).random((PROBE_SIZE, PROBE_SIZE), dtype=np.float32))
  multiply = jax.jit(lambda x: x @ x)
  return matmul_flops_per_s(lambda: multiply(x).block_until_ready())


def jax_cores() -> int:
  """The cores XLA's CPU thread pool uses: those this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def measure_part(part: Part, phases: list[str], args: argparse.Namespace, probes: dict[str, float],
                 baseline_process: BaselineProcess) -> list[dict]:
  baseline = args.baseline
  baseline_parameters = baseline_process.request("build", part, args.torch_dtype)
  lensjax_side = lensjax_calls(part, random_batch(part), phases, plain=args.plain, dtype=args.dtype)
  if baseline_parameters != lensjax_side["parameters"]:
    raise AssertionError(f"part {part.name}: the {baseline} network has {baseline_parameters:,} parameters, "
                         f"lensjax's {lensjax_side['parameters']:,}: they are not the same network")
  rows = []
  for phase in phases:
    lensjax_call, flops, compile_s = lensjax_side[phase]
    seconds = interleaved(lambda: baseline_process.request("call", phase), lambda: _seconds(lensjax_call),
                          args.repeats, args.warmup, args.turn)
    row = {"part": part.name, "phase": phase, **dataclasses.asdict(part), "baseline": baseline,
           "lensjax_dtype": args.dtype, "torch_dtype": args.torch_dtype, "parameters": lensjax_side["parameters"],
           "flops_per_call": flops, "lensjax_compile_s": compile_s}
    for name, side, probe in ((baseline, "torch", probes[f"{baseline}_flops_per_s"]),
                              ("lensjax", "lensjax", probes["lensjax_flops_per_s"])):
      timing = stats(seconds[side]["timed"])
      achieved = flops / timing["median"]
      row[name] = {"seconds": timing, "seconds_after_switch": stats(seconds[side]["after_switch"]),
                   "images_per_s": part.batch / timing["median"], "flops_per_s": achieved,
                   "fraction_of_matmul_probe": achieved / probe}
    row["speedup"] = row[baseline]["seconds"]["median"] / row["lensjax"]["seconds"]["median"]
    rows.append(row)
    print(row_line(row), flush=True)
    if args.turn > 1:
      print(f"|   (first call of a turn, not in the medians: {baseline} "
            f"{row[baseline]['seconds_after_switch']['median']:.3f} s, lensjax "
            f"{row['lensjax']['seconds_after_switch']['median']:.3f} s) | | | |", flush=True)
  return rows


def row_line(row: dict[str, Any]) -> str:
  t, j = row[row["baseline"]], row["lensjax"]
  spread = lambda s: f"{s['median']:.3f} s ({s['p10']:.3f}-{s['p90']:.3f})"
  dtypes = "" if row["lensjax_dtype"] == row["torch_dtype"] == "float32" else \
      f", {row['baseline']} {row['torch_dtype']}, lensjax {row['lensjax_dtype']}"
  return (f"| {row['part']} {row['phase']} (batch {row['batch']}, {row['size']} px, width {row['width']:g}{dtypes}) "
          f"| {spread(t['seconds'])}, {t['flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"| {spread(j['seconds'])}, {j['flops_per_s'] / 1e9:.0f} GFLOP/s | {row['speedup']:.2f}x |")


# ---------------------------------------------------------------------------------------------------------------
# Record


def cpu_flags() -> list[str]:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("flags"):
        present = set(line.split(":", 1)[1].split())
        return [flag for flag in CPU_FLAGS_OF_INTEREST if flag in present]
  except OSError:
    pass
  return []


def onednn_status(switched_off: bool) -> str:
  """What a record says of lensjax's oneDNN convolutions: off, or where they load from and on how many threads,
  or why XLA's convolutions run instead (`lensjax.models.onednn.status`)."""
  from lensjax.models import onednn
  return "off (--plain or --no-onednn)" if switched_off else onednn.status()


def free_page_reporting() -> dict[str, str] | None:
  """The guest kernel's free page reporting settings (a VM handing freed memory back to its host), or None."""
  parameters = pathlib.Path("/sys/module/page_reporting/parameters")
  if not parameters.is_dir():
    return None
  return {path.name: path.read_text().strip() for path in sorted(parameters.iterdir()) if os.access(path, os.R_OK)}


def git_commit(checkout: pathlib.Path) -> str:
  """The commit of the checkout lensjax was imported from, "+modified" when tracked files differ from it."""
  try:
    run = lambda *command: subprocess.run(["git", "-C", str(checkout), *command], capture_output=True, text=True,
                                          timeout=10, check=True).stdout.strip()
    return run("rev-parse", "HEAD") + ("+modified" if run("status", "--porcelain", "--untracked-files=no") else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown (not a git checkout)"


@cli.command
def main(argv: list[str]) -> int:
  args = parse_args(argv)
  import lensjax
  from lensjax import host_memory
  from lensjax.models import layers
  from benchmarks import throughput

  threads = jax_cores()
  table = parts_table(args.width, args.image_size, args.batch_size)
  rows = []
  baseline = args.baseline
  with BaselineProcess(threads, baseline) as baseline_process:
    baseline_info = baseline_process.request("start")
    probes = {"size": PROBE_SIZE, "lensjax_flops_per_s": lensjax_matmul_flops_per_s(),
              f"{baseline}_flops_per_s": baseline_info["matmul_flops_per_s"]}
    title = BASELINE_TITLES[baseline]
    print(f"lensjax from {pathlib.Path(lensjax.__file__).parent} (pid {os.getpid()}), {title} in pid "
          f"{baseline_info['pid']}; {threads} threads; matmul probe: lensjax "
          f"{probes['lensjax_flops_per_s'] / 1e9:.0f} GFLOP/s, {baseline} "
          f"{probes[f'{baseline}_flops_per_s'] / 1e9:.0f} GFLOP/s; host memory (both): {host_memory.status()}",
          flush=True)
    print(f"| part, phase | {title} median (p10-p90) | lensjax median (p10-p90) | speed-up |\n|---|---|---|---|")
    with layers.cpu_fast_paths(not args.plain, onednn=not args.no_onednn):
      for name in args.parts:
        rows += measure_part(table[name], args.phases, args, probes, baseline_process)
  load = os.getloadavg()
  lensjax_dir = pathlib.Path(lensjax.__file__).resolve().parents[1]
  versions = throughput.versions()
  versions[baseline] = baseline_info["version"]
  versions["lensjax_path"] = str(lensjax_dir)
  versions["cpu_fast_paths"] = not args.plain
  versions["onednn"] = onednn_status(args.plain or args.no_onednn)
  versions["lensjax_commit"] = git_commit(lensjax_dir)
  record = {
      "schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": ["python", "-m", "benchmarks.vs_torch", *argv],
      "hardware": {"cpu_model": throughput.cpu_model(), "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(),
                   "free_page_reporting": free_page_reporting()},
      "baseline": baseline, "threads": {"jax": threads, baseline: baseline_info["threads"]},
      "processes": {"separate": True, "lensjax_pid": os.getpid(), f"{baseline}_pid": baseline_info["pid"]},
      "versions": versions,
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "matmul_probe": probes, "repeats": args.repeats,
      "turn": args.turn, "warmup": args.warmup, "load_average_after": [round(x, 2) for x in load], "rows": rows,
  }
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  out = pathlib.Path(args.out) if args.out else pathlib.Path("runs/benchmarks") / f"vs_torch-{stamp}.json"
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2) + "\n")
  print(f"wrote {out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
