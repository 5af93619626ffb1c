"""SafeBeam: which candidates survive, the tag short-circuit, edge cases, and equality with beam search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_fakes import EOS, PAD, TAG, bigram_model, bigram_table, prompt_batch
from safejax import decoding
from safejax.model import ModelConfig, build_model

VOCAB = 24


def run_safebeam(table, prompts, **options):
  tokens_to_logits, init_cache = bigram_model(table)
  options = {"beam_size": 2, "num_expand": 3, "drop_fraction": 0.5, "alpha": 0.0, **options}
  run = functools.partial(decoding.safebeam, tokens_to_logits, init_cache, tag_id=TAG, eos_id=EOS, **options)
  return jax.jit(run)(*prompt_batch(prompts))


# After 5 the model proposes 6 7 8 9 10 16; how likely the tag is after each candidate is set per row.
RISKY_SECOND_STEP = bigram_table(VOCAB, {
    5: {6: 0.30, 7: 0.25, 8: 0.20, 9: 0.10, 10: 0.05, 16: 0.04},
    6: {TAG: 0.5}, 9: {TAG: 0.6}, 10: {TAG: 0.7}, 16: {TAG: 0.05},
    7: {11: 0.5, 12: 0.25, 13: 0.1, TAG: 0.1},
    8: {14: 0.45, 15: 0.35, TAG: 0.15},
    11: {TAG: 0.9}, 12: {TAG: 0.05}, 13: {TAG: 0.2}, 14: {TAG: 0.6}, 15: {TAG: 0.01},
})


def test_safebeam_drops_the_candidates_most_likely_followed_by_the_tag():
  # Step 0: the prompt proposes k*N = 6 candidates; the three riskiest (10: tag next 0.7, 9: 0.6,
  # 6: 0.5) go, though 6 is the likeliest; of 7, 8, 16 the best two remain. Step 1: the six
  # candidates 7-11 (.125, tag .9), 7-12 (.0625, .05), 7-13 (.025, .2), 8-14 (.09, .6),
  # 8-15 (.07, .01), 8-0 (tiny, 1/24): the three riskiest (11, 14, 13) go, the best two remain.
  result = run_safebeam(RISKY_SECOND_STEP, [[5]], max_new_tokens=2)
  np.testing.assert_array_equal(result.tokens[0], [[8, 15], [7, 12]])
  np.testing.assert_allclose(np.exp(result.log_probs[0]), [0.20 * 0.35, 0.25 * 0.25], rtol=1e-5)
  assert not result.tag_stopped.any() and not result.finished.any()
  # Plain beam search keeps the likelier, riskier continuations.
  tokens_to_logits, init_cache = bigram_model(RISKY_SECOND_STEP)
  beam = decoding.beam_search(tokens_to_logits, init_cache, *prompt_batch([[5]]), beam_size=2, max_new_tokens=2,
                              eos_id=EOS, alpha=0.0)
  np.testing.assert_array_equal(beam.tokens[0], [[6, TAG], [7, 11]])


def test_harm_tag_filter_unit():
  risk = np.asarray([[0.9, 0.1, 0.5, 0.7, 0.2, 0.3]])
  log_probs = jnp.asarray([[-1.0, -2.0, -1.5, -jnp.inf, -0.5, -3.0]])  # candidate 3 is invalid
  lookahead = np.full((1, 6, 8), np.log(1e-3))
  lookahead[0, :, TAG] = np.log(risk)
  candidates = decoding.Candidates(tokens=jnp.arange(6)[None] + 5, parents=jnp.zeros((1, 6), jnp.int32),
                                   log_probs=log_probs, lookahead_log_probs=jnp.asarray(lookahead))
  keep = lambda **kw: np.asarray(decoding.harm_tag_filter(TAG, **kw)(0, candidates))[0].tolist()
  # Five valid candidates: floor(2.5) = 2 riskiest go (0.9 and 0.5; 0.7 is invalid anyway).
  assert keep(drop_fraction=0.5) == [False, True, False, False, True, True]
  assert keep(drop_fraction=0.5, threshold=0.25) == [False, True, False, False, True, False]
  assert keep(drop_fraction=0.0) == [True, True, True, False, True, True]
  assert keep(drop_fraction=1.0) == [False] * 6
  with pytest.raises(ValueError, match="drop_fraction"):
    decoding.harm_tag_filter(TAG, drop_fraction=1.5)


def test_safebeam_never_writes_the_tag_and_stops_the_beam_that_selects_it():
  # After 5 the tag is the likeliest token: the hypothesis ends there (short-circuit), the tag
  # unwritten, and with its short length it is the best hypothesis.
  table = bigram_table(VOCAB, {5: {TAG: 0.6, 6: 0.3}, 6: {7: 0.9}, 7: {EOS: 0.9}})
  result = run_safebeam(table, [[5]], max_new_tokens=4, alpha=0.6)
  assert not np.any(np.asarray(result.tokens) == TAG)
  assert result.tag_stopped[0, 0] and result.lengths[0, 0] == 0
  np.testing.assert_array_equal(result.tokens[0, 0], [PAD] * 4)
  np.testing.assert_allclose(result.log_probs[0, 0], np.log(0.6), rtol=1e-5)
  # The runner-up continued around the tag and finished normally.
  np.testing.assert_array_equal(result.tokens[0, 1], [6, 7, EOS, PAD])
  assert result.finished[0, 1] and not result.tag_stopped[0, 1]


def test_every_candidate_risky():
  # After any token but 5, 9 and 10 the tag comes with probability 0.85, after 6 0.8, 7 0.7, 8 0.9.
  rows = {t: {TAG: 0.85} for t in range(VOCAB)}
  rows.update({5: {6: 0.4, 7: 0.3, 8: 0.2}, 6: {TAG: 0.8}, 7: {TAG: 0.7}, 8: {TAG: 0.9}, 9: {10: 0.9},
               10: {10: 0.9}})
  table = bigram_table(VOCAB, rows)
  # The fraction rule still keeps the less risky half of the six candidates 6 7 8 0 2 3 (the
  # last three: the likeliest of the rest, by id): 8 and two at 0.85 go; of 6, 7, 3 the best two stay.
  kept = run_safebeam(table, [[5]], max_new_tokens=1)
  np.testing.assert_array_equal(kept.tokens[0, :, 0], [6, 7])
  # With an absolute threshold nothing survives: the beam stops where it is, flagged.
  blocked = run_safebeam(table, [[5], [9]], max_new_tokens=2, tag_threshold=0.5)
  assert blocked.tag_stopped[0, 0] and blocked.lengths[0, 0] == 0
  np.testing.assert_array_equal(blocked.tokens[0, 0], [PAD, PAD])
  # The other prompt (tag next 0.1 / 23 after 10) goes on.
  np.testing.assert_array_equal(blocked.tokens[1, 0], [10, 10])
  assert not blocked.tag_stopped[1, 0]


def test_eos_inside_the_lookahead():
  # The lookahead after 6 sees EOS as the likeliest next token; those logits are the next step's:
  # the beam then finishes with EOS. Of the first candidates 6 7 0 2, 7 (tag next 0.3) and 0
  # (1/24, first of the ties) are dropped.
  table = bigram_table(VOCAB, {5: {6: 0.5, 7: 0.4}, 6: {EOS: 0.9, TAG: 0.01}, 7: {8: 0.6, TAG: 0.3},
                               8: {EOS: 0.9}})
  result = run_safebeam(table, [[5]], max_new_tokens=4, num_expand=2)
  np.testing.assert_array_equal(result.tokens[0, 0], [6, EOS, PAD, PAD])
  assert result.finished[0, 0] and result.lengths[0, 0] == 2
  np.testing.assert_allclose(np.exp(result.log_probs[0, 0]), 0.5 * 0.9, rtol=1e-5)
  assert not np.any(np.asarray(result.tokens)[0, :, 0] == 7)


def test_rows_finish_at_different_steps():
  table = bigram_table(VOCAB, {5: {6: 0.9}, 6: {EOS: 0.9}, 9: {10: 0.9}, 10: {11: 0.9}, 11: {12: 0.9},
                               12: {EOS: 0.9}, 16: {17: 0.6, 18: 0.3}, 17: {16: 0.6, 18: 0.3}, 18: {16: 0.9}})
  prompts = [[5], [9], [16]]
  result = run_safebeam(table, prompts, max_new_tokens=6, drop_fraction=0.0)
  np.testing.assert_array_equal(result.tokens[0, 0], [6, EOS, PAD, PAD, PAD, PAD])
  np.testing.assert_array_equal(result.tokens[1, 0], [10, 11, 12, EOS, PAD, PAD])
  np.testing.assert_array_equal(result.lengths[:, 0], [2, 4, 6])
  np.testing.assert_array_equal(result.finished[:, 0], [True, True, False])
  alone = run_safebeam(table, prompts[1:2], max_new_tokens=6, drop_fraction=0.0)
  np.testing.assert_array_equal(alone.tokens[0], result.tokens[1])
  np.testing.assert_allclose(alone.scores[0], result.scores[1], rtol=1e-6)


def test_width_one():
  # One beam, three candidates 6 (tag next 0.5), 7 (0.1), 8 (0.05): one is dropped, the best of
  # the rest kept; dropping 70 % leaves only 8.
  table = bigram_table(VOCAB, {5: {6: 0.4, 7: 0.3, 8: 0.2}, 6: {TAG: 0.5}, 7: {TAG: 0.1}, 8: {TAG: 0.05}})
  assert run_safebeam(table, [[5]], beam_size=1, max_new_tokens=1).tokens[0, 0, 0] == 7
  assert run_safebeam(table, [[5]], beam_size=1, max_new_tokens=1, drop_fraction=0.7).tokens[0, 0, 0] == 8


def test_one_lookahead_pass_per_step():
  # The model is traced twice: the prompt (B rows) and the loop's single pass over the k*N
  # candidates, k rows of N siblings per prompt, whose logits and cache the survivors reuse.
  calls = []
  tokens_to_logits, init_cache = bigram_model(RISKY_SECOND_STEP, calls)
  decoding.safebeam(tokens_to_logits, init_cache, *prompt_batch([[5], [3, 6]]), tag_id=TAG, eos_id=EOS,
                    beam_size=2, num_expand=3, drop_fraction=0.5, max_new_tokens=3)
  assert calls == [((2, 2), False), ((2 * 2, 3), True)]


@pytest.fixture(scope="module")
def model():
  return build_model(ModelConfig(vocab_size=96), seed=2)


def test_safebeam_without_dropping_equals_beam_search(model):
  prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20]]
  run = functools.partial(decoding.generate, model, prompts, max_new_tokens=10, eos_id=EOS,
                          logits_processor=decoding.SuppressToken(TAG), beam_size=3)
  beam = run(method="beam")
  safe = run(method="safebeam", num_expand=3, drop_fraction=0.0, tag_id=TAG)
  np.testing.assert_array_equal(safe.tokens, beam.tokens)
  np.testing.assert_allclose(safe.scores, beam.scores, rtol=1e-5)
  # With the default drop the search really changes course.
  dropped = run(method="safebeam", num_expand=2, drop_fraction=decoding.DecodingConfig().drop_fraction, tag_id=TAG)
  assert not np.array_equal(dropped.tokens, beam.tokens)
  # The prompt proposes all k*N first candidates, so even N = 2 fills the beam (halving k*N).
  assert np.isfinite(dropped.scores).all()


def test_sibling_lookahead_equals_one_history_per_candidate():
  # The KV-cache path runs each beam's N candidates as siblings in one cache row; the full
  # recompute runs every candidate in a copy of its beam's history of its own (SafeBeam's k*N
  # rows before siblings). Same search, same results, tag stops and EOS endings included: a
  # 12-token vocabulary with large weights makes both frequent.
  model = build_model(ModelConfig(vocab_size=12, init_std=0.2), seed=1)
  run = functools.partial(decoding.generate, model, [[5, 6, 7, 8, 9], [7, 8], [9, 5, 6, 7, 8, 9, 5, 6, 7], [3]],
                          method="safebeam", max_new_tokens=8, eos_id=EOS, tag_id=TAG, beam_size=3, num_expand=2,
                          drop_fraction=0.5,
                          prompt_multiple=1)
  siblings, separate = run(use_kv_cache=True), run(use_kv_cache=False)
  for field in ("tokens", "lengths", "finished", "tag_stopped"):
    np.testing.assert_array_equal(getattr(siblings, field), getattr(separate, field))
  np.testing.assert_allclose(siblings.scores, separate.scores, rtol=1e-5)
  assert siblings.tag_stopped.any() and siblings.finished.any()


def _candidates(log_probs):
  log_probs = jnp.asarray(log_probs, jnp.float32)
  return decoding.Candidates(tokens=jnp.zeros(log_probs.shape, jnp.int32), parents=jnp.zeros(log_probs.shape, jnp.int32),
                             log_probs=log_probs)


def test_random_drop_filter_drops_the_same_share_at_random():
  log_probs = np.zeros((64, 12), np.float32)
  log_probs[:, 3] = -np.inf  # one invalid candidate per row: 11 valid, floor(5.5) = 5 dropped
  placebo = decoding.RandomDropFilter(0.5, seed=7)
  keep = np.asarray(placebo(jnp.int32(0), _candidates(log_probs)))
  assert (keep.sum(-1) == 6).all() and not keep[:, 3].any()
  # Which ones go differs between rows and steps and is the same for the same (seed, step).
  assert len({tuple(row) for row in keep}) > 20
  assert (np.asarray(placebo(jnp.int32(1), _candidates(log_probs))) != keep).any()
  np.testing.assert_array_equal(np.asarray(placebo(jnp.int32(0), _candidates(log_probs))), keep)
  # Each valid candidate is dropped about half the time whatever its position (not by rank or risk).
  drop_rate = 1 - keep[:, [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]].mean(0)
  assert np.all(np.abs(drop_rate - 5 / 11) < 0.2)
  assert np.asarray(decoding.RandomDropFilter(0.0)(jnp.int32(0), _candidates(log_probs))).sum() == 64 * 11
  with pytest.raises(ValueError, match="drop_fraction"):
    decoding.RandomDropFilter(1.5)


def test_placebo_safebeam_keeps_as_many_candidates_as_safebeam_but_not_the_safest():
  # With the tag rule the riskiest go (see above); the placebo keeps the same number, and over
  # seeds it sometimes keeps the riskiest candidate 6, which SafeBeam never does.
  picks = set()
  for seed in range(8):
    result = run_safebeam(RISKY_SECOND_STEP, [[5]], max_new_tokens=1, drop_fraction=0.0,
                          candidate_filter=decoding.RandomDropFilter(0.5, seed))
    picks.update(np.asarray(result.tokens[0, :, 0]).tolist())
  assert 6 in picks and len(picks) > 2


def test_decoding_config_placebo_options():
  config = decoding.DecodingConfig(method="safebeam", drop_fraction=0.5, candidate_rule="random", seed=3)
  options = config.generate_options(tag_id=TAG)
  assert options["drop_fraction"] == 0.0 and options["candidate_filter"] == decoding.RandomDropFilter(0.5, 3)
  assert "candidate_filter" not in decoding.DecodingConfig(method="safebeam").generate_options(TAG)
  with pytest.raises(ValueError, match="candidate_rule"):
    decoding.DecodingConfig(method="safebeam", candidate_rule="coin")
  with pytest.raises(ValueError, match="threshold"):
    decoding.DecodingConfig(method="safebeam", candidate_rule="random", tag_threshold=0.1)


def _boundary_only_table(seed: int, c: float = 0.01):
  """A bigram model whose tag probability depends only on word boundaries: after each token the tag
  gets c times the probability of a word-start token (10..17), as a never-tagged model's would; the
  other tokens (18..23) are word fragments. Returns (log-probs, word-start ids)."""
  rng = np.random.default_rng(seed)
  starts, fragments = list(range(10, 18)), list(range(18, VOCAB))
  rows = {}
  for token in [5, *starts, *fragments]:
    boundary = rng.uniform(0.05, 0.85)  # how likely a word ends after this token
    probs = {t: boundary * w for t, w in zip(starts, rng.dirichlet(np.ones(len(starts))))}
    probs.update({t: (0.95 - boundary) * w for t, w in zip(fragments, rng.dirichlet(np.ones(len(fragments))))})
    probs[TAG] = c * boundary
    rows[token] = probs
  return bigram_table(VOCAB, rows), tuple(starts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_boundary_rule_decodes_like_beam_search_when_the_tag_follows_word_boundaries_only(seed):
  table, starts = _boundary_only_table(seed)
  prompts = [[5], [5, 11], [5, 19, 12]]
  options = dict(beam_size=2, max_new_tokens=5, alpha=0.0, logits_processor=decoding.SuppressToken(TAG))
  tokens_to_logits, init_cache = bigram_model(table)
  beam = decoding.beam_search(tokens_to_logits, init_cache, *prompt_batch(prompts), eos_id=EOS, **options)
  run = lambda **rule: decoding.safebeam(tokens_to_logits, init_cache, *prompt_batch(prompts), eos_id=EOS,  # noqa: E731
                                         tag_id=TAG, num_expand=3, drop_fraction=0.5, **options, **rule)
  boundary = run(risk_rule="boundary", word_start_ids=starts, relative_threshold=0.025)
  np.testing.assert_array_equal(boundary.tokens, beam.tokens)
  np.testing.assert_allclose(boundary.scores, beam.scores, rtol=1e-5)
  # The paper's rule drops the half after which a word most likely ends, though nothing is unsafe.
  paper = run()
  assert not np.array_equal(paper.tokens, beam.tokens)
  boundary_after = lambda r: float(np.mean(np.exp(table[np.asarray(r.tokens)[:, 0, 0]][:, list(starts)]).sum(-1)))  # noqa: E731
  assert boundary_after(paper) < boundary_after(beam)


def test_the_boundary_rule_drops_a_candidate_the_tag_follows_beyond_its_boundaries():
  # After 7 a word ends with probability 0.4 and the tag takes 0.1 of it (relative risk 0.2); after
  # 6 a word ends with probability 0.8 but the tag is rare (0.001 / 0.801).
  starts = tuple(range(10, 18))
  rows = {5: {6: 0.5, 7: 0.3, 8: 0.1}, 6: {10: 0.8, TAG: 0.001}, 7: {11: 0.4, TAG: 0.1}, 8: {12: 0.5, TAG: 0.0005}}
  table = bigram_table(VOCAB, rows)
  tokens_to_logits, init_cache = bigram_model(table)
  result = decoding.safebeam(tokens_to_logits, init_cache, *prompt_batch([[5]]), eos_id=EOS, tag_id=TAG,
                             beam_size=2, num_expand=2, drop_fraction=0.5, max_new_tokens=1, alpha=0.0,
                             risk_rule="boundary", word_start_ids=starts, relative_threshold=0.025)
  assert 7 not in np.asarray(result.tokens)[0, :, 0].tolist()  # the one candidate above 0.025 went
  assert np.asarray(result.tokens)[0, 0, 0] == 6
  with pytest.raises(ValueError, match="word_start_ids and a relative_threshold"):
    decoding.harm_tag_filter(TAG, 0.5, rule="boundary")
  with pytest.raises(ValueError, match="rule must be one of"):
    decoding.harm_tag_filter(TAG, 0.5, rule="median")
