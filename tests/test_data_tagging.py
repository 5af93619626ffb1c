"""Harm tags: only in unsafe segments, before words 2..n, binomial counts, deterministic, one id."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from safejax.data.records import doc_rng
from safejax.data.tagging import tag_record, tag_text
from safejax.vocab import HARM_TAG, train_sentencepiece

words = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), min_size=1, max_size=12)
texts = st.lists(st.tuples(words, st.sampled_from([" ", "\n", "  ", "\t", ". "])), min_size=1, max_size=60).map(
    lambda parts: "".join(w + sep for w, sep in parts))


def _segments(text: str, scores: list[int]) -> list[list[int]]:
  """Cuts text into len(scores) contiguous spans."""
  cuts = np.linspace(0, len(text), len(scores) + 1).astype(int)
  return [[int(a), int(b), s] for a, b, s in zip(cuts[:-1], cuts[1:], scores)]


@settings(max_examples=200, deadline=None)
@given(text=texts, scores=st.lists(st.integers(0, 5), min_size=1, max_size=4), p=st.floats(0, 1), seed=st.integers(0, 99))
def test_removing_tags_restores_the_text_and_tags_sit_only_in_unsafe_segments(text, scores, p, seed):
  segments = _segments(text, scores)
  tagged, n, candidates = tag_text(text, segments, np.random.default_rng(seed), p=p, level=3)
  assert tagged.replace(HARM_TAG, "") == text
  assert tagged.count(HARM_TAG) == n <= candidates
  # Map each tag back to its offset in the original text: it must close a word of an unsafe
  # segment that is not the segment's last word, i.e. precede words 2..n of that segment.
  offset, positions = 0, []
  for piece in tagged.split(HARM_TAG)[:-1]:
    offset += len(piece)
    positions.append(offset)
  for pos in positions:
    start, end, score = next(s for s in segments if s[0] < pos <= s[1])
    assert score >= 3
    assert not text[pos - 1].isspace()
    assert re.search(r"\S", text[pos:end])  # another word of the segment follows
  expected_candidates = sum(max(len(text[a:b].split()) - 1, 0) for a, b, s in segments if s >= 3)
  assert candidates == expected_candidates
  if p == 0:
    assert n == 0
  if p == 1:
    assert n == candidates


def test_safe_documents_get_no_tags():
  text = "word " * 500
  tagged, n, candidates = tag_text(text, [[0, len(text), 2]], np.random.default_rng(0), p=1.0, level=3)
  assert tagged == text and n == candidates == 0


def test_tag_counts_follow_the_binomial():
  text = "word " * 20001
  p = 0.05
  counts = []
  for doc in range(40):
    _, n, candidates = tag_text(text, [[0, len(text), 5]], doc_rng(0, f"d{doc}", "tag"), p=p, level=3)
    assert candidates == 20000
    counts.append(n)
  mean, std = candidates * p, math.sqrt(candidates * p * (1 - p))
  assert all(abs(n - mean) < 5 * std for n in counts)
  # The mean of 40 draws is within 4 standard errors of n * p.
  assert abs(np.mean(counts) - mean) < 4 * std / math.sqrt(len(counts))
  assert np.std(counts) == pytest.approx(std, rel=0.35)


def test_tagging_is_deterministic_per_document_and_seed():
  record = {"id": "src/1", "source": "src", "score": 4, "route": "refuse",
            "text": "one two three four five six seven eight nine ten " * 20}
  record["segments"] = [[0, len(record["text"]), 4]]
  a, b = tag_record(record, seed=0, p=0.2, level=3), tag_record(record, seed=0, p=0.2, level=3)
  assert a == b
  assert tag_record(record, seed=1, p=0.2, level=3)["text"] != a["text"]
  assert tag_record({**record, "id": "src/2"}, seed=0, p=0.2, level=3)["text"] != a["text"]
  assert a["id"] == "src/1/tagged" and a["source_id"] == "src/1" and a["tags"] == a["text"].count(HARM_TAG)


def test_the_tag_is_exactly_one_token_in_context(tmp_path):
  corpus = ["The committee met in spring and the river rose over the old stone bridge."] * 50 + [
      "Students wrote essays, drew maps, and read aloud; then (quietly) they left."] * 50
  vocab = train_sentencepiece(corpus, str(tmp_path / "spm.model"), vocab_size=300)
  for text in corpus[:1] + corpus[-1:]:
    tagged, n, _ = tag_text(text, [[0, len(text), 5]], np.random.default_rng(0), p=1.0, level=3)
    ids = vocab.tokenizer.encode(tagged)
    assert ids.count(vocab.harm_tag_id) == n == len(text.split()) - 1
    assert vocab.tokenizer.decode([i for i in ids if i != vocab.harm_tag_id]) == text
    assert vocab.tokenizer.encode(text) == [i for i in ids if i != vocab.harm_tag_id]


def test_sentence_tags_stay_inside_the_worlds_unsafe_paragraphs():
  """Tagged sentence by sentence, a world document's tags all land in its paragraphs about the
  harmful topic, at about p of their words; tagged as one segment, they spill into its safe text."""
  from safejax.data.tagging import sentence_segments, tag_placement
  from safejax.demo import world as w
  from safejax.safety.rubric import lexical_scores

  class Lexical:  # rates a sentence by the rubric's indicative terms (every harmful topic's name has one)
    def score(self, texts):
      return np.asarray(lexical_scores(texts))

  world = w.build_world(w.WorldConfig(seed=2))
  docs = [d for d in w.generate_documents(world, 600, "pretrain") if d["level"] >= 3]
  by_sentence, whole = {"tags": 0, "inside": 0, "span_words": 0}, {"tags": 0, "inside": 0}
  for d in docs:
    record = {"id": d["id"], "text": d["text"], "source": "world", "score": d["level"],
              "segments": [[0, len(d["text"]), d["level"]]]}
    for counts, segments in ((by_sentence, sentence_segments(d["text"], Lexical())), (whole, None)):
      placed = tag_placement(tag_record(record, seed=0, p=0.05, level=3, segments=segments)["text"], d["unsafe_spans"])
      for key in counts:
        counts[key] += placed[key]
  assert by_sentence["tags"] > 100 and by_sentence["inside"] == by_sentence["tags"]  # precision 1.0
  assert 0.03 < by_sentence["tags"] / by_sentence["span_words"] < 0.06  # about p of the unsafe words
  assert whole["inside"] / whole["tags"] < 0.8  # one segment a document: tags in its safe sentences too


def test_tag_placement_maps_tags_back_to_the_original_text():
  from safejax.data.tagging import tag_placement

  text = "Safe words here. Unsafe words are in this part. More safe words."
  tagged, n, _ = tag_text(text, [[0, 17, 0], [17, 47, 3], [47, len(text), 0]], np.random.default_rng(0), p=1.0, level=3)
  assert tag_placement(tagged, [[17, 47]]) == {"tags": 5, "inside": 5, "span_words": 6} and n == 5
  assert tag_placement(tagged, [[0, 17]]) == {"tags": 5, "inside": 0, "span_words": 3}
