"""The simulated source: disjoint splits by seed, batched renders, masks and metadata through the loader.

Each `Simulator` compiles its renderer once per batch size (about 10 s on 2 busy cores), so these tests
render few batches of one size, from as few simulators as the checks need, with a small scene (no PSF,
clumps or field galaxies) that compiles faster, read by one thread (no concurrent first compiles).
"""

import numpy as np
import pytest

from lensjax import config as cfg
from lensjax import data as lensdata
from lensjax.data import sources


def _sim_config(**data_fields):
  config = cfg.Config()
  config.sim.image_size, config.sim.psf, config.sim.clumps_max, config.sim.field_galaxies_max = 32, "none", 0, 0
  config.data.pad_to, config.data.read_threads = 36, 0
  for name, value in data_fields.items():
    setattr(config.data, name, value)
  return cfg.validate(config)


def test_splits_and_runs_get_distinct_simulator_seeds():
  seeds = [sources.sim_seed(_sim_config(sim_seed=run).data, split)
           for run in range(4) for split in sources.SPLITS]
  assert len(set(seeds)) == len(seeds)
  with pytest.raises(ValueError, match="data.sim_seed=-1"):
    sources.sim_seed(_sim_config(sim_seed=-1).data, "train")


def test_split_sizes_and_the_unbounded_training_stream():
  config = _sim_config(sim_train_size=0, sim_val_size=6, sim_test_size=10)
  assert lensdata.num_examples(config, "train") is None
  assert lensdata.num_examples(config, "val") == 6 and lensdata.num_examples(config, "test") == 10
  assert len(lensdata.make_source(config, "train")) == sources.UNBOUNDED_SIM_SIZE
  with pytest.raises(ValueError, match="data.sim_val_size=0"):
    lensdata.make_source(_sim_config(sim_val_size=0), "val")


@pytest.mark.slow
def test_simulated_batches_carry_the_simulator_masks_and_metadata(tmp_path):
  config = _sim_config(sim_val_size=6, targets=("arcs",), input_scaling="unit")
  train = lensdata.make_source(config, "train")
  iterator = iter(lensdata.make_loader(config, "train", batch_size=4, shuffle=True, num_epochs=None, seed=0,
                                       with_edge=True, augment=False))
  batches = [next(iterator) for _ in range(2)]
  # Read in order (scenes are independent draws already), one batched render per batch.
  assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(8))
  raw = train.raw._getitems(list(range(4, 8)))                  # same simulator, same batch size
  batch = batches[1]
  assert batch["image"].shape == (4, 36, 36, 1) and batch["mask"].shape == (4, 36, 36, 1)
  assert batch["edge"].shape == (4, 36, 36, 1)
  for row, example in enumerate(raw):
    np.testing.assert_array_equal(batch["mask"][row, 2:34, 2:34], example["mask"])   # padded at offset 2
    assert batch["mask"][row, :2].sum() == 0
    for key in sources.SIM_METADATA:
      assert batch[key][row] == example[key]
  assert set(np.unique(batch["is_lens"])) <= {0.0, 1.0}
  assert (batch["theta_E"][batch["is_lens"] == 1] > 0).all()
  # Non-lenses have no arc light, hence an empty arc mask.
  assert not batch["mask"][batch["is_lens"] == 0].any()

  # Validation: a different seed, so different scenes at the same indices; padded to full batches.
  val_batches = list(lensdata.make_loader(config, "val", batch_size=4, shuffle=False, num_epochs=1, seed=0))
  assert [b["valid"].tolist() for b in val_batches] == [[1, 1, 1, 1], [1, 1, 0, 0]]
  assert not np.array_equal(val_batches[0]["image"], batches[0]["image"])
