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
computed over the global batch.

A dead peer: if a process dies (kill -9, a node failure), the coordination service notices within the
heartbeat timeout (at once if it was process 0, which hosts the service) and JAX's client aborts every other
process, printing a C++ stack trace. `initialize` turns that into one line and an exit status: the standard
error stream of a multi-process run passes through a small relay process that replaces the client's fatal
message and trace by `error: process I of N stops: another process of this job died or stopped answering
(...)`, and SIGABRT ends the process with exit status 6 instead of a core dump. Everything else on the
stream passes through unchanged.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import logging
import os
import re
import signal

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as orbax_multihost

DATA_AXIS = "data"
SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
# What `options_from_env` reads: (environment variable, DistributedOptions field, type).
LENSJAX_VARIABLES = (("LENSJAX_COORDINATOR_ADDRESS", "coordinator_address", str),
                     ("LENSJAX_NUM_PROCESSES", "num_processes", int), ("LENSJAX_PROCESS_ID", "process_id", int))
# The first words of the fatal message of JAX's distributed client when the coordination service reports a dead
# or silent process (or is gone itself); a C++ stack trace follows, then SIGABRT.
LOST_PEER_MARKER = b"Terminating process because the JAX distributed service detected fatal errors"
STACK_TRACE_MARKER = b"*** Check failure stack trace"
# Bytes the relay reads from the pipe at a time.
_RELAY_CHUNK_BYTES = 1 << 16
_LIBC = ctypes.CDLL(None)


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
      report_lost_peers(f"process {options.process_id} of {options.num_processes}")
      jax.distributed.initialize(options.coordinator_address, options.num_processes, options.process_id,
                                 **timeouts)
    return
  if all(v in os.environ for v in SLURM_VARIABLES) and int(os.environ["SLURM_NTASKS"]) > 1:
    report_lost_peers(f"process {os.environ['SLURM_PROCID']} of {os.environ['SLURM_NTASKS']}")
    jax.distributed.initialize(**timeouts)
    logging.info("joined Slurm job %s as process %d of %d", os.environ["SLURM_JOB_ID"],
                 jax.process_index(), jax.process_count())


def report_lost_peers(process: str) -> None:
  """Makes a peer's death end this process with one error line and exit status 6 (see the module docstring).

  Forks the relay that standard error (fd 2) then passes through, and sets SIGABRT to `_exit(6)`. Call once,
  before `jax.distributed.initialize` starts any thread; `process` names this process in the error line.
  """
  read_end, write_end = os.pipe()
  if os.fork() == 0:
    os.close(write_end)
    # The relay outlives the signals meant for the training process (a stop request, Ctrl-C), so that nothing
    # written to standard error meanwhile is lost; it ends when every writer has closed the pipe.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
      signal.signal(signum, signal.SIG_IGN)
    _relay_standard_error(read_end, 2, process)
    os._exit(0)
  os.close(read_end)
  os.dup2(write_end, 2)
  os.close(write_end)
  _LIBC.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
  _LIBC.signal.restype = ctypes.c_void_p
  _LIBC.signal(signal.SIGABRT, ctypes.cast(_LIBC._exit, ctypes.c_void_p))   # _exit(6): no core dump


def _relay_standard_error(source: int, sink: int, process: str) -> None:
  """Copies `source` to `sink` as it comes, line by line, until the distributed client's fatal message.

  From that message on nothing is copied: one error line saying why the process stops replaces the message
  and its stack trace. Partial lines are held back (so the message is recognised whole), but a carriage
  return ends a line too, so progress bars stay live.
  """
  pending, fatal, reported = b"", None, False
  while chunk := os.read(source, _RELAY_CHUNK_BYTES):
    if fatal is not None:
      fatal += chunk
    else:
      pending += chunk
      at = pending.find(LOST_PEER_MARKER)
      if at >= 0:
        line_start = max(pending.rfind(b"\n", 0, at), pending.rfind(b"\r", 0, at)) + 1
        os.write(sink, pending[:line_start])
        fatal, pending = pending[at:], b""
      else:
        cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
        os.write(sink, pending[:cut])
        pending = pending[cut:]
    if fatal is not None and not reported and STACK_TRACE_MARKER in fatal:
      os.write(sink, lost_peer_message(fatal, process))
      reported = True
  if fatal is not None and not reported:
    os.write(sink, lost_peer_message(fatal, process))
  elif pending:
    os.write(sink, pending)


def lost_peer_message(fatal: bytes, process: str) -> bytes:
  """The error line that replaces the distributed client's fatal message `fatal` (and its trace)."""
  status = fatal.split(b"absl::Status:", 1)[-1].split(STACK_TRACE_MARKER, 1)[0]
  status = re.sub(r"\s+", " ", re.sub(r"\[type\.googleapis\.com[^\]]*\]", "", status.decode(errors="replace")))
  return (f"error: {process} stops: another process of this job died or stopped answering (the coordination "
          f"service says: {status.strip()[:400]}). Every process stops; the newest complete checkpoint is "
          "intact: rerun the job to resume from it\n").encode()


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
