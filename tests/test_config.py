"""Config loading, command-line overrides and their error messages."""

import json

import pytest

from lensjax import config as cfg


def test_default_config_loads_and_round_trips_through_json():
  config, rest = cfg.load("default", ["--config.train.batch_size=16", "--workdir=/tmp/x"])
  assert config.train.batch_size == 16
  assert rest == ["--workdir=/tmp/x"]
  assert cfg.config_from_json(json.dumps(cfg.to_dict(config))) == config


@pytest.mark.parametrize("arg, message", [
    ("--config.train.batchsize=3", "valid keys: batch_size"),
    ("--config.trian.batch_size=3", "config has no field 'trian'"),
    ("--config.train.batch_size=a", "expected an integer"),
    ("--config.model.name=unet", "expected one of 'isnet', 'msrfnet'"),
    ("--config.train=3", "is a section"),
    ("--config.train.fsdp=maybe", "expected true or false"),
    ("--config.train.batch_size", "--config.KEY=VALUE"),
])
def test_bad_overrides_name_the_key_and_the_valid_choices(arg, message):
  with pytest.raises(cfg.ConfigError, match=message):
    cfg.load("default", [arg])


def test_tuple_and_float_overrides_are_parsed_by_field_type():
  config, _ = cfg.load("default", ["--config.data.targets=arcs", "--config.optim.learning_rate=3e-4"])
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
  config, _ = cfg.load(name)
  assert (config.name, config.model.name, config.data.targets) == (run_name, model, targets)


@pytest.mark.parametrize("name", ["isnet_sim:x", "isnet_sim:lens,arcs", "chaos:cpu", "msrfnet_sim:arcs,gpu"])
def test_a_bad_config_argument_lists_the_accepted_ones(name):
  with pytest.raises(cfg.ConfigError, match="expected one of"):
    cfg.load(name)
