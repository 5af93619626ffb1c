"""`LocalModelBackend`: a safejax checkpoint behind the text-generation interface (`safejax.generation`),
generating in this process, chat-formatted with safejax's template (`safejax.chat_template`).

It lives beside the decoder it drives; the other backends (`safejax.backends`) need no model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import gin

from safejax.chat_template import format_chat
from safejax.checkpoints import load_for_inference
from safejax.decoding.generate import DecodingConfig, generate_texts
from safejax.generation import Generation, GenerationRequest
from safejax.vocab import END_OF_TURN


@gin.configurable
class LocalModelBackend:
  """Generates with a safejax checkpoint in-process: each request's messages go through the chat
  template (`format_chat`), the prefill is appended after the ASSISTANT marker, and decoding stops
  at END_OF_TURN. Sampling uses the request's temperature and seed; `decoding` sets the rest
  (method "sample" by default; "greedy", "beam" or "safebeam" ignore the temperature).
  """

  name = "local"

  def __init__(self, model_dir: str = gin.REQUIRED, decoding: Any = None, batch_size: int = 8):
    self.model_dir = model_dir
    self.model, self.vocab = load_for_inference(model_dir)
    self.decoding = decoding or DecodingConfig(method="sample", top_p=0.95)
    self.batch_size = batch_size

  def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
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
      texts = generate_texts(self.model, self.vocab, [p for _, p in live], config,
                             batch_size=self.batch_size, progress=False,
                             stop_id=self.vocab.token_id(END_OF_TURN))
      for (i, _), generated in zip(live, texts):
        out[i] = Generation((requests[i].prefill or "") + generated.text, self._metadata())
    return out

  def _metadata(self) -> dict[str, Any]:
    return {"backend": self.name, "model": self.model_dir, "template": False, "cached": False}
