"""The Grain pipeline: batches, process sharding, padding, shuffling, workers, and resuming with Orbax."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest

from lensjax import data as lensdata
from tests.helpers import datasets as fx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _npy_config(root, count=20, **data_fields):
  fx.write_npy_array(root, count=count, size=16)
  return fx.config_for("npy", root, pad_to=0, **data_fields)


def _shard(index, count):
  return grain.sharding.ShardOptions(shard_index=index, shard_count=count)


def _take(loader, n):
  iterator = iter(loader)
  return [next(iterator) for _ in range(n)]


def test_batches_hold_images_masks_edges_and_valid_flags(tmp_path):
  config = _npy_config(tmp_path)
  batch = _take(lensdata.make_loader(config, "train", batch_size=4, shuffle=True, num_epochs=None, seed=0,
                                     with_edge=True), 1)[0]
  assert batch["image"].shape == (4, 16, 16, 1) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (4, 16, 16, 2) and batch["mask"].dtype == np.float32
  assert batch["edge"].shape == (4, 16, 16, 1) and set(np.unique(batch["edge"])) <= {0.0, 1.0}
  assert batch["valid"].tolist() == [1.0] * 4 and batch["index"].dtype == np.int64
  assert "edge" not in _take(lensdata.make_loader(config, "val", batch_size=2, shuffle=False, num_epochs=1,
                                                  seed=0), 1)[0]


# 10 examples: 1 process reads 3 batches of 4 (2 padding rows); 2 processes 2 batches of 3 each (12 rows);
# 3 processes 1 batch of 4 each (12 rows).
@pytest.mark.parametrize("process_count, batch_size, expected", [(1, 4, 3), (2, 3, 2), (3, 4, 1)])
def test_finite_loaders_read_every_example_once_in_equal_numbers_of_full_batches(tmp_path, process_count,
                                                                                 batch_size, expected):
  config = _npy_config(tmp_path, count=50, split_fractions=(0.6, 0.2, 0.2))    # val: 10 examples
  seen, batch_counts = [], []
  for p in range(process_count):
    batches = list(lensdata.make_loader(config, "val", batch_size=batch_size, shuffle=False, num_epochs=1,
                                        seed=0, shard_options=_shard(p, process_count)))
    batch_counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape[0] == batch_size
      seen += batch["index"][batch["valid"] == 1].tolist()
      # Padding rows are real images (so shapes and statistics stay sane) flagged invalid.
      assert np.isfinite(batch["image"]).all()
  assert sorted(seen) == list(range(10))
  assert batch_counts == [expected] * process_count
  assert lensdata.batches_per_epoch(10, batch_size, process_count) == expected


def test_unbounded_loaders_give_processes_disjoint_blocks_that_cover_the_split(tmp_path):
  config = _npy_config(tmp_path, count=20)     # train: 16 examples
  blocks = []
  for p in range(3):
    size = (p + 1) * 16 // 3 - p * 16 // 3
    batches = _take(lensdata.make_loader(config, "train", batch_size=2, shuffle=True, num_epochs=None, seed=0,
                                         shard_options=_shard(p, 3)), 6)
    stream = np.concatenate([b["index"] for b in batches])
    blocks.append(set(stream[:size].tolist()))
    assert len(blocks[-1]) == size                           # one epoch: each example of the block once
    assert set(stream.tolist()) == blocks[-1]                # later epochs stay in the block
  assert set().union(*blocks) == set(range(16)) and sum(map(len, blocks)) == 16


def test_shuffle_is_seeded_and_differs_between_epochs(tmp_path):
  config = _npy_config(tmp_path, count=20)
  def order(seed):
    batches = _take(lensdata.make_loader(config, "train", batch_size=4, shuffle=True, num_epochs=None,
                                         seed=seed), 8)
    return np.concatenate([b["index"] for b in batches]).tolist()
  first = order(0)
  assert first == order(0) and first != order(1)
  assert sorted(first[:16]) == sorted(first[16:]) == list(range(16)) and first[:16] != first[16:]
  unshuffled = _take(lensdata.make_loader(config, "train", batch_size=4, shuffle=False, num_epochs=1,
                                          seed=0), 4)
  assert np.concatenate([b["index"] for b in unshuffled]).tolist() == list(range(16))


def test_loader_augmentation_keeps_masks_aligned_with_images(tmp_path):
  fx.write_png_folders(tmp_path, counts={"train": 6}, size=20, rgb=False)
  config = fx.config_for("png", tmp_path, targets=("foreground",), normalize="none", pad_to=0,
                         input_scaling="unit", crop_size=14)
  batches = _take(lensdata.make_loader(config, "train", batch_size=3, shuffle=True, num_epochs=None, seed=0),
                  10)
  for batch in batches:
    np.testing.assert_array_equal(batch["mask"], (batch["image"] > 128 / 255).astype(np.float32))
  assert batches[0]["image"].shape == (3, 14, 14, 1)
  # Same example, different epochs: different augmentations.
  by_index = {}
  for batch in batches:
    for index, image in zip(batch["index"], batch["image"]):
      by_index.setdefault(int(index), set()).add(image.tobytes())
  assert max(len(v) for v in by_index.values()) > 1


def test_fits_cutouts_are_batched_for_prediction_without_masks(tmp_path):
  fx.write_fits(tmp_path / "cube.fits", np.random.default_rng(0).random((5, 10, 10)).astype(np.float32))
  batches = list(lensdata.make_loader(fx.config_for("fits", tmp_path), "test", batch_size=4, shuffle=False,
                                      num_epochs=1, seed=0))
  assert [b["valid"].tolist() for b in batches] == [[1, 1, 1, 1], [1, 0, 0, 0]]
  assert batches[0]["image"].shape == (4, 128, 128, 1) and "mask" not in batches[0]


def test_orbax_restores_the_iterator_to_exactly_the_next_batches(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  config = _npy_config(tmp_path / "data", count=20, crop_size=12)
  def loader():
    return lensdata.make_loader(config, "train", batch_size=3, shuffle=True, num_epochs=None, seed=7,
                                with_edge=True)
  iterator = iter(loader())
  for _ in range(7):                                       # past the first epoch of 16 examples
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=2))
  manager.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = [next(iterator) for _ in range(6)]
  restored = iter(loader())
  manager.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
  manager.close()
  for want, got in zip(expected, [next(restored) for _ in range(6)]):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_worker_processes_yield_the_same_batches_as_the_training_process(tmp_path):
  config = _npy_config(tmp_path, count=20)
  def batches(workers):
    config.data.worker_count = workers
    return _take(lensdata.make_loader(config, "train", batch_size=4, shuffle=True, num_epochs=None, seed=3), 5)
  for in_process, from_workers in zip(batches(0), batches(2)):
    for key in in_process:
      np.testing.assert_array_equal(from_workers[key], in_process[key])


_TWO_PROCESS_READER = textwrap.dedent("""
    import json, sys
    import jax
    process_id, port, data_path, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    from lensjax import data as lensdata
    from tests.helpers import datasets as fx
    config = fx.config_for("npy", data_path, pad_to=0, split_fractions=(0.5, 0.25, 0.25))
    evaluation = [(b["index"].tolist(), b["valid"].tolist()) for b in lensdata.make_loader(
        config, "val", batch_size=2, shuffle=False, num_epochs=1, seed=0)]
    iterator = iter(lensdata.make_loader(config, "train", batch_size=2, shuffle=True, num_epochs=None, seed=0))
    training = [next(iterator)["index"].tolist() for _ in range(4)]
    json.dump({"eval": evaluation, "train": training}, open(out_path, "w"))
    jax.distributed.shutdown()
""")


def test_two_jax_processes_read_disjoint_parts_that_together_cover_each_split(tmp_path):
  import portpicker  # pylint: disable=g-import-not-at-top
  fx.write_npy_array(tmp_path / "data", count=22, size=8)
  port = portpicker.pick_unused_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1",
             PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_READER, str(p), str(port),
                             str(tmp_path / "data"), str(tmp_path / f"out{p}.json")],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for p in range(2)]
  for proc in procs:
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, output.decode()[-3000:]
  results = [json.loads((tmp_path / f"out{p}.json").read_text()) for p in range(2)]
  config = fx.config_for("npy", tmp_path / "data", split_fractions=(0.5, 0.25, 0.25))
  val_size, train_size = lensdata.num_examples(config, "val"), lensdata.num_examples(config, "train")
  assert (train_size, val_size) == (10, 6)
  # Evaluation: the same number of full batches on both processes; the valid rows cover val exactly once.
  assert len(results[0]["eval"]) == len(results[1]["eval"])
  valid = [i for r in results for indices, flags in r["eval"] for i, f in zip(indices, flags) if f]
  assert sorted(valid) == list(range(val_size))
  # Training: each process cycles through its own half of train.
  blocks = [set(np.concatenate(r["train"]).tolist()) for r in results]
  assert not blocks[0] & blocks[1] and blocks[0] | blocks[1] == set(range(train_size))
