"""Fake models for the decoding tests: next-token distributions written down by hand.

A bigram model's next-token log-probabilities depend only on the current token, so a test can
state exactly what the model predicts after every candidate (and thus SafeBeam's lookahead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from safejax.decoding import left_pad

PAD, EOS, TAG = 0, 1, 4  # the layout of safejax vocabularies: pad 0, eos 1, the harm tag 4


@struct.dataclass
class StatelessCache:
  """A bigram model needs no memory; the decoders only ask a cache to reorder rows and keep siblings."""

  index: jax.Array

  def gather_rows(self, rows: jax.Array) -> "StatelessCache":
    del rows
    return self

  def gather_beams(self, parents: jax.Array) -> "StatelessCache":
    del parents
    return self

  def keep_sibling(self, choice: jax.Array, num_siblings: int) -> "StatelessCache":
    del choice, num_siblings
    return self


def bigram_table(vocab_size: int, rows: dict[int, dict[int, float]]) -> np.ndarray:
  """Log-probabilities [V, V]: row t is the next-token distribution after token t.

  `rows[t]` gives some probabilities; the rest of the mass is spread evenly over the other tokens.
  Rows not given are uniform.
  """
  probs = np.full((vocab_size, vocab_size), 1.0 / vocab_size)
  for token, given in rows.items():
    rest = 1.0 - sum(given.values())
    if rest <= 0:
      raise ValueError(f"row {token} gives probability mass {1 - rest} >= 1")
    probs[token] = rest / (vocab_size - len(given))
    for next_token, p in given.items():
      probs[token, next_token] = p
  return np.log(probs)


def bigram_model(log_probs: np.ndarray, calls: list | None = None):
  """(tokens_to_logits, init_cache) of a bigram model; `calls` records each trace's (tokens shape, siblings)."""
  table = jnp.asarray(log_probs, jnp.float32)

  def tokens_to_logits(tokens, positions, cache, input_mask, siblings=False):
    del positions, input_mask  # siblings or a sequence: a bigram's answer is the same
    if calls is not None:
      calls.append((tokens.shape, siblings))
    return table[tokens], cache

  def init_cache(rows, length):
    del rows, length
    return StatelessCache(jnp.zeros((), jnp.int32))

  return tokens_to_logits, init_cache


def prompt_batch(prompts: list[list[int]]) -> tuple[jax.Array, jax.Array]:
  """Left-padded prompts [B, P] and their mask."""
  tokens, mask = left_pad(prompts, PAD)
  return jnp.asarray(tokens), jnp.asarray(mask)
