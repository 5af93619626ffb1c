"""The request side of `safejax serve`: OpenAI's request bodies as pydantic models, and its errors.

Bodies are validated strictly (no type coercion, no unknown fields), and every problem becomes an
`APIError` that the server renders in OpenAI's error shape with a 4xx status:

    {"error": {"message": "Invalid type for 'max_tokens': expected an integer, but got a string instead.",
               "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_type"}}

Besides OpenAI's fields, a request may carry `safejax` (the decoding method and its knobs, see
`SafejaxOptions`) and vLLM's `truncate_prompt_tokens`; chat requests also take vLLM's
`add_generation_prompt` and `continue_final_message`, which `safejax.backends` sends with prefills.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from safejax.decoding import METHODS


class APIError(Exception):
  """An error answered in OpenAI's shape: HTTP status, message, offending parameter and code."""

  def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
               error_type: str = "invalid_request_error"):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.error_type = status, message, param, code, error_type

  def body(self) -> dict[str, Any]:
    return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
             "bool_type": "a boolean", "list_type": "an array", "dict_type": "an object", "model_type": "an object"}


def _json_type(value: Any) -> str:
  for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                     (list, "an array"), (dict, "an object")):
    if isinstance(value, kind):
      return name
  return "null" if value is None else type(value).__name__


def _param(loc: tuple[Any, ...]) -> str:
  """('messages', 0, 'content') -> 'messages[0].content'."""
  param = ""
  for part in loc:
    param += f"[{part}]" if isinstance(part, int) else (f".{part}" if param else str(part))
  return param


def from_validation_error(error: ValidationError) -> APIError:
  """The first problem pydantic found, worded as OpenAI words it."""
  first = error.errors()[0]
  param, kind = _param(first["loc"]), first["type"]
  if kind == "missing":
    return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
  if kind == "extra_forbidden":
    return APIError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
  if kind in _EXPECTED:
    return APIError(400, f"Invalid type for '{param}': expected {_EXPECTED[kind]}, but got "
                    f"{_json_type(first['input'])} instead.", param=param, code="invalid_type")
  message = first["msg"].removeprefix("Value error, ")
  return APIError(400, f"Invalid value for '{param}': {message[0].lower()}{message[1:]}.", param=param,
                  code="invalid_value")


def _check_token_ids(ids: list[Any]) -> list[int]:
  if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
    raise ValueError("token ids must be non-negative integers")
  return ids


class _Strict(BaseModel):
  # No NaN or infinity either: JSON has neither, and 1e999 parses to inf.
  model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class SafejaxOptions(_Strict):
  """safejax's decoding knobs (the fields of `safejax.decoding.DecodingConfig`); unset ones keep
  the server's defaults. method: greedy | sample | beam | safebeam (default: greedy when
  temperature is 0, else sample)."""

  method: str | None = None
  top_k: int | None = Field(None, ge=0)
  beam_size: int | None = Field(None, ge=1)
  alpha: float | None = Field(None, ge=0)
  num_expand: int | None = Field(None, ge=1)
  drop_fraction: float | None = Field(None, ge=0, le=1)
  tag_threshold: float | None = Field(None, ge=0, le=1)
  suppress_tag: bool | None = None
  tag_penalty: float | None = None
  tag_stop_threshold: float | None = Field(None, ge=0, le=1)

  @field_validator("method")
  @classmethod
  def _known_method(cls, method: str | None) -> str | None:
    if method is not None and method not in METHODS:
      raise ValueError(f"unknown decoding method {method!r}; known: {', '.join(METHODS)}")
    return method


class _GenerationRequest(_Strict):
  """The fields completions and chat share. None means the default."""

  model: str
  temperature: float | None = Field(None, ge=0, le=2)
  top_p: float | None = Field(None, gt=0, le=1)
  n: int | None = Field(None, ge=1)
  stop: Any = Field(None, validate_default=True)
  seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)  # a 64-bit random key, as vLLM allows
  stream: bool | None = None
  user: str | None = None
  truncate_prompt_tokens: int | None = Field(None, ge=1)
  safejax: SafejaxOptions | None = None

  @field_validator("stop", mode="before")
  @classmethod
  def _stop_strings(cls, stop: Any) -> list[str]:
    stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
      raise ValueError("expected a non-empty string or an array of non-empty strings")
    if len(stop) > 4:
      raise ValueError(f"at most 4 stop sequences are allowed, got {len(stop)}")
    return stop

  @field_validator("stream")
  @classmethod
  def _no_streaming(cls, stream: bool | None) -> bool | None:
    if stream:
      raise ValueError("streaming is not supported by safejax serve; send stream=false")
    return stream


class CompletionRequest(_GenerationRequest):
  """POST /v1/completions. prompt: a string, an array of strings, an array of token ids, or an
  array of arrays of token ids (each array one prompt). logprobs: 0..5 top tokens per position."""

  prompt: Any
  max_tokens: int | None = Field(None, ge=0)
  echo: bool | None = None
  logprobs: int | None = Field(None, ge=0, le=5)

  @field_validator("prompt", mode="before")
  @classmethod
  def _prompt_forms(cls, prompt: Any) -> list[str] | list[list[int]]:
    if isinstance(prompt, str):
      return [prompt]
    if isinstance(prompt, list) and prompt:
      if all(isinstance(p, str) for p in prompt):
        return prompt
      if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return [_check_token_ids(prompt)]
      if all(isinstance(p, list) and p for p in prompt):
        return [_check_token_ids(p) for p in prompt]
    raise ValueError("expected a string, an array of strings, an array of token ids or an array of "
                     "non-empty arrays of token ids")


class TextPart(_Strict):
  type: str
  text: str

  @field_validator("type")
  @classmethod
  def _text_only(cls, kind: str) -> str:
    if kind != "text":
      raise ValueError(f"only text content parts are supported, got {kind!r}")
    return kind


class ChatMessage(_Strict):
  role: str
  content: str | list[TextPart]
  name: str | None = None

  def text(self) -> str:
    return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatCompletionRequest(_GenerationRequest):
  """POST /v1/chat/completions. logprobs: return the reply's token log-probabilities, with
  top_logprobs (0..20) alternatives per token."""

  messages: list[ChatMessage] = Field(min_length=1)
  max_tokens: int | None = Field(None, ge=0)
  max_completion_tokens: int | None = Field(None, ge=0)
  logprobs: bool | None = None
  top_logprobs: int | None = Field(None, ge=0, le=20)
  add_generation_prompt: bool = True
  continue_final_message: bool = False


def parse(model: type[BaseModel], body: Any) -> Any:
  """Validates a decoded JSON body; raises APIError (400) on any problem."""
  if not isinstance(body, dict):
    raise APIError(400, f"The request body must be a JSON object, not {_json_type(body)}.", code="invalid_type")
  try:
    return model.model_validate(body)
  except ValidationError as e:
    raise from_validation_error(e) from None
