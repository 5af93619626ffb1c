"""The harm tag as a detector: labelled-text loading and the AUROC of the mean tag probability."""

import json

import numpy as np
import pytest

from safejax import stats
from safejax.evaluation import tag_detector
from safejax.evaluation.loglikelihood import LoglikelihoodModel
from safejax.model.llama import ModelConfig, build_model


def test_labels_from_score_or_category_columns(tmp_path):
  path = tmp_path / "labelled.jsonl"
  rows = [{"text": "A calm walk in the park.", "S": 0, "V": 0},
          {"text": "A violent threat.", "V": 1},                 # absent S: unknown, V decides
          {"text": "Nothing known about this one."},             # no label at all
          {"text": "   ", "S": 1},                                # no text
          {"text": "A rude insult.", "S": 0, "V": 0, "H": 1}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  texts, labels, counts = tag_detector.load_labelled_texts(path, text_column="text", label_columns=("S", "V", "H"))
  assert texts == ["A calm walk in the park.", "A violent threat.", "A rude insult."]
  assert labels == [False, True, True]
  assert counts == {"read": 5, "kept": 3, "no_text": 1, "no_label": 1, "unreadable": 0}
  _, graded, _ = tag_detector.load_labelled_texts(path, text_column="text", label_columns=("V",), unsafe_level=2)
  assert graded == [False, False, False]  # V=1 is below a threshold of 2


def test_openai_moderation_labels(shared_data):
  texts, labels, counts = tag_detector.load_labelled_texts(
      shared_data / "classifier/openai_moderation/samples-1680.jsonl.gz", text_column="prompt",
      label_columns=("S", "H", "V", "HR", "SH", "S3", "H2", "V2"))
  assert counts["read"] == 1680 and len(texts) == counts["kept"]
  assert sum(labels) == 522  # SOURCE.md: 522 rows have at least one positive label


def test_auroc_of_mean_tag_probability(tiny_vocab):
  model = build_model(ModelConfig(vocab_size=tiny_vocab.vocab_size, init_std=0.2), seed=5)
  texts = ["The river watched the morning light.", "A small bird painted a long letter.",
           "Our teacher repaired a wooden bridge.", "The orchestra visited the village market."]
  labels = [False, True, False, True]
  result = tag_detector.tag_detector_auroc(model, tiny_vocab, texts, labels, max_length=64, batch_size=4,
                                           show_progress=False)
  scores = tag_detector.tag_scores(LoglikelihoodModel(model, tiny_vocab, max_length=64, batch_size=4, show_progress=False),
                                   texts)
  assert np.all((scores > 0) & (scores < 1))
  assert result["auroc"] == pytest.approx(stats.auroc(labels, scores))
  assert (result["n"], result["n_unsafe"]) == (4, 2)
  assert result["mean_score_unsafe"] == pytest.approx(scores[[1, 3]].mean())
  with pytest.raises(ValueError, match="4 texts but 3 labels"):
    tag_detector.tag_detector_auroc(model, tiny_vocab, texts, labels[:3])
