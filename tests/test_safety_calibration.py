"""Calibrated decision thresholds: the search, its targets and fallbacks, windows, the ensemble."""

import numpy as np
import pytest

from safejax.safety import calibration, metrics
from safejax.safety.calibration import CalibrationConfig, DocumentWindows, LevelTarget, choose_level, derive_rule
from safejax.safety.labelled import Example
from safejax.safety.scorer import ARGMAX, DecisionRule, MaxEnsemble, WindowedScorer, tail_probs


def row(at_1: float, at_3: float) -> np.ndarray:
  """A probability row with P(score >= 1) = at_1 and P(score >= 3) = at_3 (mass on 0, 1 and 3)."""
  return np.array([1 - at_1, at_1 - at_3, 0, at_3, 0, 0], np.float32)


class TailScorer(WindowedScorer):
  """Windows are '|'-separated "a,b" pairs: the window's P(>=1) = a and P(>=3) = b."""

  batch_size = 4

  def __init__(self, name="tails", swap=False):
    self.name, self.swap = name, swap

  def windows(self, text):
    return text.split("|")

  def window_probs(self, windows):
    pairs = [tuple(map(float, w.split(","))) for w in windows]
    return np.stack([row(*(p[::-1] if self.swap and p[0] == p[1] else p)) for p in pairs])


def tails_of(at_3: np.ndarray) -> np.ndarray:
  """[n, 6] document tails with the given P(>=3) (and the same P(>=1))."""
  return tail_probs(np.stack([row(t, t) for t in at_3]))


def best_f1_flags(stat, positive, min_recall, min_precision):
  """Brute force over every distinct value: the flags of the F1-best threshold meeting both targets."""
  best = (-1.0, None)
  for t in np.unique(stat):
    m = metrics.threshold_metrics(positive.astype(int), (stat >= t).astype(int), 1)
    if m["recall"] >= min_recall and m["precision"] >= min_precision:
      f1 = 2 * m["recall"] * m["precision"] / (m["recall"] + m["precision"])
      best = max(best, (f1, float(t)))
  return stat >= best[1]


def toy_level_data(seed=0, n=200):
  rng = np.random.default_rng(seed)
  truth = np.r_[np.zeros(n // 2, int), np.full(n // 2, 3)]
  at_3 = np.r_[rng.uniform(0.0, 0.6, n // 2), rng.uniform(0.3, 1.0, n // 2)].astype(np.float32)
  return truth, tails_of(at_3)


def test_single_scorer_gets_the_f1_best_threshold_that_meets_the_targets():
  truth, tails = toy_level_data()
  target = LevelTarget(level=3, min_recall=0.8, min_precision=0.6)
  result = choose_level([tails], [np.zeros((0, 6), np.float32)], truth, target, candidates=1000)
  assert result.outcome == "targets met" and result.recall >= 0.8 and result.precision >= 0.6
  flagged = tails[:, 3] >= result.thresholds[0]
  assert np.array_equal(flagged, best_f1_flags(tails[:, 3], truth >= 3, 0.8, 0.6))
  assert result.recall == pytest.approx(flagged[truth >= 3].mean())


def test_threshold_sits_between_the_validation_examples():
  truth = np.r_[np.zeros(20, int), np.full(20, 3)]
  tails = tails_of(np.r_[np.linspace(0.0, 0.3, 20), np.linspace(0.7, 1.0, 20)].astype(np.float32))
  result = choose_level([tails], [np.zeros((0, 6))], truth, LevelTarget(3, 0.8, 0.6), candidates=1000)
  assert result.recall == result.precision == 1.0 and result.thresholds[0] == pytest.approx(0.5)


def test_clean_document_budget_raises_the_threshold():
  truth, tails = toy_level_data()
  clean = tails_of(np.r_[np.full(95, 0.1), [0.95, 0.9, 0.85, 0.8, 0.75]].astype(np.float32))
  free = choose_level([tails], [clean], truth, LevelTarget(3, 0.5, 0.5), candidates=1000)
  held = choose_level([tails], [clean], truth, LevelTarget(3, 0.5, 0.5, max_clean_fpr=0.02), candidates=1000)
  assert free.clean_fpr > 0.02 and held.clean_fpr <= 0.02
  assert held.thresholds[0] > 0.85 and held.recall < free.recall


def test_fallbacks_keep_recall_first():
  truth, tails = toy_level_data()
  stat, positive = tails[:, 3], truth >= 3
  short_precision = choose_level([tails], [np.zeros((0, 6))], truth, LevelTarget(3, 0.9, 0.999), candidates=1000)
  assert short_precision.outcome == "recall target kept, precision short" and short_precision.recall >= 0.9
  # The most precise threshold that keeps recall >= 0.9.
  best = max(metrics.threshold_metrics(positive, stat >= t, 1)["precision"] for t in np.unique(stat)
             if metrics.threshold_metrics(positive, stat >= t, 1)["recall"] >= 0.9)
  assert short_precision.precision == pytest.approx(best)
  clean = tails_of(np.full(10, 0.5, np.float32))  # any threshold <= 0.5 flags every clean document
  short_recall = choose_level([tails], [clean], truth, LevelTarget(3, 0.99, 0.5, max_clean_fpr=0.0),
                              candidates=1000)
  assert short_recall.outcome == "recall short" and short_recall.clean_fpr == 0.0
  assert short_recall.thresholds[0] > 0.5 and short_recall.recall == pytest.approx(positive[stat > 0.5].sum() / 100)


def test_ensemble_search_combines_complementary_members():
  truth = np.r_[np.zeros(50, int), np.full(50, 3)]
  a = np.r_[np.full(50, 0.2), np.full(25, 0.9), np.full(25, 0.1)].astype(np.float32)  # finds half
  b = np.r_[np.full(50, 0.3), np.full(25, 0.2), np.full(25, 0.8)].astype(np.float32)  # the other half
  empty = np.zeros((0, 6), np.float32)
  target = LevelTarget(3, 0.9, 0.9)
  alone = choose_level([tails_of(a)], [empty], truth, target)
  assert alone.outcome != "targets met"
  both = choose_level([tails_of(a), tails_of(b)], [empty, empty], truth, target)
  assert both.outcome == "targets met" and both.recall == 1.0 and both.precision == 1.0
  assert 0.2 < both.thresholds[0] <= 0.9 + 1e-6 and 0.3 < both.thresholds[1] <= 0.8 + 1e-6


def test_documents_flagged_by_higher_levels_count():
  truth, tails = toy_level_data()
  above = truth >= 3  # a higher level already flags every positive
  result = choose_level([tails], [np.zeros((0, 6))], truth, LevelTarget(1, 0.8, 0.9), flagged_above=above,
                        candidates=1000)
  assert result.recall == 1.0 and result.precision == 1.0  # nothing else needs flagging


def test_target_without_positives_is_an_error():
  with pytest.raises(ValueError, match="no validation example of score >= 3"):
    choose_level([tails_of(np.zeros(4, np.float32))], [np.zeros((0, 6))], np.zeros(4, int), LevelTarget(3, 0.8, 0.6))


def test_derive_rule_fills_the_other_levels():
  assert derive_rule({1: 0.2, 3: 0.9}) == DecisionRule((0.2, 0.5, 0.9, 0.9, 0.9))
  assert derive_rule({1: 0.7, 3: 0.3}) == DecisionRule((0.7, 0.7, 0.3, 0.5, 0.5))
  assert derive_rule({}) == DecisionRule((0.5,) * 5)


def test_configs_validate_and_order_levels_from_the_top():
  config = CalibrationConfig(targets=(LevelTarget(1, 0.8, 0.7), LevelTarget(4, 0.5, 0.5)))
  assert [t.level for t in config.targets] == [4, 1]
  with pytest.raises(ValueError, match="one target per level"):
    CalibrationConfig(targets=(LevelTarget(1, 0.8, 0.7), LevelTarget(1, 0.5, 0.5)))
  with pytest.raises(ValueError, match="level must be in 1..5"):
    LevelTarget(0, 0.8, 0.7)
  with pytest.raises(ValueError, match="min_precision must be in"):
    LevelTarget(1, 0.8, 1.5)


def test_document_windows_tails_and_scores_are_maxima_over_windows():
  s = TailScorer()
  texts = ["0.1,0.0|0.9,0.2", "0.6,0.55", "0.2,0.1|0.3,0.3|0.1,0.0"]
  windows = DocumentWindows.of(s, texts)
  tails = windows.tails()
  assert np.allclose(tails[:, 1], [0.9, 0.6, 0.3]) and np.allclose(tails[:, 3], [0.2, 0.55, 0.3])
  rule = DecisionRule((0.25, 0.5, 0.25, 0.5, 0.5))
  s.decision_rule = rule
  assert list(windows.scores(rule)) == list(s.score(texts)) == [1, 3, 3]
  assert list(windows.scores(ARGMAX)) == [1, 3, 0]
  monotone = DecisionRule((0.25, 0.4, 0.4, 0.5, 0.5))  # non-decreasing: score >= k iff tail >= t_k
  scores = windows.scores(monotone)
  for k, t in zip(range(1, 6), monotone.thresholds):
    assert np.array_equal(scores >= k, tails[:, k] >= t)


def labelled_toy(seed=0):
  """Validation examples (one or two windows) from two sources, and long clean documents whose
  windows sometimes look unsafe to the scorer (each window alone at 0.6)."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(120):
    score = [0, 1, 3, 4][i % 4]
    level = {0: 0.35, 1: 0.55, 3: 0.8, 4: 0.9}[score] + rng.uniform(-0.3, 0.1)
    text = f"{level:.3f},{level if score >= 3 else level / 3:.3f}"
    examples.append(Example(text, score, "forum" if i % 3 else "chat", str(score), f"g{i}"))
  clean = [Example("|".join(["0.05,0.01"] * 20 + (["0.6,0.6"] if i % 10 == 0 else [])), 0, "wiki", "clean", f"w{i}")
           for i in range(50)]
  return examples, clean


def test_calibrate_sets_rules_that_reproduce_the_report(tmp_path):
  examples, clean = labelled_toy()
  config = CalibrationConfig(targets=(LevelTarget(3, 0.7, 0.6, max_clean_fpr=0.05),
                                      LevelTarget(1, 0.8, 0.7, sources=("forum",))))
  ensemble = MaxEnsemble([TailScorer("a"), TailScorer("b", swap=True)])
  report, curves = calibration.calibrate(ensemble, examples, clean, config)
  assert [level["level"] for level in report["levels"]] == [3, 1]
  level_3 = report["levels"][0]
  assert level_3["clean_fpr"] <= 0.05 and all(t > 0.6 for t in level_3["thresholds"])  # above clean windows
  # The members now decide by the chosen rules: the report's numbers are the ensemble's own.
  assert all(m.decision_rule != ARGMAX for m in ensemble.scorers)
  truth = np.array([e.score for e in examples])
  scores = ensemble.score([e.text for e in examples])
  calibrated = report["validation"]["calibrated"]
  assert calibrated["all"] == metrics.report(truth, scores)
  forum = np.array([e.source == "forum" for e in examples])
  assert calibrated["forum"] == metrics.report(truth[forum], scores[forum])
  assert calibrated["clean_fpr"]["at_3"] == np.mean(ensemble.score([e.text for e in clean]) >= 3)
  assert report["levels"][1]["recall"] == calibrated["forum"]["at_1"]["recall"]
  # Argmax flags every clean document that has an unsafe-looking window.
  assert report["validation"]["argmax"]["clean_fpr"]["at_3"] == pytest.approx(0.1)
  assert set(report["rules"]) == {"0:a", "1:b"}
  table = calibration.report_table(report)
  assert "| >= 3 | all |" in table and "| >= 1 | forum |" in table and "| calibrated |" in table
  calibration.plot_calibration(report, curves, tmp_path / "curves.png")
  assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_calibrate_refuses_members_without_rules():
  class Fixed:
    name = "fixed"

    def score_probs(self, texts):
      return np.tile(row(0.0, 0.0), (len(texts), 1))

    def score(self, texts):
      return np.zeros(len(texts), np.int32)

  examples, clean = labelled_toy()
  with pytest.raises(TypeError, match="'fixed' has no decision rule"):
    calibration.calibrate(MaxEnsemble([TailScorer(), Fixed()]), examples, clean)


def test_level_options_start_with_the_best_and_keep_its_outcome():
  truth, tails = toy_level_data()
  target = LevelTarget(3, 0.8, 0.6)
  options = calibration.level_options([tails], [np.zeros((0, 6))], truth, target, candidates=1000, count=10)
  assert options[0] == choose_level([tails], [np.zeros((0, 6))], truth, target, candidates=1000)
  assert len(options) == 10 and [o.rank for o in options] == sorted({o.rank for o in options})
  assert all(o.outcome == "targets met" and o.recall >= 0.8 and o.precision >= 0.6 for o in options)
  f1 = [2 * o.recall * o.precision / (o.recall + o.precision) for o in options]
  assert f1 == sorted(f1, reverse=True) and f1[0] > f1[-1]


def lookahead_toy():
  """Level 3's F1-best threshold (0.5) also flags the ten 'chat' negatives at 0.5, which caps the
  'chat' precision at level 1 at 0.5; the next threshold (0.7) still meets level 3's targets."""
  values = [("forum", 0, 0.1)] * 100 + [("forum", 3, 0.9)] * 90 + [("forum", 3, 0.5)] * 10 \
      + [("chat", 0, 0.5)] * 10 + [("chat", 3, 0.9)] * 10
  return [Example(f"{v},{v}", score, source, str(score), f"g{i}") for i, (source, score, v) in enumerate(values)]


def test_a_level_gives_way_so_that_the_level_below_meets_its_targets():
  examples = lookahead_toy()
  targets = (LevelTarget(3, 0.8, 0.6), LevelTarget(1, 0.8, 0.7, sources=("chat",)))
  greedy, _ = calibration.calibrate(TailScorer(), examples, [], CalibrationConfig(targets, lookahead=1))
  assert greedy["levels"][0]["thresholds"][0] <= 0.5 and greedy["levels"][0]["rank"] == 0
  assert greedy["levels"][1]["outcome"] == "recall target kept, precision short"
  assert greedy["levels"][1]["precision"] == pytest.approx(0.5)
  scorer = TailScorer()
  ahead, _ = calibration.calibrate(scorer, examples, [], CalibrationConfig(targets))
  level_3, level_1 = ahead["levels"]
  assert level_3["outcome"] == level_1["outcome"] == "targets met" and level_3["rank"] > 0
  assert 0.5 < level_3["thresholds"][0] <= 0.9 and level_3["recall"] == pytest.approx(100 / 110)
  assert level_1["recall"] == level_1["precision"] == 1.0
  chat = [e for e in examples if e.source == "chat"]
  assert list(scorer.score([e.text for e in chat])) == [0] * 10 + [3] * 10
  assert f"| targets met | {level_3['rank']} |" in calibration.report_table(ahead)
  with pytest.raises(ValueError, match="lookahead must be >= 1"):
    CalibrationConfig(targets, lookahead=0)
