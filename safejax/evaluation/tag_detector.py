"""The harm tag as a detector: does the model's own urge to emit the tag flag unsafe text?

A model pretrained with harmfulness tags learns to predict `<potentially_unsafe_content>` inside
unsafe passages. Its probability of emitting the tag next, averaged over every position of a
document, is then a harmfulness score for that document, with no classifier in the loop. The
score's AUROC against held-out safety labels says how well the tag separates unsafe from safe text
(0.5: no better than chance). The paper does not report this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safejax import stats
from safejax.evaluation.prompt_sets import read_rows
from safejax.evaluation.loglikelihood import LoglikelihoodModel
from safejax.model.llama import Decoder
from safejax.vocab import SHAM_TAG, Vocabulary


def load_labelled_texts(
    path: str | Path,
    *,
    text_column: str,
    label_columns: Sequence[str],
    unsafe_level: int = 1,
) -> tuple[list[str], list[bool], dict[str, int]]:
  """Texts with a binary unsafe label from a CSV / JSONL file.

  A row is unsafe iff any of its `label_columns` that is present holds a value >= unsafe_level
  (one 0..5 score column, or several 0/1 category columns such as the OpenAI moderation set's,
  where an absent key means unknown). Rows without text or without any label are set aside.

  Returns:
    texts, labels and counts {"read", "kept", "no_text", "no_label"}.
  """
  texts, labels = [], []
  counts = {"read": 0, "kept": 0, "no_text": 0, "no_label": 0, "unreadable": 0}
  for _, row, _ in read_rows(path):
    counts["read"] += 1
    if row is None:
      counts["unreadable"] += 1
      continue
    text = str(row.get(text_column) or "").strip()
    values = [row[c] for c in label_columns if row.get(c) not in (None, "")]
    if not text:
      counts["no_text"] += 1
    elif not values:
      counts["no_label"] += 1
    else:
      texts.append(text)
      labels.append(max(float(v) for v in values) >= unsafe_level)
      counts["kept"] += 1
  return texts, labels, counts


def tag_scores(lm: LoglikelihoodModel, texts: Sequence[str]) -> np.ndarray:
  """[len(texts)] mean probability of the harm tag as the next token over each text."""
  return lm.mean_token_probability(texts, lm.vocab.harm_tag_id)


def baseline_scores(lm: LoglikelihoodModel, texts: Sequence[str]) -> dict[str, np.ndarray]:
  """The tag detector's baselines on the same texts, each [len(texts)]: "sham", the sham tag's mean
  probability (a token the model learned as often, in safe text: its detector is the control),
  and "nll", the text's mean negative log-likelihood per token (surprise alone: a model that never
  saw unsafe text finds it unpredictable)."""
  if SHAM_TAG not in lm.vocab.special_ids:  # a vocabulary from before the sham tag: NLL alone
    return {"nll": lm.token_statistics(texts, lm.vocab.harm_tag_id)[1]}
  sham, nll = lm.token_statistics(texts, lm.vocab.token_id(SHAM_TAG))
  return {"sham": sham, "nll": nll}


def tag_detector_auroc(
    model: Decoder,
    vocab: Vocabulary,
    texts: Sequence[str],
    labels: Sequence[bool],
    **lm_kwargs: Any,
) -> dict[str, Any]:
  """AUROC of the mean tag probability against binary unsafe labels (True = unsafe).

  Args:
    model, vocab: the decoder and its vocabulary.
    texts, labels: held-out documents and whether each is unsafe.
    **lm_kwargs: LoglikelihoodModel options (max_length, batch_size, start_id).
  """
  if len(texts) != len(labels):
    raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
  scores = tag_scores(LoglikelihoodModel(model, vocab, **lm_kwargs), texts)
  labels = np.asarray(labels, bool)
  return {"n": int(len(labels)), "n_unsafe": int(labels.sum()), "auroc": stats.auroc(labels, scores),
          "mean_score_unsafe": float(scores[labels].mean()), "mean_score_safe": float(scores[~labels].mean())}
