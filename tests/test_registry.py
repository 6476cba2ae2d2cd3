"""The model registry agrees with the networks it describes."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from lensjax import config as cfg
from lensjax import registry, train_step
from lensjax.models import build


@pytest.mark.slow
@pytest.mark.parametrize("name", registry.MODEL_NAMES)
def test_each_entry_matches_its_network_and_its_loss_logs_the_main_term(name):
  entry = registry.network(name)
  assert entry.cls.input_keys == entry.input_keys
  depth = max(entry.depths) if len(entry.depths) == 1 else 2
  model = build(name, in_channels=entry.default_in_channels, out_channels=2, width=0.0625, depth=depth, seed=0)
  assert isinstance(model, entry.cls)
  size = 16
  batch = {"image": jnp.zeros((2, size, size, entry.default_in_channels)), "edge": jnp.zeros((2, size, size, 1)),
           "mask": jnp.zeros((2, size, size, 2)), "mask_edge": jnp.zeros((2, size, size, 2))}
  if entry.input_keys[0] == "mask":
    batch["mask"] = jnp.zeros((2, size, size, entry.default_in_channels))
  config = cfg.load("default", [f"--config.data.targets={'lens,arcs' if entry.input_keys[0] != 'mask' else 'lens'}"])
  outputs = model(*(batch[k] for k in entry.input_keys), rngs=nnx.Rngs(dropout=0))
  loss, terms = train_step.make_loss_fn(config, name)(outputs, batch)
  assert entry.main_loss in terms and jnp.isfinite(loss)
  assert jax.tree.leaves(model.prediction(outputs))[0].shape[:3] == (2, size, size)


def test_only_networks_that_train_on_images_are_config_choices():
  assert registry.TRAINABLE_MODEL_NAMES == ("isnet", "msrfnet")
  with pytest.raises(ValueError, match="unknown model name 'unet'"):
    registry.network("unet")


@pytest.mark.parametrize("channels, width, expected", [(64, 0.125, 8), (64, 1.0, 64), (4, 0.125, 1), (6, 0.25, 2),
                                                       (5, 0.5, 3), (32, 0.01, 1)])
def test_scaled_channels_round_halves_up_and_keep_one(channels, width, expected):
  assert registry.scaled_channels(channels, width) == expected
