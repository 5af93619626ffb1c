"""Running a Flax `Decoder` through the search algorithms: the model adapter and the jit cache.

`cached_tokens_to_logits` is the `tokens_to_logits` of a split `Decoder` (KV cache);
`full_recompute_tokens_to_logits` with `TokenHistory` is the no-cache baseline. `generate` picks an
algorithm by name, compiles one program per configuration (cached) and returns host arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

from safejax.decoding.safebeam import safebeam
from safejax.decoding.search import DecodeResult, TokensToLogits, beam_search, left_pad, sample
from safejax.model.llama import Decoder, KVCache, ModelConfig, keep_sibling_slots

if TYPE_CHECKING:  # importing the vocabulary pulls in seqio; decoding only needs its methods.
  from safejax.vocab import SafejaxVocabulary


# ------------------------------------------------------------------------------------------------
# The Flax decoder behind `tokens_to_logits`, and the no-KV-cache baseline.


def cached_tokens_to_logits(graphdef: nnx.GraphDef, state: nnx.State) -> TokensToLogits:
  """`tokens_to_logits` of a `Decoder` split into (graphdef, state), decoding with its KV cache.

  Build it inside the jitted function from a traced `state`, so the parameters are arguments of
  the compiled program rather than constants baked into it.
  """

  def tokens_to_logits(tokens, positions, cache, input_mask, siblings=False):
    return nnx.merge(graphdef, state)(tokens, positions, cache=cache, input_mask=input_mask, siblings=siblings)

  return tokens_to_logits


@struct.dataclass
class TokenHistory:
  """The no-KV-cache baseline's cache: every token so far, run through the whole model each step.

  tokens, positions: [R, S] int32; valid: [R, S] bool (False on padding and unwritten slots);
  index: [] int32, the next slot.
  """

  tokens: jax.Array
  positions: jax.Array
  valid: jax.Array
  index: jax.Array

  @classmethod
  def init(cls, rows: int, length: int) -> "TokenHistory":
    zeros = jnp.zeros((rows, length), jnp.int32)
    return cls(zeros, zeros, jnp.zeros((rows, length), bool), jnp.zeros((), jnp.int32))

  def gather_rows(self, rows: jax.Array) -> "TokenHistory":
    take = lambda x: jnp.take(x, rows, axis=0)
    return TokenHistory(take(self.tokens), take(self.positions), take(self.valid), self.index)

  def keep_sibling(self, choice: jax.Array, num_siblings: int) -> "TokenHistory":
    (tokens, positions), valid, index = keep_sibling_slots(
        (self.tokens, self.positions), self.valid, self.index, choice, num_siblings)
    return TokenHistory(tokens, positions, valid, index)


def full_recompute_tokens_to_logits(graphdef: nnx.GraphDef, state: nnx.State) -> TokensToLogits:
  """`tokens_to_logits` without a KV cache (pair it with `TokenHistory.init`): each call re-runs
  the model over the whole history, masking padding with segment ids; siblings run each in a
  copy of the history of its own. The reference the cached path must match, and the baseline of
  the decoding benchmark."""

  def tokens_to_logits(tokens, positions, history: TokenHistory, input_mask, siblings=False):
    rows, new = tokens.shape
    write = lambda buffer, values: jax.lax.dynamic_update_slice_in_dim(buffer, values, history.index, axis=1)
    history = TokenHistory(write(history.tokens, tokens), write(history.positions, positions),
                           write(history.valid, input_mask), history.index + new)
    model = nnx.merge(graphdef, state)
    if not siblings:
      logits, _ = model(history.tokens, history.positions, segment_ids=history.valid.astype(jnp.int32))
      return jax.lax.dynamic_slice_in_dim(logits, history.index - new, new, axis=1), history
    # Copy j of a row hides the siblings other than j.
    slot = history.index - new + jnp.arange(new)  # [T]
    key_slot = jnp.arange(history.tokens.shape[1])
    other_sibling = (key_slot >= slot[0]) & (key_slot <= slot[-1]) & (key_slot != slot[:, None])  # [T, S]
    valid = (history.valid[:, None] & ~other_sibling).reshape(rows * new, -1)
    copies = lambda x: jnp.repeat(x, new, axis=0)
    logits, _ = model(copies(history.tokens), copies(history.positions), segment_ids=valid.astype(jnp.int32))
    return logits.reshape(rows, new, *logits.shape[1:])[:, jnp.arange(new), slot], history

  return tokens_to_logits


# ------------------------------------------------------------------------------------------------
# Running a `Decoder`: one jitted program per configuration.

METHODS = ("greedy", "sample", "beam", "safebeam")
_ALGORITHMS = {"greedy": functools.partial(sample, temperature=0.0), "sample": sample, "beam": beam_search,
               "safebeam": safebeam}


@functools.lru_cache(maxsize=32)
def _compiled(graphdef: nnx.GraphDef, config: ModelConfig, method: str, use_kv_cache: bool,
              options: tuple[tuple[str, Any], ...]):
  """The jitted decoder of one configuration: (state, prompts, prompt_mask, rng) -> DecodeResult."""
  algorithm = functools.partial(_ALGORITHMS[method], **dict(options))
  if use_kv_cache:
    make, init_cache = cached_tokens_to_logits, functools.partial(KVCache.init, config)
  else:
    make, init_cache = full_recompute_tokens_to_logits, TokenHistory.init

  def run(state, prompts, prompt_mask, rng):
    rng_arg = {"rng": rng} if method == "sample" else {}
    return algorithm(make(graphdef, state), init_cache, prompts, prompt_mask, **rng_arg)

  return jax.jit(run)


def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    *,
    method: str = "greedy",
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    seed: int = 0,
    use_kv_cache: bool = True,
    prompt_multiple: int = 32,
    **options: Any,
) -> DecodeResult:
  """Decodes token-id prompts with a `Decoder`; returns a host (numpy) `DecodeResult`.

  method: greedy | sample | beam | safebeam. options go to the algorithm (`sample`,
  `beam_search`, `safebeam`): temperature, top_k, top_p, tag_id, tag_stop_threshold, beam_size,
  num_expand, drop_fraction, tag_threshold, alpha, logits_processor, candidate_filter. Prompt
  lengths are rounded up to `prompt_multiple` so that similar batches share one compilation;
  `use_kv_cache=False` runs the full-recompute baseline.
  """
  if method not in METHODS:
    raise ValueError(f"unknown decoding method {method!r}; known: {', '.join(METHODS)}")
  tokens, mask = left_pad(prompts, pad_id, prompt_multiple)
  graphdef, state = nnx.split(model)
  options = dict(options, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
  run = _compiled(graphdef, model.cfg, method, use_kv_cache, tuple(sorted(options.items())))
  return jax.device_get(run(state, tokens, mask, jax.random.key(seed)))


def detokenize(vocab: SafejaxVocabulary, result: DecodeResult) -> list[list[str]]:
  """Texts [B][n] of a host result; reserved tokens (the harm tag among them) are dropped."""
  tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
  return [[vocab.decode_without_specials(tokens[b, i, :lengths[b, i]].tolist()) for i in range(tokens.shape[1])]
          for b in range(tokens.shape[0])]
