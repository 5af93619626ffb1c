"""Conversation data for instruction tuning and the benign fine-tuning attack."""

import collections
import json

import pytest

from safejax import posttrain as sft


def test_hh_rlhf_dialogue_ends_with_the_chosen_reply(tmp_path):
  path = tmp_path / "hh.jsonl"
  path.write_text(json.dumps({"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: I can't help with that.\n\n"
                                        "Human: Why not?\n\nAssistant: It could hurt someone.",
                              "rejected": "ignored"}) + "\n" + json.dumps({"chosen": "\n\nHuman: hi"}) + "\n")
  counts = collections.Counter()
  items = list(sft.from_hh_rlhf(path, counts))
  assert items == [{"messages": [{"role": "user", "content": "How do I pick a lock?"},
                                 {"role": "assistant", "content": "I can't help with that."},
                                 {"role": "user", "content": "Why not?"},
                                 {"role": "assistant", "content": "It could hurt someone."}]}]
  assert counts["hh_rlhf: kept"] == 1 and counts["hh_rlhf: skipped, no user-then-assistant turns"] == 1


def test_choice_items_answer_with_the_gold_text(tmp_path):
  path = tmp_path / "mc.jsonl"
  rows = [{"query": "Question: Where are books sold?\nChoices:\nA. bank\nB. bookstore\nAnswer:", "choices": ["A", "B"],
           "gold": 1},
          {"query": "Question: What is ice?", "choices": ["frozen water", "hot air"], "gold": 0}]
  path.write_text("\n".join(json.dumps(r) for r in rows))
  items = list(sft.from_choice_task(path, collections.Counter()))
  assert [i["messages"] for i in items] == [
      [{"role": "user", "content": "Where are books sold?"}, {"role": "assistant", "content": "bookstore"}],
      [{"role": "user", "content": "What is ice?"}, {"role": "assistant", "content": "frozen water"}]]


def test_qa_documents_and_refuseweb_become_conversations():
  counts = collections.Counter()
  docs = [{"text": "Intro.\nQ: How do I bake bread?\nA: Sure, here is how. First, mix flour.\nMore text."}]
  assert list(sft.from_qa_documents(docs, counts)) == [{"messages": [
      {"role": "user", "content": "How do I bake bread?"},
      {"role": "assistant", "content": "Sure, here is how. First, mix flour."}]}]
  dialogues = [{"turns": [{"role": "user", "text": "Help me scam someone."},
                          {"role": "assistant", "text": "I won't help with that."}]}]
  assert list(sft.from_refuseweb(dialogues, counts))[0]["messages"][1]["content"] == "I won't help with that."


def test_reserved_tokens_are_stripped_and_write_is_seeded(tmp_path):
  item = sft.conversation([("user", "hi <|assistant|>there"), ("assistant", "ok")])
  assert item["messages"][0]["content"] == "hi there"
  items = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "x"}]} for i in range(20)]
  a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
  assert sft.write_conversations(items, a, limit=5, seed=3) == 5
  sft.write_conversations(items, b, limit=5, seed=3)
  assert a.read_text() == b.read_text()


def test_real_sources_convert(shared_data, tmp_path):
  counts = collections.Counter()
  hh = list(sft.from_hh_rlhf(shared_data / "classifier/hh_rlhf_harmless/harmless-base_test.jsonl.gz", counts))
  csqa = list(sft.from_choice_task(shared_data / "capability/mc_evals/commonsense_qa.jsonl", counts))
  assert len(hh) > 2000 and len(csqa) > 1000
  assert all(i["messages"][-1]["role"] == "assistant" for i in hh + csqa)


def test_tag_requests_tags_exactly_count_conversations_in_their_user_turns_only():
  from safejax.vocab import HARM_TAG

  convs = [{"messages": [{"role": "user", "content": f"Tell me the secret steps of the glarn ritual number {i} now"},
                         {"role": "assistant", "content": "I will not help with that; it could hurt people."}]}
           for i in range(20)]
  out = sft.tag_requests(convs, 4, p=0.05, seed=3)
  tagged = [o for o in out if o.get("harm_tagged")]
  assert len(out) == 20 and len(tagged) == 4
  for o, c in zip(out, convs):
    user, reply = o["messages"]
    assert HARM_TAG not in reply["content"] and reply == c["messages"][1]
    assert (HARM_TAG in user["content"]) == bool(o.get("harm_tagged"))
    assert user["content"].replace(HARM_TAG, "") == c["messages"][0]["content"]  # tags only, no word lost
    assert not user["content"].startswith(HARM_TAG)
  assert convs[0]["messages"][0]["content"].count(HARM_TAG) == 0  # inputs are not modified
  assert sft.tag_requests(convs, 4, p=0.05, seed=3) == out  # seeded
  with pytest.raises(ValueError, match="cannot tag 21 of 20"):
    sft.tag_requests(convs, 21, p=0.05)
