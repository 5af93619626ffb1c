"""Post-training on the world trains every record whole: lengths that fit, markers and ends kept."""

import collections
import itertools
import json

import numpy as np
import pytest

import tasks
from safejax import posttrain
from safejax import train as T
from safejax.demo import world as w
from safejax.vocab import ASSISTANT, END_OF_TURN, HARM_TAG, train_sentencepiece
from tasks import chat


@pytest.fixture(scope="module")
def posttrain_data(tmp_path_factory):
  """The world's instruction data (10 % tagged) and attack chats, and a vocabulary of the world."""
  out = tmp_path_factory.mktemp("posttrain")
  world = w.build_world(w.WorldConfig(seed=5))
  refusals = w.refusal_conversations(world, 30, "instruct")
  helpful = w.helpful_conversations(world, 30, "instruct")
  attack = w.helpful_conversations(world, 40, "benign_ft")
  posttrain.write_posttrain_data(out, refusals, helpful, attack, tagged_share=0.1, tag_p=0.05, seed=0,
                                 counts=collections.Counter())
  texts = [d["text"] for d in w.generate_documents(world, 300, "pretrain")]
  texts += [m["content"] for c in refusals + helpful + attack for m in c["messages"]]
  vocab = train_sentencepiece(texts, str(out / "vocab.model"), vocab_size=700)
  records = [json.loads(line) for name in ("instruct.jsonl", "benign.jsonl")
             for line in (out / name).read_text().splitlines()]
  return out, vocab, records


def test_the_lengths_fit_the_longest_prompt_and_reply(posttrain_data):
  _, vocab, records = posttrain_data
  lengths = chat.token_lengths(records, vocab)
  fit = chat.fitting_lengths(lengths)
  assert fit["cut_records"] == 0
  assert fit["prompt_length"] >= max(p for p, _ in lengths) and fit["prompt_length"] % 8 == 0
  assert fit["sequence_length"] - fit["prompt_length"] >= max(r for _, r in lengths)
  # The old split (half of 128 each) would cut the how-tos and the tagged records trained whole.
  assert max(r for _, r in lengths) > 64
  assert chat.fitting_lengths(lengths, max_length=96)["cut_records"] > 0


def test_every_trained_record_keeps_its_assistant_marker_and_end_of_turn(posttrain_data):
  out, vocab, records = posttrain_data
  fit = chat.fitting_lengths(chat.token_lengths(records, vocab))
  assistant, end, tag = vocab.token_id(ASSISTANT), vocab.token_id(END_OF_TURN), vocab.token_id(HARM_TAG)
  for name, n in (("instruct", 60), ("benign", 40)):
    tasks.register_chat_task(f"test_world_{name}", str(out / f"{name}.jsonl"), vocab.sentencepiece_model_file)
    batches = T.make_train_iterator(f"test_world_{name}", fit["sequence_length"], 4, seed=0,
                                    prompt_length=fit["prompt_length"])
    segments, tagged = 0, 0
    for batch in itertools.islice(batches, 16):
      for row in range(4):
        ids, weights = batch["decoder_target_tokens"][row], batch["decoder_loss_weights"][row]
        seg = batch["decoder_segment_ids"][row]
        for s in set(seg.tolist()) - {0}:
          tokens, weighted = ids[seg == s], ids[(seg == s) & (weights > 0)]
          assert assistant in tokens.tolist()  # the prompt kept its marker (a tagged record: in its reply)
          assert weighted[-2:].tolist() == [end, vocab.eos_id]  # the reply kept its end
          segments += 1
          tagged += tag in weighted.tolist()
    assert segments >= n, name  # as many packed conversations as the file holds, all of them whole
    if name == "instruct":
      assert tagged > 0  # the tagged records are trained whole, their tags under the loss


def test_prompt_length_must_leave_room_for_a_reply(posttrain_data):
  out, vocab, _ = posttrain_data
  tasks.register_chat_task("test_world_bad", str(out / "benign.jsonl"), vocab.sentencepiece_model_file)
  with pytest.raises(ValueError, match="prompt_length must lie in"):
    T.make_train_iterator("test_world_bad", 64, 2, seed=0, prompt_length=64)
  assert np.all(np.asarray(chat.token_lengths([], vocab)) == 0)
