"""Text backends: the OpenAI-compatible client against a real loopback HTTP server, and templates."""

import http.server
import json
import logging
import pickle
import threading
import time

import numpy as np
import pytest

from safejax.generation import GenerationRequest, TextBackend, generate_validated
from safejax.backends import OpenAICompatibleBackend, TemplateBackend
from safejax.backends import template as templates


class ChatServer:
  """A tiny OpenAI-style /v1/chat/completions server on 127.0.0.1 with scripted failures.

  `script` is consumed one action per request: "429", "500", "malformed", "400", ("sleep", s) or
  "ok"; when it is empty every request succeeds. A successful answer echoes the last message.
  """

  def __init__(self):
    self.script: list = []
    self.requests: list[dict] = []
    self.in_flight = self.max_in_flight = 0
    self.delay_s = 0.0
    self.lock = threading.Lock()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
          action = server.script.pop(0) if server.script else "ok"
          server.in_flight += 1
          server.max_in_flight = max(server.max_in_flight, server.in_flight)
        counted = True
        try:
          time.sleep(server.delay_s)
          if isinstance(action, tuple):
            time.sleep(action[1])
            action = "ok"
          if action in ("429", "500", "400"):
            payload = b'{"error": "injected"}'
            self.send_response(int(action))
            if action == "429":
              self.send_header("Retry-After", "0")
          elif action == "malformed":
            payload = b'{"choices": [{"message": '
            self.send_response(200)
          else:
            last = body["messages"][-1]["content"]
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": f"<echo {last}>"},
                                               "finish_reason": "stop"}]}).encode()
            self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          # Leave the in-flight count before anything reaches the client: once it has the answer
          # it may send its next request before this thread would otherwise get to the decrement.
          with server.lock:
            server.in_flight -= 1
            counted = False
          self.end_headers()
          self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
          pass
        finally:
          if counted:
            with server.lock:
              server.in_flight -= 1

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = ChatServer()
  yield s
  s.close()


def _backend(server, **kwargs) -> OpenAICompatibleBackend:
  defaults = dict(model="test-model", base_url=server.url, initial_backoff_s=0.001, max_backoff_s=0.01,
                  timeout_s=2.0, max_retries=3)
  return OpenAICompatibleBackend(**{**defaults, **kwargs})


def _request(text: str, **kwargs) -> GenerationRequest:
  return GenerationRequest(task="rephrase", messages=({"role": "user", "content": text},), **kwargs)


def test_generates_one_answer_per_request_in_order(server):
  backend = _backend(server)
  out = backend.generate([_request(f"doc {i}") for i in range(5)])
  assert [g.text for g in out] == [f"<echo doc {i}>" for i in range(5)]
  assert all(g.ok and g.metadata["backend"] == "openai_compatible" and g.metadata["template"] is False
             and g.metadata["model"] == "test-model" and g.metadata["cached"] is False for g in out)
  assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
  assert server.requests[0]["body"]["model"] == "test-model"


def test_prefill_is_continued_and_included_in_the_text(server):
  backend = _backend(server)
  (g,) = backend.generate([_request("rate it", prefill='{"score": ')])
  body = server.requests[0]["body"]
  assert body["messages"][-1] == {"role": "assistant", "content": '{"score": '}
  assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
  assert g.text == '{"score": <echo {"score": >'


def test_prefill_mode_drop_sends_no_prefill(server):
  (g,) = _backend(server, prefill_mode="drop").generate([_request("rate it", prefill='{"score": ')])
  assert server.requests[0]["body"]["messages"][-1]["role"] == "user"
  assert "continue_final_message" not in server.requests[0]["body"]
  assert g.text == "<echo rate it>"


@pytest.mark.parametrize("failure", ["429", "500", "malformed", ("sleep", 0.6)])
def test_retries_transient_failures(server, failure):
  server.script = [failure, failure]
  (g,) = _backend(server, timeout_s=0.3).generate([_request("x")])
  assert g.ok and g.text == "<echo x>"
  assert g.metadata["attempts"] == 3
  assert len(server.requests) == 3


def test_gives_up_after_max_retries_with_the_reason(server):
  server.script = ["500"] * 10
  (g,) = _backend(server, max_retries=2).generate([_request("x")])
  assert not g.ok and g.text == ""
  assert "gave up after 3 attempts" in g.error and "HTTP 500" in g.error
  assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
  server.script = ["400"]
  (g,) = _backend(server).generate([_request("x")])
  assert not g.ok and "HTTP 400" in g.error
  assert len(server.requests) == 1


def test_concurrency_is_bounded(server):
  server.delay_s = 0.05
  backend = _backend(server, max_concurrency=3)
  out = backend.generate([_request(f"d{i}") for i in range(12)])
  assert all(g.ok for g in out)
  assert 2 <= server.max_in_flight <= 3


def test_cache_answers_repeated_requests_without_the_server(server, tmp_path):
  backend = _backend(server, cache_dir=str(tmp_path / "cache"))
  first = backend.generate([_request("a", seed=1), _request("b", seed=1)])
  again = backend.generate([_request("a", seed=1), _request("b", seed=1), _request("a", seed=2)])
  assert len(server.requests) == 3  # only the new seed reached the server
  assert [g.text for g in again[:2]] == [g.text for g in first]
  assert [g.metadata["cached"] for g in again] == [True, True, False]
  assert again[0].metadata["cache_key"] == first[0].metadata["cache_key"]


def test_api_key_is_sent_but_never_stored_pickled_or_logged(server, monkeypatch, caplog):
  secret = "sk-test-very-secret-0123456789"
  monkeypatch.setenv("SAFEJAX_TEST_KEY", secret)
  server.script = ["500"]
  backend = _backend(server, api_key_env="SAFEJAX_TEST_KEY")
  with caplog.at_level(logging.DEBUG):
    (g,) = backend.generate([_request("x")])
  assert g.ok
  assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {secret}"
  assert secret not in caplog.text
  assert secret.encode() not in pickle.dumps(backend)
  assert secret not in repr(backend) and secret not in json.dumps(dict(g.metadata))


def test_backend_pickles_and_works_after_unpickling(server):
  backend = _backend(server)
  backend.generate([_request("warm up")])  # creates the HTTP client
  clone = pickle.loads(pickle.dumps(backend))
  assert clone.generate([_request("y")])[0].text == "<echo y>"


def test_base_url_comes_from_the_environment(server, monkeypatch):
  monkeypatch.setenv("SAFEJAX_TEST_URL", server.url)
  backend = OpenAICompatibleBackend(model="m", base_url_env="SAFEJAX_TEST_URL")
  assert backend.generate([_request("z")])[0].text == "<echo z>"
  monkeypatch.delenv("SAFEJAX_TEST_URL")
  with pytest.raises(ValueError, match="SAFEJAX_TEST_URL"):
    OpenAICompatibleBackend(model="m", base_url_env="SAFEJAX_TEST_URL")


def test_generate_validated_asks_again_with_a_new_seed(server):
  backend = _backend(server)
  calls = []

  def parse(text):
    calls.append(text)
    if len(calls) == 1:
      raise ValueError("not yet")
    return text.upper()

  [(value, g)] = generate_validated(backend, [_request("q", seed=7)], parse, attempts=3)
  assert value == "<ECHO Q>"
  assert [r["body"]["seed"] for r in server.requests] == [7, 8]


def test_generate_validated_sets_aside_after_all_attempts(server):
  def parse(text):
    raise ValueError("never valid")

  [(value, g)] = generate_validated(_backend(server), [_request("q")], parse, attempts=2)
  assert value is None and "never valid" in g.error and g.text == "<echo q>"
  assert len(server.requests) == 2


def test_template_backend_is_deterministic_marked_and_varied():
  backend = TemplateBackend()
  assert isinstance(backend, TextBackend)

  def request(seed, style="podcast"):
    return GenerationRequest(task="rephrase", fields={"style": style, "title": "Volcanoes", "categories": []},
                             seed=seed)

  a, b = backend.generate([request(1), request(1)])
  assert a.text == b.text and "Volcanoes" in a.text
  assert a.metadata["template"] is True and a.metadata["backend"] == "template"
  texts = {g.text for g in backend.generate([request(s, style) for s in range(5) for style in templates.STYLES])}
  assert len(texts) == 35


def test_template_backend_refuses_tasks_it_cannot_do():
  with pytest.raises(ValueError, match="annotate"):
    TemplateBackend().generate([GenerationRequest(task="annotate", fields={})])


def test_llm_backend_needs_chat_messages(server):
  with pytest.raises(ValueError, match="no chat messages"):
    _backend(server).generate([GenerationRequest(task="rephrase", fields={"style": "podcast"})])


def test_template_seed_changes_text():
  backend = TemplateBackend()
  fields = {"categories": ["violence"], "title": None}
  texts = [backend.generate([GenerationRequest(task="refuseweb", fields=fields, seed=s)])[0].text for s in range(8)]
  assert len(set(texts)) > 4
  assert np.all([t.startswith("User: ") for t in texts])


def test_generate_validated_does_not_repeat_backend_failures(server):
  server.script = ["400"]
  [(value, g)] = generate_validated(_backend(server), [_request("q")], str.upper, attempts=3)
  assert value is None and "HTTP 400" in g.error
  assert len(server.requests) == 1


def test_the_cache_key_holds_the_endpoint(server, tmp_path):
  """Two endpoints may serve different models under one name: they never share cached answers."""
  cache = str(tmp_path / "cache")
  (here,) = _backend(server, cache_dir=cache).generate([_request("a")])
  other = ChatServer()
  try:
    (there,) = _backend(other, cache_dir=cache).generate([_request("a")])
  finally:
    other.close()
  assert here.metadata["cache_key"] != there.metadata["cache_key"] and not there.metadata["cached"]
  assert len(other.requests) == 1


def test_a_damaged_cache_entry_is_a_miss_not_a_crash(server, tmp_path):
  backend = _backend(server, cache_dir=str(tmp_path / "cache"))
  (first,) = backend.generate([_request("a")])
  entry = next((tmp_path / "cache").rglob("*.json"))
  entry.write_text('{"text": "half a wri')
  (again,) = backend.generate([_request("a")])
  assert again.ok and not again.metadata["cached"] and again.text == first.text
  assert json.loads(entry.read_text())["text"] == first.text  # rewritten whole
