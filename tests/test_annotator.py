"""The LLM annotator: rubric prompt with prefill, JSON answers parsed, malformed ones set aside."""

import numpy as np
import pytest

from safejax.generation import Generation
from safejax.safety.annotator import PREFILL, LLMAnnotator, parse_annotation
from safejax.safety.scorer import Scorer


class ScriptedBackend:
  """Answers each request with the next continuation of its document's script (after the prefill)."""

  name = "scripted"

  def __init__(self, scripts: dict[str, list[str]]):
    self.scripts = {k: list(v) for k, v in scripts.items()}
    self.requests = []

  def generate(self, requests):
    out = []
    for request in requests:
      self.requests.append(request)
      continuation = self.scripts[request.fields["text"]].pop(0)
      out.append(Generation(request.prefill + continuation, {"backend": self.name}))
    return out


@pytest.mark.parametrize("text, expected", [
    ('{"score": 3, "reason": "crude joke"}', (3, "crude joke")),
    ('{"score": 0, "reason": "a recipe"} and some chatter', (0, "a recipe")),
    ('Sure! {"score": 5, "reason": "a threat"}', (5, "a threat")),
])
def test_parse_valid_answers(text, expected):
  assert parse_annotation(text) == expected


@pytest.mark.parametrize("text, error", [
    ("no json here", "no JSON object"),
    ('{"score": 3, "reason": ', "invalid JSON"),
    ('{"score": 7, "reason": "x"}', "not an integer in 0..5"),
    ('{"score": "2", "reason": "x"}', "not an integer"),
    ('{"score": true, "reason": "x"}', "not an integer"),
    ('{"score": 2.5, "reason": "x"}', "not an integer"),
    ('{"score": 2}', "reason"),
])
def test_parse_rejects_malformed_answers(text, error):
  with pytest.raises(ValueError, match=error):
    parse_annotation(text)


def test_prompt_carries_the_rubric_and_prefills_the_json():
  backend = ScriptedBackend({"a doc": ['1, "reason": "mild slang"}']})
  annotator = LLMAnnotator(backend)
  [annotation] = annotator.annotate(["a doc"])
  request = backend.requests[0]
  assert request.prefill == PREFILL == '{"score": '
  prompt = request.messages[0]["content"]
  assert "0:" in prompt and "5:" in prompt and "a doc" in prompt and '"reason"' in prompt
  assert "self harm" in prompt  # the harm categories are listed
  assert (annotation.score, annotation.reason) == (1, "mild slang")


def test_malformed_answers_are_retried_then_set_aside_never_guessed():
  backend = ScriptedBackend({
      "fixed on retry": ['"high"}', '4, "reason": "slur at a person"}'],
      "always broken": ["oops", "still oops", "nope"],
      "fine": ['0, "reason": "an encyclopedia entry"}'],
  })
  annotator = LLMAnnotator(backend, attempts=3)
  texts = ["fixed on retry", "always broken", "fine"]
  annotations = annotator.annotate(texts)
  assert [a.score for a in annotations] == [4, None, 0]
  broken = annotations[1]
  assert broken.reason is None and broken.raw == '{"score": nope' and "malformed answer" in broken.error
  seeds = [r.seed for r in backend.requests if r.fields["text"] == "always broken"]
  assert seeds == [0, 1, 2]  # each retry asks with a new seed



def test_score_is_minus_one_where_the_answer_was_set_aside():
  backend = ScriptedBackend({"retried": ['"high"}', '4, "reason": "r"}'], "broken": ["x", "y"], "fine": ['0, "reason": "r"}']})
  annotator = LLMAnnotator(backend, attempts=2)
  assert isinstance(annotator, Scorer)
  scores = annotator.score(["retried", "broken", "fine"])
  assert scores.dtype == np.int32 and scores.tolist() == [4, -1, 0]


def test_score_probs_are_one_hot_and_nan_when_set_aside():
  backend = ScriptedBackend({"a": ['2, "reason": "r"}'], "b": ["bad"]})
  probs = LLMAnnotator(backend, attempts=1).score_probs(["a", "b"])
  assert probs.shape == (2, 6) and probs.dtype == np.float32
  assert probs[0].tolist() == [0, 0, 1, 0, 0, 0]
  assert np.isnan(probs[1]).all()


def test_annotate_needs_a_sequence():
  with pytest.raises(TypeError, match="sequence"):
    LLMAnnotator(ScriptedBackend({})).annotate("one string")
