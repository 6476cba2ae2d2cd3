"""Parallel set-up in one place: starting JAX's distributed runtime, the device mesh, and shardings.

Launch modes (`initialize`):
  * one process: nothing to start; every local device joins the mesh (`JAX_NUM_CPU_DEVICES=4` fakes four on CPU).
  * several processes started by hand (localhost tests, a workstation): pass `--coordinator-address HOST:PORT
    --num-processes N --process-id I` to the command, or set `LENSJAX_COORDINATOR_ADDRESS`,
    `LENSJAX_NUM_PROCESSES` and `LENSJAX_PROCESS_ID`.
  * Slurm (`srun`, one process per GPU, e.g. `--ntasks-per-node=4 --gpus-per-node=4` on Perlmutter, with no per-task
    GPU binding): detected from `SLURM_JOB_ID`, `SLURM_NTASKS` ..., and `jax.distributed.initialize()` reads the
    rest (coordinator = first node of the step, process id = `SLURM_PROCID`, GPU = `SLURM_LOCALID`).
  * Slurm with one process per node: also export `JAX_LOCAL_DEVICE_IDS=0,1,2,3` so each process drives every GPU.

Data parallelism uses `jax.jit` with shardings over a 1-D mesh axis `data` spanning every device of every process
(no `pmap`, which current JAX keeps only for old code): the batch is split on `data`; parameters and optimizer state
are replicated, or split over `data` too (`fsdp`), and XLA inserts the all-reduces. BatchNorm statistics are then
computed over the global batch. If a process dies, the others stop with an error once the coordination service
misses its heartbeats (`heartbeat_timeout_seconds`), instead of hanging in a collective.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as orbax_multihost

DATA_AXIS = "data"
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
# What `options_from_env` reads: (environment variable, DistributedOptions field, type).
LENSJAX_VARIABLES = (("LENSJAX_COORDINATOR_ADDRESS", "coordinator_address", str),
                     ("LENSJAX_NUM_PROCESSES", "num_processes", int), ("LENSJAX_PROCESS_ID", "process_id", int))


@dataclasses.dataclass
class DistributedOptions:
  """How this process joins a multi-process job; all None means: detect (Slurm) or run alone."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  initialization_timeout: int = 300      # seconds to wait for every process to join
  heartbeat_timeout: int = 60            # seconds after which a silent process counts as dead


def options_from_env(**overrides) -> DistributedOptions:
  """Options from `LENSJAX_*` environment variables, overridden by non-None keyword arguments."""
  options = DistributedOptions(**{field: kind(os.environ[name]) for name, field, kind in LENSJAX_VARIABLES
                                  if name in os.environ})
  for key, value in overrides.items():
    if value is not None:
      setattr(options, key, value)
  return options


def initialize(options: DistributedOptions) -> None:
  """Starts `jax.distributed` when the process is one of several; a no-op for a single process.

  Must run before any other JAX call (`jax.devices()` included).
  """
  explicit = (options.coordinator_address, options.num_processes, options.process_id)
  timeouts = dict(initialization_timeout=options.initialization_timeout,
                  heartbeat_timeout_seconds=options.heartbeat_timeout)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("a multi-process run needs all of --coordinator-address, --num-processes and "
                       f"--process-id (or the LENSJAX_* variables); got {explicit}")
    if options.num_processes > 1:
      jax.distributed.initialize(options.coordinator_address, options.num_processes, options.process_id,
                                 **timeouts)
    return
  if all(v in os.environ for v in SLURM_VARIABLES) and int(os.environ["SLURM_NTASKS"]) > 1:
    jax.distributed.initialize(**timeouts)
    logging.info("joined Slurm job %s as process %d of %d", os.environ["SLURM_JOB_ID"],
                 jax.process_index(), jax.process_count())


# Suffixes that keep barrier names unique when a barrier is passed more than once (every process counts alike).
_barrier_counter = itertools.count()


def sync_processes(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process reaches the barrier `name`; a no-op for a single process.

  A barrier of the coordination service (through Orbax), not a collective like
  `multihost_utils.sync_global_devices`: it compiles and runs nothing on the devices, and it raises once
  `timeout_s` passes or a process has died, where a collective would wait for Gloo's or NCCL's own timeouts.
  """
  barrier = orbax_multihost.get_barrier_sync_fn()
  barrier(key=f"lensjax.{name}.{next(_barrier_counter)}", timeout_ms=timeout_s * 1000)


def is_main_process() -> bool:
  """Process 0 writes logs, figures and summaries."""
  return jax.process_index() == 0


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named `data` over every device of every process.

  The axis is `Auto`: XLA propagates shardings through the network, losses and metrics (with `Explicit`
  axes, sharding-in-types rejects some ops, e.g. a vmapped `bincount` over a batch-sharded array).
  """
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int) -> P:
  """Splits the largest axis divisible by `num_shards` over `data`; small or indivisible arrays stay replicated."""
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < 2 ** 14:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_shards == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def state_shardings(state, mesh: jax.sharding.Mesh, fsdp: bool):
  """Shardings for a pytree of arrays (model and optimizer state): replicated, or FSDP-split over `data`."""
  num_shards = mesh.shape[DATA_AXIS]

  def sharding(leaf):
    spec = fsdp_spec(tuple(leaf.shape), num_shards) if fsdp else P()
    return NamedSharding(mesh, spec)
  return jax.tree.map(sharding, state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's part of the batch (leading axis = per-process batch) -> global arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
