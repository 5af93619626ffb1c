"""`safejax serve`: an OpenAI-compatible HTTP server over a checkpoint, with SafeBeam.

  safejax serve --gin.serve.checkpoint_dir="'/tmp/demo'" --gin.serve.port=8000

Endpoints (JSON in and out; errors in OpenAI's shape, see `safejax.serve.protocol`):
  POST /v1/completions       prompt (string(s) or token ids), max_tokens, temperature, top_p, n,
                             stop, seed, logprobs (0..5), echo; the legacy completions answer with
                             choices[].text, .logprobs {tokens, token_logprobs, top_logprobs,
                             text_offset}, .finish_reason, and usage.
  POST /v1/chat/completions  messages rendered by `format_chat` (the project's one chat template);
                             the reply ends at END_OF_TURN.
  GET  /v1/models, GET /health, GET /stats (batching counters)
  GET  /tokenizer_info, POST /tokenize, POST /detokenize   vLLM's tokenizer endpoints, so clients
                             such as lm-eval-harness tokenize with the model's own vocabulary.

Decoding: temperature 0 decodes greedily, otherwise samples (OpenAI's default temperature is 1).
The extension field "safejax" picks any method of `safejax.decoding` with its knobs, e.g.
{"safejax": {"method": "safebeam", "beam_size": 4, "num_expand": 8, "drop_fraction": 0.5}};
unset knobs keep the server's `DecodingConfig` (gin). n <= beam_size returns the n best beams.
A generation cut by the harm tag (SafeBeam's tag stop, or `tag_stop_threshold`) has
finish_reason "content_filter". Reserved tokens, the harm tag among them, never reach returned
text: they detokenize to "" (also in logprobs' tokens), and their spelled-out strings are removed.
Nor do they come from a client's text: plain text (a completions prompt, a chat message, /tokenize)
holding a reserved token's string (the harm tag, a role marker) gets 400 naming it; a client that
means reserved tokens sends token ids (`safejax.decoding.reserved_tokens_in`).

Tokens and log-probabilities: every sequence the model sees starts with the start token (id 0, as
in training and `LoglikelihoodModel`); the server adds it unless a token-id prompt already begins with
it. So the first prompt token has a log-probability too (null only for a client-given start
token), and echo's token_logprobs equal `LoglikelihoodModel`'s per-token log-probabilities.
token_logprobs and top_logprobs are the model's own (before temperature or top_p); top_logprobs
maps the top `logprobs` tokens' texts, and the chosen one's, to their log-probabilities;
text_offset indexes choices[].text. lm-eval-harness scores log-likelihood tasks with echo=True,
max_tokens=1, logprobs=1 and reads token_logprobs[context_length:-1].

Limits: prompt tokens + max_tokens <= ServerConfig.max_context_length, else 400 (or, with vLLM's
truncate_prompt_tokens=k, the prompt is cut to its last k tokens first). Bodies over
ServerConfig.max_body_bytes get 413, more than max_prompts_per_request prompts 400; values the
model cannot take (a seed beyond 64 bits, top_k beyond the vocabulary, beam_size * num_expand
beyond the tokens a step can choose from, NaN or infinite numbers, lone surrogates) get 400. Any
other failure is a 500 in OpenAI's shape that names a request id and nothing internal; the
traceback is logged under that id (tests/test_fuzz_serve.py keeps it so). Concurrent requests are
batched (`safejax.serve.engine`); `ServerConfig` sets the batch size and the waiting window.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import gin
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from safejax.chat_template import format_chat
from safejax.decoding import DecodingConfig, reserved_tokens_in
from safejax.model.llama import Decoder
from safejax.serve.engine import Candidate, Engine, TokenScores, piece_text, token_texts
from safejax.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse
from safejax.vocab import END_OF_TURN, SPECIAL_TOKENS, Vocabulary, strip_special_tokens

log = logging.getLogger(__name__)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """Limits and batching of `safejax serve`.

  max_context_length: most prompt + completion tokens per sequence (the start token aside).
  max_batch_size: most rows per batched call (a power of two keeps padding lowest).
  batch_window_ms: how long the oldest waiting request waits for others to batch with.
  max_n: most choices per prompt. max_beam_size: largest beam (beam, safebeam).
  max_body_bytes: largest request body; a larger one is answered 413 before it is read whole.
  max_prompts_per_request: most prompts in one completions request (an array of prompts).
  max_programs: most compiled programs kept (least recently used dropped): bounds the memory
    that compilations take, whatever the mix of requests (`safejax.serve.engine`).
  """

  max_context_length: int = 1024
  max_batch_size: int = 16
  batch_window_ms: float = 5.0
  max_n: int = 8
  max_beam_size: int = 8
  max_body_bytes: int = 1 << 20
  max_prompts_per_request: int = 64
  max_programs: int = 32

  def __post_init__(self):
    if not 1 <= self.max_n <= self.max_batch_size:
      raise ValueError(f"max_n must lie in 1..max_batch_size={self.max_batch_size}, got {self.max_n}")
    if self.max_context_length < 1 or self.max_beam_size < 1 or self.batch_window_ms < 0:
      raise ValueError("max_context_length and max_beam_size must be >= 1, batch_window_ms >= 0")
    if self.max_body_bytes < 1 or self.max_prompts_per_request < 1 or self.max_programs < 1:
      raise ValueError("max_body_bytes, max_prompts_per_request and max_programs must be >= 1")


@dataclasses.dataclass(frozen=True)
class _Prompt:
  """A prompt's ids as the client sees them, and whether they begin with the start token."""

  ids: list[int]
  starts: bool

  def model_ids(self, start_id: int) -> list[int]:
    return self.ids if self.starts else [start_id, *self.ids]


@dataclasses.dataclass(frozen=True)
class _Choice:
  """One finished choice: the prompt, its kept generated ids and texts, and why it ended."""

  prompt: _Prompt
  ids: list[int]
  texts: list[str]  # token_texts of prompt.ids + ids; the generated ones cut at a stop string
  finish_reason: str


def _cut(candidate: Candidate, max_tokens: int, stop_ids: set[int]) -> tuple[list[int], str]:
  """The generated ids to return (without a stop token) and the finish reason."""
  for i, token in enumerate(candidate.ids[:max_tokens]):
    if token in stop_ids:
      return candidate.ids[:i], "stop"
  if candidate.tag_stopped and len(candidate.ids) < max_tokens:
    return candidate.ids, "content_filter"
  return candidate.ids[:max_tokens], "length"


def _cut_at_stop_strings(texts: list[str], stops: Sequence[str]) -> list[str] | None:
  """Token texts of a completion up to the first stop string (excluded), or None if none occurs."""
  text = "".join(texts)
  found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
  if not found:
    return None
  cut, kept, offset = min(found), [], 0
  for piece in texts:
    if offset >= cut:
      break
    kept.append(piece[:cut - offset])
    offset += len(piece)
  return kept


class SafejaxServer:
  """The OpenAI-compatible application over one model; `app` is the Starlette (ASGI) app."""

  def __init__(self, model: Decoder, vocab: Vocabulary, model_name: str,
               config: ServerConfig | None = None, decoding: DecodingConfig | None = None, *,
               start_id: int | None = None):
    config, decoding = config or ServerConfig(), decoding or DecodingConfig()
    self.vocab, self.model_name, self.config, self.decoding = vocab, model_name, config, decoding
    self.start_id = vocab.decoder_start_id if start_id is None else start_id
    self.engine = Engine(model, vocab, max_batch_size=config.max_batch_size,
                         batch_window_s=config.batch_window_ms / 1000, max_programs=config.max_programs)
    self.created = int(time.time())
    self._requests: dict[str, int] = {}
    self._requests_lock = threading.Lock()
    guard = self._guarded
    routes = [
        Route("/v1/completions", guard(self.completions), methods=["POST"]),
        Route("/v1/chat/completions", guard(self.chat_completions), methods=["POST"]),
        Route("/v1/models", guard(self.models), methods=["GET"]),
        Route("/health", guard(self.health), methods=["GET"]),
        Route("/stats", guard(self.stats), methods=["GET"]),
        Route("/tokenizer_info", guard(self.tokenizer_info), methods=["GET"]),
        Route("/tokenize", guard(self.tokenize), methods=["POST"]),
        Route("/detokenize", guard(self.detokenize), methods=["POST"]),
    ]
    handlers = {APIError: self._api_error, HTTPException: self._http_error, Exception: self._server_error}
    self.app = Starlette(routes=routes, exception_handlers=handlers)

  def close(self) -> None:
    self.engine.close()

  # -- errors -------------------------------------------------------------------------------------

  async def _api_error(self, request: Request, error: APIError) -> JSONResponse:
    self._count(f"error_{error.status}")
    return JSONResponse(error.body(), status_code=error.status)

  async def _http_error(self, request: Request, error: HTTPException) -> JSONResponse:
    message = {404: f"Unknown URL: {request.method} {request.url.path}",
               405: f"Method {request.method} is not allowed on {request.url.path}"}.get(error.status_code, error.detail)
    return await self._api_error(request, APIError(error.status_code, message))

  def _internal_error(self, request: Request, error: BaseException) -> JSONResponse:
    """A 500 in OpenAI's shape that shows no internals; the traceback goes to the log under a
    request id, which the answer (and its x-request-id header) carries."""
    request_id = f"req_{uuid.uuid4().hex}"
    log.error("request %s (%s %s) failed", request_id, request.method, request.url.path,
              exc_info=(type(error), error, error.__traceback__))
    self._count("error_500")
    body = APIError(500, f"The server had an error while processing your request; request id {request_id}.",
                    error_type="server_error").body()
    return JSONResponse(body, status_code=500, headers={"x-request-id": request_id})

  def _guarded(self, endpoint):
    """`endpoint`, with any unexpected exception answered by `_internal_error`. (Starlette's own
    handler for Exception re-raises after answering, which also drops the keep-alive connection.)"""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> JSONResponse:
      try:
        return await endpoint(request)
      except (APIError, HTTPException):
        raise
      except Exception as error:  # noqa: BLE001  the server's fault, whatever it is: a 500, the server goes on
        return self._internal_error(request, error)

    return guarded

  async def _server_error(self, request: Request, error: Exception) -> JSONResponse:
    # Errors outside the endpoints (Starlette re-raises after this answer, and the server goes on).
    return self._internal_error(request, error)

  def _count(self, name: str) -> None:
    with self._requests_lock:
      self._requests[name] = self._requests.get(name, 0) + 1

  # -- small endpoints ----------------------------------------------------------------------------

  async def health(self, request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})

  async def models(self, request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{
        "id": self.model_name, "object": "model", "created": self.created, "owned_by": "safejax",
        "max_model_len": self.config.max_context_length}]})

  async def stats(self, request: Request) -> JSONResponse:
    with self._requests_lock:
      requests = dict(self._requests)
    return JSONResponse({"requests": requests, "engine": self.engine.stats()})

  async def tokenizer_info(self, request: Request) -> JSONResponse:
    # No bos_token: the start token is the server's business (it adds it to every sequence).
    tokens = self.vocab.hf_special_tokens
    return JSONResponse({"eos_token": tokens["eos_token"], "pad_token": tokens["pad_token"], "bos_token": None,
                         "unk_token": tokens["unk_token"], "model_max_length": self.config.max_context_length,
                         "tokenizer_class": {"sentencepiece": "SentencePiece"}.get(self.vocab.kind, "tokenizers")})

  async def tokenize(self, request: Request) -> JSONResponse:
    body = await self._json(request)
    prompt = body.get("prompt") if isinstance(body, dict) else None
    add_special = body.get("add_special_tokens", True) if isinstance(body, dict) else None
    if not isinstance(prompt, str) or not isinstance(add_special, bool):
      raise APIError(400, "Expected {\"prompt\": string, \"add_special_tokens\": boolean}.", param="prompt",
                     code="invalid_type")
    # A text that is exactly a control token's name is that token, as a Hugging Face tokenizer
    # reads it (clients look up the EOS id this way); safejax's encoding alone never yields them.
    control = {name: i for name, i in self.vocab.special_ids.items() if name not in SPECIAL_TOKENS}
    tokens = [control[prompt]] if prompt in control else self._plain_text_ids(prompt, "prompt")
    if add_special:
      tokens = [self.start_id, *tokens]
    return JSONResponse({"count": len(tokens), "max_model_len": self.config.max_context_length, "tokens": tokens})

  async def detokenize(self, request: Request) -> JSONResponse:
    body = await self._json(request)
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
      raise APIError(400, "Expected {\"tokens\": array of integers}.", param="tokens", code="invalid_type")
    return JSONResponse({"prompt": "".join(token_texts(self.vocab, tokens))})

  # -- completions --------------------------------------------------------------------------------

  async def completions(self, request: Request) -> JSONResponse:
    self._count("completions")
    body = parse(CompletionRequest, await self._json(request))
    self._check_model(body.model)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    n = body.n or 1
    if len(body.prompt) > self.config.max_prompts_per_request:
      raise APIError(400, f"Invalid value for 'prompt': {len(body.prompt)} prompts exceed this server's limit of "
                     f"{self.config.max_prompts_per_request} per request.", param="prompt", code="invalid_value")
    decoding = self._decoding(body, max_tokens, n)
    prompts = [self._prompt(p, body.truncate_prompt_tokens, max_tokens, "prompt") for p in body.prompt]
    choices = await self._generate(prompts, decoding, max_tokens, n, body.seed, {self.vocab.eos_id}, body.stop)
    logprobs = None
    if body.logprobs is not None:
      logprobs = await asyncio.gather(*(self._completion_logprobs(c, body.logprobs, bool(body.echo)) for c in choices))
    answers = []
    for index, choice in enumerate(choices):
      shown = choice.texts if body.echo else choice.texts[len(choice.prompt.ids):]
      answers.append({"index": index, "text": _safe("".join(shown)),
                      "logprobs": None if logprobs is None else logprobs[index],
                      "finish_reason": choice.finish_reason})
    return JSONResponse({
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
        "model": self.model_name, "choices": answers, "usage": _usage(prompts, choices)})

  async def _completion_logprobs(self, choice: _Choice, top: int, echo: bool) -> dict[str, Any]:
    """OpenAI's legacy logprobs object of one choice (the prompt's tokens too with echo)."""
    first = 0 if echo else len(choice.prompt.ids)
    positions = await self._token_log_probs(choice, first)
    shown_ids = choice.prompt.ids + choice.ids
    tokens, token_logprobs, top_logprobs, text_offset, offset = [], [], [], [], 0
    for i, (log_prob, alternatives) in zip(range(first, len(choice.texts)), positions):
      tokens.append(choice.texts[i])
      text_offset.append(offset)
      offset += len(choice.texts[i])
      token_logprobs.append(log_prob)
      if alternatives is None:
        top_logprobs.append(None)
        continue
      shown = {}
      for token, value in alternatives[:top] + [(shown_ids[i], log_prob)]:
        shown.setdefault(piece_text(self.vocab, token), value)
      top_logprobs.append(shown)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": text_offset}

  async def _token_log_probs(self, choice: _Choice, first: int) -> list[tuple[float | None, list | None]]:
    """For each shown token from index `first` of prompt + kept ids: (log-prob, [(id, log-prob)]
    of the MAX_TOP_LOGPROBS most likely), both None for a client-given start token."""
    shown = choice.prompt.ids + choice.ids
    sequence = choice.prompt.model_ids(self.start_id) + choice.ids
    if first >= len(shown):
      return []
    if len(sequence) < 2:  # nothing but a client-given start token
      return [(None, None)]
    scores: TokenScores = await asyncio.wrap_future(self.engine.submit_score(sequence))
    lag = 0 if choice.prompt.starts else 1  # shown index i is sequence index i + lag, scored at i + lag - 1
    result = []
    for i in range(first, len(shown)):
      at = i + lag - 1
      if at < 0:
        result.append((None, None))
      else:
        result.append((float(scores.log_probs[at]), [(int(t), float(v)) for t, v in
                                                     zip(scores.top_ids[at], scores.top_log_probs[at])]))
    return result

  # -- chat ---------------------------------------------------------------------------------------

  async def chat_completions(self, request: Request) -> JSONResponse:
    self._count("chat_completions")
    body = parse(ChatCompletionRequest, await self._json(request))
    self._check_model(body.model)
    if body.max_tokens is not None and body.max_completion_tokens is not None:
      raise APIError(400, "Give max_tokens or max_completion_tokens, not both.", param="max_tokens",
                     code="invalid_value")
    if body.top_logprobs is not None and not body.logprobs:
      raise APIError(400, "top_logprobs needs logprobs=true.", param="top_logprobs", code="invalid_value")
    # The template's markers are the reserved ids the conversation needs; format_chat has refused
    # any reserved string in the messages themselves.
    prompt = self._prompt(list(self.vocab.encode(self._render_chat(body))), body.truncate_prompt_tokens, None,
                          "messages")
    requested = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
    # Unset: the server's default length, within what the context leaves.
    max_tokens = requested if requested is not None else max(
        0, min(self.decoding.max_new_tokens, self.config.max_context_length - len(prompt.ids)))
    self._check_length(len(prompt.ids), max_tokens, "messages")
    n = body.n or 1
    decoding = self._decoding(body, max_tokens, n)
    stop_ids = {self.vocab.token_id(END_OF_TURN), self.vocab.eos_id}
    choices = await self._generate([prompt], decoding, max_tokens, n, body.seed, stop_ids, body.stop,
                                   stop_id=self.vocab.token_id(END_OF_TURN))
    top = body.top_logprobs or 0
    answers = []
    for index, choice in enumerate(choices):
      reply = "".join(choice.texts[len(prompt.ids):])
      if not body.continue_final_message:
        reply = reply.removeprefix(" ")  # the template's space after the assistant marker
      logprobs = None
      if body.logprobs:
        positions = await self._token_log_probs(choice, len(prompt.ids))
        logprobs = {"content": [
            {"token": token, "logprob": value, "bytes": list(token.encode("utf-8")),
             "top_logprobs": [{"token": piece_text(self.vocab, t), "logprob": v,
                               "bytes": list(piece_text(self.vocab, t).encode("utf-8"))} for t, v in alternatives[:top]]}
            for token, (value, alternatives) in zip(choice.texts[len(prompt.ids):], positions)]}
      answers.append({"index": index, "message": {"role": "assistant", "content": _safe(reply)},
                      "logprobs": logprobs, "finish_reason": choice.finish_reason})
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": self.model_name, "choices": answers, "usage": _usage([prompt], choices)})

  def _render_chat(self, body: ChatCompletionRequest) -> str:
    """The conversation in `format_chat`'s template; continue_final_message leaves the last
    (assistant) turn open for the model to go on."""
    messages = [{"role": m.role, "content": _unicode(m.text(), f"messages[{i}].content")}
                for i, m in enumerate(body.messages)]
    if body.continue_final_message:
      if body.add_generation_prompt:
        raise APIError(400, "continue_final_message and add_generation_prompt cannot both be true.",
                       param="continue_final_message", code="invalid_value")
      if messages[-1]["role"] != "assistant":
        raise APIError(400, "continue_final_message needs the last message to be the assistant's.",
                       param="messages", code="invalid_value")
    try:
      text = format_chat(messages, add_generation_prompt=body.add_generation_prompt)
    except ValueError as e:
      raise APIError(400, f"Invalid value for 'messages': {e}.", param="messages", code="invalid_value") from None
    # Every turn format_chat renders is closed by END_OF_TURN; reopen the last one.
    return text.removesuffix(END_OF_TURN) if body.continue_final_message else text

  # -- shared steps -------------------------------------------------------------------------------

  async def _json(self, request: Request) -> Any:
    """The decoded JSON body, read up to `ServerConfig.max_body_bytes` (413 beyond). NaN and
    Infinity, which Python's json module accepts, are not JSON: 400."""
    limit = self.config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
      raise self._too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
      body += chunk
      if len(body) > limit:
        raise self._too_large(limit)

    def no_constant(name: str):
      raise ValueError(f"{name} is not a JSON value")

    try:
      return json.loads(bytes(body), parse_constant=no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
      raise APIError(400, f"The request body is not valid JSON ({e}).", code="invalid_json") from None
    except RecursionError:
      raise APIError(400, "The request body is not valid JSON (nested too deeply).", code="invalid_json") from None

  @staticmethod
  def _too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} bytes.",
                    code="request_too_large")

  def _check_model(self, model: str) -> None:
    if model != self.model_name:
      raise APIError(404, f"The model '{model}' does not exist; this server serves '{self.model_name}'.",
                     param="model", code="model_not_found")

  def _check_length(self, prompt_tokens: int, max_tokens: int, param: str) -> None:
    limit = self.config.max_context_length
    if prompt_tokens + max_tokens > limit:
      raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                     f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in your prompt; {max_tokens} for the "
                     "completion). Please reduce your prompt or completion length, or set truncate_prompt_tokens.",
                     param=param if prompt_tokens > limit else "max_tokens", code="context_length_exceeded")

  def _prompt(self, prompt: str | list[int], truncate: int | None, max_tokens: int | None, param: str) -> _Prompt:
    """Tokenizes (or checks) one prompt, cuts it to its last `truncate` tokens if asked, and
    checks it fits the context with max_tokens (None: the caller checks)."""
    if isinstance(prompt, str):
      ids = self._plain_text_ids(prompt, param)
    else:
      too_large = [t for t in prompt if t >= self.vocab.vocab_size]
      if too_large:
        raise APIError(400, f"Invalid value for '{param}': token id {too_large[0]} is outside the vocabulary "
                       f"(0..{self.vocab.vocab_size - 1}).", param=param, code="invalid_value")
      ids = list(prompt)
    if truncate is not None:
      ids = ids[-truncate:]
    if max_tokens is not None:
      self._check_length(len(ids), max_tokens, param)
    return _Prompt(ids, bool(ids) and ids[0] == self.start_id)

  def _plain_text_ids(self, text: str, param: str) -> list[int]:
    """The ids of a client's text, which must be valid Unicode and must not become any reserved
    id (`reserved_tokens_in`: plain text never does; reserved tokens come as token ids): 400."""
    ids = list(self.vocab.encode(_unicode(text, param)))
    reserved = reserved_tokens_in(self.vocab, ids)
    if reserved:
      raise APIError(400, f"Invalid value for '{param}': the text holds reserved token string(s) {reserved}; plain "
                     "text never becomes reserved token ids (send token ids to use them).", param=param,
                     code="invalid_value")
    return ids

  def _decoding(self, body: CompletionRequest | ChatCompletionRequest, max_tokens: int, n: int) -> DecodingConfig:
    """The request's `DecodingConfig`: the server's, overridden by the request's fields."""
    fields = body.safejax.model_dump(exclude_none=True) if body.safejax else {}
    temperature = self.decoding.temperature if body.temperature is None else body.temperature
    fields.setdefault("method", "greedy" if temperature == 0 else "sample")
    fields.update(temperature=temperature, max_new_tokens=max(max_tokens, 1))
    if body.top_p is not None:
      fields["top_p"] = body.top_p
    try:
      decoding = dataclasses.replace(self.decoding, **fields)
    except ValueError as e:  # gin appends a line naming the configurable; the first says it all
      raise APIError(400, f"Invalid value for 'safejax': {str(e).splitlines()[0]}.", param="safejax",
                     code="invalid_value") from None
    if n > self.config.max_n:
      raise APIError(400, f"n={n} is too large: this server returns at most {self.config.max_n} choices per "
                     "prompt.", param="n", code="invalid_value")
    if decoding.method in ("beam", "safebeam"):
      if decoding.beam_size > self.config.max_beam_size:
        raise APIError(400, f"Invalid value for 'safejax.beam_size': {decoding.beam_size} exceeds this server's "
                       f"limit of {self.config.max_beam_size}.", param="safejax.beam_size", code="invalid_value")
      if n > decoding.beam_size:
        raise APIError(400, f"n={n} is too large: beam search returns at most beam_size={decoding.beam_size} "
                       "choices.", param="n", code="invalid_value")
    choosable = self.vocab.vocab_size - 2  # every token but EOS and the harm tag
    if decoding.method == "sample" and decoding.top_k > self.vocab.vocab_size:
      raise APIError(400, f"Invalid value for 'safejax.top_k': {decoding.top_k} exceeds the vocabulary "
                     f"({self.vocab.vocab_size} tokens).", param="safejax.top_k", code="invalid_value")
    if decoding.method in ("beam", "safebeam"):
      candidates = decoding.beam_size * (decoding.num_expand if decoding.method == "safebeam" else 1)
      if candidates > choosable:
        what, param = (("beam_size * num_expand", "safejax.num_expand") if decoding.method == "safebeam"
                       else ("beam_size", "safejax.beam_size"))
        raise APIError(400, f"Invalid value for '{param}': {what} = {candidates} exceeds the {choosable} tokens a "
                       "step can choose from.", param=param, code="invalid_value")
    return decoding

  async def _generate(self, prompts: list[_Prompt], decoding: DecodingConfig, max_tokens: int, n: int,
                      seed: int | None, stop_ids: set[int], stops: Sequence[str], *,
                      stop_id: int | None = None) -> list[_Choice]:
    """n choices per prompt, prompt-major, each cut at max_tokens, a stop token or a stop string."""
    candidates: list[list[Candidate]] = [[Candidate([], False, False)] * n for _ in prompts]
    if max_tokens > 0:
      rows = n if decoding.method == "sample" else 1
      futures = [self.engine.submit_generate(p.model_ids(self.start_id), decoding, rows=rows, seed=seed,
                                             stop_id=self.vocab.eos_id if stop_id is None else stop_id)
                 for p in prompts]
      results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
      candidates = [r * n if decoding.method == "greedy" else r[:n] for r in results]
    choices = []
    for prompt, options in zip(prompts, candidates):
      for candidate in options:
        ids, reason = _cut(candidate, max_tokens, stop_ids)
        texts = token_texts(self.vocab, prompt.ids + ids)
        kept = _cut_at_stop_strings(texts[len(prompt.ids):], stops)
        if kept is not None:
          ids, reason = ids[:len(kept)], "stop"
          texts = texts[:len(prompt.ids)] + kept
        choices.append(_Choice(prompt, ids, texts, reason))
    return choices


def _unicode(text: str, param: str) -> str:
  """`text`, if it is valid Unicode; a lone surrogate (JSON "\\ud800") is no character: 400."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise APIError(400, f"Invalid value for '{param}': a lone surrogate ({text[e.start]!r}) at character {e.start} "
                   "is not valid Unicode.", param=param, code="invalid_value") from None
  return text


def _safe(text: str) -> str:
  """Returned text without reserved-token strings a model may have spelled out piece by piece."""
  return strip_special_tokens(text)[0]


def _usage(prompts: Sequence[_Prompt], choices: Sequence[_Choice]) -> dict[str, int]:
  prompt_tokens = sum(len(p.ids) for p in prompts)
  completion_tokens = sum(len(c.ids) for c in choices)
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}


@contextlib.contextmanager
def running(server: SafejaxServer, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
  """Serves `server` from a background thread (port 0: a free one); yields the base URL
  (http://host:port/v1) and stops the server and its engine on exit."""
  uvicorn_server = uvicorn.Server(uvicorn.Config(server.app, host=host, port=port, log_level="warning"))
  thread = threading.Thread(target=uvicorn_server.run, name="safejax-serve-http", daemon=True)
  thread.start()
  while not uvicorn_server.started:
    if not thread.is_alive():
      server.close()
      raise RuntimeError(f"the server did not start on {host}:{port}")
    time.sleep(0.01)
  bound_port = uvicorn_server.servers[0].sockets[0].getsockname()[1]
  try:
    yield f"http://{host}:{bound_port}/v1"
  finally:
    uvicorn_server.should_exit = True
    thread.join()
    server.close()


@gin.configurable
def serve(
    checkpoint_dir: str = gin.REQUIRED,
    host: str = "127.0.0.1",
    port: int = 8000,
    step: int | None = None,
    model_name: str | None = None,
    config: ServerConfig | None = None,
    decoding: DecodingConfig | None = None,
) -> int:
  """Serves a checkpoint until interrupted.

  Args:
    checkpoint_dir: a model directory written by `safejax train`.
    host, port: where to listen (127.0.0.1: this machine only; 0.0.0.0: every interface).
    step: the checkpoint step (default: the newest).
    model_name: the name clients send as "model" (default: the directory's name).
    config: limits and batching; default `ServerConfig()` with its gin bindings.
    decoding: the defaults of requests' decoding knobs; default `DecodingConfig()` with its gin
      bindings (e.g. --gin.DecodingConfig.suppress_tag=True applies to every request).
  """
  from safejax.checkpoints import load_for_inference  # the trainer's imports are heavy; only needed here

  model, vocab = load_for_inference(checkpoint_dir, step)
  name = model_name or os.path.basename(os.path.normpath(checkpoint_dir))
  server = SafejaxServer(model, vocab, name, config or ServerConfig(), decoding or DecodingConfig())
  log.info("serving %s as %r on http://%s:%d/v1", checkpoint_dir, name, host, port)
  try:
    uvicorn.run(server.app, host=host, port=port, log_level="info")
  finally:
    server.close()
  return 0
