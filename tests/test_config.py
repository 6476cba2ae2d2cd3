"""Config loading, command-line overrides and their error messages."""

import json

import pytest

from lensjax import config as cfg


def test_default_config_loads_and_round_trips_through_json():
  config = cfg.load("default", ["--config.train.batch_size=16"])
  assert config.train.batch_size == 16
  assert cfg.config_from_json(json.dumps(cfg.to_dict(config))) == config


@pytest.mark.parametrize("arg, message", [
    ("--config.train.batchsize=3", "valid keys: batch_size"),
    ("--config.trian.batch_size=3", "config has no field 'trian'"),
    ("--config.train.batch_size=a", "expected an integer"),
    ("--config.model.name=unet", "expected one of 'isnet', 'msrfnet'"),
    ("--config.model.name=isnet_gt_encoder", "expected one of 'isnet', 'msrfnet'"),
    ("--workdir=/tmp/x", "write overrides as --config.KEY=VALUE"),
    ("--config.train=3", "is a section"),
    ("--config.train.fsdp=maybe", "expected true or false"),
    ("--config.train.batch_size", "--config.KEY=VALUE"),
])
def test_bad_overrides_name_the_key_and_the_valid_choices(arg, message):
  with pytest.raises(cfg.ConfigError, match=message):
    cfg.load("default", [arg])


def test_tuple_and_float_overrides_are_parsed_by_field_type():
  config = cfg.load("default", ["--config.data.targets=arcs", "--config.optim.learning_rate=3e-4"])
  assert config.data.targets == ("arcs",)
  assert config.optim.learning_rate == pytest.approx(3e-4)


def test_unknown_config_file_lists_the_available_ones():
  with pytest.raises(cfg.ConfigError, match="available: .*default"):
    cfg.load("no_such_experiment")


def test_saved_config_with_unknown_key_is_refused():
  data = cfg.to_dict(cfg.Config())
  data["train"]["bogus"] = 1
  with pytest.raises(cfg.ConfigError, match="train.bogus"):
    cfg.from_dict(cfg.Config, data)


@pytest.mark.parametrize("name, run_name, model, targets", [
    ("default", "default", "isnet", ("lens", "arcs")),
    ("isnet_sim", "isnet_sim_both", "isnet", ("lens", "arcs")),
    ("isnet_sim:arcs", "isnet_sim_arcs", "isnet", ("arcs",)),
    ("isnet_sim:lens,cpu", "isnet_sim_lens_cpu", "isnet", ("lens",)),
    ("msrfnet_sim:arcs,cpu", "msrfnet_sim_arcs_cpu", "msrfnet", ("arcs",)),
    ("chaos:msrfnet,organs,cpu", "chaos_msrfnet_organs_cpu", "msrfnet",
     ("liver", "right_kidney", "left_kidney", "spleen")),
])
def test_experiment_configs_load_with_their_argument(name, run_name, model, targets):
  config = cfg.load(name)
  assert (config.name, config.model.name, config.data.targets) == (run_name, model, targets)


@pytest.mark.parametrize("name", ["isnet_sim:x", "isnet_sim:lens,arcs", "chaos:cpu", "msrfnet_sim:arcs,gpu"])
def test_a_bad_config_argument_lists_the_accepted_ones(name):
  with pytest.raises(cfg.ConfigError, match="expected one of"):
    cfg.load(name)


@pytest.mark.parametrize("arg, message", [
    ("--config.optim.learning_rate=-1", r"config.optim.learning_rate=-1.0: expected > 0"),
    ("--config.optim.learning_rate=nan", r"config.optim.learning_rate=nan: expected > 0"),
    ("--config.train.batch_size=0", r"config.train.batch_size=0: expected >= 1"),
    ("--config.train.num_steps=0", r"config.train.num_steps=0: expected >= 1"),
    ("--config.optim.b2=1", r"config.optim.b2=1.0: expected in \[0, 1\)"),
    ("--config.model.width=0", r"config.model.width=0.0: expected a positive channel multiplier"),
    ("--config.model.depth=7", r"config.model.depth=7: expected one of .* for model.name='isnet'"),
    ("--config.model.dtype=float16", r"config.model.dtype='float16': expected one of 'float32', 'bfloat16'"),
    ("--config.model.refine_channels=-4", r"config.model.refine_channels=-4: expected >= 0"),
    ("--config.checkpoint.keep=0", r"config.checkpoint.keep=0: expected >= 1"),
    ("--config.checkpoint.best_metric=iou/liver", r"no target 'liver'"),
    ("--config.data.split_fractions=0.5,0.5,0.5", r"sum to 1"),
    ("--config.data.source=npy", r"reads files: set data.path"),
    ("--config.train.target_weights=1,2,3", r"one weight per target \(lens, arcs\)"),
    ("--config.sim.image_size=0", r"config.sim.image_size must lie in \[1, 4096\]"),
])
def test_values_out_of_range_are_refused_when_the_config_is_loaded(arg, message):
  with pytest.raises(cfg.ConfigError, match=message):
    cfg.load("default", [arg])


def test_cross_field_rules_name_both_fields():
  with pytest.raises(cfg.ConfigError, match="feature_sync=true applies to IS-Net only"):
    cfg.load("msrfnet_sim", ["--config.train.feature_sync=true"])
  with pytest.raises(cfg.ConfigError, match="isnet_dice_weight=1.0 applies to IS-Net only"):
    cfg.load("msrfnet_sim", ["--config.train.isnet_dice_weight=1"])
  with pytest.raises(cfg.ConfigError, match="depth=4: expected one of 6 for model.name='msrfnet'"):
    cfg.load("default", ["--config.model.name=msrfnet"])
  with pytest.raises(cfg.ConfigError, match="refine_channels=8: the refinement head is IS-Net's; leave it 0 for "
                                           "model.name='msrfnet'"):
    cfg.load("msrfnet_sim", ["--config.model.refine_channels=8"])
  config = cfg.load("default")
  with pytest.raises(cfg.ConfigError, match="train.batch_size=8: must be a multiple of the number of devices \\(3\\)"):
    config.check_devices(3)
  config.check_devices(4)


def test_resumable_changes_are_declared_on_the_fields():
  assert cfg.resumable_keys() == {
      "name", "train.log_every", "train.eval_every", "train.early_stop_evals", "train.eval_batch_size", "train.figure_images",
      "train.tensorboard", "checkpoint.every_steps", "checkpoint.keep", "data.read_threads",
      "data.prefetch_batches", "data.worker_buffer_size"}
