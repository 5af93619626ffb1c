"""Metrics of safety scorers on hand-computed fixtures."""

import json

import numpy as np
import pytest

from safejax.safety import metrics

# Ten documents; scores chosen so that every number below can be checked by hand.
TRUE = [0, 0, 0, 0, 1, 2, 3, 3, 4, 5]
PRED = [0, 0, 1, 3, 0, 2, 3, 4, 2, 5]


def test_confusion_matrix_counts_pairs():
  cm = metrics.confusion_matrix(TRUE, PRED)
  assert cm.shape == (6, 6) and cm.sum() == 10
  assert cm[0, 0] == 2 and cm[0, 1] == 1 and cm[0, 3] == 1
  assert cm[1, 0] == 1 and cm[2, 2] == 1 and cm[3, 3] == 1 and cm[3, 4] == 1 and cm[4, 2] == 1 and cm[5, 5] == 1


def test_threshold_metrics_at_1_and_3():
  # >=1: truth positives are the last 6; predicted positives: indices 2,3,5,6,7,8,9 (7).
  at1 = metrics.threshold_metrics(TRUE, PRED, 1)
  assert (at1["tp"], at1["fp"], at1["fn"], at1["tn"]) == (5, 2, 1, 2)
  assert at1["recall"] == pytest.approx(5 / 6) and at1["precision"] == pytest.approx(5 / 7)
  assert at1["false_positive_rate"] == pytest.approx(2 / 4)
  # Wilson 95 % intervals, e.g. 5 of 6: (0.4365, 0.9699); they hold the point estimate.
  assert at1["recall_ci"] == pytest.approx([0.4365, 0.9699], abs=1e-4)
  assert at1["precision_ci"][0] < 5 / 7 < at1["precision_ci"][1]
  # >=3: truth positives 6,7,8,9; predicted positives 3,6,7,9.
  at3 = metrics.threshold_metrics(TRUE, PRED, 3)
  assert (at3["tp"], at3["fp"], at3["fn"], at3["tn"]) == (3, 1, 1, 5)
  assert at3["recall"] == pytest.approx(0.75) and at3["precision"] == pytest.approx(0.75)


def test_macro_f1_skips_classes_absent_everywhere():
  # Per class F1 = 2 tp / (support_true + support_pred):
  # 0: 2*2/(4+3)  1: 0/(1+1)  2: 2*1/(1+2)  3: 2*1/(2+2)  4: 0/(1+1)  5: 2*1/(1+1)
  expected = np.mean([4 / 7, 0, 2 / 3, 1 / 2, 0, 1])
  assert metrics.macro_f1(metrics.confusion_matrix(TRUE, PRED)) == pytest.approx(expected)
  only_two = metrics.confusion_matrix([0, 5], [0, 5])
  assert metrics.macro_f1(only_two) == pytest.approx(1.0)  # classes 1..4: no F1, not zero


def test_nan_where_undefined():
  r = metrics.threshold_metrics([0, 0], [0, 0], 3)
  assert np.isnan(r["recall"]) and np.isnan(r["precision"]) and r["false_positive_rate"] == 0
  assert r["recall_ci"] is None and r["precision_ci"] is None


def test_report_table_plot_and_json(tmp_path):
  r = metrics.report(TRUE, PRED)
  assert r["n"] == 10 and r["true_class_shares"][0] == pytest.approx(0.4)
  table = metrics.comparison_table({"ours": r})
  assert "| ours | " in table and "paper: ensemble (max)" in table and "0.95" in table
  assert "| 0.83 [0.44, 0.97] | 0.71 [" in table  # recall >= 1 of 5/6 with its interval, then precision
  metrics.plot_confusion(np.array(r["confusion_matrix"]), tmp_path / "cm.png", "fixture")
  assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
  metrics.write_json(r, tmp_path / "r.json")
  assert json.loads((tmp_path / "r.json").read_text())["at_3"]["tp"] == 3


def test_mismatched_lengths_raise():
  with pytest.raises(ValueError, match="true scores"):
    metrics.confusion_matrix([0, 1], [0])


def test_profanity_baseline_maps_probability_to_0_or_4():
  pytest.importorskip("profanity_check")
  baseline = metrics.ProfanityCheckBaseline()
  probs = baseline.score_probs(["have a lovely day", "fuck you, you fucking idiot"])
  assert probs.shape == (2, 6) and np.allclose(probs.sum(1), 1)
  assert list(baseline.score(["have a lovely day", "fuck you, you fucking idiot"])) == [0, 4]
