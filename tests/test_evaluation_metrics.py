"""Metric values on fixtures with known answers."""

import math

import pytest

from safejax import stats
from safejax.evaluation import metrics
from safejax.evaluation.judges import JudgeVerdict


def wilson_closed_form(k, n, z=1.959963984540054):
  p = k / n
  center = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return center - half, center + half


@pytest.mark.parametrize("k,n,low,high", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0)])
def test_wilson_interval_textbook_values(k, n, low, high):
  got = stats.wilson_interval(k, n)
  assert got == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize("k,n", [(1, 3), (43, 100), (7, 450), (299, 300)])
def test_wilson_interval_closed_form(k, n):
  assert stats.wilson_interval(k, n) == pytest.approx(wilson_closed_form(k, n), abs=1e-9)


def test_wilson_interval_rejects_bad_counts():
  with pytest.raises(ValueError, match="n > 0"):
    stats.wilson_interval(0, 0)
  with pytest.raises(ValueError, match="0 <= k <= n"):
    stats.wilson_interval(4, 3)


def test_proportion_string_and_dict():
  p = stats.proportion(5, 10)
  assert str(p) == "50.0 [23.7, 76.3]"
  assert p.to_dict()["rate"] == 0.5 and p.to_dict()["n"] == 10


def test_cohen_kappa_known_values():
  # p_o = 0.75, p_e = 0.5 * 0.25 + 0.5 * 0.75 = 0.5 -> kappa = 0.5.
  assert stats.cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)
  assert stats.cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
  assert stats.cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # one class, full agreement


def test_agreement_confusion_and_rates():
  labels = [True, True, True, False, False, False, False, False]
  predictions = [True, True, False, True, False, False, False, False]
  a = stats.agreement(labels, predictions)
  assert a["confusion"] == {"tp": 2, "fp": 1, "tn": 4, "fn": 1}
  assert a["accuracy"]["rate"] == pytest.approx(6 / 8)
  assert a["precision"] == pytest.approx(2 / 3) and a["recall"] == pytest.approx(2 / 3)
  # p_o = 0.75; p_e = (3/8)(3/8) + (5/8)(5/8) = 34/64 -> kappa = (0.75 - 34/64) / (1 - 34/64).
  assert a["kappa"] == pytest.approx((0.75 - 34 / 64) / (1 - 34 / 64))


def test_auroc_known_value():
  # Pairs (neg, pos): (0.1, 0.35) ok, (0.1, 0.8) ok, (0.4, 0.35) wrong, (0.4, 0.8) ok -> 3/4.
  assert stats.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="both positive and negative"):
    stats.auroc([1, 1], [0.2, 0.3])


def _v(harmful=None, refused=None):
  return JudgeVerdict(harmful=harmful, refused=refused, reason="")


def test_attack_success_rate_overall_and_per_category():
  verdicts = [_v(refused=False), _v(refused=True), _v(refused=False),   # a: 2 of 3 succeed
              _v(harmful=True, refused=True),                            # b: harmfulness wins
              _v(harmful=False), _v()]                                   # c: 0 of 1, 1 undecided
  categories = ["a", "a", "a", "b", "c", "c"]
  report = metrics.attack_success_rate(verdicts, categories)
  assert (report.overall.k, report.overall.n, report.undecided) == (3, 5, 1)
  assert {c: (p.k, p.n) for c, p in report.per_category.items()} == {"a": (2, 3), "b": (1, 1), "c": (0, 1)}
  assert report.per_category["a"].low == pytest.approx(stats.wilson_interval(2, 3)[0])


def test_refusal_rate_counts_refusals_and_sets_aside_unrated():
  report = metrics.refusal_rate([_v(refused=True), _v(refused=False), _v(refused=False), _v(harmful=True)])
  assert (report.overall.k, report.overall.n, report.undecided) == (1, 3, 1)
  assert report.per_category == {}
  with pytest.raises(ValueError, match="categories"):
    metrics.refusal_rate([_v(refused=True)], ["a", "b"])
