"""Text generation behind one small interface: the generators and the LLM annotator call a backend.

  backend.generate([GenerationRequest(...), ...]) -> [Generation, ...]   (one per request, in order)

Backends:
  OpenAICompatibleBackend  any OpenAI-compatible chat-completions endpoint (vLLM, TGI, hosted APIs)
                           with bounded concurrency, retries with exponential backoff, timeouts and
                           an on-disk cache keyed by a hash of the request.
  TemplateBackend          offline and deterministic: fills the hand-written templates of
                           `safejax.data.templates`; its outputs say `template: True` in metadata.
  LocalModelBackend        a safejax checkpoint in this process (safejax.decoding), chat-formatted
                           with safejax's template. To serve one to other processes or machines,
                           run `safejax serve` and point OpenAICompatibleBackend at it.

A request carries both forms of the task: chat `messages` for LLM backends and structured `fields`
(the document, a style, its harm categories, ...) for the template backend, so the same request
works with any backend. A failed generation is returned with `error` set and empty text, never
raised, so one bad document does not sink a batch; callers dead-letter it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gin
import httpx
import numpy as np

from safejax.data import templates

log = logging.getLogger(__name__)


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


@gin.configurable
class LocalModelBackend:
  """Generates with a safejax checkpoint in-process: each request's messages go through the chat
  template (`format_chat`), the prefill is appended after the ASSISTANT marker, and decoding stops
  at END_OF_TURN. Sampling uses the request's temperature and seed; `decoding` sets the rest
  (method "sample" by default; "greedy", "beam" or "safebeam" ignore the temperature).
  """

  name = "local"

  def __init__(self, model_dir: str = gin.REQUIRED, decoding: Any = None, batch_size: int = 8):
    from safejax import decoding as decoding_lib
    from safejax.train import load_for_inference

    self.model_dir = model_dir
    self.model, self.vocab = load_for_inference(model_dir)
    self.decoding = decoding or decoding_lib.DecodingConfig(method="sample", top_p=0.95)
    self.batch_size = batch_size

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    from safejax import decoding as decoding_lib
    from safejax.evaluation.prompting import format_chat
    from safejax.vocab import END_OF_TURN

    # One decoding call per distinct (max_tokens, temperature, seed): requests sharing them batch.
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault((r.max_tokens, r.temperature, r.seed), []).append(i)
    out: list[Generation | None] = [None] * len(requests)
    for (max_tokens, temperature, seed), indices in groups.items():
      config = dataclasses.replace(self.decoding, max_new_tokens=max_tokens, temperature=temperature, seed=seed)
      prompts = []
      for i in indices:
        try:
          prompts.append(format_chat(requests[i].messages) + (requests[i].prefill or ""))
        except ValueError as e:
          out[i] = Generation("", self._metadata(), error=f"bad request: {e}")
          prompts.append(None)
      live = [(i, p) for i, p in zip(indices, prompts) if p is not None]
      texts = decoding_lib.generate_texts(self.model, self.vocab, [p for _, p in live], config,
                                          batch_size=self.batch_size, progress=False,
                                          stop_id=self.vocab.token_id(END_OF_TURN))
      for (i, _), generated in zip(live, texts):
        out[i] = Generation((requests[i].prefill or "") + generated.text, self._metadata())
    return out

  def _metadata(self) -> dict[str, Any]:
    return {"backend": self.name, "model": self.model_dir, "template": False, "cached": False}


def request_key(model: str, body: Mapping[str, Any]) -> str:
  """The cache key of a request: SHA-256 of the model and the canonical JSON request body."""
  canonical = json.dumps({"model": model, "body": body}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _RetryableError(Exception):
  def __init__(self, message: str, retry_after: float | None = None):
    super().__init__(message)
    self.retry_after = retry_after


@gin.configurable
class OpenAICompatibleBackend:
  """Chat completions from an OpenAI-compatible server.

  The base URL comes from `base_url` or the environment variable `base_url_env`; the API key only
  from the environment variable `api_key_env`, read when a request is sent and never stored on the
  object, pickled with it (Beam ships backends to workers) or logged. Servers that need no key
  (a local vLLM) get no Authorization header.

  Prefill: with `prefill_mode="continue"` the prefill is sent as a final assistant message with
  vLLM's `continue_final_message` / `add_generation_prompt` options, so the model continues it;
  with "drop" (for servers that cannot continue a message) it is not sent and the text is returned
  as the model wrote it.

  Retries: HTTP 429 and 5xx, timeouts, connection errors and malformed response bodies are retried
  up to `max_retries` times, waiting `initial_backoff_s * 2**attempt` seconds (with jitter, capped
  at `max_backoff_s`, or the server's Retry-After when it gives one). Other 4xx answers fail at
  once. Successful answers are cached under `cache_dir` by `request_key`.
  """

  name = "openai_compatible"

  def __init__(self, model: str = gin.REQUIRED, base_url: str | None = None, *,
               base_url_env: str = "OPENAI_BASE_URL", api_key_env: str = "OPENAI_API_KEY",
               max_concurrency: int = 8, max_retries: int = 4, initial_backoff_s: float = 1.0,
               max_backoff_s: float = 30.0, timeout_s: float = 120.0, cache_dir: str | None = None,
               prefill_mode: str = "continue", extra_body: Mapping[str, Any] | None = None):
    base_url = base_url or os.environ.get(base_url_env)
    if not base_url:
      raise ValueError(f"OpenAICompatibleBackend needs base_url or the environment variable {base_url_env}")
    if prefill_mode not in ("continue", "drop"):
      raise ValueError(f"prefill_mode must be 'continue' or 'drop', not {prefill_mode!r}")
    if max_concurrency < 1 or max_retries < 0:
      raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
    self.model = model
    self.base_url = base_url.rstrip("/")
    self.api_key_env = api_key_env
    self.max_concurrency = max_concurrency
    self.max_retries = max_retries
    self.initial_backoff_s = initial_backoff_s
    self.max_backoff_s = max_backoff_s
    self.timeout_s = timeout_s
    self.cache_dir = cache_dir
    self.prefill_mode = prefill_mode
    self.extra_body = dict(extra_body or {})
    self._client: httpx.Client | None = None

  def __repr__(self) -> str:
    return f"OpenAICompatibleBackend(model={self.model!r}, base_url={self.base_url!r})"

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k != "_client"}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._client = None

  @property
  def client(self) -> httpx.Client:
    if self._client is None:
      limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
      self._client = httpx.Client(timeout=self.timeout_s, limits=limits)
    return self._client

  def close(self) -> None:
    if self._client is not None:
      self._client.close()
      self._client = None

  def request_body(self, request: GenerationRequest) -> dict[str, Any]:
    """The JSON body sent to /chat/completions (also what the cache key hashes)."""
    if not request.messages:
      raise ValueError(f"{request.task} request has no chat messages for an LLM backend")
    messages = [dict(m) for m in request.messages]
    body: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens,
                            "temperature": request.temperature, "seed": request.seed}
    if request.prefill and self.prefill_mode == "continue":
      messages.append({"role": "assistant", "content": request.prefill})
      body.update(continue_final_message=True, add_generation_prompt=False)
    body["messages"] = messages
    body.update(self.extra_body)
    return body

  def _cache_file(self, key: str) -> Path | None:
    return None if self.cache_dir is None else Path(self.cache_dir) / key[:2] / f"{key}.json"

  def _post(self, body: Mapping[str, Any]) -> tuple[str, str | None]:
    """One attempt: (content, finish_reason); raises _RetryableError or RuntimeError."""
    headers = {"Content-Type": "application/json"}
    api_key = os.environ.get(self.api_key_env)
    if api_key:
      headers["Authorization"] = f"Bearer {api_key}"
    try:
      response = self.client.post(f"{self.base_url}/chat/completions", json=body, headers=headers)
    except httpx.TimeoutException as e:
      raise _RetryableError(f"timeout ({type(e).__name__})") from None
    except httpx.TransportError as e:
      raise _RetryableError(f"connection error ({type(e).__name__})") from None
    if response.status_code == 429 or response.status_code >= 500:
      retry_after = response.headers.get("retry-after")
      try:
        wait = float(retry_after) if retry_after is not None else None
      except ValueError:
        wait = None
      raise _RetryableError(f"HTTP {response.status_code}", wait)
    if response.status_code >= 400:
      raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
    try:
      choice = response.json()["choices"][0]
      content = choice["message"]["content"]
      if not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}")
    except (ValueError, KeyError, IndexError, TypeError) as e:
      raise _RetryableError(f"malformed response body ({type(e).__name__}: {e})") from None
    return content, choice.get("finish_reason")

  def _generate_one(self, request: GenerationRequest) -> Generation:
    body = self.request_body(request)
    prefix = request.prefill if request.prefill and self.prefill_mode == "continue" else ""
    key = request_key(self.model, body)
    metadata = {"backend": self.name, "model": self.model, "template": False, "cached": False,
                "cache_key": key}
    cache_file = self._cache_file(key)
    if cache_file is not None and cache_file.is_file():
      cached = json.loads(cache_file.read_text(encoding="utf-8"))
      return Generation(cached["text"], {**metadata, **cached["metadata"], "cached": True})
    error = ""
    for attempt in range(self.max_retries + 1):
      try:
        content, finish_reason = self._post(body)
      except RuntimeError as e:
        return Generation("", {**metadata, "attempts": attempt + 1}, error=str(e))
      except _RetryableError as e:
        error = str(e)
        if attempt == self.max_retries:
          break
        wait = min(self.max_backoff_s, self.initial_backoff_s * 2**attempt * (0.5 + random.random() / 2))
        if e.retry_after is not None:
          wait = min(self.max_backoff_s, max(wait, e.retry_after))
        log.info("%s request failed (%s); retry %d/%d in %.2fs", self.name, error, attempt + 1,
                 self.max_retries, wait)
        time.sleep(wait)
        continue
      metadata.update(attempts=attempt + 1, finish_reason=finish_reason)
      generation = Generation(prefix + content, metadata)
      if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, encoding="utf-8") as f:
          json.dump({"text": generation.text, "metadata": {"finish_reason": finish_reason}}, f)
        os.replace(f.name, cache_file)
      return generation
    return Generation("", {**metadata, "attempts": self.max_retries + 1},
                      error=f"gave up after {self.max_retries + 1} attempts: {error}")

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    if len(requests) <= 1:
      return [self._generate_one(r) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
      return list(pool.map(self._generate_one, requests))


@gin.configurable
class TemplateBackend:
  """Offline, deterministic text from hand-written templates (`safejax.data.templates`) that
  transforms the document it is given.

  Writes the rephrase / refuseweb / moral_education tasks from a request's `fields`; the same
  fields and seed always give the same text. Where the fields carry the document's `text`, its
  sentences are rated one by one (by `sentence_scorer`, else the rubric's indicative terms) and the
  templates keep the sentences rated 0, ask the document's own request and name its topic. It cannot
  annotate or judge.

  Args:
    sentence_scorer: rates sentences 0..5: a saved scorer's directory (`safejax.safety.load_scorer`,
      loaded on first use and never pickled) or an object with `score(texts) -> int array`; None
      rates by the rubric's indicative terms (`templates.lexical_scores`).
  """

  name = "template"

  def __init__(self, sentence_scorer: Any = None):
    self.sentence_scorer = sentence_scorer
    self._scorer = None if isinstance(sentence_scorer, str) else sentence_scorer

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    if isinstance(self.sentence_scorer, str):
      state["_scorer"] = None  # workers load it themselves
    return state

  @property
  def rater(self) -> str:
    if self.sentence_scorer is None:
      return "lexical"
    return self.sentence_scorer if isinstance(self.sentence_scorer, str) else type(self.sentence_scorer).__name__

  def rate(self, sentences: Sequence[str]) -> list[int]:
    """Scores 0..5 of sentences (one scorer call for all of them)."""
    if not sentences:
      return []
    if self.sentence_scorer is None:
      return templates.lexical_scores(sentences)
    if self._scorer is None:
      from safejax.safety import load_scorer

      self._scorer = load_scorer(self.sentence_scorer)
    scores = np.asarray(self._scorer.score(list(sentences)))
    if scores.shape != (len(sentences),):
      raise ValueError(f"the sentence scorer returned shape {scores.shape} for {len(sentences)} sentences")
    return [int(x) for x in scores]

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    for request in requests:
      if request.task not in templates.TASKS:
        raise ValueError(f"the template backend writes {sorted(templates.TASKS)}, not {request.task!r}; "
                         "use an LLM backend for it")
    split = [templates.split_sentences(r.fields["text"]) if r.fields.get("text") else [] for r in requests]
    flat = self.rate([s for sentences in split for s in sentences])
    out, i = [], 0
    for request, sentences in zip(requests, split):
      fields = dict(request.fields)
      if sentences:
        fields.update(sentences=sentences, sentence_scores=flat[i:i + len(sentences)])
        i += len(sentences)
      text = templates.TASKS[request.task](fields, np.random.default_rng(request.seed))
      out.append(Generation(text, {"backend": self.name, "model": templates.TEMPLATE_VERSION, "template": True,
                                   "cached": False, "sentence_rater": self.rater,
                                   "sentences_kept": sum(s == 0 for s in fields.get("sentence_scores", ())),
                                   "sentences_dropped": sum(s > 0 for s in fields.get("sentence_scores", ()))}))
    return out


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
