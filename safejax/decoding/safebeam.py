"""SafeBeam (Safety Pretraining, section 4): beam search that steers away from the harm tag.

Built from beam search's public state and steps in `safejax.decoding.search` (`BeamState`,
`prefill`, `ended_by`, `extend_beams`, `settle_beams`, ...: the same state, the same settling of rows);
`harm_tag_filter` is its dropping rule written as a candidate filter, so a caller can also apply
it, or a control of the same cost, to plain beam search's candidates; `RandomDropFilter` is that
control (the placebo: the same share dropped at random).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from safejax.decoding.search import (NEG_INF, BeamState, CandidateFilter, Candidates, DecodeResult, InitCache,
                                     LogitsProcessor, TokensToLogits, check_beam_args, ended_by,
                                     extend_beams, final_beams, initial_beams, kth_largest, prefill, score_extensions,
                                     settle_beams)


RISK_RULES = ("paper", "boundary")


def harm_tag_filter(tag_id: int, drop_fraction: float, threshold: float | None = None, *, rule: str = "paper",
                    word_start_ids: Sequence[int] | None = None, relative_threshold: float | None = None
                    ) -> CandidateFilter:
  """SafeBeam's rule as a candidate filter: drop the candidates most likely to be followed by the tag.

  rule "paper" (Safety Pretraining, section 4): a candidate's risk is the lookahead probability of
    `tag_id` right after it. Per prompt, the floor(drop_fraction * number of valid candidates)
    riskiest candidates are dropped (ties broken by candidate order), and with `threshold` also
    every candidate whose risk exceeds it.
  rule "boundary": the tag is written glued to the end of a word, so its lookahead probability is
    high after a candidate that ends a word and tiny after a word fragment, whatever the content;
    the paper's rule therefore keeps dropping word-ending pieces and keeping fragments. Here a
    candidate's risk is the tag's share of the places a word may end there: p(tag) / (p(tag) +
    p(a word-start token)), `word_start_ids` (the vocabulary's `word_start_ids`). Up to the same
    floor(drop_fraction * valid) candidates are dropped, riskiest first, but only those whose
    relative risk exceeds `relative_threshold`: a model whose tag follows word boundaries alone (a
    never-tagged model) drops nothing and decodes like beam search.
  """
  if not 0.0 <= drop_fraction <= 1.0:
    raise ValueError(f"drop_fraction must lie in [0, 1], got {drop_fraction}")
  if rule not in RISK_RULES:
    raise ValueError(f"rule must be one of {RISK_RULES}, got {rule!r}")
  if rule == "boundary" and (not word_start_ids or relative_threshold is None):
    raise ValueError("the boundary rule needs word_start_ids and a relative_threshold")
  starts = None if rule == "paper" else jnp.asarray(tuple(word_start_ids), jnp.int32)

  def keep(step, candidates: Candidates) -> jax.Array:
    del step
    if candidates.lookahead_log_probs is None:
      raise ValueError("harm_tag_filter needs the lookahead: use it with safebeam")
    risk = jnp.exp(candidates.lookahead_log_probs[..., tag_id])  # [B, C]
    valid = jnp.isfinite(candidates.log_probs)
    eligible = valid
    if starts is not None:
      boundary = jnp.exp(jax.nn.logsumexp(candidates.lookahead_log_probs[..., starts], axis=-1))  # [B, C]
      risk = risk / (risk + boundary)
      eligible = valid & (risk > relative_threshold)
    # The small epsilon makes e.g. 0.29 * 100 drop 29, not 28, despite float rounding.
    num_drop = jnp.floor(drop_fraction * valid.sum(-1) + 1e-4).astype(jnp.int32)  # [B]
    riskiest_first = jnp.argsort(jnp.where(eligible, -risk, jnp.inf), axis=-1, stable=True)
    rank = jnp.argsort(riskiest_first, axis=-1)  # the inverse permutation: rank of each candidate
    kept = valid & ~(eligible & (rank < num_drop[:, None]))
    if threshold is not None:
      kept &= risk <= threshold
    return kept

  return keep


@dataclasses.dataclass(frozen=True)
class RandomDropFilter:
  """SafeBeam's placebo: drops as many candidates as `harm_tag_filter` would, chosen at random.

  Per prompt, floor(drop_fraction * number of valid candidates) valid candidates are dropped in a
  random order drawn from (seed, step), whatever their tag risk. SafeBeam run with this filter and
  drop_fraction 0 for the tag rule costs the same and removes as much as SafeBeam, so the
  difference between the two is what ranking by the tag adds. A frozen dataclass, so equal settings
  share one compilation.
  """

  drop_fraction: float
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.drop_fraction <= 1.0:
      raise ValueError(f"drop_fraction must lie in [0, 1], got {self.drop_fraction}")

  def __call__(self, step: jax.Array, candidates: Candidates) -> jax.Array:
    valid = jnp.isfinite(candidates.log_probs)
    num_drop = jnp.floor(self.drop_fraction * valid.sum(-1) + 1e-4).astype(jnp.int32)  # [B]
    noise = jax.random.uniform(jax.random.fold_in(jax.random.key(self.seed), step), valid.shape)
    dropped_first = jnp.argsort(jnp.where(valid, noise, jnp.inf), axis=-1)
    rank = jnp.argsort(dropped_first, axis=-1)
    return valid & (rank >= num_drop[:, None])


def safebeam(
    tokens_to_logits: TokensToLogits,
    init_cache: InitCache,
    prompts: jax.Array,
    prompt_mask: jax.Array,
    *,
    tag_id: int,
    max_new_tokens: int,
    eos_id: int,
    beam_size: int,
    num_expand: int,
    drop_fraction: float,
    tag_threshold: float | None = None,
    risk_rule: str = "paper",
    word_start_ids: Sequence[int] | None = None,
    relative_threshold: float | None = None,
    alpha: float = 0.6,
    logits_processor: LogitsProcessor | None = None,
    candidate_filter: CandidateFilter | None = None,
    pad_id: int = 0,
) -> DecodeResult:
  """SafeBeam (Safety Pretraining, section 4): beam search that steers away from the harm tag.

  Each step, after the logits processor:
  1. Terminal extensions: a beam's EOS extension that ranks among the step's k best of all k*V
     extensions finishes, as in `beam_search`. So does a tag extension ranking there (the model
     "generates" the tag): the hypothesis ends before it, the tag unwritten (the short-circuit),
     flagged `tag_stopped`.
  2. Expansion: every alive beam proposes its N most likely next tokens other than EOS and the
     tag: k*N candidates per prompt. At the first step the prompt, the only beam yet, proposes
     all k*N, so the beam is full from then on (else with N = 2 halving would keep one beam).
  3. Lookahead: one batched forward pass over the k*N candidates gives, for each, the model's
     probability that the tag comes next (raw logits).
  4. Drop: `harm_tag_filter` removes the `drop_fraction` riskiest candidates (and any above
     `tag_threshold`) by `risk_rule` ("paper", or "boundary": risk relative to a word boundary,
     `word_start_ids`, dropping only above `relative_threshold`); a user `candidate_filter` may
     remove more.
  5. The k best survivors by log-probability are the new alive beams. A prompt with no survivor
     stops its alive beams where they are, flagged `tag_stopped` (every continuation was risky).

  The lookahead is the next step's forward pass: the survivors' logits and keys and values come
  from it, nothing is recomputed. Each alive beam's cache row runs its N candidates in one call
  as siblings (alternatives for one position, each seeing the beam's cache and itself only); the
  cache keeps each survivor's sibling. A step thus runs the model on k rows of N tokens against
  beam search's k rows of one, over the same k-row cache.
  With drop_fraction 0, N >= k and the tag suppressed by the processor, it equals `beam_search`.

  Args: as `beam_search`, plus tag_id, num_expand (N), drop_fraction, tag_threshold. The
    candidate_filter sees the k*N candidates with their lookahead. The paper's settings (k, N and
    the drop fraction) have one home, `DecodingConfig`; this function takes them explicitly.
  Returns:
    DecodeResult with n = k, best first.
  """
  check_beam_args(beam_size, alpha, max_new_tokens)
  if num_expand < 1:
    raise ValueError(f"num_expand must be >= 1, got {num_expand}")
  if tag_id == eos_id:
    raise ValueError("tag_id and eos_id must differ")
  batch = prompts.shape[0]
  num_candidates = beam_size * num_expand
  # The N siblings of the last step take N slots before all but the kept one are freed.
  logits, cache, prompt_lengths = prefill(tokens_to_logits, init_cache, prompts, prompt_mask,
                                           max_new_tokens + num_expand - 1)
  vocab = logits.shape[-1]
  if num_candidates > vocab - 2:
    raise ValueError(f"beam_size * num_expand = {num_candidates} exceeds the vocabulary ({vocab}) less EOS and tag")
  state = initial_beams(logits, cache, batch, beam_size, max_new_tokens, alpha, pad_id)
  harm_filter = harm_tag_filter(tag_id, drop_fraction, tag_threshold, rule=risk_rule, word_start_ids=word_start_ids,
                                relative_threshold=relative_threshold)
  beam_parents = jnp.broadcast_to(jnp.repeat(jnp.arange(beam_size, dtype=jnp.int32), num_expand),
                                  (batch, num_candidates))

  def step_fn(state: BeamState) -> BeamState:
    step = state.step
    extension_log_probs = score_extensions(state, logits_processor)  # [B, k, V]
    kth_best = kth_largest(extension_log_probs.reshape(batch, -1), beam_size)
    ended = [ended_by(state.alive, extension_log_probs, kth_best, eos_id, step, alpha, pad_id),
             ended_by(state.alive, extension_log_probs, kth_best, tag_id, step, alpha, pad_id, tag_stop=True)]
    continuing = extension_log_probs.at[:, :, eos_id].set(NEG_INF).at[:, :, tag_id].set(NEG_INF)
    beam_log_probs, beam_tokens = jax.lax.top_k(continuing, num_expand)  # [B, k, N]
    # At the first step the prompt (beam 0, the only live one) proposes all k*N candidates.
    first_log_probs, first_tokens = jax.lax.top_k(continuing[:, 0], num_candidates)
    first = step == 0
    candidate_log_probs = jnp.where(first, first_log_probs, beam_log_probs.reshape(batch, num_candidates))
    candidate_tokens = jnp.where(first, first_tokens, beam_tokens.reshape(batch, num_candidates)).astype(jnp.int32)
    parents = jnp.where(first, 0, beam_parents)

    # The lookahead: one forward pass over every candidate, cache row j running candidates
    # j*N .. j*N+N-1 as siblings: its beam's own, or at the first step (every row a copy of the
    # prompt) its share of the prompt's.
    siblings = candidate_tokens.reshape(batch * beam_size, num_expand)
    positions = jnp.broadcast_to(jnp.repeat(prompt_lengths, beam_size)[:, None] + step, siblings.shape)
    lookahead_logits, cache = tokens_to_logits(siblings, positions, state.cache, jnp.ones(siblings.shape, bool),
                                               siblings=True)
    lookahead_logits = lookahead_logits.reshape(batch, num_candidates, vocab)
    candidates = Candidates(candidate_tokens, parents, candidate_log_probs, jax.nn.log_softmax(lookahead_logits))
    keep = harm_filter(step, candidates)
    if candidate_filter is not None:
      keep &= candidate_filter(step, candidates)
    candidate_log_probs = jnp.where(keep, candidate_log_probs, NEG_INF)

    alive_log_probs, alive_index = jax.lax.top_k(candidate_log_probs, beam_size)
    alive = extend_beams(state.alive, jnp.take_along_axis(parents, alive_index, axis=1), alive_log_probs,
                    jnp.take_along_axis(candidate_tokens, alive_index, axis=1), step, alpha, pad_id)
    blocked = ~jnp.isfinite(candidate_log_probs).any(-1, keepdims=True)
    stopped = state.alive.replace(scores=jnp.where(blocked, state.alive.scores, NEG_INF),
                                  tag_stopped=jnp.isfinite(state.alive.log_probs))
    cache = cache.gather_beams(alive_index // num_expand).keep_sibling(
        (alive_index % num_expand).reshape(-1), num_expand)
    return settle_beams(state, alive, [*ended, stopped], alpha, max_new_tokens, cache=cache,
                   logits=jnp.take_along_axis(lookahead_logits, alive_index[..., None], axis=1))

  state = jax.lax.while_loop(lambda s: (s.step < max_new_tokens) & ~jnp.all(s.done), step_fn, state)
  return final_beams(state, beam_size)
