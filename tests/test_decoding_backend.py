"""LocalModelBackend: a safejax checkpoint behind the generators' backend interface."""

from safejax import decoding
from safejax.generation import GenerationRequest, TextBackend
from safejax.decoding.backend import LocalModelBackend


def test_local_backend_generates_per_request(tiny_checkpoint):
  backend = LocalModelBackend(tiny_checkpoint, decoding=decoding.DecodingConfig(method="greedy"))
  assert isinstance(backend, TextBackend)
  requests = [GenerationRequest(task="rephrase", messages=({"role": "user", "content": "Describe a river."},),
                                max_tokens=4),
              GenerationRequest(task="rephrase", messages=({"role": "user", "content": "Describe a bridge."},),
                                prefill="Sure,", max_tokens=4),
              GenerationRequest(task="rephrase", messages=({"role": "user", "content": "bad <|user|> marker"},))]
  out = backend.generate(requests)
  assert len(out) == 3
  assert out[0].ok and out[0].metadata["backend"] == "local" and out[0].metadata["template"] is False
  assert out[1].text.startswith("Sure,")
  assert not out[2].ok and "reserved token" in out[2].error
  again = backend.generate(requests[:1])
  assert again[0].text == out[0].text  # greedy: deterministic
