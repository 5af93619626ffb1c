"""`OpenAICompatibleBackend`: chat completions from any OpenAI-compatible endpoint (vLLM, TGI, a hosted
API, `safejax serve`), with bounded concurrency, retries with exponential backoff, timeouts and an
on-disk cache keyed by a hash of the request."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import httpx

from safejax.generation import Generation, GenerationRequest

log = logging.getLogger(__name__)


def request_key(base_url: str, model: str, body: Mapping[str, Any]) -> str:
  """The cache key of a request: SHA-256 of the endpoint, the model and the canonical JSON request
  body (two servers may serve different models under one name: they must not share answers)."""
  canonical = json.dumps({"base_url": base_url.rstrip("/"), "model": model, "body": body}, sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
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
    """The JSON body sent to /chat/completions (also what the cache key hashes).

    Raises:
      ValueError: the request has no chat messages (a template-only request: the caller's mistake,
        raised at once by `generate` too, see `safejax.generation`).
    """
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
    key = request_key(self.base_url, self.model, body)
    metadata = {"backend": self.name, "model": self.model, "template": False, "cached": False,
                "cache_key": key}
    cache_file = self._cache_file(key)
    if cache_file is not None and cache_file.is_file():
      try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
        return Generation(cached["text"], {**metadata, **cached["metadata"], "cached": True})
      except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged entry is a miss, then rewritten
        log.warning("ignoring the unreadable cache entry %s (%s: %s)", cache_file, type(e).__name__, e)
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
        try:
          cache_file.parent.mkdir(parents=True, exist_ok=True)
          with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, encoding="utf-8") as f:
            json.dump({"text": generation.text, "metadata": {"finish_reason": finish_reason}}, f)
          os.replace(f.name, cache_file)
        except OSError as e:  # the answer stands; only its caching failed
          log.warning("could not cache %s (%s)", cache_file, e)
      return generation
    return Generation("", {**metadata, "attempts": self.max_retries + 1},
                      error=f"gave up after {self.max_retries + 1} attempts: {error}")

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
    if len(requests) <= 1:
      return [self._generate_one(r) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
      return list(pool.map(self._generate_one, requests))
