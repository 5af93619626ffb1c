"""LoglikelihoodModel on a tiny random decoder: agreement with a direct forward pass, the chain rule,
batching and padding invariance, rolling windows, the greedy flag and the probe probability."""

import jax
import numpy as np
import pytest
from flax import nnx

from safejax.evaluation.loglikelihood import LoglikelihoodModel, rolling_windows
from safejax.model.llama import ModelConfig, build_model

START = 0
DIRECT_LENGTH = 256  # the reference pass right-pads to one length: one compilation for all checks


@nnx.jit
def _forward(model, tokens):
  return jax.nn.log_softmax(model(tokens)[0], axis=-1)


@pytest.fixture(scope="module")
def model(tiny_vocab):
  return build_model(ModelConfig(vocab_size=tiny_vocab.vocab_size, init_std=0.2), seed=3)


def direct_logp(model, sequence):
  """[len(sequence), V] next-token log-probabilities after each prefix, one forward pass of batch 1
  (right padding leaves real positions unchanged under the causal mask)."""
  tokens = np.zeros((1, DIRECT_LENGTH), np.int32)
  tokens[0, :len(sequence)] = sequence
  return np.asarray(_forward(model, tokens))[0, :len(sequence)]


def direct_logprobs(model, sequence):
  """[len(sequence) - 1] log P(sequence[j] | sequence[:j]) for j >= 1."""
  logp = direct_logp(model, sequence)
  return np.array([logp[j - 1, sequence[j]] for j in range(1, len(sequence))])


def direct_loglikelihood(model, context, continuation):
  lp = direct_logprobs(model, [START, *context, *continuation])
  return float(lp[len(context):].sum())


def make_requests(tiny_vocab):
  texts = [("The river watched", " the morning light before sunset."),
           ("", "A small bird painted a long letter."),
           ("Our teacher", " repaired"),
           ("The orchestra celebrated the village market with great care. My neighbour", " visited")]
  scorer = LoglikelihoodModel.__new__(LoglikelihoodModel)  # encode_pair needs only the vocabulary
  scorer.vocab = tiny_vocab
  return [scorer.encode_pair(c, x) for c, x in texts]


def test_matches_direct_forward_pass(model, tiny_vocab):
  requests = make_requests(tiny_vocab)
  assert max(len(c) + len(x) for c, x in requests) < 128  # one window each: full context
  scorer = LoglikelihoodModel(model, tiny_vocab, max_length=128, batch_size=4, show_progress=False)
  got = [ll for ll, _ in scorer.loglikelihood_tokens(requests)]
  want = [direct_loglikelihood(model, c, x) for c, x in requests]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_sum_of_per_token_logprobs_equals_whole_continuation(model, tiny_vocab):
  context, continuation = make_requests(tiny_vocab)[0]
  scorer = LoglikelihoodModel(model, tiny_vocab, max_length=128, batch_size=4, show_progress=False)
  whole = scorer.loglikelihood_tokens([(context, continuation)])[0][0]
  per_token = scorer.loglikelihood_tokens(
      [(context + continuation[:i], continuation[i:i + 1]) for i in range(len(continuation))])
  assert whole == pytest.approx(sum(ll for ll, _ in per_token), rel=1e-5, abs=1e-4)


def test_invariant_to_batch_size_order_and_padding(model, tiny_vocab):
  requests = make_requests(tiny_vocab)
  reference = LoglikelihoodModel(model, tiny_vocab, max_length=128, batch_size=1, show_progress=False)
  padded = LoglikelihoodModel(model, tiny_vocab, max_length=256, batch_size=3, show_progress=False)
  want = [ll for ll, _ in reference.loglikelihood_tokens(requests)]
  # Reversed order and a long neighbour change every row's batch mates and padded length.
  long_neighbour = (list(range(10, 200)), [12, 13])
  got = padded.loglikelihood_tokens([long_neighbour, *reversed(requests)])[1:]
  np.testing.assert_allclose([ll for ll, _ in reversed(got)], want, rtol=1e-5, atol=1e-4)


def test_rolling_windows_score_every_target_once_within_max_length():
  sequence = list(range(100, 141))  # 41 tokens, the first is the start token
  for first_target in (1, 5, 30, 40):
    windows = rolling_windows(sequence, first_target, max_length=8)
    scored = np.concatenate([w.targets[w.scored] for w in windows])
    np.testing.assert_array_equal(scored, sequence[first_target:])
    for w in windows:
      assert len(w.inputs) <= 8
      # Every input is followed by its target: targets are the inputs shifted by one.
      np.testing.assert_array_equal(w.targets[:-1], w.inputs[1:])


def test_long_sequence_windows_equal_direct_scoring_of_each_window(model, tiny_vocab):
  context, continuation = list(range(20, 30)), list(range(30, 60))
  max_length = 16
  scorer = LoglikelihoodModel(model, tiny_vocab, max_length=max_length, batch_size=4, show_progress=False)
  got = scorer.loglikelihood_tokens([(context, continuation)])[0][0]
  sequence = [START, *context, *continuation]
  want = 0.0
  for w in rolling_windows(sequence, 1 + len(context), max_length):
    lp = direct_logprobs(model, [*w.inputs, w.targets[-1]])
    want += lp[w.scored].sum()
  assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
  # With room for everything the same request is one window over the whole sequence.
  full = LoglikelihoodModel(model, tiny_vocab, max_length=128, batch_size=4, show_progress=False)
  assert full.loglikelihood_tokens([(context, continuation)])[0][0] == pytest.approx(
      direct_loglikelihood(model, context, continuation), rel=1e-5, abs=1e-4)


def test_greedy_flag(model, tiny_vocab):
  context = list(range(40, 50))
  logp = direct_logp(model, [START, *context])[-1]
  best, second = int(np.argmax(logp)), int(np.argsort(logp)[-2])
  best2 = int(np.argmax(direct_logp(model, [START, *context, best])[-1]))
  scorer = LoglikelihoodModel(model, tiny_vocab, max_length=128, batch_size=4, show_progress=False)
  flags = [g for _, g in scorer.loglikelihood_tokens(
      [(context, [best]), (context, [second]), (context, [best, best2]), (context, [best, (best2 + 1) % 300])])]
  assert flags == [True, False, True, False]


def test_text_requests_split_like_the_joint_encoding(model, tiny_vocab):
  scorer = LoglikelihoodModel(model, tiny_vocab, max_length=128, batch_size=4, show_progress=False)
  context, continuation = "The river watched", " the morning light"
  ctx_ids, cont_ids = scorer.encode_pair(context, continuation)
  assert ctx_ids + cont_ids == list(tiny_vocab.encode(context + continuation))
  assert cont_ids
  assert scorer.loglikelihood([(context, continuation)])[0][0] == pytest.approx(
      direct_loglikelihood(model, ctx_ids, cont_ids), rel=1e-5, abs=1e-4)
  with pytest.raises(ValueError, match="adds no tokens"):
    scorer.encode_pair("The river", "")


def test_mean_token_probability_matches_direct_softmax(model, tiny_vocab):
  texts = ["The river watched the morning light.", "A quiet farmer measured an ancient map in the spring."]
  tag = tiny_vocab.harm_tag_id
  scorer = LoglikelihoodModel(model, tiny_vocab, max_length=16, batch_size=4, show_progress=False)
  got = scorer.mean_token_probability(texts, tag)
  want = []
  for text in texts:
    sequence = [START, *tiny_vocab.encode(text)]
    # Windows of 16 see less context than the whole text: compute each window's positions directly.
    probs = []
    for w in rolling_windows(sequence, 1, 16):
      p = np.exp(direct_logp(model, list(w.inputs))[:, tag])
      probs += list(p[w.scored])
    assert len(probs) == len(sequence) - 1
    want.append(np.mean(probs))
  np.testing.assert_allclose(got, want, rtol=1e-5)
