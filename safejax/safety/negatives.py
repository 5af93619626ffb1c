"""Negative examples for a safety classifier: texts that are safe (level 0) but that a classifier
trained on raw web text alone would misread.

  generated texts  what the recipe itself writes from unsafe documents (rephrasings, refusal
                   dialogues, moral lessons): safe by construction, yet full of the topic's words.
                   A classifier that never saw a refusal mistakes "I can't help with a scam" for
                   the scam (PAPER.md section 2 requires every generated sentence to be safe on
                   its own). The data layer writes them (`safejax.data.generators.generated_texts`).
  garbled texts    the letters of each word shuffled and some stuttered ("cuurrtt"), the text small
                   undertrained models emit. Garbled text carries no harmful content, yet a
                   character n-gram scorer that never saw any scores it at random; as a judge it
                   would count a model's noise as attacks.

`train_with_negatives` trains the n-gram scorer on labelled documents plus both kinds (labelled 0)
and reports, beside the held-out metrics, the share of held-out negatives it flags.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safejax.safety import metrics as safety_metrics
from safejax.safety import ngram
from safejax.safety.rubric import SAFE_LEVEL
from safejax.safety.training import TrainConfig


def garbled_texts(texts: Sequence[str], seed: int, fraction: float = 0.3) -> list[str]:
  """Garbled versions of a seeded sample of `fraction` of the texts (letters shuffled, some doubled
  or tripled)."""
  rng = random.Random(seed)

  def garble(word: str) -> str:
    letters = list(word)
    rng.shuffle(letters)
    return "".join(c * rng.choice((1, 1, 2, 3)) for c in letters)

  sample = rng.sample(list(texts), int(fraction * len(texts)))
  return [" ".join(garble(w) for w in text.split()) for text in sample]


def train_with_negatives(out: str | Path, train: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]],
                         negatives: Sequence[str], heldout_generated: Sequence[str], heldout_garbled: Sequence[str],
                         epochs: int = 6) -> dict[str, Any]:
  """The n-gram scorer on `train` ({"text", "score"}) plus `negatives` (labelled 0), saved to
  out/scorer; metrics.json and confusion.png on `test`; the share of held-out generated and garbled
  texts it flags (score >= 1)."""
  out = Path(out)
  texts = [d["text"] for d in train] + list(negatives)
  scores = [d["score"] for d in train] + [SAFE_LEVEL] * len(negatives)
  scorer = ngram.train_ngram_scorer(texts, scores, ngram.NgramConfig(), TrainConfig(epochs=epochs))
  scorer.save(str(out / "scorer"))
  report = safety_metrics.report([d["score"] for d in test], scorer.score([d["text"] for d in test]).tolist())
  safety_metrics.write_json(report, out / "metrics.json")
  safety_metrics.plot_confusion(np.asarray(report["confusion_matrix"]), out / "confusion.png",
                                "demo classifier, held-out split")
  flagged = lambda xs: float(np.mean(scorer.score(list(xs)) >= 1)) if len(xs) else float("nan")  # noqa: E731
  return {"scorer": str(out / "scorer"), "test_docs": len(test), "train_examples": len(texts),
          "macro_f1": report["macro_f1"], "at_1": report["at_1"], "at_3": report["at_3"],
          "heldout_generated_flagged_at_1": flagged(heldout_generated),
          "heldout_garbled_flagged_at_1": flagged(heldout_garbled)}
