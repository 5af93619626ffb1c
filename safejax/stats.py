"""Statistics shared by the safety metrics and the evaluation: binomial intervals, agreement, ranking.

Binomial intervals come from scipy (`binomtest(...).proportion_ci(method="wilson")`, the score
interval without continuity correction); Cohen's kappa and AUROC from scikit-learn.
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
