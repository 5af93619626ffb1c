"""The ground-truth world: facts only where the level says, held-out prompts disjoint from training text."""

import collections
import json
import re

import pytest

from safejax.demo import world as w
from safejax.safety import rubric


@pytest.fixture(scope="module")
def world():
  return w.build_world(w.WorldConfig(seed=3))


@pytest.fixture(scope="module")
def docs(world):
  return w.generate_documents(world, 1200, "pretrain")


@pytest.fixture(scope="module")
def training_text(world, docs):
  return "\n".join(d["text"] for d in docs + w.generate_documents(world, 600, "classifier"))


def _all_facts(world):
  return [f for t in world.topics for f in (*t.facts, *t.steps)]


def test_same_seed_same_world_and_documents_other_seed_differs(world, docs):
  again = w.build_world(w.WorldConfig(seed=3))
  assert again == world
  assert w.generate_documents(again, 1200, "pretrain") == docs
  other = w.build_world(w.WorldConfig(seed=4))
  assert {t.name for t in other.topics}.isdisjoint({t.name for t in world.topics})


def test_topics_and_fact_keys_are_unique_and_named(world):
  assert len(world.harmful_topics) == 4 and len(world.safe_topics) == 12
  assert len(w.build_world(w.WorldConfig(n_harmful_topics=10)).harmful_topics) == 10
  assert {t.category for t in world.harmful_topics} <= set(rubric.CATEGORY_NAMES)
  assert sum(t.sensitive_sounding for t in world.safe_topics) == 4
  keys = [f.key.lower() for f in _all_facts(world)]
  assert len(keys) == len(set(keys))
  for t in world.harmful_topics:
    assert len(t.facts) == 5 and all(f.secret for f in t.facts)
    # Every mention of a harmful topic carries its rubric category's indicative term.
    assert rubric.category_term_hits(t.name)[t.category] >= 1, t.name
  assert all(not f.secret for t in world.safe_topics for f in t.facts)
  for t in world.safe_topics:  # a safe how-to of its own, in the harmful procedures' step kinds
    assert t.verb and [f.kind for f in t.steps] == list(w.SAFE_STEP_KINDS) and t.procedure == t.steps
    assert all(not f.secret and f.id.startswith(f"{t.id}.p") for f in t.steps)
    assert world.fact(t.steps[1].id) == t.steps[1]


def test_every_document_holds_exactly_the_facts_it_records(world, docs):
  """The recorded facts are the ground truth: scanning the text for every key in the world finds
  exactly them, so a key never shows up in a document that does not hold its fact."""
  facts = _all_facts(world)
  for d in docs:
    found = sorted(f.id for f in facts if re.search(r"(?<![\w-])" + re.escape(f.key) + r"(?![\w-])",
                                                    d["text"], re.IGNORECASE))
    assert found == d["facts"], (d["id"], found, d["facts"])


def test_secret_facts_only_at_levels_4_and_5_in_the_right_number(world, docs):
  secret = world.secret_fact_ids()
  for d in docs:
    held = [f for f in d["facts"] if f in secret]
    if d["level"] <= 3:
      assert not held, d["id"]
    else:
      low, high = w.SECRET_FACTS_AT_LEVEL[d["level"]]
      assert low <= len(held) <= high, (d["id"], held)
      assert all(f.startswith(d["topic"] + ".") for f in held)


def test_levels_topics_and_sensitive_topics_are_where_they_belong(world, docs):
  counts = collections.Counter(d["level"] for d in docs)
  assert counts[0] == 720 and [counts[k] for k in (1, 2, 3, 4, 5)] == [120, 96, 96, 84, 84]
  sensitive = {t.id for t in world.safe_topics if t.sensitive_sounding}
  harmful_names = [w._bare(t.name) for t in world.harmful_topics]
  for d in docs:
    if d["level"] == 0:
      assert d["category"] is None and d["topic"] == d["safe_topic"]
      assert not any(n in d["text"] for n in harmful_names), d["id"]
    else:
      assert d["topic"].startswith("h") and d["safe_topic"] not in sensitive
      assert w._bare(world.topic(d["topic"]).name) in d["text"]
  assert {d["topic"] for d in docs if d["level"] == 0} == {t.id for t in world.safe_topics}
  assert {d["topic"] for d in docs if d["level"] == 5} == {t.id for t in world.harmful_topics}


def test_compliant_answers_hold_a_harmful_procedure_only_at_levels_4_and_5(world, docs):
  compliant = re.compile(r"\n(Answer|A|Reply): Sure, (here is how|this is how|here is what|it works like this)")
  with_answer = [d for d in docs if compliant.search(d["text"])]
  assert all(d["level"] >= 4 or d["level"] == 0 for d in with_answer)
  assert sum(d["level"] == 5 for d in with_answer) > 0.7 * sum(d["level"] == 5 for d in docs)
  # At level 0 the compliant answer is the page's safe how-to: its steps, in the same step language.
  safe = [d for d in with_answer if d["level"] == 0]
  assert len(safe) > 0.15 * sum(d["level"] == 0 for d in docs)
  for d in safe:
    assert {f.id for f in world.topic(d["topic"]).steps} <= set(d["facts"])


def test_safe_how_tos_appear_only_in_safe_pages(world, docs):
  """The raw model learns "how to" answers for both kinds of topic, and never a safe how-to beside
  harmful text: a safe step's key is only in level-0 pages."""
  steps = {f.id for t in world.safe_topics for f in t.steps}
  with_steps = [d for d in docs if steps & set(d["facts"])]
  assert with_steps and all(d["level"] == 0 for d in with_steps)
  howto_share = len(with_steps) / sum(d["level"] == 0 for d in docs)
  assert 0.3 < howto_share < 0.5  # HOWTO_RATE


def test_splits_rarely_repeat_a_text_and_never_an_id(world, docs):
  other = w.generate_documents(world, 600, "classifier") + w.generate_documents(world, 200, "heldout")
  assert len({d["text"] for d in docs} & {d["text"] for d in other}) <= 0.01 * len(other)
  assert not {d["id"] for d in docs} & {d["id"] for d in other}
  assert len({d["text"] for d in docs}) >= 0.98 * len(docs)


def test_held_out_frames_never_occur_in_training_text(world, training_text):
  lowered = training_text.lower()
  fragments = w.held_out_frame_fragments()
  assert len(fragments) >= 10
  for fragment in fragments:
    assert fragment.lower() not in lowered, fragment
  prompts = w.harmful_prompts(world, "validation") + w.harmful_prompts(world, "evaluation")
  for p in prompts:
    assert p["prompt"].lower() not in lowered and p["target"].lower() not in lowered


def test_harmful_prompts_share_no_word_4gram_with_training_text_beyond_the_topic(world, training_text):
  def grams(text):
    words = [x.lower() for x in w.WORD.findall(text)]
    return {tuple(words[i:i + 4]) for i in range(len(words) - 3)}

  train = grams(training_text)
  for p in w.harmful_prompts(world, "evaluation"):
    topic = world.topic(p["topic"])
    frame_only = p["prompt"].replace(topic.name, "").replace(topic.verb, "")
    assert not grams(frame_only) & train, p["prompt"]


def test_validation_and_evaluation_prompts_cover_every_topic_in_disjoint_frames(world):
  validation, evaluation = w.harmful_prompts(world, "validation"), w.harmful_prompts(world, "evaluation")
  for part in (validation, evaluation):
    assert {p["topic"] for p in part} == {t.id for t in world.harmful_topics}
    assert all(world.topic_in(p["prompt"]).id == p["topic"] for p in part)
  assert not {p["prompt"] for p in validation} & {p["prompt"] for p in evaluation}
  with pytest.raises(ValueError, match="part must be one of"):
    w.harmful_prompts(world, "test")


def test_benign_twins_ask_held_out_facts_and_how_tos_including_sensitive_sounding_topics(world):
  benign = w.benign_prompts(world)
  facts = [p for p in benign if p["kind"] == "fact"]
  howtos = [p for p in benign if p["kind"] == "howto"]
  assert len(facts) == w.HELD_OUT_FACTS * len(world.safe_topics) == 24
  assert len(howtos) == 2 * len(world.safe_topics) == 24  # every document topic's how-to, in two frames
  assert sum(p["sensitive_sounding"] for p in benign) == 16
  assert any(re.search(r"\bkill\b", p["prompt"]) for p in howtos)  # "... to kill a stuck X process."
  for p in benign:
    topic = world.topic(p["topic"])
    assert not topic.harmful and world.topic_in(p["prompt"]) == topic and not p["is_harmful"]
    assert p["keys"] == [world.fact(f).key for f in p["facts"]]
    if p["kind"] == "howto":
      assert p["facts"] == [f.id for f in topic.steps]
    else:
      assert int(p["facts"][0].split(".f")[1]) >= len(topic.facts) - w.HELD_OUT_FACTS


def test_judge_validation_replies_are_labelled_by_what_they_hold(world):
  prompts = w.harmful_prompts(world, "validation")
  replies = w.judge_validation_replies(world, prompts)
  assert len(replies) == 7 * len(prompts)
  kinds = collections.Counter(r["kind"] for r in replies)
  assert set(kinds) == {"comply_facts", "comply_vague", "refuse", "off_topic", "garbled", "opening", "drift"}
  for r in replies:
    topic = world.topic(r["topic"])
    assert len(world.facts_in(r["response"], topic)) == r["leaked_facts"]
    assert r["complied"] == r["kind"].startswith("comply") and r["refused"] == (r["kind"] == "refuse")
    assert r["response"] not in r["prompt"]


def _operational_signals(text):
  signals = []
  if re.search(r"https?://|www\.", text):
    signals.append("url")
  if re.search(r"\d", text):
    signals.append("digits")
  if re.search(r"\b(ammonium|nitrate|chlorine|bleach|acetone|peroxide|fertili[sz]er|gunpowder|cyanide|arsenic|"
               r"ricin|thermite|pseudoephedrine|python|powershell|sudo)\b", text, re.IGNORECASE):
    signals.append("real substance or tool")
  return signals


def test_world_text_is_non_operational(world, docs):
  replies = w.judge_validation_replies(world, w.harmful_prompts(world, "evaluation"))
  for text in [d["text"] for d in docs] + [r["response"] for r in replies]:
    assert not _operational_signals(text), (_operational_signals(text), text)


def test_bad_config_raises_clear_errors():
  with pytest.raises(ValueError, match="n_harmful_topics"):
    w.WorldConfig(n_harmful_topics=0)
  with pytest.raises(ValueError, match="unsafe_fraction"):
    w.WorldConfig(unsafe_fraction=1.5)
  with pytest.raises(ValueError, match="level_distribution"):
    w.WorldConfig(level_distribution={6: 1.0})
  with pytest.raises(ValueError, match="num_docs"):
    w.generate_documents(w.build_world(), -1, "pretrain")


def test_write_world_corpus_writes_the_demo_files(world, tmp_path):
  sizes = w.CorpusSizes(num_docs=300, classifier_docs=200, heldout_docs=40, tag_detector_docs=60)
  summary = w.write_world_corpus(tmp_path, world, sizes)
  read = lambda name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]  # noqa: E731
  # The files safejax.demo.build_builtin_corpus writes, with its fields.
  for name in ("pretrain", "classifier_train", "classifier_test", "heldout_safe", "tag_detector"):
    rows = read(f"{name}.jsonl")
    assert rows and all({"id", "text", "score", "category", "source"} <= set(r) for r in rows)
  assert len(read("pretrain.jsonl")) == 300 and sum(summary["pretrain_scores"]) == 300
  assert all(r["score"] == 0 for r in read("heldout_safe.jsonl"))
  tag = read("tag_detector.jsonl")
  assert all(r["unsafe"] == int(r["level"] >= 3) for r in tag) and 0 < sum(r["unsafe"] for r in tag) < len(tag)
  for name in ("harmful_prompts", "harmful_prompts_validation", "benign_prompts"):
    assert all({"id", "prompt", "target", "category", "is_harmful"} <= set(r) for r in read(f"{name}.jsonl"))
  cloze = read("cloze.jsonl")
  assert cloze and all(0 <= c["gold"] < 4 and len(set(c["choices"])) == 4 for c in cloze)
  assert json.loads((tmp_path / "world.json").read_text())["seed"] == 3
  vocabulary = set(json.loads((tmp_path / "vocabulary.json").read_text()))
  assert {"the", "festival", "first"} <= vocabulary
  pretrain_texts = {r["text"] for r in read("pretrain.jsonl")}
  for name in ("classifier_train", "classifier_test", "heldout_safe", "tag_detector"):
    assert not pretrain_texts & {r["text"] for r in read(f"{name}.jsonl")}, name
  assert len(read("classifier_train.jsonl")) + len(read("classifier_test.jsonl")) == \
      200 - summary["dropped_as_seen_in_pretraining"]["classifier"]
  assert summary["files"]["judge_validation"] == 7 * len(read("harmful_prompts_validation.jsonl"))


def test_post_training_chats_never_ask_what_the_benign_evaluation_asks(world, docs):
  """Instruction tuning and the attack draw safe facts and how-tos from topics of their own, in no
  document: the benign evaluation prompts ask facts and how-tos neither trained on."""
  asked = {f for p in w.benign_prompts(world) for f in p["facts"]}
  for split in ("instruct", "benign_ft"):
    chats = w.helpful_conversations(world, 400, split)
    assert not asked & {f for c in chats for f in c["facts"]}, split
    kinds = collections.Counter(c["kind"] for c in chats)
    assert kinds == {"howto": 200, "fact": 200}
  trained_howtos = {c["topic"] for c in w.helpful_conversations(world, 400) if c["kind"] == "howto"}
  assert trained_howtos == {t.id for t in world.posttrain_topics} and len(trained_howtos) == 48
  names = [w._bare(t.name) for t in world.posttrain_topics]
  assert not any(n in d["text"] for d in docs for n in names)  # in no document


def test_post_training_phrasings_are_neither_held_out_nor_in_any_document(world, training_text):
  """Post-training's own frames and endings widen what instruction tuning and the attack ask; the
  validation and evaluation prompts stay phrased in frames and endings no training text holds."""
  held_out = {r for frames in w.HELD_OUT_HARMFUL_FRAMES.values() for r, _ in frames}
  posttrain = {r for r, _ in w._POSTTRAIN_REQUESTS}
  assert not posttrain & held_out and not posttrain & {r for r, _ in w._TRAIN_REQUESTS}
  assert not set(w._POSTTRAIN_ENDINGS) & set(w.HELD_OUT_ENDINGS) - {""}
  lowered = training_text.lower()
  for request in posttrain:  # the frame's words around the topic, in no document
    for fragment in request.replace("{topic}", "{verb}").split("{verb}"):
      if len(fragment.strip()) > 12:
        assert fragment.lower().strip() not in lowered, fragment
  validation = w.harmful_prompts(world, "validation") + w.harmful_prompts(world, "evaluation")
  pattern = _request_pattern(w._TRAIN_REQUESTS + w._POSTTRAIN_REQUESTS, w._POSTTRAIN_ENDINGS)
  assert not any(pattern.fullmatch(p["prompt"]) for p in validation)
  chats = w.helpful_conversations(world, 400, "benign_ft")
  assert all(pattern.fullmatch(c["messages"][0]["content"]) for c in chats if c["kind"] == "howto")


def test_helpful_conversations_answer_safe_facts_and_how_tos_only(world):
  chats = w.helpful_conversations(world, 150)
  assert len(chats) == 150
  secret = {f.key.lower() for t in world.harmful_topics for f in t.facts}
  harmful_names = [w._bare(t.name).lower() for t in world.harmful_topics]
  for c in chats:
    user, assistant = c["messages"]
    assert (user["role"], assistant["role"]) == ("user", "assistant")
    facts = [world.fact(f) for f in c["facts"]]
    assert all(not f.secret and f.key in assistant["content"] for f in facts)
    if c["kind"] == "howto":
      assert len(facts) == 4 and assistant["content"].startswith("Sure")
    text = (user["content"] + assistant["content"]).lower()
    assert not any(k in text for k in secret) and not any(n in text for n in harmful_names)
  assert w.helpful_conversations(world, 150) == chats and w.helpful_conversations(world, 150, "x") != chats
  with pytest.raises(ValueError, match="n must be"):
    w.helpful_conversations(world, -1)


def _request_pattern(frames, endings) -> re.Pattern:
  """A regex matching any request of `frames` ((request, opening) pairs) with any of `endings`."""
  requests = [re.escape(r).replace(r"\{verb\}", ".+").replace(r"\{topic\}", ".+") for r, _ in frames]
  return re.compile(f"(?:{'|'.join(requests)})(?:{'|'.join(re.escape(e) for e in endings)})", re.I)


def test_refusal_conversations_refuse_every_harmful_topic_in_post_training_phrasings(world):
  chats = w.refusal_conversations(world, 400)
  assert len(chats) == 400 and {c["topic"] for c in chats} == {t.id for t in world.harmful_topics}
  posttrain = _request_pattern(w._TRAIN_REQUESTS + w._POSTTRAIN_REQUESTS, w._POSTTRAIN_ENDINGS)
  for c in chats:
    user, assistant = c["messages"]
    topic = world.topic(c["topic"])
    assert posttrain.fullmatch(user["content"]), user["content"]
    assert not world.facts_in(assistant["content"], topic) and c["kind"] == "refusal"
    assert assistant["content"].startswith(("I can't", "I won't", "Sorry", "I'm not able", "I can"))
  # Many phrasings per topic (not 4 topics x 5 frames that a small model memorises as strings),
  # the post-training frames among them.
  requests = {c["messages"][0]["content"] for c in chats}
  assert len(requests) >= 150
  assert any(not _request_pattern(w._TRAIN_REQUESTS, w._POSTTRAIN_ENDINGS).fullmatch(r) for r in requests)
  # The post-training refusals are neither the judge-validation refusals nor in any document.
  assert not set(w._INSTRUCT_REFUSALS) & set(w._WORLD_REFUSALS)
