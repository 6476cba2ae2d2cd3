"""The training loop on simulated data: it learns, stops on a NaN loss, trains MSRF-Net and feature sync; on .npy
data it refuses a bad mask before step 0 and says which masks it uses."""

import json

import numpy as np
import pytest

from lensjax import config as cfg
from lensjax import step_loop, train
from lensjax.data import DataError
from tests.helpers import datasets as fx


def tiny_config(**overrides) -> cfg.Config:
  """A tiny IS-Net on 61 -> 64 px simulated lenses: compiles and trains in seconds."""
  args = {
      "model.width": "0.125", "model.depth": "2", "sim.image_size": "61", "data.pad_to": "64",
      "data.sim_val_size": "32", "train.batch_size": "8", "train.eval_batch_size": "16",
      "train.num_steps": "6", "train.log_every": "3", "train.eval_every": "6",
  }
  args.update(overrides)
  return cfg.load("default", [f"--config.{k}={v}" for k, v in args.items()])


def read_metrics(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


@pytest.mark.slow
def test_a_short_run_improves_validation_iou(tmp_path):
  config = tiny_config(**{"data.targets": "lens", "train.num_steps": "300", "train.log_every": "50",
                          "train.eval_every": "150", "optim.learning_rate": "3e-3"})
  final = train.train_and_evaluate(config, tmp_path)
  records = read_metrics(tmp_path)
  val = [r for r in records if r["split"] == "val"]
  assert [r["step"] for r in val] == [0, 150, 300]         # the untrained model is evaluated first
  assert {"step", "split", "loss", "loss/d1", "images_per_sec", "iou/lens"} <= set(records[0]) | set(records[1])
  assert val[-1]["iou/lens"] > val[0]["iou/lens"] + 0.3, [r["iou/lens"] for r in val]   # 0 -> 0.72 measured
  assert final["iou/lens"] == val[-1]["iou/lens"]
  saved = cfg.config_from_json((tmp_path / "config.json").read_text())
  assert saved == config


def test_a_nan_loss_stops_the_run_naming_the_step(tmp_path):
  config = tiny_config(**{"optim.name": "sgd", "optim.learning_rate": "1e30", "train.num_steps": "20"})
  with pytest.raises(step_loop.NonFiniteLossError, match=r"at step \d+"):
    train.train_and_evaluate(config, tmp_path)


def test_msrfnet_trains_on_images_and_their_edges(tmp_path):
  config = tiny_config(**{"model.name": "msrfnet", "model.depth": "6", "train.num_steps": "4", "train.log_every": "2",
                          "train.eval_every": "4", "train.batch_size": "4", "train.eval_batch_size": "8"})
  config.optim = cfg.load_module_config("msrfnet_sim").optim
  train.train_and_evaluate(config, tmp_path)
  records = read_metrics(tmp_path)
  train_records = [r for r in records if r["split"] == "train"]
  assert {"loss/x", "loss/edge", "loss/pred2", "loss/pred4"} <= set(train_records[-1])
  assert all(np.isfinite(r["loss"]) for r in records)


def test_feature_sync_trains_the_gt_encoder_then_adds_the_feature_loss(tmp_path):
  config = tiny_config(**{"train.feature_sync": "true", "train.gt_encoder_steps": "4", "train.num_steps": "3"})
  train.train_and_evaluate(config, tmp_path)
  assert (tmp_path / "gt_encoder").is_dir()
  last = [r for r in read_metrics(tmp_path) if r["split"] == "train"][-1]
  assert last["loss/feature_sync"] > 0 and np.isfinite(last["loss/feature_sync"])
  assert last["loss"] > last["loss/d1"] + last["loss/d2"]      # the feature term is part of the total


def _npy_config(path, **overrides) -> cfg.Config:
  return tiny_config(**{"data.source": "npy", "data.path": str(path), "data.pad_to": "0", "train.num_steps": "2",
                        "train.log_every": "1", "train.eval_every": "2", "train.batch_size": "4",
                        "train.eval_batch_size": "4", "checkpoint.every_steps": "0", **overrides})


def test_a_bad_mask_value_stops_training_before_step_0_naming_file_and_row(tmp_path):
  _, masks = fx.write_npy_array(tmp_path / "data", count=24, size=32)
  masks[5, 10, 10, 1] = 7
  np.save(tmp_path / "data" / "masks.npy", masks)
  config = _npy_config(tmp_path / "data", **{"data.split_fractions": "1,0,0"})
  with pytest.raises(DataError, match=r"masks.npy\[5\]: mask values 7 are not allowed"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_the_start_up_log_says_which_masks_are_used_and_warns_of_a_misnamed_file(tmp_path, capsys):
  fx.write_npy_array(tmp_path / "data", count=24, size=32)
  (tmp_path / "data" / "masks.npy").rename(tmp_path / "data" / "mask.npy")
  train.train_and_evaluate(_npy_config(tmp_path / "data"), tmp_path / "run")
  printed = capsys.readouterr().out
  assert (f"data: npy {tmp_path / 'data'}, masks: made from the lens and arc channels by the percentile rule "
          "(no masks.npy)") in printed
  assert f"warning: {tmp_path / 'data' / 'mask.npy'}: not read" in printed
