"""`SafejaxVocabulary`: a SentencePiece model with safejax's reserved tokens, and its trainer.

Layout of the ids (fixed by `train_sentencepiece`'s options, asserted at load time):
  0 pad, 1 eos, 2 unk, 3 bos   (seqio assumes pad=0, eos=1)
  4.. the user-defined symbols of `SPECIAL_TOKENS`, in order
  then 256 byte-fallback pieces and the learned pieces.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import seqio
import sentencepiece as spm
import tokenizers

from safejax.vocab.reserved import BOS, EOS, LATER_TOKENS, PAD, SPECIAL_TOKENS, UNK, ReservedTokens, strip_special_tokens


def train_sentencepiece(
    texts: Iterable[str],
    model_path: str,
    vocab_size: int = 8192,
    *,
    model_type: str = "unigram",
    max_sentence_length: int = 16384,
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9995,
    seed: int = 0,
) -> "SafejaxVocabulary":
  """Trains a SentencePiece model on `texts`, writes it to `model_path` and loads it.

  Byte fallback is on, so no text ever maps to <unk>. Training text is stripped of special-token
  strings first so the learned pieces never overlap a reserved symbol.
  """
  del seed  # SentencePiece's sampling is deterministic for a fixed input order.

  def clean_lines() -> Iterator[str]:
    for text in texts:
      text, _ = strip_special_tokens(text)
      for line in text.splitlines():
        line = line.strip()
        if line:
          yield line

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=clean_lines(),
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0, eos_id=1, unk_id=2, bos_id=3,
      pad_piece=PAD, eos_piece=EOS, unk_piece=UNK, bos_piece=BOS,
      user_defined_symbols=list(SPECIAL_TOKENS),
      byte_fallback=True,
      character_coverage=character_coverage,
      max_sentence_length=max_sentence_length,
      input_sentence_size=input_sentence_size,
      shuffle_input_sentence=True,
      split_digits=True,
      remove_extra_whitespaces=False,
      normalization_rule_name="identity",
      hard_vocab_limit=False,
      minloglevel=2,
  )
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  # Write atomically: parallel test workers or a crash must never leave half a model behind.
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(model_path)), delete=False) as f:
    f.write(model.getvalue())
  os.replace(f.name, model_path)
  return SafejaxVocabulary(model_path)


class SafejaxVocabulary(ReservedTokens, seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` that knows safejax's reserved tokens by name."""

  kind = "sentencepiece"
  adds_dummy_prefix = True

  def __init__(self, sentencepiece_model_file: str, extra_ids: int = 0):
    super().__init__(sentencepiece_model_file, extra_ids=extra_ids)
    self._special_ids = {}
    for name in (PAD, EOS, UNK, BOS, *SPECIAL_TOKENS):
      piece_id = self.tokenizer.piece_to_id(name)
      if self.tokenizer.id_to_piece(piece_id) != name and name in LATER_TOKENS:
        continue  # a vocabulary trained before the token existed: everything else still works
      if self.tokenizer.id_to_piece(piece_id) != name:
        raise ValueError(
            f"{sentencepiece_model_file} lacks the reserved token {name!r}: train it with "
            "safejax.vocab.train_sentencepiece.")
      self._special_ids[name] = piece_id

  @property
  def bos_id(self) -> int:
    return self._special_ids[BOS]

  @property
  def decoder_start_id(self) -> int:
    """The id every sequence starts with: seqio's DecoderFeatureConverter shifts targets right
    with 0 (the pad id), so a model trained through it has seen this token at position 0 of
    every document. Decoding and scoring prepend it too."""
    return self.pad_id

  @property
  def hf_special_tokens(self) -> dict[str, str | None]:
    # The start token is <pad>: Hugging Face's bos_token is what a sequence begins with.
    return {"bos_token": self.tokenizer.id_to_piece(self.decoder_start_id), "eos_token": EOS,
            "pad_token": PAD, "unk_token": UNK}

  def piece_bytes(self, token: int) -> bytes:
    processor = self.tokenizer
    if token in self._special_ids.values() or not 0 <= token < processor.get_piece_size():
      return b""
    if processor.is_byte(token):
      return bytes([int(processor.id_to_piece(token)[3:5], 16)])  # byte pieces look like <0xE2>
    return processor.id_to_piece(token).replace("\u2581", " ").encode("utf-8")

  @property
  def hf_ids(self) -> np.ndarray:
    return np.arange(self.vocab_size)

  def hf_tokenizer(self) -> tokenizers.Tokenizer:
    return sentencepiece_to_tokenizers(self)

  def __eq__(self, other):
    # By content: two copies of one model in different model directories are one vocabulary.
    return (isinstance(other, SafejaxVocabulary) and self.sp_model == other.sp_model
            and self.extra_ids == other.extra_ids)

  def __getstate__(self):
    # seqio vocabularies are pickled by Beam; the SentencePiece processor is rebuilt on load.
    return {"path": self.sentencepiece_model_file, "extra_ids": self.extra_ids}

  def __setstate__(self, state):
    self.__init__(state["path"], extra_ids=state["extra_ids"])


def sentencepiece_to_tokenizers(vocab: SafejaxVocabulary) -> tokenizers.Tokenizer:
  """A `tokenizers` Unigram tokenizer that encodes and decodes like `vocab`'s SentencePiece model.

  The pieces and scores are SentencePiece's, searched by the same Viterbi algorithm, with byte
  fallback. SentencePiece's settings from `train_sentencepiece` (identity normalization, a dummy
  "▁" prefix, spaces as "▁", extra whitespace kept) become the normalizer; the reserved pieces are
  special added tokens matched in the normalized text, as SentencePiece matches user-defined
  symbols inside its lattice, so "word<tag> next" and "<|user|> Hi" get the same ids as safejax.

  A text that begins with the start token's string (<pad>, what the exported chat template writes
  first) gets the dummy prefix after it: its ids are the start id, then safejax's ids of the rest.

  Known differences, for text safejax's pipeline never produces: a text that is exactly one
  reserved token (SentencePiece puts a lone "▁" before it, this tokenizer does not), and literal
  strings of control or byte pieces ("</s>", "<0x41>"), which SentencePiece spells out in pieces
  and this tokenizer maps to those ids, as every Hugging Face conversion of SentencePiece does.

  Raises ValueError for SentencePiece models trained with other settings.
  """
  from sentencepiece import sentencepiece_model_pb2  # the model's protobuf schema, shipped with sentencepiece

  proto = sentencepiece_model_pb2.ModelProto.FromString(vocab.sp_model)
  normalizer, trainer = proto.normalizer_spec, proto.trainer_spec
  expected = {"normalization rule": (normalizer.name, "identity"),
              "precompiled charsmap": (bool(normalizer.precompiled_charsmap), False),
              "add_dummy_prefix": (normalizer.add_dummy_prefix, True),
              "remove_extra_whitespaces": (normalizer.remove_extra_whitespaces, False),
              "escape_whitespaces": (normalizer.escape_whitespaces, True),
              "model_type": (trainer.model_type, trainer.UNIGRAM),
              "byte_fallback": (trainer.byte_fallback, True),
              "treat_whitespace_as_suffix": (trainer.treat_whitespace_as_suffix, False)}
  problems = [f"{name}={value!r} (expected {want!r})" for name, (value, want) in expected.items() if value != want]
  if problems:
    raise ValueError(f"{vocab.sentencepiece_model_file}: cannot convert a SentencePiece model trained with "
                     f"{', '.join(problems)}; train it with safejax.vocab.train_sentencepiece")

  piece_type = proto.SentencePiece
  tokenizer = tokenizers.Tokenizer(tokenizers.models.Unigram(
      [(p.piece, p.score) for p in proto.pieces], trainer.unk_id, byte_fallback=True))
  reserved = [p.piece for p in proto.pieces if p.type in (piece_type.CONTROL, piece_type.UNKNOWN,
                                                          piece_type.USER_DEFINED)]
  # The dummy prefix goes before the text, after a leading start token (a chat template's
  # bos_token: safejax's ids are [start, *encode(text)]), and never into a reserved token's own
  # content (tokenizers normalizes added tokens with this normalizer to match them).
  start = vocab.tokenizer.id_to_piece(vocab.decoder_start_id)
  lone_reserved, leading_start = "|".join(re.escape(piece) for piece in reserved), re.escape(start)
  tokenizer.normalizer = tokenizers.normalizers.Sequence([
      tokenizers.normalizers.Replace(tokenizers.Regex(rf"\A(?!{leading_start})(?!(?:{lone_reserved})\z)"), "\u2581"),
      tokenizers.normalizers.Replace(tokenizers.Regex(rf"\A{leading_start}(?=[\s\S])"), start + "\u2581"),
      tokenizers.normalizers.Replace(" ", "\u2581")])
  tokenizer.decoder = tokenizers.decoders.Sequence([
      tokenizers.decoders.Replace("\u2581", " "), tokenizers.decoders.ByteFallback(),
      tokenizers.decoders.Fuse(), tokenizers.decoders.Strip(" ", 1, 0)])
  tokenizer.add_special_tokens([tokenizers.AddedToken(piece, special=True, normalized=True) for piece in reserved])
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single=f"{start} $A", special_tokens=[(start, vocab.decoder_start_id)])
  return tokenizer
