"""The shared training loop: batch order (with length buckets), class weights, the weighted loss."""

import jax.numpy as jnp
import numpy as np
import pytest

from safejax.safety import training
from safejax.safety.training import TrainConfig


def test_batch_order_is_a_permutation_and_buckets_by_length():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 128, 1000)
  order = training.batch_order(np.random.default_rng(1), 1000, 32, lengths, batches_per_bucket=8)
  assert sorted(order) == list(range(1000))
  batches = [lengths[order[s:s + 32]] for s in range(0, 1000, 32)]
  spread = np.mean([b.max() - b.min() for b in batches])
  random_spread = np.mean([lengths[p].max() - lengths[p].min() for p in np.split(rng.permutation(1000), range(32, 1000, 32))])
  assert spread < 0.4 * random_spread  # similar lengths share batches
  again = training.batch_order(np.random.default_rng(2), 1000, 32, lengths, batches_per_bucket=8)
  assert not np.array_equal(order, again)  # still random from epoch to epoch
  assert sorted(training.batch_order(np.random.default_rng(0), 10, 4)) == list(range(10))


def test_class_weights_and_weighted_cross_entropy():
  assert list(TrainConfig(unsafe_weight=10.0).class_weights()) == [1.0] + [10.0] * 5
  logits = jnp.array([[2.0, 0, 0, 0, 0, 0], [0, 0, 0, 2.0, 0, 0]])
  labels = jnp.array([0, 0])
  per_example = -np.log(np.exp(np.array([2.0, 0.0])) / (np.exp(2.0) + 5))
  loss = training.weighted_cross_entropy(logits, labels, jnp.array([1.0, 3.0]))
  assert float(loss) == pytest.approx((per_example[0] + 3 * per_example[1]) / 4, rel=1e-5)
  assert float(training.weighted_cross_entropy(logits, labels, jnp.array([1.0, 0.0]))) == pytest.approx(per_example[0], rel=1e-5)
