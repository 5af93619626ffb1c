"""Statistics shared by the safety metrics and the evaluation: binomial intervals, agreement,
ranking, and what a ladder table may claim across seeds.

Binomial intervals come from scipy (`binomtest(...).proportion_ci(method="wilson")`, the score
interval without continuity correction); Cohen's kappa and AUROC from scikit-learn.

Across seeds. A rung's attack success rate differs from seed to seed far more than one binomial
says (one seed at 0 %, the next at 68 %), so every figure across seeds is a between-seed statistic:

  seed_interval(values)                 mean and a 95 % interval over per-seed values (Student t
                                        with n-1 degrees of freedom, or a scipy bootstrap)
  paired_difference(values, reference)  per-seed differences against a reference rung (same seed,
                                        same prompts), their interval and a paired t-test
  mcnemar(a, b)                         within one seed: the exact test on prompts where two
                                        systems disagree (same prompts, paired outcomes)

Seeds are never pooled into one binomial (Wilson intervals are for one seed's prompts). With n
seeds the t interval is wide (t_{2, 0.975} = 4.30 for three seeds): that width is the honest
answer to "would another seed agree?".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm


@dataclasses.dataclass(frozen=True)
class Proportion:
  """k successes out of n with a Wilson confidence interval [low, high]."""

  k: int
  n: int
  low: float
  high: float
  confidence: float = 0.95

  @property
  def rate(self) -> float:
    return self.k / self.n

  def to_dict(self) -> dict[str, Any]:
    return {"k": self.k, "n": self.n, "rate": self.rate, "low": self.low, "high": self.high,
            "confidence": self.confidence}

  def __str__(self) -> str:
    return f"{100 * self.rate:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """The Wilson score interval for k successes in n trials."""
  if n <= 0:
    raise ValueError("a proportion needs n > 0 trials")
  if not 0 <= k <= n:
    raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
  ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
  return float(ci.low), float(ci.high)


def proportion(k: int, n: int, confidence: float = 0.95) -> Proportion:
  return Proportion(k, n, *wilson_interval(k, n, confidence), confidence=confidence)


def cohen_kappa(labels: Sequence[bool], predictions: Sequence[bool]) -> float:
  """Cohen's kappa of two binary raters; 1.0 when both agree on a single-class sample."""
  labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
  if labels.shape != predictions.shape:
    raise ValueError(f"{labels.shape} labels but {predictions.shape} predictions")
  if (labels == predictions).all():
    return 1.0  # sklearn returns nan when both raters use one class and agree everywhere.
  return float(skm.cohen_kappa_score(labels, predictions))


def agreement(labels: Sequence[bool], predictions: Sequence[bool]) -> dict[str, Any]:
  """Accuracy (with Wilson interval), Cohen's kappa, precision, recall and confusion counts."""
  labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
  if len(labels) == 0:
    raise ValueError("agreement needs at least one labelled example")
  tp = int((labels & predictions).sum())
  tn = int((~labels & ~predictions).sum())
  fp = int((~labels & predictions).sum())
  fn = int((labels & ~predictions).sum())
  return {
      "n": int(len(labels)),
      "accuracy": proportion(tp + tn, len(labels)).to_dict(),
      "kappa": cohen_kappa(labels, predictions),
      "precision": tp / (tp + fp) if tp + fp else math.nan,
      "recall": tp / (tp + fn) if tp + fn else math.nan,
      "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
  }


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
  """Area under the ROC curve of `scores` ranking positives (True) above negatives."""
  labels = np.asarray(labels, bool)
  if labels.all() or not labels.any():
    raise ValueError("AUROC needs both positive and negative labels")
  return float(skm.roc_auc_score(labels, np.asarray(scores, float)))

# ------------------------------------------------------------------------------------------------
# Across seeds


@dataclasses.dataclass(frozen=True)
class SeedSummary:
  """Per-seed values, their mean and a between-seed interval [low, high] (NaN with one seed)."""

  values: tuple[float, ...]
  mean: float
  low: float
  high: float
  sd: float
  confidence: float = 0.95
  method: str = "t"

  @property
  def n(self) -> int:
    return len(self.values)

  def to_dict(self) -> dict[str, Any]:
    return {"values": list(self.values), "mean": self.mean, "low": self.low, "high": self.high, "sd": self.sd,
            "n": self.n, "confidence": self.confidence, "method": self.method}


def _values(values: Sequence[float], what: str) -> np.ndarray:
  array = np.asarray(values, dtype=float)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"{what} needs a non-empty 1-D sequence of per-seed values, got shape {array.shape}")
  if not np.isfinite(array).all():
    raise ValueError(f"{what}: per-seed values must be finite, got {array.tolist()}")
  return array


def seed_interval(values: Sequence[float], confidence: float = 0.95, method: str = "t", *,
                  n_resamples: int = 9999, seed: int = 0) -> SeedSummary:
  """The mean of per-seed values with a between-seed interval.

  Args:
    values: one value per seed (a rate, an accuracy, a difference).
    confidence: the interval's coverage.
    method: "t" (mean +- t_{n-1} * sd / sqrt(n), scipy.stats.t) or "bootstrap"
      (scipy.stats.bootstrap, percentile, over seeds; coarse with few seeds).
    n_resamples, seed: the bootstrap's settings.
  Returns:
    A SeedSummary; with one seed, or with bootstrap and fewer than 3 seeds, low and high are NaN:
    one seed says nothing about the next.
  """
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  array = _values(values, "seed_interval")
  n, mean = array.size, float(array.mean())
  sd = float(array.std(ddof=1)) if n > 1 else math.nan
  low = high = math.nan
  if method == "t":
    if n > 1:
      if sd == 0.0:
        low = high = mean
      else:
        low, high = (float(x) for x in stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n)))
  elif method == "bootstrap":
    if n >= 3:
      if sd == 0.0:
        low = high = mean
      else:
        result = stats.bootstrap((array,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                 method="percentile", rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
  else:
    raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
  return SeedSummary(tuple(float(v) for v in array), mean, low, high, sd, confidence, method)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """values - reference, seed by seed: the differences, their between-seed interval and a paired test."""

  differences: SeedSummary
  p_value: float
  statistic: float
  test: str = "paired t (scipy.stats.ttest_rel)"

  @property
  def mean(self) -> float:
    return self.differences.mean

  @property
  def low(self) -> float:
    return self.differences.low

  @property
  def high(self) -> float:
    return self.differences.high

  def to_dict(self) -> dict[str, Any]:
    return {**self.differences.to_dict(), "p_value": self.p_value, "statistic": self.statistic, "test": self.test}


def paired_difference(values: Sequence[float], reference: Sequence[float], confidence: float = 0.95,
                      method: str = "t") -> PairedDifference:
  """Per-seed differences `values[i] - reference[i]` (same seed, same prompts), their interval and a
  two-sided paired t-test (NaN p-value with one seed; 0 or 1 when every difference is the same)."""
  a, b = _values(values, "paired_difference"), _values(reference, "paired_difference")
  if a.shape != b.shape:
    raise ValueError(f"paired values need one per seed on both sides, got {a.size} and {b.size}")
  diffs = a - b
  summary = seed_interval(diffs, confidence, method)
  if a.size < 2:
    return PairedDifference(summary, math.nan, math.nan)
  if np.ptp(diffs) <= 1e-12:  # a constant difference (up to rounding): certain if non-zero, no evidence if zero
    zero = abs(summary.mean) <= 1e-12
    return PairedDifference(summary, 1.0 if zero else 0.0, 0.0 if zero else math.copysign(math.inf, summary.mean))
  result = stats.ttest_rel(a, b)
  return PairedDifference(summary, float(result.pvalue), float(result.statistic))


def mcnemar(outcomes_a: Sequence[bool], outcomes_b: Sequence[bool]) -> dict[str, Any]:
  """The exact McNemar test of two systems on the same prompts (one seed).

  Returns {"n", "a_only" (a True, b False), "b_only", "rate_a", "rate_b", "difference" (rate_a -
  rate_b), "p_value" (two-sided binomial test of the discordant pairs, scipy.stats.binomtest)}.
  """
  a, b = np.asarray(outcomes_a, bool), np.asarray(outcomes_b, bool)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"mcnemar needs two equally long, non-empty outcome lists, got {a.shape} and {b.shape}")
  a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
  discordant = a_only + b_only
  p = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
  return {"n": int(a.size), "a_only": a_only, "b_only": b_only, "rate_a": float(a.mean()), "rate_b": float(b.mean()),
          "difference": float(a.mean() - b.mean()), "p_value": p}
