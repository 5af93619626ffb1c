"""The vocabulary: reserved tokens are single ids, looked up by name, never produced by text."""

import pytest
import seqio

from safejax import vocab as V


def test_reserved_ids_have_fixed_layout(tiny_vocab):
  ids = tiny_vocab.special_ids
  assert (ids[V.PAD], ids[V.EOS], ids[V.UNK], ids[V.BOS]) == (0, 1, 2, 3)
  assert [ids[t] for t in V.SPECIAL_TOKENS] == list(range(4, 4 + len(V.SPECIAL_TOKENS)))
  assert tiny_vocab.harm_tag_id == ids[V.HARM_TAG]
  assert isinstance(tiny_vocab, seqio.Vocabulary)
  assert (tiny_vocab.pad_id, tiny_vocab.eos_id) == (0, 1)


@pytest.mark.parametrize("token", V.SPECIAL_TOKENS)
@pytest.mark.parametrize("context", ["{t}", "word{t} next", "The river{t} watched. ", "{t}{t}", " a{t}b"])
def test_every_special_token_is_one_id_in_context(tiny_vocab, token, context):
  text = context.format(t=token)
  ids = tiny_vocab.encode(text)
  assert ids.count(tiny_vocab.token_id(token)) == text.count(token)
  assert tiny_vocab.decode(ids) == text  # lossless round trip


def test_glued_tag_removal_restores_text(tiny_vocab):
  text = "The river watched the morning light before sunset."
  words = text.split(" ")
  tagged = " ".join(w + (V.HARM_TAG if i in (1, 4) else "") for i, w in enumerate(words))
  ids = tiny_vocab.encode(tagged)
  assert ids.count(tiny_vocab.harm_tag_id) == 2
  untagged = [i for i in ids if i != tiny_vocab.harm_tag_id]
  assert untagged == tiny_vocab.encode(text)
  assert tiny_vocab.decode_without_specials(ids) == text


def test_ordinary_text_never_yields_reserved_ids(tiny_vocab):
  reserved = set(tiny_vocab.special_ids.values())
  for text in ["potentially unsafe content", "<|user", "user|>", "< potentially_unsafe_content >", "ünïcødé ✓ 日本"]:
    assert not reserved & set(tiny_vocab.encode(text)), text


def test_byte_fallback_means_no_unk(tiny_vocab):
  ids = tiny_vocab.encode("日本語 ✓ émoji 🙂")
  assert tiny_vocab.unk_id not in ids
  assert tiny_vocab.decode(ids) == "日本語 ✓ émoji 🙂"


def test_strip_special_tokens_counts_removals():
  text, removed = V.strip_special_tokens(f"a{V.HARM_TAG}b {V.USER}c{V.HARM_TAG}")
  assert (text, removed) == ("ab c", 3)


@pytest.mark.parametrize("text", [
    "<potentially_<|user|>unsafe_content>",                                 # a marker splits the tag
    "<potentially_unsafe_<potentially_unsafe_content>content>",             # the tag splits itself
    "<|us<|ass<|system|>istant|>er|>",                                      # three levels deep
    "<|end_of_<|end_of_<|end_of_turn|>turn|>turn|> and <|<|user|>user|>",
    "<|us" * 300 + "er|>" * 300,                                            # 300 levels deep
])
def test_nested_fragments_are_removed_until_no_reserved_token_is_left(tiny_vocab, text):
  stripped, removed = V.strip_special_tokens(f"before {text} after")
  assert not any(token in stripped for token in V.SPECIAL_TOKENS)
  assert removed >= 1
  assert not set(tiny_vocab.special_ids.values()) & set(tiny_vocab.encode(stripped))
  assert stripped.startswith("before ") and stripped.endswith(" after")


def test_stripping_leaves_other_angle_brackets_alone():
  text = "a > b, <b>bold</b>, <|not_a_marker|>, x->y, <potentially_unsafe_content"
  assert V.strip_special_tokens(text) == (text, 0)
  assert V.strip_special_tokens(">>" + V.USER + "<<>") == (">><<>", 1)


def test_sanitize_text_rejects_lone_surrogates_with_a_reason():
  assert V.sanitize_text(f"ok {V.HARM_TAG}\U0001F600") == ("ok \U0001F600", 1)
  with pytest.raises(V.RejectedText, match="lone surrogate") as error:
    V.sanitize_text("a \ud800 b")
  assert error.value.reason == "bad_encoding"


def test_unknown_token_name_fails_clearly(tiny_vocab):
  with pytest.raises(KeyError, match="not a reserved token"):
    tiny_vocab.token_id("<nope>")


def test_model_without_reserved_tokens_is_rejected(tmp_path):
  import sentencepiece as spm

  prefix = tmp_path / "plain"
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50 + ["a b c d e f g"] * 50),
                                 model_prefix=str(prefix), vocab_size=30, minloglevel=2, hard_vocab_limit=False)
  with pytest.raises(ValueError, match="lacks the reserved token"):
    V.SafejaxVocabulary(str(prefix) + ".model")


def test_vocabulary_pickles_for_beam(tiny_vocab):
  import pickle

  clone = pickle.loads(pickle.dumps(tiny_vocab))
  assert clone.encode("The river watched.") == tiny_vocab.encode("The river watched.")
  assert clone.harm_tag_id == tiny_vocab.harm_tag_id
