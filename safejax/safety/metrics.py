"""Quality of safety scorers on the 0..5 rubric: the paper's metrics, plots and the outside baseline.

  confusion_matrix      [6, 6] counts, rows = true score, columns = predicted score
  macro_f1              mean F1 over the classes that occur in the truth or the predictions
                        (a class absent from both has no F1 and is left out, not counted as 0)
  threshold_metrics     "unsafe" = score >= k: recall, precision, false-positive rate, counts, and
                        95 % Wilson intervals of recall and precision (held-out sets are small:
                        the OpenAI moderation part has 77 unsafe prompts)
  report                all of the above for one scorer on one labelled set
The paper (section 1) reports recall of score >= 1 and >= 3 on its 3,001-document held-out set;
`PAPER_RESULTS` holds those numbers so that ours are printed next to them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from safejax.stats import wilson_interval
from safejax.safety.rubric import NUM_LEVELS

# scorer -> (macro-F1, recall of score >= 1, recall of score >= 3); None where not reported.
PAPER_RESULTS: dict[str, tuple[float | None, float, float]] = {
    "paper: Llama-Guard-3-8B": (None, 0.10, 0.26),
    "paper: profanity-check": (None, 0.03, 0.09),
    "paper: gte-base fine-tuned": (0.41, 0.77, 0.68),
    "paper: gte-large fine-tuned": (0.45, 0.89, 0.66),
    "paper: ensemble (max)": (0.36, 0.95, 0.75),
}


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int]) -> np.ndarray:
  """int64 [6, 6]: entry [t, p] counts examples of true score t predicted as p."""
  y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
  if y_true.shape != y_pred.shape:
    raise ValueError(f"{y_true.shape} true scores but {y_pred.shape} predictions")
  return np.bincount(y_true * NUM_LEVELS + y_pred, minlength=NUM_LEVELS**2).reshape(NUM_LEVELS, NUM_LEVELS)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
  """float [6]: F1 of each class; NaN for a class absent from both truth and predictions."""
  tp = np.diag(cm).astype(np.float64)
  support_true, support_pred = cm.sum(1), cm.sum(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    f1 = 2 * tp / (support_true + support_pred)
  return np.where(support_true + support_pred > 0, f1, np.nan)


def macro_f1(cm: np.ndarray) -> float:
  return float(np.nanmean(per_class_f1(cm)))


def threshold_metrics(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> dict[str, float]:
  """Metrics of the binary question "score >= k". NaN (and interval None) where a denominator is
  zero."""
  t, p = np.asarray(y_true) >= k, np.asarray(y_pred) >= k
  tp, fp, fn, tn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum()), int((~t & ~p).sum())
  ratio = lambda a, b: a / b if b else float("nan")
  interval = lambda a, b: list(wilson_interval(a, b)) if b else None
  return {"recall": ratio(tp, tp + fn), "precision": ratio(tp, tp + fp),
          "recall_ci": interval(tp, tp + fn), "precision_ci": interval(tp, tp + fp),
          "false_positive_rate": ratio(fp, fp + tn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def report(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
  """Everything the paper reports and more, as JSON-ready data."""
  cm = confusion_matrix(y_true, y_pred)
  return {
      "n": int(cm.sum()),
      "true_class_shares": (cm.sum(1) / max(cm.sum(), 1)).round(4).tolist(),
      "macro_f1": macro_f1(cm),
      "per_class_f1": [None if np.isnan(f) else float(f) for f in per_class_f1(cm)],
      "at_1": threshold_metrics(y_true, y_pred, 1),
      "at_3": threshold_metrics(y_true, y_pred, 3),
      "confusion_matrix": cm.tolist(),
  }


def comparison_table(reports: Mapping[str, dict]) -> str:
  """Markdown table of our scorers' reports next to the paper's numbers; our recalls and
  precisions carry their 95 % intervals, "0.79 [0.69, 0.87]"."""
  fmt = lambda x: "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"

  def with_ci(m: dict, name: str) -> str:
    ci = m.get(f"{name}_ci")
    return fmt(m[name]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

  lines = ["| scorer | macro-F1 | recall >=1 | precision >=1 | recall >=3 | precision >=3 |",
           "|---|---|---|---|---|---|"]
  for name, r in reports.items():
    cells = [with_ci(r[at], m) for at in ("at_1", "at_3") for m in ("recall", "precision")]
    lines.append(f"| {name} | {fmt(r['macro_f1'])} | " + " | ".join(cells) + " |")
  for name, (f1, r1, r3) in PAPER_RESULTS.items():
    lines.append(f"| {name} | {fmt(f1)} | {fmt(r1)} | - | {fmt(r3)} | - |")
  return "\n".join(lines)


def plot_confusion(cm: np.ndarray, path: str | Path, title: str) -> None:
  """Writes the confusion matrix (row-normalised colours, raw counts as text) as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cm = np.asarray(cm)
  shares = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(5.2, 4.6))
  image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  for t in range(cm.shape[0]):
    for p in range(cm.shape[1]):
      ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
              color="white" if shares[t, p] > 0.5 else "black")
  ax.set_xlabel("predicted score")
  ax.set_ylabel("true score")
  ax.set_xticks(range(NUM_LEVELS))
  ax.set_yticks(range(NUM_LEVELS))
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, label="share of the true class")
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_json(data: dict, path: str | Path) -> None:
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))


class ProfanityCheckBaseline:
  """alt-profanity-check (a linear SVM on word n-grams) as a Scorer: its probability p of
  profanity becomes the row [1 - p, 0, 0, 0, p, 0], so it says 4 when p > 0.5, else 0."""

  name = "profanity-check"

  def __init__(self):
    try:
      from profanity_check import predict_prob
    except ImportError as e:
      raise ImportError("the outside baseline needs `pip install alt-profanity-check`") from e
    self._predict_prob = predict_prob

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    p = np.asarray(self._predict_prob(list(texts)), np.float32) if len(texts) else np.zeros(0, np.float32)
    probs = np.zeros((len(p), NUM_LEVELS), np.float32)
    probs[:, 0], probs[:, 4] = 1 - p, p
    return probs

  def score(self, texts: Sequence[str]) -> np.ndarray:
    return np.argmax(self.score_probs(texts), axis=-1).astype(np.int32)
