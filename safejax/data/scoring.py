"""Scoring document records with a safety scorer, segment by segment.

A document is cut into segments (`split_segments`): runs of whole lines up to `segment_chars`
characters, a longer line cut at whitespace. Each segment is scored on its own; the document's
score is the max over its segments (the rubric's "highest level that applies anywhere"), and the
segment scores are kept so the tagger can put harm tags in the unsafe segments only.

Any object with `score(texts) -> int [n]` (see `safejax.safety.scorer.Scorer`) can score. A
negative score means the scorer gave no valid answer (the LLM annotator sets such answers aside
rather than guessing); the document is then dead-lettered. Documents whose input already carried a
score keep it and get one segment spanning the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from safejax.data.records import SCORE, dead_letter

_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def _cut_long(start: int, end: int, text: str, max_chars: int) -> list[tuple[int, int]]:
  """Cuts text[start:end] into pieces of at most max_chars, at whitespace where there is any."""
  spans = []
  while end - start > max_chars:
    cut = text.rfind(" ", start + 1, start + max_chars)
    cut = start + max_chars if cut <= start else cut
    spans.append((start, cut))
    start = cut
  spans.append((start, end))
  return spans


def split_segments(text: str, max_chars: int = 1000) -> list[tuple[int, int]]:
  """Contiguous (start, end) spans covering `text`: whole lines merged up to `max_chars`.

  Returns at least one span; their concatenation is exactly `text`.
  """
  if max_chars < 1:
    raise ValueError(f"max_chars must be positive, got {max_chars}")
  spans: list[tuple[int, int]] = []
  seg_start = seg_end = 0
  for match in _LINE.finditer(text):
    start, end = match.span()
    if end - seg_start > max_chars and seg_end > seg_start:
      spans.append((seg_start, seg_end))
      seg_start = seg_end
    if end - start > max_chars:
      spans.extend(_cut_long(seg_start, end, text, max_chars)[:-1])
      seg_start = spans[-1][1]
    seg_end = end
  spans.append((seg_start, max(seg_end, len(text))))
  return spans


def score_documents(records: Sequence[dict], scorer, *, segment_chars: int = 1000) -> list[dict]:
  """Scores a batch of document records; one item (scored record or dead letter) per input.

  Args:
    records: document records; those with a `score` already are passed through.
    scorer: anything with `score(texts) -> int array [len(texts)]` in 0..5 (negative = no answer);
      may be None when every record carries a score.
    segment_chars: the segment length (characters).
  Returns:
    Records with `score` (int) and `segments` ([[start, end, score], ...]) added, in input order.
  """
  out: list[dict | None] = [None] * len(records)
  texts, owners = [], []  # the segments to score and (record index, start, end) of each
  for i, record in enumerate(records):
    if "score" in record:
      out[i] = {**record, "segments": [[0, len(record["text"]), int(record["score"])]]}
      continue
    if scorer is None:
      out[i] = dead_letter(SCORE, "no_scorer", doc_id=record["id"], source=record.get("source"),
                           detail="the input has no score and no scorer is configured")
      continue
    for start, end in split_segments(record["text"], segment_chars):
      texts.append(record["text"][start:end])
      owners.append((i, start, end))
  scores = np.asarray(scorer.score(texts), dtype=np.int64) if texts else np.zeros(0, np.int64)
  if scores.shape != (len(texts),):
    raise ValueError(f"scorer returned shape {scores.shape} for {len(texts)} texts")
  segments: dict[int, list[list[int]]] = {}
  for (i, start, end), s in zip(owners, scores.tolist()):
    segments.setdefault(i, []).append([start, end, int(s)])
  for i, segs in segments.items():
    record = records[i]
    if any(s < 0 for _, _, s in segs):
      out[i] = dead_letter(SCORE, "unscored", doc_id=record["id"], source=record.get("source"),
                           detail="the scorer gave no valid answer for a segment", raw=record["text"])
    elif any(s > 5 for _, _, s in segs):
      raise ValueError(f"scorer returned a score above 5 for {record['id']}: {segs}")
    else:
      out[i] = {**record, "score": max(s for _, _, s in segs), "segments": segs}
  return out
