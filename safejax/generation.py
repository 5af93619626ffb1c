"""Text generation behind one small interface: the generators, the LLM annotator and the LLM
judge call a backend.

  backend.generate([GenerationRequest(...), ...]) -> [Generation, ...]   (one per request, in order)

This module is the interface only, shared ground of every layer that generates text. Backends:
  safejax.backends.openai.OpenAICompatibleBackend
                                  any OpenAI-compatible chat-completions endpoint (vLLM, TGI, hosted
                                  APIs) with bounded concurrency, retries with exponential backoff,
                                  timeouts and an on-disk cache keyed by a hash of the request.
  safejax.backends.template.TemplateBackend
                                  offline and deterministic: fills the hand-written templates of
                                  that module; its outputs say `template: True`.
  safejax.decoding.backend.LocalModelBackend
                                  a safejax checkpoint in this process, beside the decoder it
                                  drives, chat-formatted with safejax's template. To serve one to
                                  other processes or machines, run `safejax serve` and point
                                  OpenAICompatibleBackend at it.

A request carries both forms of the task: chat `messages` for LLM backends and structured `fields`
(the document, a style, its harm categories, ...) for the template backend, so the same request
works with any backend. A failed generation (an HTTP error, a timeout, a malformed reply, retries
spent) is returned with `error` set and empty text, never raised, so one bad document does not
sink a batch; callers dead-letter it. A request a backend cannot express at all (no chat messages
for an LLM backend, a task the template backend does not write) is the caller's mistake, the same
for every document, and raises ValueError at once instead of dead-lettering them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
  """One text to generate.

  Attributes:
    task: what to write: "rephrase", "refuseweb", "moral_education", "annotate", "judge", ...
    messages: the chat for LLM backends: ({"role": "system" | "user" | "assistant", "content": str}, ...).
    fields: the same task as structured data for the template backend (document text, style, ...).
    prefill: the start of the answer; the model continues it and the returned text includes it.
    max_tokens: upper bound on generated tokens.
    temperature: sampling temperature.
    seed: the sampling seed (the template backend's only source of variation).
  """

  task: str
  messages: tuple[Mapping[str, str], ...] = ()
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  prefill: str | None = None
  max_tokens: int = 1024
  temperature: float = 0.7
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Generation:
  """A backend's answer: `text`, and `metadata` with at least backend, model, template, cached."""

  text: str
  metadata: Mapping[str, Any]
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None


@runtime_checkable
class TextBackend(Protocol):
  name: str

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    """One Generation per request, in order."""


def generate_validated(backend: TextBackend, requests: Sequence[GenerationRequest],
                       parse: Callable[[str], Any], *, attempts: int = 2) -> list[tuple[Any, Generation]]:
  """Generates, parses, and asks again (with a new seed) for answers that fail to parse.

  Backend errors are final here: backends retry transient failures themselves.

  Args:
    backend: any TextBackend.
    requests: the requests.
    parse: text -> parsed value, raising ValueError for a malformed answer.
    attempts: how many times a request is tried in all while its answers are malformed.
  Returns:
    One (parsed value or None, last Generation) per request; when the value is None the
    generation's `error` says why (backend error or the parse error), and its text is the raw answer.
  """
  if attempts < 1:
    raise ValueError("attempts must be >= 1")
  results: list[tuple[Any, Generation] | None] = [None] * len(requests)
  pending = list(range(len(requests)))
  for attempt in range(attempts):
    if not pending:
      break
    batch = [dataclasses.replace(requests[i], seed=requests[i].seed + attempt) for i in pending]
    still_pending = []
    for i, generation in zip(pending, backend.generate(batch)):
      if not generation.ok:
        results[i] = (None, generation)
        continue
      try:
        results[i] = (parse(generation.text), generation)
      except ValueError as e:
        results[i] = (None, dataclasses.replace(generation, error=f"malformed answer: {e}",
                                                metadata={**generation.metadata, "answers": attempt + 1}))
        still_pending.append(i)
    pending = still_pending
  return results
