"""Each loss against a value computed by hand on a small example."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from lensjax import config as cfg
from lensjax import losses, registry, train_step

# Two pixels: logit 0 with target 1, logit ln 3 with target 0.
LOGITS = jnp.array([0.0, math.log(3.0)]).reshape(1, 1, 2, 1)
TARGET = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)
BCE = (math.log(2.0) + math.log(4.0)) / 2          # -log(1/2), -log(1 - 3/4)
DICE = (2 * 0.5 + 1) / (1 + (0.5 + 0.75) + 1)      # sigmoid = 0.5, 0.75; smoothing 1


def test_bce_matches_hand_value():
  assert float(losses.bce(LOGITS, TARGET)) == pytest.approx(BCE, rel=1e-6)


def test_bce_dice_matches_hand_value():
  assert float(losses.bce_dice(LOGITS, TARGET)) == pytest.approx(BCE + 1 - DICE, rel=1e-6)


def test_target_weights_weight_the_per_target_losses():
  logits = jnp.concatenate([LOGITS, jnp.zeros_like(LOGITS)], axis=-1)     # target 2: logit 0 everywhere
  target = jnp.concatenate([TARGET, TARGET], axis=-1)
  second = math.log(2.0)
  assert float(losses.bce(logits, target)) == pytest.approx((BCE + second) / 2, rel=1e-6)
  assert float(losses.bce(logits, target, (3.0, 1.0))) == pytest.approx((3 * BCE + second) / 4, rel=1e-6)
  with pytest.raises(ValueError, match="one weight per target"):
    losses.bce(logits, target, (1.0,))


def test_isnet_loss_sums_the_side_outputs_and_reports_d1():
  far_off = jnp.full_like(LOGITS, -2.0)
  total, terms = losses.isnet_loss([LOGITS, far_off], TARGET)
  second = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-2.0))) / 2
  assert float(terms["loss/d1"]) == pytest.approx(BCE, rel=1e-6)
  assert float(terms["loss/d2"]) == pytest.approx(second, rel=1e-6)
  assert float(total) == pytest.approx(BCE + second, rel=1e-6)


def test_isnet_dice_weight_adds_weighted_soft_dice_to_every_side():
  far_off = jnp.full_like(LOGITS, -2.0)
  p = 1 / (1 + math.exp(2.0))                        # sigmoid(-2) on both pixels, target 1 on the first
  far_dice = (2 * p + 1) / (1 + 2 * p + 1)
  plain, plain_terms = losses.isnet_loss([LOGITS, far_off], TARGET)
  total, terms = losses.isnet_loss([LOGITS, far_off], TARGET, dice_weight=0.5)
  assert float(terms["loss/d1"]) == pytest.approx(BCE + 0.5 * (1 - DICE), rel=1e-6)
  assert float(terms["loss/d2"]) == pytest.approx(float(plain_terms["loss/d2"]) + 0.5 * (1 - far_dice), rel=1e-6)
  assert float(total) == pytest.approx(float(plain) + 0.5 * (2 - DICE - far_dice), rel=1e-6)
  config = cfg.load("default", ["--config.data.targets=lens", "--config.train.isnet_dice_weight=0.5"])
  step_total, _ = train_step.make_loss_fn(config)(([LOGITS, far_off], []), {"mask": TARGET})
  assert float(step_total) == pytest.approx(float(total), rel=1e-6)


def test_feature_sync_is_the_sum_of_level_mses():
  features = [jnp.ones((1, 4, 4, 2)), jnp.full((1, 2, 2, 3), 3.0)]
  targets = [jnp.zeros((1, 4, 4, 2)), jnp.ones((1, 2, 2, 3))]
  assert float(losses.feature_sync_loss(features, targets)) == pytest.approx(1.0 + 4.0)
  with pytest.raises(ValueError, match="same depth"):
    losses.feature_sync_loss(features, targets[:1])


def test_msrfnet_loss_weights_2_1_1_1_by_default():
  edge_target = jnp.zeros_like(TARGET)
  total, terms = losses.msrfnet_loss([LOGITS, LOGITS, LOGITS, LOGITS], TARGET, edge_target, None,
                                     registry.network("msrfnet").output_weights)
  edge_bce = (math.log(2.0) + math.log(4.0)) / 2      # logit 0 vs 0, logit ln 3 vs 0
  assert float(terms["loss/edge"]) == pytest.approx(edge_bce, rel=1e-6)
  assert float(terms["loss/x"]) == pytest.approx(BCE + 1 - DICE, rel=1e-6)
  assert float(total) == pytest.approx(4 * (BCE + 1 - DICE) + edge_bce, rel=1e-6)


def test_bce_is_stable_for_extreme_logits():
  logits = jnp.array([80.0, -80.0]).reshape(1, 1, 2, 1)
  value = float(losses.bce(logits, jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)))
  assert np.isfinite(value) and value == pytest.approx(80.0, rel=1e-5)
