"""Log-likelihood of text under a safejax decoder: batched, jitted, lm-evaluation-harness semantics.

`LoglikelihoodModel(model, vocab).loglikelihood(requests)` takes (context, continuation) pairs and returns
(sum of the continuation tokens' log-probabilities, whether greedy decoding yields exactly those
tokens), like lm-eval's `LM.loglikelihood`; `capability` scores every task through it.

Tokenization follows lm-eval: the pair is encoded as one text and split where the context's own
encoding stops matching, so the continuation is scored in the tokenization the model would see.
Every sequence starts with `start_id`: by default `vocab.decoder_start_id` (0), the id seqio's DecoderFeatureConverter puts
before each (packed) training document, so the first word is scored as the start of a document.

Long sequences: a row holds at most `max_length` tokens. A sequence that does not fit is scored in
rolling windows, each predicting a chunk of up to `max_length` targets from the `max_length` tokens
before its end (the context is cut from the left, as lm-eval truncates), every target exactly once.

Efficiency: windows are sorted by length, padded on the right to a few bucket lengths (powers of
two up to max_length) and run in fixed-size batches, so a whole evaluation compiles a handful of
programs. Right padding leaves real positions unchanged under the causal mask, so results do not
depend on batching.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from safejax.model.llama import Decoder
from safejax.vocab import Vocabulary


@dataclasses.dataclass(frozen=True)
class Window:
  """One model row: inputs [L], next-token targets [L] and the positions that are scored [L]."""

  request: int
  inputs: np.ndarray
  targets: np.ndarray
  scored: np.ndarray


def rolling_windows(sequence: Sequence[int], first_target: int, max_length: int, request: int = 0) -> list[Window]:
  """Rows that score sequence[first_target:] given everything before it, each target once.

  Args:
    sequence: token ids, starting with the start token.
    first_target: index of the first scored token (>= 1: the start token is never a target).
    max_length: the longest row.
  Returns:
    Windows covering the targets in order; a window predicting targets [a, b) reads inputs
    sequence[lo:b-1] with lo = max(0, b-1-max_length), i.e. as much context as fits.
  """
  if not 1 <= first_target <= len(sequence):
    raise ValueError(f"first_target={first_target} outside 1..{len(sequence)}")
  tokens = np.asarray(sequence, np.int32)
  windows, a = [], first_target
  while a < len(tokens):
    b = min(len(tokens), a + max_length)
    lo = max(0, b - 1 - max_length)
    windows.append(Window(request, tokens[lo: b - 1], tokens[lo + 1: b], np.arange(lo + 1, b) >= a))
    a = b
  return windows


@functools.lru_cache(maxsize=16)
def _compiled_loglikelihood(graphdef: nnx.GraphDef):
  """The jitted per-row log-likelihood of one model structure (shared by every LoglikelihoodModel of that structure)."""

  @jax.jit
  def score_rows(state, inputs, targets, scored, probe_id):
    """inputs, targets [B, L] int32, scored [B, L] bool, probe_id [] int32 -> per row [B]: sum of
    the scored targets' log-probabilities, all scored targets greedy, sum of P(probe_id)."""
    logits, _ = nnx.merge(graphdef, state)(inputs)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logprob = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - log_z
    greedy = jnp.argmax(logits, axis=-1) == targets
    probe_prob = jnp.exp(logits[..., probe_id] - log_z)
    return (jnp.where(scored, target_logprob, 0.0).sum(-1), jnp.all(greedy | ~scored, axis=-1),
            jnp.where(scored, probe_prob, 0.0).sum(-1))

  return score_rows


def _bucket(length: int, max_length: int) -> int:
  return min(max_length, max(16, 1 << (length - 1).bit_length()))


@gin.configurable(denylist=["model", "vocab"])
class LoglikelihoodModel:
  """Scores text under a safejax `Decoder` (its current parameters at each call)."""

  def __init__(
      self,
      model: Decoder,
      vocab: Vocabulary,
      *,
      max_length: int = 1024,
      batch_size: int = 16,
      start_id: int | None = None,
      show_progress: bool = True,
  ):
    """
    Args:
      model: the decoder; called as model(tokens [B, T]) -> (logits [B, T, V], None).
      vocab: its vocabulary.
      max_length: longest row in tokens (at most the length the model was trained on).
      batch_size: rows per forward pass.
      start_id: the token every sequence starts with (default: vocab.decoder_start_id, seqio's
        shifted-input start).
      show_progress: a tqdm bar over batches.
    """
    if max_length < 2:
      raise ValueError("max_length must be at least 2")
    self.model, self.vocab = model, vocab
    self.max_length, self.batch_size = max_length, batch_size
    self.start_id = vocab.decoder_start_id if start_id is None else start_id
    self.show_progress = show_progress
    self._score_rows = _compiled_loglikelihood(nnx.graphdef(model))

  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split from the encoding of context + continuation."""
    whole = list(self.vocab.encode(context + continuation))
    context_ids = list(self.vocab.encode(context)) if context else []
    k = 0
    while k < min(len(context_ids), len(whole)) and context_ids[k] == whole[k]:
      k += 1
    if k == len(whole):
      raise ValueError(f"continuation {continuation!r} adds no tokens to context {context[-50:]!r}")
    return whole[:k], whole[k:]

  def _run(self, windows: list[Window], n_requests: int, probe_id: int, desc: str):
    """Per request: (sum log-prob, all greedy, sum probe probability, scored positions)."""
    logprob = np.zeros(n_requests, np.float64)
    greedy = np.ones(n_requests, bool)
    probe = np.zeros(n_requests, np.float64)
    count = np.zeros(n_requests, np.int64)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].inputs))
    batches = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
    state = nnx.state(self.model)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not self.show_progress or not batches):
      length = _bucket(len(windows[batch[0]].inputs), self.max_length)
      inputs = np.zeros((self.batch_size, length), np.int32)
      targets = np.zeros((self.batch_size, length), np.int32)
      scored = np.zeros((self.batch_size, length), bool)
      for row, i in enumerate(batch):
        w = windows[i]
        inputs[row, : len(w.inputs)], targets[row, : len(w.inputs)], scored[row, : len(w.inputs)] = (
            w.inputs, w.targets, w.scored)
      row_logprob, row_greedy, row_probe = jax.device_get(
          self._score_rows(state, inputs, targets, scored, np.int32(probe_id)))
      for row, i in enumerate(batch):
        r = windows[i].request
        logprob[r] += row_logprob[row]
        greedy[r] &= bool(row_greedy[row])
        probe[r] += row_probe[row]
        count[r] += int(windows[i].scored.sum())
    return logprob, greedy, probe, count

  def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
    """Like `loglikelihood` for (context ids, continuation ids); the start token is added here."""
    windows = []
    for r, (context, continuation) in enumerate(requests):
      if not continuation:
        raise ValueError(f"request {r} has an empty continuation")
      sequence = [self.start_id, *context, *continuation]
      windows += rolling_windows(sequence, 1 + len(context), self.max_length, request=r)
    logprob, greedy, _, _ = self._run(windows, len(requests), probe_id=0, desc="loglikelihood")
    return [(float(lp), bool(g)) for lp, g in zip(logprob, greedy)]

  def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
    """[(context, continuation)] -> [(sum of log P(continuation tokens | context), is_greedy)]."""
    return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests])

  def token_statistics(self, texts: Sequence[str], token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """([len(texts)] the model's probability of emitting `token_id` next, averaged over every
    position of each text (after the start token and after each of the text's tokens but the last),
    [len(texts)] the text's mean negative log-likelihood per token), in one pass."""
    windows = []
    for r, text in enumerate(texts):
      ids = list(self.vocab.encode(text))
      if not ids:
        raise ValueError(f"text {r} encodes to no tokens")
      windows += rolling_windows([self.start_id, *ids], 1, self.max_length, request=r)
    logprob, _, probe, count = self._run(windows, len(texts), probe_id=token_id, desc="token probability")
    return probe / np.maximum(count, 1), -logprob / np.maximum(count, 1)

  def mean_token_probability(self, texts: Sequence[str], token_id: int) -> np.ndarray:
    """[len(texts)]: `token_statistics`' mean probability of `token_id` next over each text."""
    return self.token_statistics(texts, token_id)[0]
