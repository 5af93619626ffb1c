"""An LLM annotator on the 0..5 rubric, behind the same interface as the trained scorers.

The model reads the rubric (`safejax.safety.rubric`) and the document and answers one JSON object
`{"score": int, "reason": str}`. The answer is prefilled with `{"score": ` so even small models stay
in format (the paper's trick). An answer that does not parse, or whose score is not an integer in
0..5, is asked again (with a new seed) up to `attempts` times and then set aside with its raw text:
never guessed.

As a scorer: `score(texts)` gives int32 [n] with -1 for a set-aside answer (the data pipeline
dead-letters such documents) and `score_probs(texts)` float32 [n, 6], one-hot on the answer and a
row of NaN for a set-aside one, so no caller can mistake it for a confident 0. `annotate(texts)`
also returns the reasons and raw answers.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import gin
import numpy as np

from safejax.generation import GenerationRequest, TextBackend, generate_validated
from safejax.safety.rubric import HARM_CATEGORIES, NUM_LEVELS, rubric_text

PREFILL = '{"score": '

ANNOTATION_PROMPT = """Rate how suitable the web document below is for children, on a safety scale from 0 (safe)
to 5 (severe). Use the highest level that applies anywhere in the document; levels are never
added up.

{rubric}

Kinds of harm to look for: {categories}.

Answer with a single JSON object and nothing else: {{"score": <integer 0-5>, "reason": "<one short sentence>"}}

Document:
<<<
{text}
>>>"""


@dataclasses.dataclass(frozen=True)
class Annotation:
  """One document's annotation: score and reason, or None with the error and the raw answer."""

  score: int | None
  reason: str | None
  raw: str
  error: str | None = None


def parse_annotation(text: str) -> tuple[int, str]:
  """(score, reason) from an answer holding a JSON object; ValueError when malformed."""
  start = text.find("{")
  if start < 0:
    raise ValueError("no JSON object in the answer")
  try:
    answer, _ = json.JSONDecoder().raw_decode(text[start:])
  except json.JSONDecodeError as e:
    raise ValueError(f"invalid JSON: {e}") from None
  if not isinstance(answer, dict):
    raise ValueError("the answer is not a JSON object")
  score, reason = answer.get("score"), answer.get("reason")
  if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score < NUM_LEVELS:
    raise ValueError(f"score {score!r} is not an integer in 0..{NUM_LEVELS - 1}")
  if not isinstance(reason, str):
    raise ValueError("reason is missing or not a string")
  return score, reason


@gin.configurable
class LLMAnnotator:
  """Scores documents by prompting an LLM backend with the rubric (see the module docstring)."""

  name = "llm_annotator"

  def __init__(self, backend: TextBackend = gin.REQUIRED, *, attempts: int = 3, max_tokens: int = 128,
               temperature: float = 0.0, max_document_chars: int = 6000, seed: int = 0):
    self.backend = backend
    self.attempts = attempts
    self.max_tokens = max_tokens
    self.temperature = temperature
    self.max_document_chars = max_document_chars
    self.seed = seed

  def request(self, text: str) -> GenerationRequest:
    categories = "; ".join(c.name.replace("_", " ") for c in HARM_CATEGORIES)
    prompt = ANNOTATION_PROMPT.format(rubric=rubric_text(), categories=categories,
                                      text=text[: self.max_document_chars])
    return GenerationRequest(task="annotate", messages=({"role": "user", "content": prompt},),
                             fields={"text": text}, prefill=PREFILL, max_tokens=self.max_tokens,
                             temperature=self.temperature, seed=self.seed)

  def annotate(self, texts: Sequence[str]) -> list[Annotation]:
    if isinstance(texts, str):
      raise TypeError("annotate takes a sequence of texts, not one string")
    results = generate_validated(self.backend, [self.request(t) for t in texts], parse_annotation,
                                 attempts=self.attempts)
    return [Annotation(parsed[0], parsed[1], g.text) if parsed is not None
            else Annotation(None, None, g.text, g.error) for parsed, g in results]

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """int32 [n]: the annotated score, or -1 where the answer was set aside."""
    return np.asarray([-1 if a.score is None else a.score for a in self.annotate(texts)], np.int32)

  def score_probs(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [n, 6]: one-hot on the annotated score; NaN rows where the answer was set aside."""
    scores = self.score(texts)
    probs = np.zeros((len(scores), NUM_LEVELS), np.float32)
    probs[scores < 0] = np.nan
    valid = np.flatnonzero(scores >= 0)
    probs[valid, scores[valid]] = 1.0
    return probs
