"""Harm tags: `<potentially_unsafe_content>` inserted into the unsafe segments of a document.

The segments are the scoring segments, or (the pipeline's default, `PipelineConfig.tag_unit`) the
document's sentences scored one by one (`sentence_segments`), so that the safe sentences of an
unsafe document stay untagged, as the paper tags unsafe segments only.

Within every segment scored at or above `level`, each word but the segment's first is preceded
by the tag independently with probability `p` (the paper's 5 %). Words are runs of non-space
characters. Following the vocabulary's convention the tag is glued to the end of the previous word
("word<potentially_unsafe_content> next"), so it tokenizes to exactly one id and removing the tag
strings restores the original text byte for byte. The draws depend only on (seed, document id),
so every worker and every re-run tags a document the same way.
"""

from __future__ import annotations

import re

import numpy as np

from safejax.data.records import TAGGED, doc_rng
from safejax.text import sentence_spans
from safejax.vocab import HARM_TAG

_WORD = re.compile(r"\S+")


def tag_text(text: str, segments: list[list[int]], rng: np.random.Generator, *, p: float,
             level: int, token: str = HARM_TAG) -> tuple[str, int, int]:
  """Inserts harm tags (or another reserved `token`: the sham tag) into the unsafe segments of `text`.

  Args:
    text: the document.
    segments: [[start, end, score], ...] spans of `text` with their scores.
    rng: the document's generator (one uniform draw per candidate position, in text order).
    p: probability of a tag before each candidate word.
    level: segments scored at this level or above are tagged.
  Returns:
    (tagged text, number of tags inserted, number of candidate positions).
  """
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"tag probability must be in [0, 1], got {p}")
  insert_at: list[int] = []  # character offsets (end of the previous word) where a tag goes
  candidates = 0
  for start, end, score in segments:
    if score < level:
      continue
    word_ends = [m.end() for m in _WORD.finditer(text, start, end)]
    # Words 2..n of the segment: a tag before word k sits at the end of word k-1.
    positions = word_ends[:-1]
    candidates += len(positions)
    draws = rng.random(len(positions)) < p
    insert_at.extend(pos for pos, hit in zip(positions, draws) if hit)
  pieces, last = [], 0
  for pos in insert_at:
    pieces.append(text[last:pos])
    pieces.append(token)
    last = pos
  pieces.append(text[last:])
  return "".join(pieces), len(insert_at), candidates


def sentence_segments(text: str, scorer) -> list[list[int]]:
  """[[start, end, score], ...] of `text`'s sentences (`safejax.text.sentence_spans`), each scored
  on its own by `scorer`: where the tags go when only a document's unsafe sentences are tagged."""
  spans = sentence_spans(text)
  scores = np.asarray(scorer.score([text[s:e] for s, e in spans])).tolist()
  return [[s, e, int(score)] for (s, e), score in zip(spans, scores)]


def tag_record(record: dict, *, seed: int, p: float, level: int, segments: list[list[int]] | None = None) -> dict:
  """The tagged copy of a scored document record (stream `tagged`); p and level: `PipelineConfig`'s.
  `segments`: where to look for unsafe text (default the record's scoring segments)."""
  rng = doc_rng(seed, record["id"], "tag")
  text, tags, candidates = tag_text(record["text"], record["segments"] if segments is None else segments, rng,
                                    p=p, level=level)
  return {
      "id": f"{record['id']}/{TAGGED}", "source_id": record["id"], "source": record["source"],
      "generator": TAGGED, "text": text, "score": record["score"], "route": record.get("route"),
      "tags": tags, "tag_candidates": candidates, "tag_p": p, "tag_level": level,
  }


def tag_placement(tagged_text: str, spans: list[list[int]]) -> dict[str, int]:
  """Where the tags of a tagged copy sit, against known spans of its original text (e.g. the demo
  world's unsafe paragraphs): {"tags", "inside" (tags within a span), "span_words" (the words of the
  spans, whose share the tag rate is measured against)}. A tag sits at the end of the word before
  it, at the same offset in the original once the tags before it are removed."""
  pieces = tagged_text.split(HARM_TAG)
  offsets, position = [], 0
  for piece in pieces[:-1]:
    position += len(piece)
    offsets.append(position)
  original = "".join(pieces)
  inside = sum(any(start < offset < end for start, end in spans) for offset in offsets)
  words = sum(len(_WORD.findall(original, start, end)) for start, end in spans)
  return {"tags": len(offsets), "inside": inside, "span_words": words}
