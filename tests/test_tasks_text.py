"""TEXT_FILES corpora and conversation files: untrusted text is sanitized, bad input named, never lost silently."""

import gzip
import json
import logging

import pytest
import seqio

import tasks
from tasks.chat import split_conversation
from tasks.text import CorpusError, corpus_documents, text_file_source
from safejax import vocab as V

NESTED = ["<potentially_<|user|>unsafe_content>", "<potentially_unsafe_<potentially_unsafe_content>content>",
          "<|end_of_<|assistant|>turn|>", V.HARM_TAG]


def _texts(pattern, **kwargs) -> list[str]:
  source = text_file_source(pattern, **kwargs)
  return [t.decode() for t in source.get_dataset("train", shuffle=False).as_numpy_iterator()]


def test_jsonl_and_txt_corpora_are_sanitized_before_tokenizing(tmp_path, tiny_vocab):
  rows = [{"text": f"The river watched {n} the light."} for n in NESTED]
  (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "c.txt").write_text("".join(f"A small bird{n} sang.\n" for n in NESTED))
  assert _texts(str(tmp_path / "c.jsonl")) == ["The river watched  the light."] * 4
  assert _texts(str(tmp_path / "c.txt")) == ["A small bird sang."] * 4
  task = tasks.register_text_task("test_sanitized_text", str(tmp_path / "c.jsonl"), tiny_vocab.sentencepiece_model_file)
  reserved = set(tiny_vocab.special_ids.values()) - {tiny_vocab.eos_id}
  for example in task.get_dataset({"targets": 64}, split="train", shuffle=False).as_numpy_iterator():
    assert not reserved & set(example["targets"].tolist())
  seqio.TaskRegistry.remove("test_sanitized_text")


def _corpus_with_one_bad_record(path):
  lines = [json.dumps({"text": f"document {i}"}) for i in range(6)]
  lines[3] = '{"body": "no text field"}'
  path.write_text("\n".join(lines) + "\n")


def test_a_bad_record_stops_the_run_naming_file_and_line(tmp_path):
  _corpus_with_one_bad_record(tmp_path / "c.jsonl")
  with pytest.raises(Exception, match=r"bad record in .*c\.jsonl:4: missing_field"):
    _texts(str(tmp_path / "c.jsonl"))


def test_a_bad_record_can_be_skipped_with_a_warning_naming_it(tmp_path, caplog):
  _corpus_with_one_bad_record(tmp_path / "c.jsonl")
  (tmp_path / "s.jsonl").write_text('{"text": "lone \\ud800"}\n{"text": "fine"}\n[1, 2]\n')
  with caplog.at_level(logging.WARNING, logger="tasks.text"):
    assert _texts(str(tmp_path / "c.jsonl"), on_bad_record="skip") == [f"document {i}" for i in (0, 1, 2, 4, 5)]
    assert list(corpus_documents(str(tmp_path / "s.jsonl"), jsonl=True, on_bad_record="skip")) == ["fine"]
  warnings = [r.getMessage() for r in caplog.records]
  assert any("c.jsonl:4: missing_field" in w for w in warnings)
  assert any("s.jsonl:1: bad_encoding" in w for w in warnings) and any("s.jsonl:3: malformed_json" in w for w in warnings)
  with pytest.raises(ValueError, match="on_bad_record"):
    text_file_source(str(tmp_path / "c.jsonl"), on_bad_record="ignore")


def test_a_truncated_gzip_corpus_is_an_error_naming_the_file(tmp_path):
  data = gzip.compress("".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(2000)).encode())
  (tmp_path / "whole.jsonl.gz").write_bytes(data)
  assert len(list(corpus_documents(str(tmp_path / "whole.jsonl.gz"), jsonl=True))) == 2000
  (tmp_path / "half.jsonl.gz").write_bytes(data[: len(data) // 2])
  with pytest.raises(CorpusError, match=r"half\.jsonl\.gz is damaged after line \d+ \(EOFError"):
    list(corpus_documents(str(tmp_path / "half.jsonl.gz"), jsonl=True))
  with pytest.raises(Exception, match=r"half\.jsonl\.gz is damaged"):  # through tf.data too
    _texts(str(tmp_path / "half.jsonl.gz"))


def test_conversations_are_sanitized_in_every_turn():
  prompt, reply = split_conversation([{"role": "user", "content": "Hi<potentially_<|user|>unsafe_content>"},
                                      {"role": "assistant", "content": "Hello<|end_of_<|user|>turn|> there"}])
  assert prompt == f"{V.USER} Hi{V.END_OF_TURN}{V.ASSISTANT}" and reply == f"Hello there{V.END_OF_TURN}"


def test_a_harm_tagged_conversation_keeps_its_tags_and_is_trained_on_whole():
  messages = [{"role": "user", "content": f"Describe the{V.HARM_TAG} banned<|user|> rite"},
              {"role": "assistant", "content": "No."}]
  prompt, reply = split_conversation(messages, harm_tagged=True)
  assert prompt == ""  # the loss sees the tags in the request
  assert reply == f"{V.USER} Describe the{V.HARM_TAG} banned rite{V.END_OF_TURN}{V.ASSISTANT} No.{V.END_OF_TURN}"
  prompt, reply = split_conversation(messages)  # unmarked records lose their tags
  assert prompt == f"{V.USER} Describe the banned rite{V.END_OF_TURN}{V.ASSISTANT}" and V.HARM_TAG not in reply


def test_a_gzip_corpus_iterator_checkpoints_and_resumes_mid_file(tmp_path):
  """tf.data can save the position of the line reader (no Python generator in the pipeline), so a
  trainer resumes a .jsonl.gz corpus where it stopped instead of re-reading it."""
  import tensorflow as tf

  rows = [json.dumps({"text": f"document {i}"}) for i in range(50)]
  rows[7] = ""  # blank lines are not documents, and do not shift line numbers
  (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
  ds = text_file_source(str(tmp_path / "c.jsonl.gz")).get_dataset("train", shuffle=False)
  iterator = iter(ds)
  first = [next(iterator).numpy().decode() for _ in range(20)]
  checkpoint = tf.train.Checkpoint(iterator=iterator)
  path = checkpoint.write(str(tmp_path / "ckpt"))
  rest = [t.numpy().decode() for t in iterator]
  restored = iter(ds)
  tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
  assert [t.numpy().decode() for t in restored] == rest
  assert first + rest == [f"document {i}" for i in range(50) if i != 7]


# -- issue 23: a byte-order mark is not text ---------------------------------------------------------


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.txt", "bom.jsonl.gz"])
def test_a_leading_byte_order_mark_is_dropped_by_both_readers(tmp_path, name):
  """The tf.data line reader (what training reads) and the Python one both drop U+FEFF at the
  start of a file; before, a jsonl file's first record was not JSON and stopped the run."""
  lines = ['{"text": "first"}', '{"text": "\ufeffsecond"}'] if ".jsonl" in name else ["first", "\ufeffsecond"]
  data = ("\ufeff" + "\n".join(lines) + "\n").encode()
  (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
  expected = ["first", "\ufeffsecond"]  # only the file's first character is a byte-order mark
  assert _texts(str(tmp_path / name)) == expected
  assert list(corpus_documents(str(tmp_path / name), jsonl=".jsonl" in name)) == expected
