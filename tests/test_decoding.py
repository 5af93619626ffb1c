"""Greedy, sampling and beam search: against each other, a full recompute, and hand-written models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decoding_fakes import EOS, PAD, TAG, bigram_model, bigram_table, prompt_batch
from safejax import decoding
from safejax.model import ModelConfig, build_model

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20]]  # lengths differ: left padding
MAX_NEW = 12


@pytest.fixture(scope="module")
def model():
  return build_model(ModelConfig(vocab_size=96), seed=1)


def generate(model, method="greedy", **options):
  return decoding.generate(model, PROMPTS, method=method, max_new_tokens=MAX_NEW, eos_id=EOS, **options)


def run_bigram(algorithm, table, prompts, rng=None, **options):
  """Decodes with a bigram model; jitted, which compiles faster than running the ops one by one."""
  tokens_to_logits, init_cache = bigram_model(table)
  run = functools.partial(algorithm, tokens_to_logits, init_cache, eos_id=EOS, **options)
  return jax.jit(run)(*prompt_batch(prompts), **({} if rng is None else {"rng": rng}))


def greedy_bigram(table, prompts, max_new_tokens, **options):
  return run_bigram(decoding.sample, table, prompts, max_new_tokens=max_new_tokens, **options)


def test_cached_greedy_equals_full_recompute(model):
  cached = generate(model, use_kv_cache=True)
  recomputed = generate(model, use_kv_cache=False)
  np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
  np.testing.assert_allclose(cached.log_probs, recomputed.log_probs, rtol=1e-4)
  assert cached.tokens.shape == (len(PROMPTS), 1, MAX_NEW)
  # The model's own greedy continuation without any decoder: one full causal forward pass per
  # token over an unpadded prompt (right zeros never reach earlier positions through the mask).
  forward = nnx.jit(lambda model, tokens: model(tokens)[0])
  prompt = PROMPTS[1]
  sequence = np.zeros((1, len(prompt) + MAX_NEW), np.int32)
  sequence[0, :len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + MAX_NEW):
    sequence[0, t] = int(jnp.argmax(forward(model, jnp.asarray(sequence))[0, t - 1]))
  np.testing.assert_array_equal(cached.tokens[1, 0], sequence[0, len(prompt):])


def test_beam_search_of_width_one_is_greedy(model):
  greedy = generate(model)
  beam = generate(model, method="beam", beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)
  np.testing.assert_allclose(beam.log_probs, greedy.log_probs, rtol=1e-5)


def test_beam_search_cached_equals_full_recompute(model):
  cached = generate(model, method="beam", beam_size=3)
  recomputed = generate(model, method="beam", beam_size=3, use_kv_cache=False)
  np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
  np.testing.assert_allclose(cached.scores, recomputed.scores, rtol=1e-4)
  assert np.all(np.diff(cached.scores, axis=1) <= 0), "hypotheses come best first"
  greedy = generate(model)
  assert np.all(cached.log_probs[:, 0] >= greedy.log_probs[:, 0] - 1e-4), "a wider beam finds no worse sequence"


def test_sampling_with_top_k_one_is_greedy(model):
  greedy = generate(model)
  sampled = generate(model, method="sample", temperature=1.5, top_k=1, seed=3)
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)


def test_sampling_is_seeded(model):
  first = generate(model, method="sample", temperature=1.0, seed=0)
  again = generate(model, method="sample", temperature=1.0, seed=0)
  other = generate(model, method="sample", temperature=1.0, seed=1)
  np.testing.assert_array_equal(first.tokens, again.tokens)
  assert not np.array_equal(first.tokens, other.tokens)


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda p: set(np.flatnonzero(np.isfinite(decoding.top_p_filter(logits, p)[0])).tolist())
  assert kept(0.3) == {1}
  assert kept(0.5) == {1}  # the most likely token alone already holds 0.5
  assert kept(0.51) == {1, 3}
  assert kept(0.8) == {1, 3}
  assert kept(0.81) == {1, 3, 2}
  assert kept(1.0) == {0, 1, 2, 3}
  np.testing.assert_array_equal(decoding.top_p_filter(logits, 0.6)[0, [1, 3]], logits[0, [1, 3]])


def test_top_k_filter():
  logits = jnp.asarray([[0.1, 2.0, -1.0, 0.5], [3.0, 2.0, 1.0, 0.0]])
  filtered = decoding.top_k_filter(logits, 2)
  np.testing.assert_array_equal(np.isfinite(filtered), [[False, True, False, True], [True, True, False, False]])


def test_sampling_draws_from_the_nucleus_only():
  table = bigram_table(16, {5: {6: 0.4, 7: 0.3, 8: 0.2}, 6: {9: 0.95}, 7: {9: 0.95}, 8: {9: 0.95}})
  result = greedy_bigram(table, [[5]] * 64, 1, temperature=1.0, top_p=0.65, rng=jax.random.key(0))
  assert set(np.asarray(result.tokens[:, 0, 0]).tolist()) == {6, 7}


def test_eos_stops_a_row_while_others_go_on():
  # After 5 the model says 6 then EOS; after 9 it repeats 10 forever.
  table = bigram_table(16, {5: {6: 0.9}, 6: {EOS: 0.9}, 9: {10: 0.9}, 10: {10: 0.9}, 12: {13: 0.9}, 13: {EOS: 0.9}})
  result = greedy_bigram(table, [[3, 5], [9], [3, 3, 12]], 6)
  np.testing.assert_array_equal(result.tokens[:, 0], [[6, EOS, PAD, PAD, PAD, PAD], [10] * 6,
                                                      [13, EOS, PAD, PAD, PAD, PAD]])
  np.testing.assert_array_equal(result.lengths[:, 0], [2, 6, 2])
  np.testing.assert_array_equal(result.finished[:, 0], [True, False, True])
  np.testing.assert_allclose(result.log_probs[:, 0], [2 * np.log(0.9), 6 * np.log(0.9), 2 * np.log(0.9)], rtol=1e-5)


def test_beam_search_rows_finish_at_different_steps():
  # Row 0 can end after one token (5 6 EOS); row 1 needs four (9 10 11 12 EOS); row 2 never ends.
  table = bigram_table(20, {5: {6: 0.9}, 6: {EOS: 0.9}, 9: {10: 0.9}, 10: {11: 0.9}, 11: {12: 0.9},
                            12: {EOS: 0.9}, 14: {15: 0.6, 16: 0.3}, 15: {14: 0.6, 16: 0.3}, 16: {14: 0.9}})
  tokens_to_logits, init_cache = bigram_model(table)
  run = jax.jit(functools.partial(decoding.beam_search, tokens_to_logits, init_cache, beam_size=2, max_new_tokens=6,
                                  eos_id=EOS, alpha=0.0))
  result = run(*prompt_batch([[5], [9], [14]]))
  np.testing.assert_array_equal(result.tokens[0, 0], [6, EOS, PAD, PAD, PAD, PAD])
  np.testing.assert_array_equal(result.tokens[1, 0], [10, 11, 12, EOS, PAD, PAD])
  np.testing.assert_array_equal(result.lengths[:, 0], [2, 4, 6])
  np.testing.assert_array_equal(result.finished[:, 0], [True, True, False])
  # A row's result does not depend on the rows decoded beside it.
  alone = run(*prompt_batch([[9]]))
  np.testing.assert_array_equal(alone.tokens[0], result.tokens[1])
  np.testing.assert_allclose(alone.scores[0], result.scores[1], rtol=1e-6)


def test_length_penalty_favours_longer_hypotheses():
  # From 5: EOS at once (probability 0.5) or 6 7 EOS (0.45 * 0.9 * 0.9 = 0.36).
  table = bigram_table(16, {5: {EOS: 0.5, 6: 0.45}, 6: {7: 0.9}, 7: {EOS: 0.9}})
  best = lambda alpha: run_bigram(decoding.beam_search, table, [[5]], beam_size=2, max_new_tokens=4,
                                  alpha=alpha).tokens[0, 0]
  np.testing.assert_array_equal(best(0.0), [EOS, PAD, PAD, PAD])  # log 0.5 > log 0.3645
  np.testing.assert_array_equal(best(2.0), [6, 7, EOS, PAD])  # penalty (8/6)^2 beats (6/6)^2


def test_logits_processor_sees_the_step_and_the_tokens_so_far(model):
  def no_repeat(step, logits, tokens):
    banned = jnp.where(step > 0, tokens[:, jnp.maximum(step - 1, 0)], -1)  # [R]
    return jnp.where(jnp.arange(logits.shape[-1]) == banned[:, None], -jnp.inf, logits)

  repeats = lambda r: (r.tokens[:, 0, 1:] == r.tokens[:, 0, :-1]) & (np.arange(1, MAX_NEW) < r.lengths[:, :1])
  assert np.any(repeats(generate(model))), "the fixture model repeats itself"
  for method, options in (("greedy", {}), ("beam", {"beam_size": 2})):
    assert not np.any(repeats(generate(model, method, logits_processor=no_repeat, **options)))


def test_tag_suppression_and_penalty():
  table = bigram_table(16, {5: {TAG: 0.5, 6: 0.3}, 6: {EOS: 0.9}})
  plain = greedy_bigram(table, [[5]], 2)
  assert plain.tokens[0, 0, 0] == TAG
  suppressed = greedy_bigram(table, [[5]], 2, logits_processor=decoding.SuppressToken(TAG))
  np.testing.assert_array_equal(suppressed.tokens[0, 0], [6, EOS])
  small = greedy_bigram(table, [[5]], 2, logits_processor=decoding.PenalizeToken(TAG, 0.1))
  large = greedy_bigram(table, [[5]], 2, logits_processor=decoding.PenalizeToken(TAG, 1.0))
  assert small.tokens[0, 0, 0] == TAG and large.tokens[0, 0, 0] == 6  # log(0.5/0.3) = 0.51


def test_beam_search_candidate_filter():
  table = bigram_table(16, {5: {6: 0.5, 7: 0.3}, 6: {EOS: 0.9}, 7: {EOS: 0.9}})
  no_six = lambda step, candidates: candidates.tokens != 6
  result = run_bigram(decoding.beam_search, table, [[5]], beam_size=2, max_new_tokens=3, candidate_filter=no_six)
  np.testing.assert_array_equal(result.tokens[0, 0], [7, EOS, PAD])
  assert not np.any(np.asarray(result.tokens) == 6)


def test_tag_probability_rejection_stops_sampling():
  # After 6 the model gives the tag 0.6: the row stops there, before writing anything more.
  table = bigram_table(16, {5: {6: 0.9}, 6: {TAG: 0.6, 7: 0.3}, 9: {10: 0.9}, 10: {10: 0.9}})
  result = greedy_bigram(table, [[5], [9]], 4, tag_id=TAG, tag_stop_threshold=0.5,
                         logits_processor=decoding.SuppressToken(TAG))
  np.testing.assert_array_equal(result.tokens[:, 0], [[6, PAD, PAD, PAD], [10, 10, 10, 10]])
  np.testing.assert_array_equal(result.tag_stopped[:, 0], [True, False])
  np.testing.assert_array_equal(result.lengths[:, 0], [1, 4])
  looser = greedy_bigram(table, [[5]], 4, tag_id=TAG, tag_stop_threshold=0.7,
                         logits_processor=decoding.SuppressToken(TAG))
  assert not looser.tag_stopped[0, 0] and looser.tokens[0, 0, 1] == 7


def test_detokenize_never_shows_the_harm_tag(tiny_vocab):
  from safejax.vocab import HARM_TAG

  vocab = tiny_vocab
  words = vocab.encode("the cat") + vocab.encode(" sat")
  ids = words[:2] + [vocab.harm_tag_id] + words[2:] + [vocab.eos_id] + vocab.encode("bird")
  result = decoding.DecodeResult(
      tokens=np.asarray([[ids]], np.int32), lengths=np.asarray([[len(ids)]]), log_probs=np.zeros((1, 1)),
      scores=np.zeros((1, 1)), finished=np.ones((1, 1), bool), tag_stopped=np.zeros((1, 1), bool))
  [[text_out]] = decoding.detokenize(vocab, result)
  assert text_out == vocab.decode(words)  # the tag dropped, nothing after EOS
  assert "bird" not in text_out
  assert HARM_TAG not in text_out


def test_generate_rejects_bad_input(model):
  with pytest.raises(ValueError, match="empty"):
    decoding.generate(model, [[5], []], max_new_tokens=2, eos_id=EOS)
  with pytest.raises(ValueError, match="unknown decoding method"):
    decoding.generate(model, [[5]], method="nucleus", max_new_tokens=2, eos_id=EOS)
  with pytest.raises(ValueError, match="alpha"):
    decoding.generate(model, [[5]], method="beam", beam_size=2, alpha=-1.0, max_new_tokens=2, eos_id=EOS)


def test_left_pad():
  tokens, mask = decoding.left_pad([[7, 8, 9], [5]], pad_id=0, multiple=4)
  np.testing.assert_array_equal(tokens, [[0, 7, 8, 9], [0, 0, 0, 5]])
  np.testing.assert_array_equal(mask, [[False, True, True, True], [False, False, False, True]])


# -- issue 23: the knobs a client varies are arguments of one compiled program ----------------------


def static_sample(model, seed, **knobs):
  """search.sample with the knobs compiled in, as `generate` ran it before they were traced."""
  from safejax.model.llama import KVCache

  graphdef, state = nnx.split(model)
  tokens, mask = decoding.left_pad(PROMPTS, 0, 32)
  run = jax.jit(lambda state, tokens, mask, rng: decoding.sample(
      decoding.cached_tokens_to_logits(graphdef, state), functools.partial(KVCache.init, model.cfg), tokens, mask,
      max_new_tokens=MAX_NEW, eos_id=EOS, rng=rng, **knobs))
  return run(state, tokens, mask, jax.random.key(seed))


@pytest.mark.parametrize("knobs", [dict(temperature=0.7), dict(temperature=1.3, top_k=5),
                                   dict(temperature=1.0, top_p=0.8), dict(temperature=0.5, top_k=3, top_p=0.6),
                                   dict(temperature=0.0)])
def test_traced_sampling_draws_what_compiled_in_sampling_draws(model, knobs):
  traced = generate(model, method="sample", seed=3, **knobs)
  np.testing.assert_array_equal(traced.tokens, static_sample(model, 3, **knobs).tokens)


def test_every_sampling_value_shares_one_program(model):
  """Ten temperatures, top_p and top_k values, seeds and tag penalties: one compilation. Per-row
  values decode each row as that value alone would."""
  from safejax.decoding import runner

  runs = [generate(model, method="sample", temperature=0.3 + i * 0.0137, top_p=1.0 - i * 0.03, top_k=i, seed=i,
                   tag_id=4, tag_penalty=0.5 * i) for i in range(10)]
  call = runner.prepare(model, PROMPTS, method="sample", max_new_tokens=MAX_NEW, eos_id=EOS, temperature=0.5,
                        tag_id=4, tag_penalty=0.0)
  assert runner._jitted(*call.program[:5])._cache_size() == 1
  assert len({r.tokens.tobytes() for r in runs}) > 1
  rows = generate(model, method="sample", temperature=[0.0, 0.9, 1.7], top_k=[0, 2, 0], seed=5)
  for row, (temperature, top_k) in enumerate([(0.0, 0), (0.9, 2), (1.7, 0)]):
    alone = generate(model, method="sample", temperature=temperature, top_k=top_k, seed=5)
    np.testing.assert_array_equal(rows.tokens[row], alone.tokens[row])
