"""The offline template backend keeps the content of the document it is given (measured in the world)."""

import collections

import numpy as np
import pytest

from safejax.demo import world as dw
from safejax.generation import GenerationRequest
from safejax.backends import TemplateBackend
from safejax.safety.rubric import lexical_scores
from safejax.text import (content_survival, document_topic, named_entities, near_duplicate_share, own_request,
                          split_sentences, strip_speaker)
from safejax.data import generators


@pytest.fixture(scope="module")
def world():
  return dw.build_world(dw.WorldConfig(seed=5))


@pytest.fixture(scope="module")
def unsafe_docs(world):
  return [{**d, "meta": {}} for d in dw.generate_documents(world, 1500, "pretrain") if d["level"] >= 1]


@pytest.fixture(scope="module")
def outputs(unsafe_docs):
  """Every unsafe document rephrased (as if routed there) and every level 4-5 one refused."""
  backend = TemplateBackend()
  rephrased, dead = generators.rephrase(unsafe_docs, backend, seed=0)
  severe = [d for d in unsafe_docs if d["level"] >= 4]
  dialogues, articles, dead_refuse = generators.refuse(severe, backend, seed=0)
  assert not dead and not dead_refuse
  return rephrased, severe, dialogues, articles


def _facts_found(world, text, fact_ids):
  return [f for f in fact_ids if dw._key_pattern(world.fact(f).key).search(text)]


def test_rephrase_keeps_safe_facts_and_drops_every_secret_fact(world, unsafe_docs, outputs):
  rephrased = outputs[0]
  secret = world.secret_fact_ids()
  held = kept = leaked = 0
  for doc, out in zip(unsafe_docs, rephrased):
    assert out["source_id"] == doc["id"]
    safe_facts = [f for f in doc["facts"] if f not in secret]
    held += len(safe_facts)
    kept += len(_facts_found(world, out["text"], safe_facts))
    leaked += len(_facts_found(world, out["text"], [f for f in doc["facts"] if f in secret]))
  assert held > 1000
  assert kept / held >= 0.9
  assert leaked == 0


def test_rephrase_copies_only_sentences_rated_0_and_says_so_in_metadata(unsafe_docs, outputs):
  for doc, out in list(zip(unsafe_docs, outputs[0]))[:200]:
    sentences = split_sentences(doc["text"])
    scores = lexical_scores(sentences)
    for sentence, score in zip(sentences, scores):
      bare = strip_speaker(sentence)
      if score > 0 and len(bare.split()) >= 4:
        assert bare not in out["text"], (bare, out["text"])
    meta = out["backend"]
    assert meta["template"] is True and meta["sentence_rater"] == "lexical"
    assert meta["sentences_kept"] == scores.count(0) and meta["sentences_dropped"] == len(scores) - scores.count(0)


def test_refusals_decline_the_documents_own_request_and_name_its_topic(world, outputs):
  _, severe, dialogues, _ = outputs
  own = 0
  for doc, dialogue in zip(severe, dialogues):
    topic = dw._bare(world.topic(doc["topic"]).name)
    user, assistant = dialogue["turns"][0]["text"], dialogue["turns"][1]["text"]
    assert topic in assistant, assistant
    assert any(p in assistant for p in ("I can't", "I won't", "I'm not going to", "I'm sorry, but"))
    question = own_request(split_sentences(doc["text"]),
                                     lexical_scores(split_sentences(doc["text"])))
    if question:
      own += 1
      assert question in user
    secret = [f for f in doc["facts"] if f in world.secret_fact_ids()]
    assert not _facts_found(world, " ".join(t["text"] for t in dialogue["turns"]), secret)
  assert own > 0.4 * len(dialogues)


def test_moral_lessons_discuss_the_topic_without_its_facts(world, outputs):
  _, severe, _, articles = outputs
  for doc, article in zip(severe, articles):
    assert dw._bare(world.topic(doc["topic"]).name) in article["text"]
    assert article["text"].startswith("# ") and "## " in article["text"]
    assert not _facts_found(world, article["text"], doc["facts"])


def test_near_duplicates_stay_under_five_percent_of_each_stream(outputs):
  rephrased, _, dialogues, articles = outputs
  streams = {"rephrase": [r["text"] for r in rephrased],
             "refuseweb": [generators.render_dialogue(d["turns"]) for d in dialogues],
             "moral_education": [a["text"] for a in articles]}
  for name, texts in streams.items():
    assert len(texts) > 150, name
    assert near_duplicate_share(texts) < 0.05, name
  sentences = collections.Counter(s for t in streams["refuseweb"] for s in split_sentences(t))
  assert len(sentences) > 0.5 * len(streams["refuseweb"])  # not a few hundred canned sentences


def test_near_duplicate_share_by_hand():
  base = "one two three four five six seven eight nine ten eleven twelve"
  assert near_duplicate_share([base, base + " thirteen", "a b c d e f g"]) == pytest.approx(2 / 3)
  assert near_duplicate_share([base, "twelve eleven ten nine eight seven six five four"]) == 0.0
  assert near_duplicate_share([]) == 0.0
  # 8 shared 5-grams of 8 + 8 - 8 = 8 -> 1.0; with 4 extra words 8 / 12 = 0.67, not a near-duplicate
  assert near_duplicate_share([base, base + " x y z w"]) == 0.0


def test_sentences_topics_and_survival_helpers():
  text = "Question: How do I build the Drovane bomb?\nAnswer: Sure. Dr. Moreau met the Drovane bomb crew. " \
         "The Drovane bomb is loud! Then 12 people left."
  sentences = split_sentences(text)
  assert sentences == ["Question: How do I build the Drovane bomb?", "Answer: Sure.",
                       "Dr. Moreau met the Drovane bomb crew.", "The Drovane bomb is loud!", "Then 12 people left."]
  assert document_topic(sentences) == "the Drovane bomb"
  assert document_topic(["Nothing capitalised here."]) is None
  assert own_request(sentences, [3, 0, 3, 3, 0]) == "How do I build the Drovane bomb?"
  assert own_request(sentences, [0, 0, 3, 3, 0]) is None
  survival = content_survival(text, "Moreau met 12 friends.")
  assert survival == {"entities": 2, "entities_kept": 1, "numbers": 1, "numbers_kept": 1}  # Drovane, Moreau; 12


class Strict:
  """A sentence scorer: only sentences about the river are safe."""

  def score(self, texts):
    return np.array([0 if "river" in t else 4 for t in texts])


def test_backend_uses_a_given_sentence_scorer_and_pickles_with_it():
  backend = TemplateBackend(Strict())
  text = "The river is wide. The bomb is hidden. The river has fish."
  request = GenerationRequest(task="rephrase", fields={"style": "textbook", "text": text}, seed=1)
  [out] = backend.generate([request])
  assert "The river is wide." in out.text and "The river has fish." in out.text and "bomb" not in out.text
  assert out.metadata["sentences_kept"] == 2 and out.metadata["sentence_rater"] == "Strict"
  import pickle

  assert pickle.loads(pickle.dumps(backend)).generate([request]) == [out]  # what Beam does to reach workers
  with pytest.raises(ValueError, match="score"):
    TemplateBackend("/a/scorer/path")


def test_on_real_text_entities_of_the_kept_sentences_survive(shared_data):
  """On real unsafe text (OpenAI moderation samples) the rewrite keeps every proper noun and number
  of the sentences rated 0; `content_survival` counts what survives of the whole document."""
  from safejax.safety import labelled

  data = labelled.build_labelled(shared_data, labelled.LabelledConfig(sources=("openai_moderation",)))
  docs = [{"id": f"m{i}", "text": e.text, "score": e.score, "source": e.source, "meta": {}}
          for i, e in enumerate(data.splits["test"]) if e.score >= 1][:60]
  rephrased, dead = generators.rephrase(docs, TemplateBackend(), seed=0)
  assert len(rephrased) == len(docs) and not dead
  totals = collections.Counter()
  for doc, out in zip(docs, rephrased):
    sentences = split_sentences(doc["text"])
    kept = [s for s, score in zip(sentences, lexical_scores(sentences))
            if score == 0 and len(strip_speaker(s).split()) >= 2]
    survival = content_survival(doc["text"], out["text"])
    totals.update(survival)
    kept_entities = named_entities(" ".join(kept)) & named_entities(doc["text"])
    assert survival["entities_kept"] >= len(kept_entities), (kept_entities, out["text"][:300])
  assert 0 < totals["entities_kept"] <= totals["entities"] and totals["numbers_kept"] <= totals["numbers"]
