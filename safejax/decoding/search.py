"""The search algorithms: greedy, sampling and beam search as pure functions under `jax.jit`.

SafeBeam, built from the same pieces, is in `safejax.decoding.safebeam`; running a Flax `Decoder`
through them (the model adapter, the jit cache) is `safejax.decoding.runner`; text in, text out
is `safejax.decoding.generate`.

In the style of t5x's decoding.py, every algorithm is a pure function of a `tokens_to_logits`
closure, an `init_cache` factory and a batch of left-padded prompts. The whole loop
(`jax.lax.while_loop`) runs inside `jit` with fixed shapes; a row that ends (EOS, harm-tag stop,
beam search settled) keeps its slot, is frozen, and the loop exits once every row has ended.

Shapes: B prompts, P prompt length (left padded), L = max_new_tokens, V vocabulary, k beams,
N SafeBeam expansions per beam, R rows handed to the model (B, B*k or B*k*N).

The contract with the model (see `runner.cached_tokens_to_logits` for the Flax decoder):

  tokens_to_logits(tokens [R, T] int32, positions [R, T] int32, cache, input_mask [R, T] bool,
                   siblings: bool = False) -> (logits [R, T, V] float32, cache)
      siblings=True (SafeBeam): the T tokens of a row are alternatives for one position, each
      seeing the row's cache and itself only; the cache then keeps one of them (`keep_sibling`).
  init_cache(rows: int, length: int) -> an empty cache of `length` slots for `rows` sequences.

A cache is any pytree with the methods `gather_rows(rows [R'] int32) -> cache` (copies rows: a
prompt's k beams at the start), `gather_beams(parents [B, k] int32) -> cache` (beam reordering:
beam j of prompt b, row b*k + j, becomes a copy of row b*k + parents[b, j]) and
`keep_sibling(choice [R] int32, num_siblings: int) -> cache` (keeps each row's chosen sibling
of the last call); `safejax.model.KVCache` is one, `TokenHistory` (the no-KV-cache baseline)
another (`runner.TokenHistory`).

Hooks (pure, jit-compatible callables; close over Python constants, never over arrays you want to
vary between calls; `runner.generate` caches compilations by them, so prefer frozen dataclasses, equal
when their settings are, to fresh closures):

  logits_processor(step [] int32, logits [R, V] float32, tokens [R, L] int32) -> logits [R, V]
      Sees the raw next-token logits of each row (tokens: what that row generated so far, pad
      beyond `step`) and returns the logits the search uses. `SuppressToken` and
      `PenalizeToken` (the harm-tag baselines) are such processors; `chain` composes them.
  candidate_filter(step [] int32, candidates: Candidates) -> keep [B, C] bool
      Beam search and SafeBeam only: sees every candidate continuation of a step (C = k*V for
      beam search, C = k*N for SafeBeam, which also hands over the one-token lookahead) and
      says which may be kept. `safebeam.harm_tag_filter` is SafeBeam's rule written as such a filter.

The harm tag never reaches returned text: `runner.detokenize` strips every reserved token, and SafeBeam
never writes the tag (a hypothesis it would extend by the tag ends there, flagged `tag_stopped`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

TokensToLogits = Callable[[jax.Array, jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
InitCache = Callable[[int, int], Any]
LogitsProcessor = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

NEG_INF = -jnp.inf


@struct.dataclass
class DecodeResult:
  """Generations, n per prompt (n = 1 for greedy and sampling, k for beam search), best first.

  tokens: [B, n, L] int32 generated ids; pad after the end. An EOS that ended a sequence is
    included; a harm tag never is (SafeBeam stops the beam instead of writing it).
  lengths: [B, n] int32 number of generated ids, the EOS included.
  log_probs: [B, n] float32 sum of the log-probabilities of the generated ids (after the logits
    processor, before temperature, top-k and top-p); for a tag stop it includes the tag's.
  scores: [B, n] float32 what the search ranks by: log_probs for sampling, the length-penalised
    log_probs for beam search (`brevity_penalty`); -inf marks an empty slot.
  finished: [B, n] bool, the sequence ended with EOS (False: it ran to L tokens or was stopped).
  tag_stopped: [B, n] bool, the sequence was cut because of the harm tag: SafeBeam selected the
    tag or found every continuation too risky; sampling saw the tag's probability pass
    `tag_stop_threshold`.
  """

  tokens: jax.Array
  lengths: jax.Array
  log_probs: jax.Array
  scores: jax.Array
  finished: jax.Array
  tag_stopped: jax.Array


@struct.dataclass
class Candidates:
  """The continuations a beam-search step chooses from, C per prompt.

  tokens: [B, C] int32 the candidate's next token. parents: [B, C] int32 the beam it extends.
  log_probs: [B, C] float32 cumulative log-probability of the extended sequence (-inf: invalid).
  lookahead_log_probs: [B, C, V] float32 the model's next-token log-probabilities after the
    candidate (SafeBeam's lookahead, raw logits), or None in plain beam search.
  """

  tokens: jax.Array
  parents: jax.Array
  log_probs: jax.Array
  lookahead_log_probs: jax.Array | None = None


CandidateFilter = Callable[[jax.Array, Candidates], jax.Array]


# ------------------------------------------------------------------------------------------------
# Prompts, hooks and small numeric pieces.


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to one length (rounded up to `multiple`, to reuse compilations).

  Returns tokens [B, P] int32 and prompt_mask [B, P] bool (False on padding).
  """
  if not prompts:
    raise ValueError("no prompts given")
  empty = [i for i, p in enumerate(prompts) if len(p) == 0]
  if empty:
    raise ValueError(f"prompts {empty} are empty: every prompt needs at least one token (e.g. BOS)")
  length = -(-max(map(len, prompts)) // multiple) * multiple
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for row, prompt in enumerate(prompts):
    tokens[row, length - len(prompt):] = prompt
    mask[row, length - len(prompt):] = True
  return tokens, mask


def brevity_penalty(alpha: float, length: jax.Array) -> jax.Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016; t5x's default).

  Beam search ranks hypotheses by log_prob / brevity_penalty: alpha = 0 ranks by raw
  log-probability (favouring short outputs); larger alpha favours longer ones. alpha >= 0 keeps
  the penalty non-decreasing in length, which the early stop of a row relies on.
  """
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# The processors below are frozen dataclasses, equal when their settings are: `generate` keys its
# compilation cache on them, so the same configuration never compiles twice.


@dataclasses.dataclass(frozen=True)
class SuppressToken:
  """A logits processor that forbids one token (the harm tag: the masking baseline)."""

  token_id: int

  def __call__(self, step: jax.Array, logits: jax.Array, tokens: jax.Array) -> jax.Array:
    del step, tokens
    return logits.at[:, self.token_id].set(NEG_INF)


@dataclasses.dataclass(frozen=True)
class PenalizeToken:
  """A logits processor that subtracts `penalty` from one token's logit (the soft baseline)."""

  token_id: int
  penalty: float

  def __call__(self, step: jax.Array, logits: jax.Array, tokens: jax.Array) -> jax.Array:
    del step, tokens
    return logits.at[:, self.token_id].add(-self.penalty)


@dataclasses.dataclass(frozen=True)
class _Chain:
  processors: tuple[LogitsProcessor, ...]

  def __call__(self, step: jax.Array, logits: jax.Array, tokens: jax.Array) -> jax.Array:
    for processor in self.processors:
      logits = processor(step, logits, tokens)
    return logits


def chain(*processors: LogitsProcessor | None) -> LogitsProcessor | None:
  """Applies processors left to right; None entries are skipped; None if nothing is left."""
  processors = tuple(p for p in processors if p is not None)
  if not processors:
    return None
  return processors[0] if len(processors) == 1 else _Chain(processors)


def kth_largest(x: jax.Array, k: int) -> jax.Array:
  """[..., 1] the k-th largest value along the last axis.

  Reduced with min, not sliced: XLA on CPU lowers a top-k whose outputs are sliced to a full sort
  of the array (milliseconds over k*V values), and keeps its fast top-k kernel otherwise.
  """
  return jax.lax.top_k(x, k)[0].min(-1, keepdims=True)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of the last axis ([..., V]); the others become -inf (ties kept)."""
  kth = kth_largest(logits, k)
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose probability reaches p.

  logits [..., V]. A token is kept when the probability of the tokens ranked above it is below
  p, so the most likely token always survives.
  """
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_above = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  cutoff = jnp.min(jnp.where(mass_above < p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, NEG_INF, logits)


def _positions_and_lengths(prompt_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """RoPE positions [B, P] counting real tokens from 0, and prompt lengths [B]."""
  counts = jnp.cumsum(prompt_mask.astype(jnp.int32), axis=1)
  return jnp.maximum(counts - 1, 0), counts[:, -1]


def prefill(tokens_to_logits, init_cache, prompts, prompt_mask, new_slots):
  """Runs the prompts [B, P] (mask [B, P]) in one call, in a cache with `new_slots` slots to spare after them.

  Returns next-token logits [B, V], cache, prompt lengths [B].
  """
  batch, prompt_length = prompts.shape
  positions, prompt_lengths = _positions_and_lengths(prompt_mask)
  cache = init_cache(batch, prompt_length + new_slots)
  logits, cache = tokens_to_logits(prompts, positions, cache, prompt_mask)
  return logits[:, -1], cache, prompt_lengths


def _step_logits(tokens_to_logits, tokens, positions, cache):
  """One new token per row: tokens [R], positions [R] -> logits [R, V], cache."""
  new = tokens[:, None]
  logits, cache = tokens_to_logits(new, positions[:, None], cache, jnp.ones(new.shape, bool))
  return logits[:, 0], cache


def _process(logits_processor, step, logits, tokens):
  return logits if logits_processor is None else logits_processor(step, logits, tokens)


# ------------------------------------------------------------------------------------------------
# Greedy and sampling.


@struct.dataclass
class _SampleState:
  step: jax.Array  # [] int32, the index of the token chosen next
  logits: jax.Array  # [B, V] raw next-token logits
  cache: Any
  tokens: jax.Array  # [B, L]
  lengths: jax.Array  # [B]
  log_probs: jax.Array  # [B]
  finished: jax.Array  # [B]
  tag_stopped: jax.Array  # [B]
  done: jax.Array  # [B]
  rng: jax.Array


def sample(
    tokens_to_logits: TokensToLogits,
    init_cache: InitCache,
    prompts: jax.Array,
    prompt_mask: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    rng: jax.Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    logits_processor: LogitsProcessor | None = None,
    tag_id: int | None = None,
    tag_stop_threshold: float | None = None,
    pad_id: int = 0,
) -> DecodeResult:
  """Greedy decoding (temperature 0) or ancestral sampling with temperature, top-k and top-p.

  Args:
    tokens_to_logits, init_cache: the model (see the module docstring).
    prompts: [B, P] int32 left-padded prompts; prompt_mask: [B, P] bool, False on padding.
    max_new_tokens: L, the most tokens generated per prompt.
    eos_id: ends a row (written, counted in its length); other rows go on.
    rng: a jax.random key; needed when temperature > 0.
    temperature: 0 picks the argmax; otherwise logits / temperature are sampled.
    top_k: sample among the k most likely tokens only (0: all).
    top_p: sample from the nucleus of probability mass top_p (1.0: all).
    logits_processor: hook applied to each step's logits before anything else.
    tag_id, tag_stop_threshold: tag-probability rejection. When the model's own (unprocessed)
      probability of the harm tag as the next token exceeds the threshold, the continuation is
      rejected and the row stops there, flagged `tag_stopped`.
    pad_id: written after a row's end.
  Returns:
    DecodeResult with n = 1.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs an rng key")
  if tag_stop_threshold is not None and tag_id is None:
    raise ValueError("tag_stop_threshold needs tag_id")
  rng = jax.random.key(0) if rng is None else rng
  batch = prompts.shape[0]
  logits, cache, prompt_lengths = prefill(tokens_to_logits, init_cache, prompts, prompt_mask, max_new_tokens)

  def choose(state: _SampleState) -> tuple[_SampleState, jax.Array]:
    """Picks token `step` of every row; returns the new state and the tokens [B]."""
    step = state.step
    log_probs = jax.nn.log_softmax(_process(logits_processor, step, state.logits, state.tokens))
    if temperature == 0.0:
      token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    else:
      scaled = log_probs / temperature
      if top_k:
        scaled = top_k_filter(scaled, top_k)
      if top_p < 1.0:
        scaled = top_p_filter(scaled, top_p)
      token = jax.random.categorical(jax.random.fold_in(state.rng, step), scaled).astype(jnp.int32)
    stop = jnp.zeros_like(state.done)
    if tag_stop_threshold is not None:
      stop = ~state.done & (jax.nn.softmax(state.logits)[:, tag_id] > tag_stop_threshold)
    active = ~state.done & ~stop
    token = jnp.where(active, token, pad_id)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    ended = active & (token == eos_id)
    return state.replace(
        step=step + 1,
        tokens=state.tokens.at[:, step].set(token),
        lengths=state.lengths + active,
        log_probs=state.log_probs + jnp.where(active, token_log_prob, 0.0),
        finished=state.finished | ended,
        tag_stopped=state.tag_stopped | stop,
        done=state.done | stop | ended,
    ), token

  def choose_and_step(state: _SampleState) -> _SampleState:
    state, token = choose(state)
    logits, cache = _step_logits(tokens_to_logits, token, prompt_lengths + state.step - 1, state.cache)
    return state.replace(logits=logits, cache=cache)

  state = _SampleState(
      step=jnp.zeros((), jnp.int32), logits=logits, cache=cache,
      tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
      lengths=jnp.zeros(batch, jnp.int32), log_probs=jnp.zeros(batch, jnp.float32),
      finished=jnp.zeros(batch, bool), tag_stopped=jnp.zeros(batch, bool), done=jnp.zeros(batch, bool),
      rng=rng)
  # The last token needs no forward pass after it: the loop stops one short and `choose` ends.
  state = jax.lax.while_loop(
      lambda s: (s.step < max_new_tokens - 1) & ~jnp.all(s.done), choose_and_step, state)
  state, _ = choose(state)
  one = lambda x: x[:, None]
  return DecodeResult(tokens=state.tokens[:, None], lengths=one(state.lengths), log_probs=one(state.log_probs),
                      scores=one(state.log_probs), finished=one(state.finished), tag_stopped=one(state.tag_stopped))


# ------------------------------------------------------------------------------------------------
# Beam search's state and steps: public, because SafeBeam (`safebeam.py`) and any other beam
# variant build on them. A variant runs `prefill` and `initial_beams`, then per step scores the
# extensions (`score_extensions`), collects the beams a terminal token ends (`ended_by`), picks its
# new alive beams, writes them (`extend_beams`), reorders their cache rows (`gather_beams`) and folds
# everything into the next state (`settle_beams`); `final_beams` gives the result.


@struct.dataclass
class BeamState:
  """The search over k beams per prompt (the shapes of `DecodeResult` with n = k).

  alive: the k best unfinished hypotheses (scores: log_probs penalised at their length);
  finished: the k best ended ones (EOS, or SafeBeam tag stops); -inf scores mark empty slots.
  logits: [B, k, V] raw next-token logits of each alive beam. cache: B*k rows, row b*k + j
  holding alive beam j of prompt b.
  """

  step: jax.Array
  alive: DecodeResult
  finished: DecodeResult
  done: jax.Array  # [B]
  logits: jax.Array
  cache: Any


def _empty_hypotheses(batch: int, n: int, max_new_tokens: int, pad_id: int) -> DecodeResult:
  return DecodeResult(
      tokens=jnp.full((batch, n, max_new_tokens), pad_id, jnp.int32), lengths=jnp.zeros((batch, n), jnp.int32),
      log_probs=jnp.full((batch, n), NEG_INF), scores=jnp.full((batch, n), NEG_INF),
      finished=jnp.zeros((batch, n), bool), tag_stopped=jnp.zeros((batch, n), bool))


def _take_hypotheses(hyps: DecodeResult, index: jax.Array) -> DecodeResult:
  """Selects hypotheses per prompt: index [B, m] into the n of `hyps` -> [B, m, ...]."""
  return jax.tree.map(
      lambda x: jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1), hyps)


def _best_hypotheses(pools: Sequence[DecodeResult], k: int) -> DecodeResult:
  """The k best by score of several pools of hypotheses, best first."""
  merged = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *pools)
  return _take_hypotheses(merged, jax.lax.top_k(merged.scores, k)[1])


def extend_beams(alive: DecodeResult, parents: jax.Array, log_probs: jax.Array, tokens: jax.Array | None,
            step: jax.Array, alpha: float, pad_id: int, *, finished: bool = False,
            tag_stopped: bool = False) -> DecodeResult:
  """New hypotheses: alive beams `parents` [B, m] extended by `tokens` [B, m] (None: nothing written).

  log_probs [B, m] are the new cumulative log-probabilities (-inf: no hypothesis). A tag stop
  writes nothing but is penalised like a sequence one token longer, as EOS would be.
  """
  hyps = _take_hypotheses(alive, parents)
  valid = jnp.isfinite(log_probs)
  written = hyps.tokens
  lengths = jnp.full(log_probs.shape, step, jnp.int32)
  if tokens is not None:
    written = written.at[:, :, step].set(jnp.where(valid, tokens, pad_id))
    lengths = lengths + 1
  scores = log_probs / brevity_penalty(alpha, step + 1)
  return DecodeResult(tokens=written, lengths=jnp.where(valid, lengths, 0), log_probs=log_probs,
                      scores=jnp.where(valid, scores, NEG_INF), finished=valid & finished,
                      tag_stopped=valid & tag_stopped)


def _rows_done(finished: DecodeResult, alive: DecodeResult, alpha: float, max_new_tokens: int) -> jax.Array:
  """[B] True where no alive beam can still beat the worst of the k finished hypotheses.

  Log-probabilities only fall as a sequence grows and (alpha >= 0) the penalty is largest at the
  longest length, so log_prob / brevity_penalty(alpha, L) bounds every future score.
  """
  best_alive = alive.log_probs.max(-1)
  bound = best_alive / brevity_penalty(alpha, max_new_tokens)
  return (finished.scores.min(-1) > bound) | (best_alive == NEG_INF)


def _freeze(done: jax.Array, old: DecodeResult, new: DecodeResult) -> DecodeResult:
  """Keeps the hypotheses of rows that had already ended."""
  return jax.tree.map(lambda o, n: jnp.where(done.reshape(done.shape + (1,) * (o.ndim - 1)), o, n), old, new)


def initial_beams(prefill_logits, cache, batch, beam_size, max_new_tokens, alpha, pad_id):
  """k copies of each prompt; only beam 0 is live (the others would repeat its candidates)."""
  alive = _empty_hypotheses(batch, beam_size, max_new_tokens, pad_id)
  live = jnp.arange(beam_size) == 0
  alive = alive.replace(log_probs=jnp.where(live, 0.0, NEG_INF)[None].repeat(batch, 0))
  alive = alive.replace(scores=alive.log_probs / brevity_penalty(alpha, 0))
  return BeamState(
      step=jnp.zeros((), jnp.int32), alive=alive, finished=_empty_hypotheses(batch, beam_size, max_new_tokens, pad_id),
      done=jnp.zeros(batch, bool), logits=jnp.repeat(prefill_logits[:, None], beam_size, axis=1),
      cache=cache.gather_rows(jnp.repeat(jnp.arange(batch), beam_size)))


def beam_rows(parents: jax.Array) -> jax.Array:
  """[B*k] the cache rows of the beams `parents` [B, k] (indices among each prompt's k beams)."""
  batch, beam_size = parents.shape
  return (jnp.arange(batch)[:, None] * beam_size + parents).reshape(-1)


def score_extensions(state: BeamState, logits_processor) -> jax.Array:
  """[B, k, V] cumulative log-probabilities of every one-token extension of the alive beams."""
  batch, beam_size, vocab = state.logits.shape
  logits = _process(logits_processor, state.step, state.logits.reshape(batch * beam_size, vocab),
                    state.alive.tokens.reshape(batch * beam_size, -1))
  return state.alive.log_probs[..., None] + jax.nn.log_softmax(logits).reshape(batch, beam_size, vocab)


def ended_by(alive: DecodeResult, extension_log_probs: jax.Array, kth_best: jax.Array, token_id: int,
              step: jax.Array, alpha: float, pad_id: int, *, tag_stop: bool = False) -> DecodeResult:
  """Each alive beam ended by a terminal token, where that extension ranks among the step's k best.

  extension_log_probs: [B, k, V]; kth_best: [B, 1] the k-th best extension's log-probability.
  EOS is written; the harm tag (tag_stop) is not, the hypothesis is flagged instead.
  """
  batch, beam_size, _ = extension_log_probs.shape
  log_probs = extension_log_probs[:, :, token_id]
  parents = jnp.broadcast_to(jnp.arange(beam_size), (batch, beam_size))
  return extend_beams(alive, parents, jnp.where(log_probs >= kth_best, log_probs, NEG_INF),
                 None if tag_stop else jnp.full((batch, beam_size), token_id), step, alpha, pad_id,
                 finished=not tag_stop, tag_stopped=tag_stop)


def check_beam_args(beam_size, alpha, max_new_tokens):
  """Raises ValueError for a beam size below 1, a negative alpha or max_new_tokens below 1."""
  if beam_size < 1:
    raise ValueError(f"beam_size must be >= 1, got {beam_size}")
  if alpha < 0:
    raise ValueError(f"alpha must be >= 0 (the early stop of a row assumes it), got {alpha}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


def settle_beams(state: BeamState, alive: DecodeResult, ended: Sequence[DecodeResult], alpha: float,
            max_new_tokens: int, **updates) -> BeamState:
  """The next state: new alive beams, the k best finished, rows that had ended left untouched."""
  beam_size = alive.scores.shape[1]
  finished = _freeze(state.done, state.finished, _best_hypotheses([state.finished, *ended], beam_size))
  alive = _freeze(state.done, state.alive, alive)
  done = state.done | _rows_done(finished, alive, alpha, max_new_tokens)
  return state.replace(step=state.step + 1, alive=alive, finished=finished, done=done, **updates)


def final_beams(state: BeamState, beam_size: int) -> DecodeResult:
  """The k best of finished and still-alive hypotheses (alive ones ran out of length)."""
  return _best_hypotheses([state.finished, state.alive], beam_size)


def beam_search(
    tokens_to_logits: TokensToLogits,
    init_cache: InitCache,
    prompts: jax.Array,
    prompt_mask: jax.Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    alpha: float = 0.6,
    logits_processor: LogitsProcessor | None = None,
    candidate_filter: CandidateFilter | None = None,
    pad_id: int = 0,
) -> DecodeResult:
  """Beam search of width k with the GNMT length penalty, batched over prompts.

  Each step extends the k alive beams by every token: k*V candidates (after the logits processor
  and the candidate filter). A beam's EOS extension that ranks among the step's k best joins the
  finished hypotheses (the k best are kept, ranked by log_prob / brevity_penalty(alpha, length),
  EOS counted in the length); the alive beams are the k best candidates other than EOS. A row
  stops once no alive beam can beat its worst finished hypothesis; at L tokens the alive beams
  compete with the finished ones. With k = 1 and alpha = 0 this is greedy decoding.

  Args: as `sample`, plus beam_size (k), alpha (length-penalty exponent, >= 0), and
    candidate_filter (hook over the k*V candidates; `Candidates.lookahead_log_probs` is None).
  Returns:
    DecodeResult with n = k, best first.
  """
  check_beam_args(beam_size, alpha, max_new_tokens)
  batch = prompts.shape[0]
  logits, cache, prompt_lengths = prefill(tokens_to_logits, init_cache, prompts, prompt_mask, max_new_tokens)
  state = initial_beams(logits, cache, batch, beam_size, max_new_tokens, alpha, pad_id)
  vocab = logits.shape[-1]

  def choose(state: BeamState) -> tuple[BeamState, jax.Array, jax.Array]:
    """Selects the new alive beams; returns the state, their tokens [B, k] and parents [B, k]."""
    step = state.step
    extension_log_probs = score_extensions(state, logits_processor)
    if candidate_filter is not None:
      tokens = jnp.broadcast_to(jnp.arange(vocab, dtype=jnp.int32), (batch, beam_size, vocab))
      parents = jnp.broadcast_to(jnp.arange(beam_size, dtype=jnp.int32)[:, None], (batch, beam_size, vocab))
      flat = lambda x: x.reshape(batch, beam_size * vocab)
      keep = candidate_filter(step, Candidates(flat(tokens), flat(parents), flat(extension_log_probs)))
      extension_log_probs = jnp.where(keep.reshape(extension_log_probs.shape), extension_log_probs, NEG_INF)
    flat_log_probs = extension_log_probs.reshape(batch, beam_size * vocab)
    is_eos = (jnp.arange(beam_size * vocab) % vocab) == eos_id
    alive_log_probs, alive_index = jax.lax.top_k(jnp.where(is_eos, NEG_INF, flat_log_probs), beam_size)
    kth_best = kth_largest(flat_log_probs, beam_size)
    ended = ended_by(state.alive, extension_log_probs, kth_best, eos_id, step, alpha, pad_id)
    parents, tokens = alive_index // vocab, (alive_index % vocab).astype(jnp.int32)
    alive = extend_beams(state.alive, parents, alive_log_probs, tokens, step, alpha, pad_id)
    return settle_beams(state, alive, [ended], alpha, max_new_tokens), tokens, parents

  def choose_and_step(state: BeamState) -> BeamState:
    state, tokens, parents = choose(state)
    positions = jnp.repeat(prompt_lengths, beam_size) + state.step - 1
    logits, cache = _step_logits(tokens_to_logits, tokens.reshape(-1), positions,
                                 state.cache.gather_beams(parents))
    return state.replace(logits=logits.reshape(batch, beam_size, vocab), cache=cache)

  # The last token needs no forward pass after it: the loop stops one short and `choose` ends.
  state = jax.lax.while_loop(
      lambda s: (s.step < max_new_tokens - 1) & ~jnp.all(s.done), choose_and_step, state)
  state, _, _ = choose(state)
  return final_beams(state, beam_size)
