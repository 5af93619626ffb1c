"""The one training loop of the safety classifiers, and their safetensors parameter files.

Both classifiers (the hashed n-gram model and the encoder head) are Flax NNX modules mapping a
batch of inputs to logits [B, 6]. They are trained the same way: AdamW (optax), 6-way
cross-entropy in which each example weighs `class_weights[label]`, so the unsafe classes count
more (the paper up-weights them x100 for recall; here it is `unsafe_weight`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import safetensors.numpy
from flax import nnx
from tqdm.auto import tqdm

from safejax.safety.rubric import NUM_LEVELS


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings shared by the classifiers."""

  epochs: int = 4
  batch_size: int = 128
  learning_rate: float = 3e-3
  weight_decay: float = 1e-4
  warmup_fraction: float = 0.05
  # Loss weight of classes 1..5 relative to class 0 (paper: 100; chosen on validation, see gin/).
  unsafe_weight: float = 3.0
  seed: int = 0

  def class_weights(self) -> np.ndarray:
    """float32 [6]: 1 for score 0, unsafe_weight for scores 1..5."""
    return np.array([1.0] + [self.unsafe_weight] * (NUM_LEVELS - 1), np.float32)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_i w_i CE_i / sum_i w_i. logits [B, 6], labels int [B], weights [B] (0 masks padding)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1e-9)


def batch_order(rng: np.random.Generator, n: int, batch_size: int, lengths: np.ndarray | None = None,
                batches_per_bucket: int = 16) -> np.ndarray:
  """A random order of examples 0..n-1 for one epoch, int [n].

  With `lengths` (int [n]), examples of similar length share batches: a random permutation is
  cut into buckets of `batches_per_bucket` batches, each bucket sorted by length, and the batches
  shuffled; padded inputs then waste little compute, and batches stay random.
  """
  order = rng.permutation(n)
  if lengths is None:
    return order
  bucket = batch_size * batches_per_bucket
  order = np.concatenate([part[np.argsort(lengths[part], kind="stable")]
                          for part in np.split(order, range(bucket, n, bucket))])
  batches = np.split(order, range(batch_size, n, batch_size))
  return np.concatenate([batches[i] for i in rng.permutation(len(batches))])


def fit(model: nnx.Module, make_batch: Callable[[np.ndarray], tuple], labels: np.ndarray,
        config: TrainConfig, *, wrt: nnx.filterlib.Filter = nnx.Param, desc: str = "train",
        lengths: np.ndarray | None = None) -> list[float]:
  """Trains `model` in place on examples 0..n-1 and returns the loss of every step.

  Args:
    model: called as `model(*make_batch(indices))` -> logits [B, 6].
    make_batch: builds the model inputs of the examples `indices` (int [B]); it should pad to a
      few fixed shapes so that the jitted step compiles only a few times.
    labels: int [n] in 0..5.
    config: optimisation settings.
    wrt: which parameters train (an nnx filter); the others stay fixed.
    desc: tqdm label.
    lengths: int [n] input lengths, to batch similar lengths together (`batch_order`).
  """
  labels = np.asarray(labels, np.int32)
  n = len(labels)
  if n == 0:
    raise ValueError("no training examples")
  steps_per_epoch = -(-n // config.batch_size)
  total = steps_per_epoch * config.epochs
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, max(1, int(total * config.warmup_fraction)), total)
  optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=config.weight_decay), wrt=wrt)
  class_weights = jnp.asarray(config.class_weights())

  @nnx.jit
  def step(model, optimizer, inputs, batch_labels, mask):
    def loss_fn(model):
      logits = model(*inputs)
      return weighted_cross_entropy(logits, batch_labels, class_weights[batch_labels] * mask)
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(config.seed)
  losses = []
  with tqdm(total=total, desc=desc, unit="step") as bar:
    for _ in range(config.epochs):
      order = batch_order(rng, n, config.batch_size, lengths)
      for s in range(0, n, config.batch_size):
        idx = order[s:s + config.batch_size]
        pad = config.batch_size - len(idx)  # the last batch is padded and masked: one shape
        mask = np.r_[np.ones(len(idx), np.float32), np.zeros(pad, np.float32)]
        idx = np.r_[idx, np.zeros(pad, idx.dtype)]
        loss = float(step(model, optimizer, make_batch(idx), jnp.asarray(labels[idx]), jnp.asarray(mask)))
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update()
  return losses


def save_params(model: nnx.Module, file: str | Path) -> None:
  """Writes the model's nnx.Param leaves to a safetensors file, keyed by their path."""
  flat = nnx.state(model, nnx.Param).flat_state()
  tensors = {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in flat}
  Path(file).parent.mkdir(parents=True, exist_ok=True)
  safetensors.numpy.save_file(tensors, str(file))


def load_params(model: nnx.Module, file: str | Path) -> None:
  """Loads parameters written by `save_params` into `model` (same structure and shapes)."""
  tensors = safetensors.numpy.load_file(str(file))
  state = nnx.state(model, nnx.Param)
  flat = state.flat_state()
  expected = {"/".join(map(str, path)): v for path, v in flat}
  if set(expected) != set(tensors):
    raise ValueError(f"{file}: parameters {sorted(set(tensors) ^ set(expected))} do not match the model")
  for key, variable in expected.items():
    if variable.get_value().shape != tensors[key].shape:
      raise ValueError(f"{file}: {key} has shape {tensors[key].shape}, the model "
                       f"{variable.get_value().shape}")
    variable.set_value(jnp.asarray(tensors[key]))
  nnx.update(model, nnx.from_flat_state(flat))
