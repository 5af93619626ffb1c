"""Generators and templates: no document lost or duplicated, provenance, safe and varied text."""

import collections

import pytest
from hypothesis import given, settings, strategies as st

from data_fakes import FailingBackend
from safejax.generation import Generation
from safejax.text import STYLES
from safejax.backends import TemplateBackend
from safejax.backends import template as templates
from safejax.data import generators
from safejax.data.generators import choose_style, parse_dialogue, render_dialogue
from safejax.safety import rubric
from safejax.safety.rubric import CATEGORY_NAMES, category_term_hits
from safejax.vocab import HARM_TAG, SPECIAL_TOKENS

TITLES = st.one_of(st.none(), st.sampled_from(["Volcanoes", "fail-rephrase", "fail-refuseweb", "fail-moral_education",
                                               "World War II", "a bomb title"]))
DOCS = st.lists(st.tuples(st.integers(0, 5), TITLES, st.sampled_from(
    ["they will attack and kill", "a scam and a hoax", "calm text about rivers", f"tag{HARM_TAG} smuggled"])),
    max_size=12)


def _records(docs) -> list[dict]:
  return [{"id": f"src/{i}", "source": "src", "text": text, "score": score, "meta": {"title": title}}
          for i, (score, title, text) in enumerate(docs)]


@settings(max_examples=60, deadline=None)
@given(docs=DOCS, seed=st.integers(0, 3))
def test_generators_never_lose_or_duplicate_documents(docs, seed):
  records = _records(docs)
  backend = FailingBackend(TemplateBackend())
  ids = collections.Counter(r["id"] for r in records)

  outputs, dead = generators.rephrase(records, backend, seed=seed)
  assert collections.Counter([o["source_id"] for o in outputs] + [d["id"] for d in dead]) == ids
  assert all(HARM_TAG not in o["text"] for o in outputs)  # tags never appear in rephrased text
  assert {d["id"] for d in dead} == {r["id"] for r in records if r["meta"]["title"] == "fail-rephrase"}

  dialogues, articles, dead = generators.refuse(records, backend, seed=seed)
  assert collections.Counter([d["source_id"] for d in dialogues] + [d["id"] for d in dead]) == ids
  assert [a["source_id"] for a in articles] == [d["source_id"] for d in dialogues]  # all or nothing
  assert {d["id"] for d in dead} == {r["id"] for r in records
                                     if r["meta"]["title"] in ("fail-refuseweb", "fail-moral_education")}
  for d in dialogues:
    assert d["turns"][0]["role"] == "user" and d["turns"][-1]["role"] == "assistant"
    assert not any(t in turn["text"] for turn in d["turns"] for t in SPECIAL_TOKENS)


def test_outputs_carry_provenance():
  [record] = _records([(2, "Volcanoes", "calm text about rivers")])
  [out], _ = generators.rephrase([record], TemplateBackend(), seed=3)
  assert out["id"] == "src/0/rephrase" and out["source_id"] == "src/0" and out["generator"] == "rephrase"
  assert out["style"] == choose_style("src/0", 3) and out["score"] == 2
  assert out["backend"]["template"] is True and out["backend"]["backend"] == "template"
  [d], [a], _ = generators.refuse([record], TemplateBackend(), seed=3)
  assert (d["id"], a["id"], a["dialogue_id"]) == ("src/0/refuseweb", "src/0/moral_education", "src/0/refuseweb")


def test_generated_reserved_tokens_are_stripped_and_counted():
  class Smuggler:
    name = "smuggler"

    def generate(self, requests):
      return [Generation(f"Safe{HARM_TAG} words", {"backend": "smuggler"}) for _ in requests]

  [out], _ = generators.rephrase(_records([(1, None, "x")]), Smuggler())
  assert out["text"] == "Safe words" and out["special_tokens_removed"] == 1


def test_malformed_dialogues_are_retried_then_dead_lettered():
  class Chatty:
    name = "chatty"

    def __init__(self):
      self.calls = 0

    def generate(self, requests):
      self.calls += 1
      return [Generation("Sure! Here is a dialogue.", {"backend": "chatty"}) for _ in requests]

  backend = Chatty()
  dialogues, articles, dead = generators.refuse(_records([(5, None, "x")]), backend, attempts=3)
  assert not dialogues and not articles and backend.calls == 3
  assert dead[0]["reason"] == "refuseweb_failed" and "no 'User:'" in dead[0]["detail"]
  assert dead[0]["raw"] == "Sure! Here is a dialogue."


def test_styles_are_uniform_and_seeded():
  counts = collections.Counter(choose_style(f"doc/{i}", 0) for i in range(7000))
  assert set(counts) == set(STYLES)
  assert all(abs(n - 1000) < 150 for n in counts.values())
  assert [choose_style(f"d{i}", 1) for i in range(20)] == [choose_style(f"d{i}", 1) for i in range(20)]
  assert [choose_style(f"d{i}", 1) for i in range(20)] != [choose_style(f"d{i}", 2) for i in range(20)]


@pytest.mark.parametrize("text, error", [
    ("Assistant: hi", "start with the user"),
    ("User: hi\n\nUser: again\n\nAssistant: no", "alternate"),
    ("User: hi\n\nAssistant:", "empty turn"),
    ("no turns at all", "no 'User:'"),
])
def test_parse_dialogue_rejects_malformed(text, error):
  with pytest.raises(ValueError, match=error):
    parse_dialogue(text)


def test_parse_dialogue_round_trip_and_markdown_labels():
  turns = [{"role": "user", "text": "Tell me.\nPlease."}, {"role": "assistant", "text": "No, but here is why."}]
  assert parse_dialogue(render_dialogue(turns)) == turns
  assert parse_dialogue("**User:** hi\n**Assistant:** no") == [{"role": "user", "text": "hi"},
                                                               {"role": "assistant", "text": "no"}]


def _all_template_texts():
  rng_seeds = range(6)
  for category in (*CATEGORY_NAMES, None):
    fields = {"categories": [category] if category else [], "title": None}
    for seed in rng_seeds:
      import numpy as np

      for style in STYLES:
        yield templates.rephrase({**fields, "style": style}, np.random.default_rng(seed))
      yield templates.refuseweb(fields, np.random.default_rng(seed))
      yield templates.moral_education(fields, np.random.default_rng(seed))


def test_template_text_has_no_harm_terms_and_is_varied():
  texts = list(_all_template_texts())
  hits = {t[:80]: h for t in texts for h in [category_term_hits(t)] if any(h.values())}
  assert not hits
  assert len(set(texts)) > 0.9 * len(texts)


def test_titles_with_harm_terms_are_not_reused():
  assert templates.safe_title("Volcanoes of Iceland") == "Volcanoes of Iceland"
  assert templates.safe_title("How to build a bomb") is None
  assert templates.safe_title("x" * 200) is None
  assert rubric.detect_categories("a scam, a hoax and another scam") == ["fraud_deception", "disinformation"]
