"""Fuzzing `safejax serve` over loopback (issue 13): random JSON bodies and field values against the
completions and chat endpoints never get a 500 that shows internals, and the server stays up.

The server listens on 127.0.0.1 only, with small limits so valid requests stay cheap (a tiny random
model, a 32-token context); the example budget is bounded (see `fuzzing.fuzz_settings`).
"""

from __future__ import annotations

import json
import math
import re

import httpx
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FRAGMENTS, fuzz_settings, hostile_text, tally_fixture
from safejax import checkpoints
from safejax.model import ModelConfig, build_model
from safejax.serve import app as S
from safejax.vocab import SPECIAL_TOKENS

MODEL = "fuzz"
tally = tally_fixture("serve")


@pytest.fixture(scope="module")
def server(tiny_vocab, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("fuzz_serve_model")
  config = ModelConfig(num_layers=1, embed_dim=16, num_heads=2, num_kv_heads=1, head_dim=8, mlp_dim=32,
                       vocab_size=tiny_vocab.vocab_size, init_std=0.3)
  checkpoints.write_model_files(str(model_dir), config, tiny_vocab)
  manager = checkpoints.checkpoint_manager(str(model_dir), async_save=False)
  manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.state(build_model(config)))))
  manager.close()
  model, vocab = checkpoints.load_for_inference(str(model_dir))
  limits = S.ServerConfig(max_context_length=32, max_batch_size=4, batch_window_ms=1, max_n=2, max_beam_size=2,
                          max_body_bytes=16_384, max_prompts_per_request=4)
  with S.running(S.SafejaxServer(model, vocab, MODEL, limits), host="127.0.0.1") as url:
    with httpx.Client(base_url=url, timeout=120) as client:
      yield client, vocab.vocab_size


# Field values: the edges of every bound, wrong types, and arbitrary JSON.
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
edge_int = st.sampled_from([-1, 0, 1, 2, 3, 31, 32, 33, 299, 300, 301, 2**31, 2**63 - 1, 2**63, -2**63 - 1, 2**64, 10**30])
edge_float = st.sampled_from([-1.0, 0.0, 1e-9, 0.5, 1.0, 2.0, 2.5, 1e308, -0.0])
prompt_text = st.one_of(hostile_text(), st.sampled_from(["The river", "A bird", ""]))
token_ids = st.lists(st.one_of(st.integers(0, 299), edge_int), min_size=0, max_size=6)
prompt = st.one_of(prompt_text, st.lists(prompt_text, min_size=0, max_size=6), token_ids,
                   st.lists(token_ids, max_size=5), json_value)
safejax_options = st.fixed_dictionaries({}, optional={
    "method": st.sampled_from(["greedy", "sample", "beam", "safebeam", "nope"]),
    "top_k": edge_int, "beam_size": edge_int, "num_expand": edge_int, "alpha": edge_float,
    "drop_fraction": edge_float, "tag_threshold": edge_float, "suppress_tag": st.booleans(),
    "tag_penalty": edge_float, "tag_stop_threshold": edge_float, "unknown": json_value})
shared_fields = {
    "max_tokens": st.one_of(edge_int, json_value), "temperature": st.one_of(edge_float, json_value),
    "top_p": edge_float, "n": edge_int, "seed": st.one_of(edge_int, json_value),
    "stop": st.one_of(st.text(max_size=4), st.lists(st.sampled_from(["\n", "", "a", FRAGMENTS[3]]), max_size=6)),
    "stream": st.booleans(), "user": json_value, "truncate_prompt_tokens": edge_int,
    "safejax": st.one_of(safejax_options, json_value), "surprise": json_value,
}
completion_body = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, "other", ""])},
    optional={"prompt": prompt, "echo": st.booleans(), "logprobs": st.one_of(edge_int, json_value), **shared_fields})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "", "user"]),
     "content": st.one_of(prompt_text, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]),
                                                                       "text": prompt_text}), max_size=2), json_value)},
    optional={"name": json_value})
chat_body = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, MODEL, "other"])},
    optional={"messages": st.one_of(st.lists(message, max_size=4), json_value), "logprobs": st.booleans(),
              "top_logprobs": edge_int, "max_completion_tokens": edge_int, "add_generation_prompt": st.booleans(),
              "continue_final_message": st.booleans(), **shared_fields})
endpoint_body = st.one_of(st.tuples(st.just("/completions"), completion_body),
                          st.tuples(st.just("/chat/completions"), chat_body))

# Internals a reply must never show: tracebacks, Python exception names, file paths.
INTERNALS = re.compile(r"Traceback|File \"|\.py\b|(?:Type|Value|Key|Index|Attribute|Runtime|Overflow|Recursion|"
                       r"Assertion|ZeroDivision|Memory)Error|Exception")


def _check(response: httpx.Response, tally, kind: str) -> None:
  body = response.json()  # always JSON
  assert response.status_code != 500, body
  text = json.dumps(body)
  if response.status_code == 200:
    for choice in body["choices"]:
      reply = choice.get("text", (choice.get("message") or {}).get("content", ""))
      assert not any(token in reply for token in SPECIAL_TOKENS)
    tally.add(kind, "200")
    return
  error = body["error"]
  assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
  assert not INTERNALS.search(error["message"]), error["message"]
  assert 400 <= response.status_code < 500, text
  tally.add(kind, f"{response.status_code} {error['code']}")


@fuzz_settings(120)
@given(case=endpoint_body)
def test_random_request_fields_never_get_a_500(server, case, tally):
  client, _ = server
  path, body = case
  response = client.post(path, content=json.dumps(body, allow_nan=True))
  _check(response, tally, f"POST {path} with random fields")


small_int = st.one_of(st.integers(0, 3), edge_int)
mutations = st.fixed_dictionaries({}, optional={
    "seed": edge_int, "n": st.integers(1, 3), "temperature": st.sampled_from([0.0, 0.7, 2.0]),
    "top_p": st.sampled_from([1e-9, 0.5, 1.0]), "stop": st.sampled_from([["e"], [" "], FRAGMENTS[:4]]),
    "logprobs": st.integers(0, 5), "echo": st.booleans(), "truncate_prompt_tokens": small_int,
    "max_tokens": st.sampled_from([0, 1, 3, 31, 32]),
    "prompt": st.one_of(st.sampled_from(["The river", "", " ".join(SPECIAL_TOKENS)]),
                        st.lists(st.integers(0, 299), min_size=1, max_size=4), st.lists(st.just("A bird"), max_size=5)),
    "safejax": st.fixed_dictionaries({"method": st.sampled_from(["greedy", "sample", "beam", "safebeam"])}, optional={
        "top_k": edge_int, "beam_size": st.one_of(st.integers(1, 2), edge_int), "num_expand": small_int,
        "alpha": edge_float, "drop_fraction": st.sampled_from([0.0, 0.5, 1.0]), "suppress_tag": st.booleans(),
        "tag_threshold": st.sampled_from([0.0, 0.5, 1.0]), "tag_penalty": edge_float,
        "tag_stop_threshold": st.sampled_from([0.0, 1.0])})})


@fuzz_settings(60)
@given(changes=mutations, chat=st.booleans())
def test_valid_requests_with_edge_values_never_get_a_500(server, changes, chat, tally):
  """Near-valid requests, so the edge values reach decoding (the bounds a 4xx must catch first)."""
  client, _ = server
  body = {"model": MODEL, "max_tokens": 2, **changes}
  if chat:
    prompt = body.pop("prompt", "The river")
    body.pop("echo", None)
    body["logprobs"] = "logprobs" in body
    body["messages"] = [{"role": "user", "content": prompt if isinstance(prompt, str) else "A bird"}]
  else:
    body.setdefault("prompt", "The river")
  _check(client.post("/chat/completions" if chat else "/completions", json=body), tally,
         f"POST {'/chat/completions' if chat else '/completions'} near-valid with edge values")


raw_body = st.one_of(
    st.binary(max_size=64),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"{", b"[" * 20_000 + b"]" * 20_000, b'{"model": "fuzz", "prompt": "\xff\xfe"}',
                     b'{"model": "fuzz", "prompt": "a", "temperature": NaN}', b'{"model": "fuzz", "prompt": "a", '
                     b'"max_tokens": 1, "temperature": Infinity}', b'{"model": "fuzz", "prompt": "\\ud800"}',
                     b'{"model": "fuzz", "prompt": ' + b'"x",' * 1000 + b'"x"}', b"x" * 20_000]))


@fuzz_settings(60)
@given(path=st.sampled_from(["/completions", "/chat/completions"]), data=raw_body)
def test_random_bytes_never_get_a_500(server, path, data, tally):
  client, _ = server
  _check(client.post(path, content=data, headers={"Content-Type": "application/json"}), tally, f"POST {path} raw bytes")


def test_the_server_is_up_after_the_fuzzing(server):
  client, _ = server
  root = str(client.base_url).rstrip("/").removesuffix("/v1")
  assert httpx.get(root + "/health").json() == {"status": "ok"}
  response = client.post("/completions", json={"model": MODEL, "prompt": "The river", "max_tokens": 2})
  assert response.status_code == 200 and math.isfinite(response.json()["usage"]["total_tokens"])


@fuzz_settings(80)
@given(text=hostile_text(), path=st.sampled_from(["/completions", "/chat/completions", "/tokenize"]))
def test_plain_text_is_refused_exactly_when_it_holds_a_reserved_string(server, tiny_vocab, text, path, tally):
  """Issue 23: plain text never becomes a reserved id, on any endpoint. Text holding the harm
  tag or a chat marker (however it was assembled from fragments) is a 400 naming the reserved
  strings; any other text passes that check, and /tokenize then shows no reserved id."""
  client, _ = server
  root = str(client.base_url).rstrip("/").removesuffix("/v1")
  if path == "/tokenize":
    response = httpx.post(root + path, json={"prompt": text, "add_special_tokens": False}, timeout=60)
  elif path == "/completions":
    response = client.post(path, json={"model": MODEL, "prompt": text, "max_tokens": 0, "truncate_prompt_tokens": 8})
  else:
    response = client.post(path, json={"model": MODEL, "messages": [{"role": "user", "content": text}],
                                       "max_tokens": 0, "truncate_prompt_tokens": 8})
  holds = [token for token in SPECIAL_TOKENS if token in text]
  error = response.json().get("error") or {}
  refused = response.status_code == 400 and "reserved token string" in error.get("message", "")
  assert refused == bool(holds), (text, response.status_code, error)
  if refused:
    assert all(repr(token) in error["message"] for token in holds)
    tally.add(f"POST {path} with reserved strings in plain text", "400 naming them")
    return
  assert response.status_code == 200, error
  if path == "/tokenize":
    assert not set(response.json()["tokens"]) & set(tiny_vocab.special_ids.values())
  tally.add(f"POST {path} with hostile plain text", "200, no reserved id")

