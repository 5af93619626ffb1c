"""What flows through the pipeline: document records, dead letters, stream names, seeded RNGs.

A document record is a plain dict (Beam ships it between workers, the shard writers store it as
JSON):

  id                      "<source name>/<id in the source>", unique within a source (a second
                          document with the same id is dead-lettered `duplicate_id`)
  source                  the source's name
  text                    the document, stripped of reserved-token strings
  meta                    fields kept from the input (e.g. a title)
  special_tokens_removed  how many reserved-token strings `strip_special_tokens` removed
  score                   0..5 after scoring (or as given by the input)
  segments                [[start, end, score], ...] character spans covering `text` and their
                          scores; the document's score is their max
  route                   the document's primary route (see `routing`)

Generated records (rephrase, refuseweb, moral education, tagged copies) carry `source_id`, the id
of the document they come from, plus their generator's provenance.

A dead letter is a dict with `stage` and `reason`: an input that could not become a record, or a
document whose scoring or generation failed. It keeps the location and the raw text (truncated) so
a person can see what went wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

# The streams a pipeline run writes, each a SeqIO task's source (see tasks/safety_mixtures.py).
RAW = "raw"                          # every valid input document, unchanged (the "raw" rung)
KEEP = "keep"                        # documents routed to keep (score 0 by default)
REPHRASE = "rephrase"                # rewrites of documents routed to rephrasing
REFUSEWEB = "refuseweb"              # refusal dialogues made from documents routed to refusal
MORAL_EDUCATION = "moral_education"  # articles made from those dialogues
TAGGED = "tagged"                    # raw unsafe documents with harm tags inserted
STREAMS: tuple[str, ...] = (RAW, KEEP, REPHRASE, REFUSEWEB, MORAL_EDUCATION, TAGGED)
DEAD_LETTER = "dead_letter"

# Stages that can set a document aside.
READ, SCORE, GENERATE = "read", "score", "generate"
MAX_RAW_CHARS = 500  # how much of a rejected input a dead letter keeps


def dead_letter(stage: str, reason: str, *, doc_id: str | None = None, source: str | None = None,
                location: str | None = None, detail: str = "", raw: Any = None) -> dict:
  """A dead-letter record: why an input or document was set aside, and where it came from.

  Every string is made writable as UTF-8 (a lone surrogate becomes the text "\\ud800"), so the
  very input that was set aside for bad encoding cannot break the dead-letter writer.
  """
  if isinstance(raw, bytes):
    raw = raw[: MAX_RAW_CHARS * 4].decode("utf-8", errors="backslashreplace")
  elif raw is not None and not isinstance(raw, str):
    raw = repr(raw)
  return {
      "id": _writable(doc_id), "source": _writable(source), "stage": stage, "reason": reason,
      "location": _writable(location), "detail": _writable(detail[:MAX_RAW_CHARS]),
      "raw": None if raw is None else _writable(raw[:MAX_RAW_CHARS]),
  }


def _writable(text: str | None) -> str | None:
  """`text` with lone surrogates spelled out as escapes (valid UTF-8 to write)."""
  if text is None:
    return None
  try:
    text.encode("utf-8")
    return text
  except UnicodeEncodeError:
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def is_dead_letter(item: Mapping) -> bool:
  return "reason" in item and "stage" in item


def doc_rng(seed: int, doc_id: str, purpose: str) -> np.random.Generator:
  """A generator that depends only on (seed, document id, purpose): the same on every worker.

  Python's `hash` is salted per process, so the key is hashed with SHA-256 instead.
  """
  digest = hashlib.sha256(f"{seed}\x00{purpose}\x00{doc_id}".encode("utf-8")).digest()
  return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def doc_seed(seed: int, doc_id: str, purpose: str) -> int:
  """A 31-bit integer seed derived like `doc_rng` (for backends that take an integer seed)."""
  return int(doc_rng(seed, doc_id, purpose).integers(0, 2**31 - 1))
