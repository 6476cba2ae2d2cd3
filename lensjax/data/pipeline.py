"""The Grain input pipeline: process sharding, seeded shuffle, epochs, batched reads, augmentation, workers.

`make_loader` builds a Grain Dataset-API pipeline whose elements are whole batches:

  example ids of this process's shard -> shuffle (per epoch) -> repeat -> batch of ids
  -> read the batch (one simulator call for simulated data) and preprocess each example -> prefetch
  -> worker processes (optional)

Simulated scenes are independent draws by index, so they are read in order, without the shuffle: a batch
of consecutive ids is one batched render.

Batching the ids before reading makes every batch a single batched read, and makes a worker process read
whole batches (Grain gives worker w the batches w, w + W, ...), so no work is repeated across workers.

Sharding: process p of P reads a contiguous block of the example ids, disjoint from the others'; together
they cover every example once per epoch (`ShardByJaxProcess` supplies p and P).
  * Unbounded loaders (`num_epochs=None`, training): block p is examples [p N / P, (p + 1) N / P); each
    process cycles through its own block, so batches run across epoch boundaries and never stop.
  * Finite loaders (`num_epochs=k`, e.g. evaluation): the N examples are padded to a multiple of P x batch_size,
    so every process yields the same number of full batches per epoch. Padding rows repeat real examples
    with `valid = 0`; metrics and losses must weight rows by `valid`.

The iterator (`iter(make_loader(...))`) is a `grain.DatasetIterator`; save and restore its position with
Orbax through `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)` in an
`ocp.args.Composite`. Augmentation draws from a generator seeded by (seed, process, batch number), so a
restored iterator yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import math
import signal

import grain
import numpy as np

from lensjax import config as cfg
from lensjax.data import sources, transforms


class ReadBatch(grain.transforms.RandomMap):
  """Reads a batch of example ids from a raw source and preprocesses each example; picklable.

  Ids at or above `num_real` are padding: they read example `id % num_real` and get `valid = 0`.
  Output: the preprocessor's keys stacked on a new leading axis (B, ...), plus `valid` (B,) float32.
  """

  def __init__(self, raw: sources.RawSource, preprocessor: transforms.Preprocessor, num_real: int,
               augment: bool):
    self.raw, self.preprocessor, self.num_real, self.augment = raw, preprocessor, num_real, augment

  def random_map(self, ids: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = np.asarray(ids, np.int64)
    valid = ids < self.num_real
    read_ids = np.where(valid, ids, ids % self.num_real).tolist()
    examples = self.raw._getitems(read_ids)  # pylint: disable=protected-access
    # Seeds drawn from `rng` (itself seeded by the batch number), not `rng.spawn`: Grain reuses generators,
    # and spawn counts earlier calls, which would make a restored iterator augment differently.
    example_rngs = ([np.random.default_rng(s) for s in rng.integers(2**63, size=len(ids))] if self.augment
                    else [None] * len(ids))
    processed = [self.preprocessor(example, example_rng) for example, example_rng in zip(examples, example_rngs)]
    batch = {key: np.stack([p[key] for p in processed]) for key in processed[0]}
    batch["valid"] = valid.astype(np.float32)
    return batch


def _allow_worker_processes() -> None:
  """Grain 0.2.18 workers read absl flags; outside `absl.app.run` nothing has parsed them (fixed after 0.2.18)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _ignore_interrupts(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: Ctrl-C in a terminal reaches every process of the group; the training process turns
  it into a checkpoint at the next step (`checkpoint.StopSignals`), which needs its workers alive until then."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _derived_seed(seed: int, shard_index: int, stream: int) -> int:
  """A 32-bit seed for one random stream (0 shuffle, 1 augmentation) of one process."""
  return int(np.random.SeedSequence([seed, shard_index, stream]).generate_state(1)[0])


def make_loader(config: cfg.Config, split: str, *, batch_size: int, shuffle: bool, num_epochs: int | None,
                seed: int, with_edge: bool | None = None, augment: bool | None = None,
                shard_options: grain.sharding.ShardOptions | None = None) -> grain.IterDataset:
  """The batches of `split` for this process: iterate it, or `iter()` it to get a checkpointable iterator.

  Args:
    config: the experiment; `config.data` names the dataset and the preprocessing.
    split: 'train', 'val' or 'test'.
    batch_size: examples per batch of this process (the global batch over the number of processes).
    shuffle: reshuffle this process's examples every epoch (seeded). Ignored for simulated data, whose
      scenes are independent draws by index already; they are read in order, in batched renders.
    num_epochs: passes over the data; None for an unbounded stream (training). Finite loaders pad the last
      batches (`valid = 0`) so every process yields the same number of full batches.
    seed: seed of the shuffle and the augmentation.
    with_edge: add the Canny `edge` map (default: when the model is MSRF-Net).
    augment: apply `config.data.augment` and random crops (default: for the train split only).
    shard_options: this process's share (default: `ShardByJaxProcess`, from `jax.process_index()`).

  Yields:
    dicts of numpy arrays: `image` (B, S, S, C) float32, `mask` (B, S, S, K) float32 (not for FITS),
    `edge` (B, S, S, 1) float32 when asked, `valid` (B,) float32, `index` (B,) int64 (the example's index in
    the split's source) and, for simulated data, the per-image simulation parameters (B,) float32.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size}: expected a positive number of examples per process")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs={num_epochs}: expected a positive number of passes, or None for unbounded")
  data = config.data
  for name in ("worker_count", "worker_buffer_size", "read_threads", "prefetch_batches"):
    if getattr(data, name) < 0:
      raise ValueError(f"data.{name}={getattr(data, name)}: expected a count >= 0")
  source = sources.make_source(config, split, with_edge=with_edge)
  shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=False)
  shard_index, shard_count = shard.shard_index, shard.shard_count
  num_real = len(source)
  shuffle = shuffle and data.source != "sim"

  if num_epochs is None:
    start, stop = shard_index * num_real // shard_count, (shard_index + 1) * num_real // shard_count
    if start == stop:
      raise ValueError(f"the {split} split has {num_real} examples, fewer than the {shard_count} processes "
                       "reading it: every process needs at least one")
  else:
    per_process = math.ceil(num_real / (shard_count * batch_size)) * batch_size
    start, stop = shard_index * per_process, (shard_index + 1) * per_process
  ids = grain.MapDataset.range(start, stop)
  if shuffle:
    ids = ids.shuffle(seed=_derived_seed(seed, shard_index, 0))
  ids = ids.repeat(num_epochs).batch(batch_size, drop_remainder=True)
  batches = ids.random_map(
      ReadBatch(source.raw, source.preprocessor, num_real, split == "train" if augment is None else augment),
      seed=_derived_seed(seed, shard_index, 1))
  loader = batches.to_iter_dataset(
      grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch_batches))
  if data.worker_count:
    _allow_worker_processes()
    loader = loader.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data.worker_count, per_worker_buffer_size=data.worker_buffer_size),
        worker_init_fn=_ignore_interrupts)
  return loader


def batches_per_epoch(num_real: int, batch_size: int, process_count: int) -> int:
  """Batches each process yields per epoch from a finite loader over `num_real` examples."""
  return math.ceil(num_real / (process_count * batch_size))

