"""The vocabularies (SentencePiece and Hugging Face byte-level BPE): reserved tokens are single ids,
looked up by name, never produced by text; SentencePiece converts to a `tokenizers` tokenizer that
encodes like it; vocabularies persist in model directories."""

import json
import pickle
import random

import pytest
import seqio
import tensorflow as tf

from safejax import vocab as V


@pytest.fixture(params=["sentencepiece", "tokenizers"])
def any_vocab(request, tiny_vocab, tiny_bpe_vocab):
  """Each kind of safejax vocabulary: the guarantees below hold for both."""
  return {"sentencepiece": tiny_vocab, "tokenizers": tiny_bpe_vocab}[request.param]


def test_reserved_ids_have_fixed_layout(tiny_vocab):
  ids = tiny_vocab.special_ids
  assert (ids[V.PAD], ids[V.EOS], ids[V.UNK], ids[V.BOS]) == (0, 1, 2, 3)
  assert [ids[t] for t in V.SPECIAL_TOKENS] == list(range(4, 4 + len(V.SPECIAL_TOKENS)))
  assert tiny_vocab.harm_tag_id == ids[V.HARM_TAG]
  assert isinstance(tiny_vocab, seqio.Vocabulary)
  assert (tiny_vocab.pad_id, tiny_vocab.eos_id) == (0, 1)


@pytest.mark.parametrize("token", V.SPECIAL_TOKENS)
@pytest.mark.parametrize("context", ["{t}", "word{t} next", "The river{t} watched. ", "{t}{t}", " a{t}b"])
def test_every_special_token_is_one_id_in_context(any_vocab, token, context):
  text = context.format(t=token)
  ids = any_vocab.encode(text)
  assert ids.count(any_vocab.token_id(token)) == text.count(token)
  assert any_vocab.decode(ids) == text  # lossless round trip


def test_glued_tag_removal_restores_text(any_vocab):
  text = "The river watched the morning light before sunset."
  words = text.split(" ")
  tagged = " ".join(w + (V.HARM_TAG if i in (1, 4) else "") for i, w in enumerate(words))
  ids = any_vocab.encode(tagged)
  assert ids.count(any_vocab.harm_tag_id) == 2
  untagged = [i for i in ids if i != any_vocab.harm_tag_id]
  assert untagged == any_vocab.encode(text)
  assert any_vocab.decode_without_specials(ids) == text


def test_ordinary_text_never_yields_reserved_ids(any_vocab):
  reserved = set(any_vocab.special_ids.values())
  for text in ["potentially unsafe content", "<|user", "user|>", "< potentially_unsafe_content >", "ünïcødé ✓ 日本",
               "<pad> </s> <s>"]:
    assert not reserved & set(any_vocab.encode(text)), text


def test_any_text_round_trips_without_unk(any_vocab):
  ids = any_vocab.encode("日本語 ✓ émoji 🙂")
  assert any_vocab.unk_id not in ids
  assert any_vocab.decode(ids) == "日本語 ✓ émoji 🙂"


def test_piece_bytes_spell_the_decoded_text(any_vocab):
  text = "The river watched 日本 🙂 twice.  Then\nsunset"
  ids = any_vocab.encode(text)
  spelled = b"".join(any_vocab.piece_bytes(i) for i in ids).decode("utf-8")
  assert spelled == (" " + text if any_vocab.adds_dummy_prefix else text)
  assert any_vocab.piece_bytes(any_vocab.harm_tag_id) == b"" == any_vocab.piece_bytes(any_vocab.vocab_size)


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


def test_unknown_token_name_fails_clearly(any_vocab):
  with pytest.raises(KeyError, match="not a reserved token"):
    any_vocab.token_id("<nope>")


def test_model_without_reserved_tokens_is_rejected(tmp_path):
  import sentencepiece as spm

  prefix = tmp_path / "plain"
  spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50 + ["a b c d e f g"] * 50),
                                 model_prefix=str(prefix), vocab_size=30, minloglevel=2, hard_vocab_limit=False)
  with pytest.raises(ValueError, match="lacks the reserved token"):
    V.SafejaxVocabulary(str(prefix) + ".model")


def test_vocabulary_pickles_for_beam(any_vocab):
  clone = pickle.loads(pickle.dumps(any_vocab))
  assert clone == any_vocab
  assert clone.encode("The river watched.") == any_vocab.encode("The river watched.")
  assert clone.harm_tag_id == any_vocab.harm_tag_id


def test_tensorflow_encoding_matches_python(any_vocab):
  """seqio's tokenize preprocessor encodes with encode_tf inside tf.data."""
  texts = ["The river<potentially_unsafe_content> watched.", "<|user|> Hi<|end_of_turn|><|assistant|>", "日本 🙂"]
  ds = tf.data.Dataset.from_tensor_slices(texts).map(any_vocab.encode_tf)
  assert [list(ids) for ids in ds.as_numpy_iterator()] == [any_vocab.encode(t) for t in texts]
  ids = tf.ragged.constant([any_vocab.encode(t) for t in texts[:2]]).to_tensor(any_vocab.pad_id)
  assert [t.decode() for t in any_vocab.decode_tf(ids).numpy()] == texts[:2]


# --------------------------------------------------------------------------------------------
# Hugging Face byte-level BPE


def test_hf_vocabulary_appends_reserved_tokens_after_its_own(tiny_bpe_vocab):
  vocab = tiny_bpe_vocab
  assert isinstance(vocab, seqio.Vocabulary) and vocab.kind == "tokenizers"
  # SmolLM2-like: <|endoftext|> (tokenizer id 0) is start and eos; the pad token is appended last
  # (tokenizer id 406, after the six reserved tokens) and trades ids with <|endoftext|>, since seqio
  # pads with id 0.
  assert vocab.appended_hf_ids == tuple(range(400, 407)) and vocab.vocab_size == 407
  assert (vocab.decoder_start_id, vocab.eos_id, vocab.pad_id, vocab.unk_id) == (406, 406, 0, None)
  assert vocab.hf_ids.tolist() == [406, *range(1, 406), 0]
  assert [vocab.token_id(t) for t in V.SPECIAL_TOKENS] == list(range(400, 406))
  assert vocab.special_ids == {"<|endoftext|>": 406, "<pad>": 0, **{t: 400 + i for i, t in enumerate(V.SPECIAL_TOKENS)}}
  assert vocab.hf_special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<pad>",
                                     "unk_token": None}


def test_hf_vocabulary_keeps_the_original_ids(tiny_bpe_dir, tiny_bpe_vocab):
  from tokenizers import Tokenizer

  original = Tokenizer.from_file(str(tiny_bpe_dir / "tokenizer.json"))
  for text in ["The river watched the morning light.", " lead space", "日本 🙂 12\n"]:
    ids = tiny_bpe_vocab.encode(text)
    assert tiny_bpe_vocab.hf_ids[ids].tolist() == original.encode(text, add_special_tokens=False).ids


def test_hf_tokenizer_prepends_the_start_token(any_vocab):
  tokenizer = any_vocab.hf_tokenizer()
  for text in ["The river watched.", "<|user|> Hi<|end_of_turn|><|assistant|>", "a<potentially_unsafe_content> b"]:
    ids = [any_vocab.decoder_start_id, *any_vocab.encode(text)]
    assert tokenizer.encode(text).ids == any_vocab.hf_ids[ids].tolist()


def test_hf_vocabulary_keeps_a_start_token_the_tokenizer_adds(tiny_bpe_dir):
  """Llama 3's post-processor already prepends <|begin_of_text|>: it is kept, not doubled."""
  from tokenizers import Tokenizer, processors

  tokenizer = Tokenizer.from_file(str(tiny_bpe_dir / "tokenizer.json"))
  tokenizer.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                           special_tokens=[("<|endoftext|>", 0)])
  roles = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
  vocab = V.HfTokenizerVocabulary(tokenizer.to_str(), roles)
  assert json.loads(vocab.hf_tokenizer().to_str())["post_processor"] == json.loads(tokenizer.to_str())["post_processor"]
  assert vocab.hf_tokenizer().encode("The river").ids == vocab.hf_ids[[vocab.decoder_start_id,
                                                                        *vocab.encode("The river")]].tolist()
  tokenizer.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                           special_tokens=[("<|endoftext|>", 0)])
  with pytest.raises(ValueError, match="expects it to add nothing or only the start token"):
    V.HfTokenizerVocabulary(tokenizer.to_str(), roles)


def test_hf_vocabulary_with_its_own_pad_and_bos(tiny_bpe_dir):
  """A Llama-3-like tokenizer: a bos distinct from eos, a pad token; only SPECIAL_TOKENS are appended."""
  from tokenizers import AddedToken, Tokenizer

  tokenizer = Tokenizer.from_file(str(tiny_bpe_dir / "tokenizer.json"))
  tokenizer.add_special_tokens([AddedToken("<|begin|>", special=True), AddedToken("<|pad|>", special=True)])
  vocab = V.HfTokenizerVocabulary(tokenizer.to_str(), {"bos_token": "<|begin|>", "eos_token": "<|endoftext|>",
                                                       "pad_token": "<|pad|>"})
  assert (vocab.decoder_start_id, vocab.eos_id, vocab.pad_id) == (400, 401, 0)  # <|pad|> (401) traded with id 0
  assert vocab.appended_hf_ids == tuple(range(402, 408)) and vocab.vocab_size == 408


def test_hf_vocabulary_refusals(tiny_bpe_dir, tiny_vocab):
  text = (tiny_bpe_dir / "tokenizer.json").read_text()
  with pytest.raises(ValueError, match=r"the tokenizer has no tokens \{'eos_token': '</s>'\}"):
    V.HfTokenizerVocabulary(text, {"eos_token": "</s>"})
  with pytest.raises(ValueError, match="is safejax's reserved '<|end_of_turn|>'"):
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_str(text)
    tokenizer.add_special_tokens([AddedToken(V.END_OF_TURN, special=True)])
    V.HfTokenizerVocabulary(tokenizer.to_str(), {"eos_token": V.END_OF_TURN})
  sentencepiece_style = tiny_vocab.hf_tokenizer().to_str()
  with pytest.raises(ValueError, match="only byte-level BPE tokenizers"):
    V.HfTokenizerVocabulary(sentencepiece_style, {"eos_token": "</s>"})


def test_byte_level_alphabet_is_the_pre_tokenizers():
  from tokenizers import pre_tokenizers

  text = "".join(chr(c) for c in range(1, 0x3000, 3)) + "🙂\U0010FFFF"
  pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
  from safejax.vocab import hf_tokenizer

  alphabet = hf_tokenizer._byte_level_alphabet()
  assert bytes(alphabet[c] for piece, _ in pieces for c in piece) == text.encode("utf-8")


# --------------------------------------------------------------------------------------------
# SentencePiece as a Hugging Face tokenizer


def random_texts(n: int, seed: int = 0) -> list[str]:
  """Texts mixing words, spaces, newlines, digits, non-ASCII, reserved tokens glued and alone.
  No lone "<" or ">": literal control-piece strings ("<s>") are a documented difference."""
  rng = random.Random(seed)
  atoms = list("abcdefghijklmnopqrstuvwxyzTHE  \n\t.,?!0123456789é日🙂-'\"|_") + list(V.SPECIAL_TOKENS) + [
      "  ", " ", "The river", " watched", " the morning light"]
  texts = ("".join(rng.choice(atoms) for _ in range(rng.randint(1, 30))) for _ in range(n))
  return [t for t in texts if t not in V.SPECIAL_TOKENS]  # a lone reserved token: a documented difference


def test_sentencepiece_converts_to_an_equal_tokenizer(tiny_vocab):
  tokenizer = tiny_vocab.hf_tokenizer()
  for text in random_texts(1500):
    ids = tiny_vocab.encode(text)
    assert tokenizer.encode(text, add_special_tokens=False).ids == ids, text
    assert tokenizer.decode(ids, skip_special_tokens=False) == tiny_vocab.tokenizer.decode(ids), text
    # A leading start token (what the exported chat template writes) is its id, then the text's.
    assert tokenizer.encode("<pad>" + text, add_special_tokens=False).ids == [0, *ids], text


def test_sentencepiece_with_other_settings_is_refused(tmp_path):
  import sentencepiece as spm

  from conftest import tiny_documents

  prefix = tmp_path / "squeezing"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(tiny_documents(100)), model_prefix=str(prefix), vocab_size=300, minloglevel=2,
      pad_id=0, eos_id=1, unk_id=2, bos_id=3, pad_piece=V.PAD, eos_piece=V.EOS, unk_piece=V.UNK, bos_piece=V.BOS,
      user_defined_symbols=list(V.SPECIAL_TOKENS), byte_fallback=True, hard_vocab_limit=False,
      remove_extra_whitespaces=True)
  vocab = V.SafejaxVocabulary(str(prefix) + ".model")
  with pytest.raises(ValueError, match=r"remove_extra_whitespaces=True \(expected False\)"):
    vocab.hf_tokenizer()


# --------------------------------------------------------------------------------------------
# Model directories


def test_save_and_load_vocabulary(any_vocab, tmp_path):
  V.save_vocabulary(any_vocab, str(tmp_path))
  expected = ["vocab.model"] if any_vocab.kind == "sentencepiece" else ["tokenizer.json", "tokenizer_config.json"]
  assert sorted(p.name for p in tmp_path.iterdir()) == expected
  loaded = V.load_vocabulary(str(tmp_path))
  assert loaded == any_vocab and type(loaded) is type(any_vocab)
  assert loaded.special_ids == any_vocab.special_ids and loaded.decoder_start_id == any_vocab.decoder_start_id
  text = "The river<potentially_unsafe_content> watched.<|end_of_turn|>"
  assert loaded.encode(text) == any_vocab.encode(text)
  if any_vocab.kind == "tokenizers":
    assert loaded.appended_hf_ids == ()  # the saved tokenizer already holds the reserved tokens
    assert V.load_vocabulary(str(tmp_path / "tokenizer.json")) == any_vocab


def test_vocabularies_compare_by_content(tiny_vocab, tiny_bpe_vocab, tmp_path):
  copy = tmp_path / "copy.model"
  copy.write_bytes(tiny_vocab.sp_model)
  assert V.SafejaxVocabulary(str(copy)) == tiny_vocab
  assert tiny_vocab != tiny_bpe_vocab


def test_load_vocabulary_prefers_the_sentencepiece_model(tiny_vocab, tmp_path):
  """A safejax export holds vocab.model and its conversion: the exact original wins."""
  V.save_vocabulary(tiny_vocab, str(tmp_path))
  V.write_hf_tokenizer(tiny_vocab, str(tmp_path))
  assert isinstance(V.load_vocabulary(str(tmp_path)), V.SafejaxVocabulary)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="holds neither vocab.model nor tokenizer.json"):
    V.load_vocabulary(str(tmp_path / "empty"))
