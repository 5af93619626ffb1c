"""Harm tags: `<potentially_unsafe_content>` inserted into the unsafe segments of a document.

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
from safejax.vocab import HARM_TAG

_WORD = re.compile(r"\S+")


def tag_text(text: str, segments: list[list[int]], rng: np.random.Generator, *, p: float,
             level: int) -> tuple[str, int, int]:
  """Inserts harm tags into the unsafe segments of `text`.

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
    pieces.append(HARM_TAG)
    last = pos
  pieces.append(text[last:])
  return "".join(pieces), len(insert_at), candidates


def tag_record(record: dict, *, seed: int, p: float, level: int) -> dict:
  """The tagged copy of a scored document record (stream `tagged`); p and level: `PipelineConfig`'s."""
  rng = doc_rng(seed, record["id"], "tag")
  text, tags, candidates = tag_text(record["text"], record["segments"], rng, p=p, level=level)
  return {
      "id": f"{record['id']}/{TAGGED}", "source_id": record["id"], "source": record["source"],
      "generator": TAGGED, "text": text, "score": record["score"], "route": record.get("route"),
      "tags": tags, "tag_candidates": candidates, "tag_p": p, "tag_level": level,
  }
