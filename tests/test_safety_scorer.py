"""The scorer interface: max over windows, the max-ensemble, saving and loading."""

import json

import numpy as np
import pytest

from safejax.safety import scorer as scorer_lib
from safejax.safety.scorer import MaxEnsemble, WindowedScorer, load_scorer


def one_hot(score: int, confidence: float = 0.9) -> np.ndarray:
  p = np.full(6, (1 - confidence) / 5, np.float32)
  p[score] = confidence
  return p


class DigitScorer(WindowedScorer):
  """Windows are '|'-separated; a window's score is its first digit (0 if none)."""

  name = "digits"
  batch_size = 2  # several model calls per document batch

  def __init__(self):
    self.calls = []

  def windows(self, text):
    return text.split("|")

  def window_probs(self, windows):
    self.calls.append(len(windows))
    digits = [next((int(c) for c in w if c.isdigit()), 0) for w in windows]
    return np.stack([one_hot(min(d, 5), 0.5 + 0.05 * len(w)) for d, w in zip(digits, windows)])


def test_document_score_is_max_over_windows():
  s = DigitScorer()
  texts = ["1|4|2", "0", "", "5|5x", "3"]
  assert list(s.score(texts)) == [4, 0, 0, 5, 3]
  assert max(s.calls) <= 2 and sum(s.calls) == 8  # every window scored once, in small batches
  probs = s.score_probs(texts)
  assert probs.shape == (5, 6) and np.allclose(probs.sum(1), 1)
  # Two windows say 5: the one with the higher expected score (more confident) is kept.
  assert probs[3, 5] == pytest.approx(0.5 + 0.05 * 2)
  assert list(scorer_lib.decide(probs)) == list(s.score(texts))


def test_max_over_windows_needs_a_window_per_document():
  with pytest.raises(ValueError, match="at least one window"):
    scorer_lib.max_over_windows(np.stack([one_hot(1)]), np.array([0]), 2)


def test_max_over_windows_ties_break_on_expected_score():
  low, high = one_hot(2, 0.6), one_hot(2, 0.6)
  high[5], high[0] = high[5] + 0.05, high[0] - 0.05  # same argmax, higher expected score
  out = scorer_lib.max_over_windows(np.stack([low, high, one_hot(0)]), np.array([0, 0, 1]), 2)
  assert np.array_equal(out[0], high) and scorer_lib.decide(out)[1] == 0


class ConstantScorer:
  def __init__(self, score, name):
    self.value, self.name = score, name

  def score_probs(self, texts):
    return np.stack([one_hot(self.value)] * len(texts))

  def score(self, texts):
    return np.full(len(texts), self.value, np.int32)


def test_ensemble_takes_the_max_member():
  ensemble = MaxEnsemble([ConstantScorer(1, "a"), DigitScorer(), ConstantScorer(0, "c")])
  assert ensemble.name == "max(a, digits, c)"
  assert list(ensemble.score(["0", "4", "2|0"])) == [1, 4, 2]
  probs = ensemble.score_probs(["0", "4"])
  assert np.argmax(probs[1]) == 4 and np.allclose(probs[0], one_hot(1))
  assert isinstance(ensemble, scorer_lib.Scorer) and isinstance(DigitScorer(), scorer_lib.Scorer)
  with pytest.raises(ValueError):
    MaxEnsemble([])


def test_score_probs_rejects_a_bare_string():
  with pytest.raises(TypeError, match="sequence of texts"):
    DigitScorer().score_probs("1|2")


def test_load_scorer_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="scorer.json"):
    load_scorer(tmp_path)
  (tmp_path / "scorer.json").write_text(json.dumps({"kind": "magic", "format_version": 1, "config": {}}))
  with pytest.raises(ValueError, match="unknown scorer kind 'magic'"):
    load_scorer(tmp_path)
  with pytest.raises(ValueError, match="not 'ngram'"):
    scorer_lib.read_scorer_json(tmp_path, "ngram")


def test_unsaveable_member_is_refused(tmp_path):
  with pytest.raises(TypeError, match="cannot be saved"):
    MaxEnsemble([ConstantScorer(0, "c")]).save(tmp_path)


def test_decision_rule_argmax_and_thresholds():
  probs = np.array([[0.4, 0.0, 0.0, 0.3, 0.3, 0.0],    # P(>=1) 0.6, P(>=3) 0.6, P(>=4) 0.3
                    [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)
  assert list(scorer_lib.ARGMAX.decide(probs)) == [0, 0, 5]
  median = scorer_lib.DecisionRule((0.5,) * 5)
  assert list(median.decide(probs)) == [3, 0, 5]
  strict_3 = scorer_lib.DecisionRule((0.05, 0.5, 0.7, 0.7, 0.7))
  assert list(strict_3.decide(probs)) == [2, 1, 5]  # P(>=2) = 0.6 >= 0.5 but P(>=3) < 0.7
  # The highest level reached counts, even where thresholds decrease.
  assert list(scorer_lib.DecisionRule((0.9, 0.9, 0.9, 0.25, 0.9)).decide(probs)) == [4, 0, 5]
  assert median.decide(probs[0]).shape == ()


@pytest.mark.parametrize("thresholds", [(0.5,) * 4, (0.0, 0.5, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5, 1.5)])
def test_decision_rule_rejects_bad_thresholds(thresholds):
  with pytest.raises(ValueError, match="5 numbers in \\(0, 1\\]"):
    scorer_lib.DecisionRule(thresholds)


def test_decision_rule_json_roundtrip():
  rule = scorer_lib.DecisionRule((0.1, 0.5, 0.9, 0.9, 0.95))
  assert scorer_lib.DecisionRule.from_json(json.loads(json.dumps(rule.to_json()))) == rule
  assert scorer_lib.DecisionRule.from_json(scorer_lib.ARGMAX.to_json()) == scorer_lib.ARGMAX
  assert scorer_lib.DecisionRule.from_json(None) == scorer_lib.ARGMAX  # saved before rules existed


def test_windows_rank_by_the_scorers_rule():
  s = DigitScorer()
  s.decision_rule = scorer_lib.DecisionRule((0.05, 0.5, 0.5, 0.5, 0.5))  # any tail >= 0.05 is >= 1
  # "0" windows are one-hot 0 at confidence 0.55 (tail 0.09 per level): score 1 under this rule.
  assert list(s.score(["0", "2|0000000", "0|5"])) == [1, 2, 5]
  scores, probs = s.score_and_probs(["0", "2|0000000"])
  assert list(scores) == list(s.decision_rule.decide(probs)) == [1, 2]
  assert list(scorer_lib.ARGMAX.decide(probs)) == [0, 2]


def test_ensemble_members_decide_by_their_own_rules():
  eager = DigitScorer()
  eager.decision_rule = scorer_lib.DecisionRule((0.05, 0.5, 0.5, 0.5, 0.5))
  ensemble = MaxEnsemble([DigitScorer(), eager])
  scores, probs = ensemble.score_and_probs(["0", "3"])
  assert list(scores) == [1, 3] and list(ensemble.score(["0", "3"])) == [1, 3]
  assert np.allclose(probs[0], eager.score_probs(["0"])[0])  # the row of the member that decided


class SetAsideScorer:
  """Like the LLM annotator: NaN rows where no valid answer came back."""

  name = "set-aside"

  def score_probs(self, texts):
    return np.stack([one_hot(2) if t else np.full(6, np.nan, np.float32) for t in texts])

  def score(self, texts):
    return np.array([2 if t else -1 for t in texts], np.int32)


def test_scores_and_probs_of_plain_scorers_and_set_aside_answers():
  scores, probs = scorer_lib.scores_and_probs(SetAsideScorer(), ["a", ""])
  assert list(scores) == [2, -1] and np.isnan(probs[1]).all()
  ensemble = MaxEnsemble([SetAsideScorer(), ConstantScorer(1, "c")])
  assert list(ensemble.score(["a", ""])) == [2, 1]
  assert list(MaxEnsemble([SetAsideScorer()]).score([""])) == [-1]


def test_tail_probs():
  tails = scorer_lib.tail_probs(np.array([0.1, 0.2, 0.3, 0.0, 0.4, 0.0], np.float32))
  assert np.allclose(tails, [1.0, 0.9, 0.7, 0.4, 0.4, 0.0])
