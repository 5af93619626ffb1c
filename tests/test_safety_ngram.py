"""The hashed n-gram scorer: features, windows, learning a separable task, save/load."""

import dataclasses
import json

import numpy as np
import pytest
from flax import nnx

from safejax.safety import ngram
from safejax.safety import scorer as scorer_lib
from safejax.safety.scorer import MaxEnsemble, load_scorer
from safejax.safety.training import TrainConfig

SMALL = ngram.NgramConfig(num_buckets=2**12, embed_dim=16, hidden_dim=16, char_ngrams=(3, 5),
                          char_ngram_keep_one_in=1, window_words=8)


def test_features_are_deterministic_and_per_document():
  ids, seg = ngram.featurize(["Hello world", "", "hello"], SMALL)
  n, k = 3, SMALL.num_kinds
  assert k == 4 and ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < SMALL.num_buckets
  assert np.all(np.diff(seg) >= 0)  # ascending: kind-major, then document
  assert set(seg % n) == {0, 2}  # the empty document has no features
  words = ids[seg // n == 0]
  assert words[0] == words[2] and words[0] != words[1]  # "Hello" == "hello" != "world"
  again, _ = ngram.featurize(["Hello world", "", "hello"], SMALL)
  assert np.array_equal(ids, again)
  # Counts: 2 unigrams + 1 bigram + (11-2) 3-grams + (11-4) 5-grams for "hello world".
  assert list(np.bincount(seg[seg % n == 0] // n, minlength=k)) == [2, 1, 9, 7]
  _, padded_seg = ngram.featurize(["Hello world", "", "hello"], SMALL, num_docs=8)
  assert set(padded_seg // 8) == {0, 1, 2, 3} and padded_seg.max() < 8 * k


def test_char_ngram_sampling_keeps_the_same_types_everywhere():
  half = ngram.NgramConfig(num_buckets=2**12, char_ngrams=(4,), char_ngram_keep_one_in=2)
  text = "the quick brown fox jumps over the lazy dog " * 20
  ids, seg = ngram.featurize([text], half)
  full_ids, full_seg = ngram.featurize([text], dataclasses.replace(half, char_ngram_keep_one_in=1))
  kept, every = set(ids[seg == 2]), set(full_ids[full_seg == 2])
  assert kept < every and 0.25 < len(kept) / len(every) < 0.75
  ids_shifted, seg_shifted = ngram.featurize(["xyz " + text], half)
  assert kept <= set(ids_shifted[seg_shifted == 2])  # a shift keeps the same n-gram types


def test_char_ngrams_never_cross_documents():
  _, seg_joined = ngram.featurize(["abcd", "efgh"], SMALL)
  _, seg_a = ngram.featurize(["abcd"], SMALL)
  _, seg_b = ngram.featurize(["efgh"], SMALL)
  assert len(seg_joined) == len(seg_a) + len(seg_b)


def test_hash_seed_changes_buckets():
  a, _ = ngram.featurize(["some words here"], SMALL)
  b, _ = ngram.featurize(["some words here"], dataclasses.replace(SMALL, seed=1))
  assert not np.array_equal(a, b)


def test_split_words_windows():
  text = " ".join(f"w{i}" for i in range(20))
  windows = ngram.split_words(text, 8)
  assert [len(w.split()) for w in windows] == [7, 7, 6]  # 3 windows of <= 8 words, even sizes
  assert " ".join(windows).split() == text.split()
  assert ngram.split_words("short text", 8) == ["short text"]


def test_config_validation():
  with pytest.raises(ValueError, match="power of two"):
    ngram.NgramConfig(num_buckets=1000)


def toy_task(n=320, seed=0):
  rng = np.random.default_rng(seed)
  calm = ["the river runs past the old mill", "students measure the angle of the ramp",
          "the bakery opens early on sunday", "a gentle rain fell over the valley"]
  rude = ["you are a worthless idiot", "shut up you pathetic loser", "everyone hates you, moron"]
  texts, labels = [], []
  for i in range(n):
    if i % 2:
      texts.append(f"{rng.choice(calm)} and {rng.choice(calm)}")
      labels.append(0)
    else:
      texts.append(f"{rng.choice(calm)} but {rng.choice(rude)}")
      labels.append(4)
  return texts, labels


@pytest.fixture(scope="module")
def trained():
  texts, labels = toy_task()
  return ngram.train_ngram_scorer(texts, labels, SMALL, TrainConfig(epochs=4, batch_size=32, learning_rate=1e-2))


def test_learns_a_separable_task(trained):
  texts, labels = toy_task(n=60, seed=1)
  assert np.mean(trained.score(texts) == np.array(labels)) >= 0.95


def test_long_document_takes_its_worst_window(trained):
  calm = "the bakery opens early on sunday " * 10
  assert trained.score([calm])[0] == 0
  assert trained.score([calm + " you are a worthless idiot " + calm])[0] == 4


def test_save_load_roundtrip_gives_identical_scores(trained, tmp_path):
  trained.save(tmp_path / "ngram")
  loaded = load_scorer(tmp_path / "ngram")
  assert isinstance(loaded, ngram.NgramScorer) and loaded.config == trained.config
  texts = toy_task(n=40, seed=2)[0] + ["", "x " * 1000]
  assert np.array_equal(trained.score_probs(texts), loaded.score_probs(texts))
  MaxEnsemble([trained, loaded]).save(tmp_path / "ensemble")
  ensemble = load_scorer(tmp_path / "ensemble")
  assert isinstance(ensemble, MaxEnsemble) and np.array_equal(ensemble.score(texts), trained.score(texts))


def test_decision_rule_is_saved_and_reloaded(trained, tmp_path):
  rule = scorer_lib.DecisionRule((0.01, 0.5, 0.5, 0.6, 0.9))
  scorer = ngram.NgramScorer(trained.model, decision_rule=rule)
  scorer.save(tmp_path / "ngram")
  loaded = load_scorer(tmp_path / "ngram")
  texts = toy_task(n=40, seed=3)[0]
  assert loaded.decision_rule == rule
  assert np.array_equal(loaded.score(texts), rule.decide(scorer.score_probs(texts)))
  # A scorer.json written before decision rules existed loads with argmax.
  meta = json.loads((tmp_path / "ngram" / "scorer.json").read_text())
  del meta["decision_rule"]
  (tmp_path / "ngram" / "scorer.json").write_text(json.dumps(meta))
  assert load_scorer(tmp_path / "ngram").decision_rule == scorer_lib.ARGMAX


def test_load_rejects_mismatched_params(trained, tmp_path):
  trained.save(tmp_path / "m")
  other = ngram.NgramScorer(ngram.NgramModel(dataclasses.replace(SMALL, num_buckets=2**10), rngs=nnx.Rngs(0)))
  other.save(tmp_path / "small")
  (tmp_path / "m" / "params.safetensors").replace(tmp_path / "small" / "params.safetensors")
  with pytest.raises(ValueError, match="shape"):
    load_scorer(tmp_path / "small")
