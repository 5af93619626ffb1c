"""SentencePiece vocabulary with safejax's reserved special tokens.

The harm tag, chat role markers and pad/eos/unk/bos are reserved ids. Nothing downstream
hard-codes an id: it asks the vocabulary (`vocab.token_id(HARM_TAG)`, `vocab.harm_tag_id`).

Layout of the ids (fixed by training options, asserted at load time):
  0 pad, 1 eos, 2 unk, 3 bos   (seqio assumes pad=0, eos=1)
  4.. the user-defined symbols of `SPECIAL_TOKENS`, in order
  then 256 byte-fallback pieces and the learned pieces.

User-defined symbols are matched verbatim anywhere in the text, so a raw document that happens to
contain `<potentially_unsafe_content>` would smuggle in a tag. `sanitize_text` is the one sanitiser
of untrusted text (pipeline sources, TEXT_FILES corpora, conversation data): it removes such strings
until none is left, nested fragments included (`strip_special_tokens`, also the server's output
filter), and rejects text that is not valid Unicode; the data sources count the removals.

The tag and role markers are written glued to the preceding text ("word<tag> next"): SentencePiece
then yields exactly one id for the marker and the next word keeps its word-boundary piece, so
removing the marker string restores the original text byte for byte.

Two vocabularies give these guarantees (`ReservedTokens`), and everything that takes a vocabulary
accepts either:
  SafejaxVocabulary      a SentencePiece model trained by `train_sentencepiece` (the layout above);
  HfTokenizerVocabulary  a Hugging Face byte-level BPE tokenizer (tokenizer.json, as SmolLM2 and
                         Llama 3 ship), its ids kept, the reserved tokens appended after them.
A model directory stores its vocabulary as `vocab.model` or as `tokenizer.json` +
`tokenizer_config.json` (`save_vocabulary`, `load_vocabulary`).
"""

from __future__ import annotations

import abc
import functools
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeAlias

import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf
import tokenizers
from etils import epath

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
HARM_TAG = "<potentially_unsafe_content>"
USER, ASSISTANT, SYSTEM, END_OF_TURN = "<|user|>", "<|assistant|>", "<|system|>", "<|end_of_turn|>"
# Order matters: these take ids 4, 5, ... in every SentencePiece vocabulary, and are appended in
# this order to a Hugging Face tokenizer.
SPECIAL_TOKENS: tuple[str, ...] = (HARM_TAG, USER, ASSISTANT, SYSTEM, END_OF_TURN)

# A model directory's vocabulary: one of these (see save_vocabulary).
SENTENCEPIECE_FILE = "vocab.model"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class RejectedText(ValueError):
  """Untrusted text that cannot be made safe to tokenize. `reason` is its dead-letter reason."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


def strip_special_tokens(text: str) -> tuple[str, int]:
  """Removes reserved-token strings from text until none is left; returns (text, number removed).

  One pass per token is not enough: removing `<|user|>` from `<potentially_<|user|>unsafe_content>`
  joins a harm tag. The text is scanned once, left to right, keeping the output free of reserved
  tokens at every step: each token ends with ">" and holds no other ">", so a token can only
  appear where a ">" has just been appended, and it is cut there at once. What is left contains
  no reserved-token string (nested fragments included), in time linear in the text.
  """
  if not any(token in text for token in SPECIAL_TOKENS):
    return text, 0
  longest = max(map(len, SPECIAL_TOKENS))
  out: list[str] = []  # the output so far, one character an item; it never holds a reserved token
  removed = 0
  for i, piece in enumerate(text.split(">")):
    if i:
      out.append(">")
      tail = "".join(out[-longest:])
      token = next((t for t in SPECIAL_TOKENS if tail.endswith(t)), None)
      if token is not None:
        del out[-len(token):]
        removed += 1
    out.extend(piece)
  return "".join(out), removed


def sanitize_text(text: str) -> tuple[str, int]:
  """The sanitiser of every untrusted text a model may train on or see (documents, corpus lines,
  conversations): reserved-token strings removed until none is left (`strip_special_tokens`);
  returns (text, number removed).

  Raises:
    RejectedText("bad_encoding"): the text holds a lone surrogate (e.g. a JSON "\\ud800"), which
      is no Unicode character and cannot be written as UTF-8.
  """
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise RejectedText("bad_encoding", f"lone surrogate {text[e.start]!r} at character {e.start}") from None
  return strip_special_tokens(text)


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


class ReservedTokens(abc.ABC):
  """What every safejax vocabulary guarantees on top of `seqio.Vocabulary`.

  - Each reserved token (SPECIAL_TOKENS, and the pad, eos and start tokens) is one id, looked up by
    its string: `vocab.token_id(HARM_TAG)`, `vocab.harm_tag_id`, `vocab.special_ids`.
  - Text yields a reserved id only where it holds that token's literal string (strip untrusted text
    with `strip_special_tokens` first).
  - `decode_without_specials` never returns a reserved token.
  - Every sequence starts with `decoder_start_id`: seqio's feature converters shift it in before
    each training document, and decoding and scoring prepend it.
  """

  kind: str  # "sentencepiece" or "tokenizers"
  # True when decoding drops the space the first piece of a text starts with (SentencePiece's
  # dummy prefix); a text is then encoded alone exactly as it is after a reserved token.
  adds_dummy_prefix: bool
  _special_ids: dict[str, int]

  def token_id(self, name: str) -> int:
    """The id of a reserved token, e.g. `vocab.token_id(HARM_TAG)`."""
    try:
      return self._special_ids[name]
    except KeyError:
      raise KeyError(f"{name!r} is not a reserved token; known: {sorted(self._special_ids)}") from None

  @property
  def harm_tag_id(self) -> int:
    return self._special_ids[HARM_TAG]

  @property
  def special_ids(self) -> dict[str, int]:
    """Reserved token string -> id."""
    return dict(self._special_ids)

  @property
  @abc.abstractmethod
  def decoder_start_id(self) -> int:
    """The id every sequence starts with."""

  @property
  @abc.abstractmethod
  def hf_special_tokens(self) -> dict[str, str | None]:
    """bos_token (the start token), eos_token, pad_token, unk_token as a Hugging Face
    tokenizer_config.json names them (None: the vocabulary has no such token)."""

  @abc.abstractmethod
  def piece_bytes(self, token: int) -> bytes:
    """The bytes one id stands for in running text (a word-boundary mark as a space); b"" for
    reserved ids and ids outside the vocabulary."""

  @property
  @abc.abstractmethod
  def hf_ids(self) -> np.ndarray:
    """[vocab_size] int: the Hugging Face tokenizer's id (`hf_tokenizer`) of each id. A
    permutation, its own inverse; the identity but for HfTokenizerVocabulary's traded pad id."""

  @abc.abstractmethod
  def hf_tokenizer(self) -> tokenizers.Tokenizer:
    """This vocabulary as a `tokenizers.Tokenizer` (what tokenizer.json holds) that encodes text
    to the same ids (under `hf_ids`), with the start token prepended by its post-processor:
    transformers' `tokenizer(text)` then gives the ids a safejax model sees."""

  def decode_without_specials(self, ids: Iterable[int]) -> str:
    """Decodes ids up to the first EOS, dropping every reserved token (the harm tag never reaches
    returned text)."""
    reserved = set(self._special_ids.values())
    ids = list(ids)
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self._decode([i for i in ids if i not in reserved])


# --------------------------------------------------------------------------------------------
# SentencePiece


class SafejaxVocabulary(ReservedTokens, seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` that knows safejax's reserved tokens by name."""

  kind = "sentencepiece"
  adds_dummy_prefix = True

  def __init__(self, sentencepiece_model_file: str, extra_ids: int = 0):
    super().__init__(sentencepiece_model_file, extra_ids=extra_ids)
    self._special_ids = {}
    for name in (PAD, EOS, UNK, BOS, *SPECIAL_TOKENS):
      piece_id = self.tokenizer.piece_to_id(name)
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


# --------------------------------------------------------------------------------------------
# Hugging Face tokenizers


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
  """Character -> byte of the byte-level alphabet (GPT-2's bytes_to_unicode, which `tokenizers`'
  ByteLevel pre-tokenizer and decoder use): printable bytes stand for themselves, the others, in
  byte order, for chr(256), chr(257), ..."""
  printable = {*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
               *range(ord("\xae"), ord("\xff") + 1)}
  alphabet, shifted = {}, 0
  for byte in range(256):
    if byte in printable:
      alphabet[chr(byte)] = byte
    else:
      alphabet[chr(256 + shifted)] = byte
      shifted += 1
  if set(alphabet) != set(tokenizers.pre_tokenizers.ByteLevel.alphabet()):
    raise RuntimeError("this tokenizers version's byte-level alphabet is not GPT-2's")
  return alphabet


def _has_component(component: Mapping[str, Any] | None, kind: str) -> bool:
  """Whether a tokenizer.json component (a pre-tokenizer, decoder, ...) is or contains `kind`."""
  if not component:
    return False
  if component.get("type") == kind:
    return True
  children = component.get("pretokenizers") or component.get("decoders") or component.get("processors") or []
  return any(_has_component(child, kind) for child in children)


HF_ROLES = ("bos_token", "eos_token", "pad_token", "unk_token")


def read_hf_special_tokens(folder: str, tokenizer: tokenizers.Tokenizer) -> dict[str, str | None]:
  """bos/eos/pad/unk token strings of a Hugging Face tokenizer folder: tokenizer_config.json,
  then special_tokens_map.json, then config.json's token ids; None where none names one."""
  folder = epath.Path(folder)
  roles: dict[str, str | None] = dict.fromkeys(HF_ROLES)
  for name in (TOKENIZER_CONFIG_FILE, "special_tokens_map.json"):
    if (folder / name).exists():
      config = json.loads((folder / name).read_text())
      for role in HF_ROLES:
        value = config.get(role)
        value = value.get("content") if isinstance(value, dict) else value  # older files: AddedToken dicts
        if roles[role] is None and isinstance(value, str):
          roles[role] = value
  if (folder / "config.json").exists():
    config = json.loads((folder / "config.json").read_text())
    for role in ("bos_token", "eos_token", "pad_token"):
      token_id = config.get(f"{role}_id")
      token_id = token_id[0] if isinstance(token_id, list) and token_id else token_id
      if roles[role] is None and isinstance(token_id, int):
        roles[role] = tokenizer.id_to_token(token_id)
  return roles


def _ensure_start_prepended(tokenizer: tokenizers.Tokenizer, start: str) -> None:
  """Makes the tokenizer's post-processor prepend `start` (Llama 3's already does)."""
  start_id = tokenizer.token_to_id(start)
  plain, full = tokenizer.encode("a", add_special_tokens=False).ids, tokenizer.encode("a").ids
  if full == [start_id, *plain]:
    return
  if full != plain:
    raise ValueError(f"the tokenizer's post-processor turns {plain} into {full}; safejax expects it to add "
                     f"nothing or only the start token {start!r}")
  prepend = tokenizers.processors.TemplateProcessing(single=f"{start} $A", special_tokens=[(start, start_id)])
  tokenizer.post_processor = (tokenizers.processors.Sequence([tokenizer.post_processor, prepend])
                              if tokenizer.post_processor is not None else prepend)


class HfTokenizerVocabulary(ReservedTokens, seqio.Vocabulary):
  """A `seqio.Vocabulary` over a Hugging Face byte-level BPE tokenizer (tokenizer.json).

  The tokenizer's own ids are kept, so an imported model's embedding rows keep their meaning.
  safejax's reserved tokens become added special tokens: SPECIAL_TOKENS, then an EOS (`</s>`) and
  a pad token (`<pad>`) if the tokenizer names none, take the ids after the tokenizer's own
  (`appended_hf_ids`: those it did not have). Added tokens are split off before the byte-level
  pre-tokenizer, so each is one id. As with SentencePiece, safejax's encoding yields the markers
  (SPECIAL_TOKENS) from their literal strings only, and never a control id (start, eos, pad, the
  tokenizer's other special tokens): their strings are spelled out as text. The saved
  tokenizer.json keeps Hugging Face's convention, matching every special token's string.

  The start token is the tokenizer's bos_token (Llama 3: <|begin_of_text|>; SmolLM2:
  <|endoftext|>), else its EOS, the token every document follows in a stream. The tokenizer's
  post-processor is made to prepend it (if it does not already), so `tokenizer(text)` in
  transformers gives the ids safejax feeds the model; safejax itself encodes without it.

  Ids: seqio reserves id 0 for padding (its converters give id-0 tokens no loss and no segment),
  while a byte-level tokenizer's id 0 is a real token (SmolLM2: <|endoftext|>, Llama 3: "!"). So
  safejax's ids are the tokenizer's with two traded: the pad token takes id 0 and the tokenizer's
  id 0 takes the pad token's id (`hf_ids` maps them; an import and an export permute the embedding
  rows the same way, so Hugging Face files always carry the tokenizer's own ids).

  Only byte-level tokenizers (GPT-2, Llama 3, SmolLM2, Qwen): every text maps to ids without an
  unknown token, and every id stands for fixed bytes (`piece_bytes`). SentencePiece-style
  tokenizer.json files (Llama 2, Mistral) are refused.
  """

  kind = "tokenizers"
  adds_dummy_prefix = False

  def __init__(self, tokenizer_json: str, special_tokens: Mapping[str, str | None]):
    """
    Args:
      tokenizer_json: a tokenizer.json's text.
      special_tokens: {"bos_token", "eos_token", "pad_token", "unk_token"} -> the token's string
        or None (as tokenizer_config.json names them; `read_hf_special_tokens`).
    """
    super().__init__(extra_ids=0)
    self._source = (tokenizer_json, dict(special_tokens))
    tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    spec = json.loads(tokenizer_json)
    byte_level = [_has_component(spec.get(part), "ByteLevel") for part in ("pre_tokenizer", "decoder")]
    if not all(byte_level):
      raise ValueError(
          "only byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen) are supported: this tokenizer.json has "
          f"pre_tokenizer {(spec.get('pre_tokenizer') or {}).get('type')} and decoder "
          f"{(spec.get('decoder') or {}).get('type')}")
    unknown = {role: token for role, token in special_tokens.items()
               if token is not None and tokenizer.token_to_id(token) is None}
    if unknown:
      raise ValueError(f"the tokenizer has no tokens {unknown}")
    eos = special_tokens.get("eos_token") or EOS
    pad = special_tokens.get("pad_token") or PAD
    start = special_tokens.get("bos_token") or eos
    unk = special_tokens.get("unk_token")

    had = set(tokenizer.get_vocab(with_added_tokens=True))
    added = {token.content for token in tokenizer.get_added_tokens_decoder().values()}
    # A role token the tokenizer already has keeps its settings; reserved strings it has as
    # ordinary tokens become special added tokens under their ids.
    tokenizer.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)
                                  for token in dict.fromkeys([*SPECIAL_TOKENS, eos, pad]) if token not in added])
    self.appended_hf_ids: tuple[int, ...] = tuple(
        tokenizer.token_to_id(token) for token in dict.fromkeys([*SPECIAL_TOKENS, eos, pad]) if token not in had)
    self._size = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    self._hf_ids = np.arange(self._size)  # safejax id -> tokenizer id: 0 and the pad token's trade places
    self._hf_ids[[0, tokenizer.token_to_id(pad)]] = self._hf_ids[[tokenizer.token_to_id(pad), 0]]
    own_id = lambda token: int(self._hf_ids[tokenizer.token_to_id(token)])  # the permutation is an involution

    self._special_ids = {token: own_id(token) for token in (start, eos, pad, unk) if token is not None}
    for token in SPECIAL_TOKENS:
      if token in self._special_ids:
        raise ValueError(f"the tokenizer's {[r for r, t in special_tokens.items() if t == token]} is safejax's "
                         f"reserved {token!r}")
      self._special_ids[token] = own_id(token)
    self._roles = {"bos_token": start, "eos_token": eos, "pad_token": pad, "unk_token": unk}
    self._start_id, self._eos_id, self._pad_id = own_id(start), own_id(eos), own_id(pad)
    self._unk_id = None if unk is None else own_id(unk)
    _ensure_start_prepended(tokenizer, start)
    self.tokenizer = tokenizer
    # safejax encodes with a copy in which only the reserved markers are matched in text: the
    # tokenizer's control tokens (<|endoftext|>, <pad>, ...) are spelled out, as SentencePiece
    # spells out "</s>", so raw text never yields an EOS or start id.
    spec = json.loads(tokenizer.to_str())
    for token in spec["added_tokens"]:
      token["special"] = token["special"] and token["content"] not in SPECIAL_TOKENS
    self._encoder = tokenizers.Tokenizer.from_str(json.dumps(spec))
    self._encoder.encode_special_tokens = True  # special added tokens are text; the markers are not special here
    self._added_text = {i: token.content for i, token in tokenizer.get_added_tokens_decoder().items()}  # by hf id
    self._control_ids = {self._start_id, self._eos_id, self._pad_id}

  @classmethod
  def from_pretrained(cls, path: str) -> "HfTokenizerVocabulary":
    """From a Hugging Face tokenizer folder (tokenizer.json, and the special tokens as
    `read_hf_special_tokens` finds them) or a tokenizer.json file."""
    path = epath.Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.exists():
      raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}")
    text = file.read_text()
    return cls(text, read_hf_special_tokens(str(file.parent), tokenizers.Tokenizer.from_str(text)))

  # seqio.Vocabulary

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id  # 0, as seqio requires

  @property
  def bos_id(self) -> int:
    return self._start_id

  @property
  def unk_id(self) -> int | None:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def _encode(self, s: str) -> list[int]:
    return self._hf_ids[self._encoder.encode(s, add_special_tokens=False).ids].tolist()

  def _decode(self, ids) -> str:
    # Like SentencePiece's decode: pad, eos and start vanish; the reserved markers are spelled out.
    kept = [i for i in ids if i not in self._control_ids]
    return self.tokenizer.decode(self._hf_ids[kept].tolist(), skip_special_tokens=False)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """One string (rank 0) -> int32 ids [n], through the tokenizer in a tf.numpy_function."""
    if s.shape.rank not in (None, 0):
      raise ValueError(f"HfTokenizerVocabulary.encode_tf takes one string, got shape {s.shape}")
    def encode(text: bytes | np.ndarray) -> np.ndarray:
      text = text.item() if isinstance(text, np.ndarray) else text  # eager mode hands over a 0-d array
      return np.asarray(self._encode(text.decode("utf-8")), np.int32)

    return tf.ensure_shape(tf.numpy_function(encode, [s], tf.int32, stateful=False), [None])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids [..., n] -> strings [...]."""
    def decode(array: np.ndarray) -> np.ndarray:
      rows = array.reshape(-1, array.shape[-1])
      texts = np.array([self._decode(row.tolist()).encode("utf-8") for row in rows], dtype=object)
      return texts.reshape(array.shape[:-1])

    texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    return tf.ensure_shape(texts, ids.shape[:-1])

  # ReservedTokens

  @property
  def decoder_start_id(self) -> int:
    return self._start_id

  @property
  def hf_special_tokens(self) -> dict[str, str | None]:
    return dict(self._roles)

  def piece_bytes(self, token: int) -> bytes:
    if token in self._special_ids.values() or not 0 <= token < self._size:
      return b""
    token = int(self._hf_ids[token])
    if token in self._added_text:  # the tokenizer's own added tokens decode to their text
      return self._added_text[token].encode("utf-8")
    piece = self.tokenizer.id_to_token(token)
    if piece is None:
      return b""
    alphabet = _byte_level_alphabet()
    return bytes(alphabet[c] for c in piece)

  @property
  def hf_ids(self) -> np.ndarray:
    return self._hf_ids.copy()

  def hf_tokenizer(self) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_str(self.tokenizer.to_str())

  def __eq__(self, other):
    return (isinstance(other, HfTokenizerVocabulary) and self._roles == other._roles
            and json.loads(self.tokenizer.to_str()) == json.loads(other.tokenizer.to_str()))

  def __str__(self) -> str:
    roles = self._roles
    return f"HfTokenizerVocabulary({self._size} ids, start {roles['bos_token']!r}, eos {roles['eos_token']!r})"

  def __getstate__(self):
    return {"tokenizer_json": self._source[0], "special_tokens": self._source[1]}

  def __setstate__(self, state):
    self.__init__(state["tokenizer_json"], state["special_tokens"])


Vocabulary: TypeAlias = SafejaxVocabulary | HfTokenizerVocabulary


# --------------------------------------------------------------------------------------------
# Model directories


def write_hf_tokenizer(vocab: Vocabulary, directory: str, *, chat_template: str | None = None,
                       model_max_length: int | None = None) -> None:
  """Writes tokenizer.json and tokenizer_config.json, which transformers' AutoTokenizer loads.

  chat_template: a Jinja chat template for tokenizer_config.json (exports pass safejax's own).
  """
  directory = epath.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  (directory / TOKENIZER_FILE).write_text(vocab.hf_tokenizer().to_str(pretty=True))
  config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
  config.update({role: token for role, token in vocab.hf_special_tokens.items() if token is not None})
  # Decoding must not tidy spaces: the ids stand for exact bytes.
  config.update(additional_special_tokens=list(SPECIAL_TOKENS), clean_up_tokenization_spaces=False)
  if model_max_length is not None:
    config["model_max_length"] = model_max_length
  if chat_template is not None:
    config["chat_template"] = chat_template
  (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def save_vocabulary(vocab: Vocabulary, model_dir: str) -> None:
  """Records `vocab` in a model directory: vocab.model (SentencePiece), or tokenizer.json and
  tokenizer_config.json (Hugging Face tokenizers). `load_vocabulary(model_dir)` reads it back."""
  directory = epath.Path(model_dir)
  directory.mkdir(parents=True, exist_ok=True)
  if isinstance(vocab, SafejaxVocabulary):
    (directory / SENTENCEPIECE_FILE).write_bytes(vocab.sp_model)
  elif isinstance(vocab, HfTokenizerVocabulary):
    write_hf_tokenizer(vocab, str(directory))
  else:
    raise TypeError(f"cannot save a {type(vocab).__name__}: expected SafejaxVocabulary or HfTokenizerVocabulary")


def load_vocabulary(path: str) -> Vocabulary:
  """The vocabulary at `path`: a SentencePiece model file, a tokenizer.json, or a folder (a model
  directory, a Hugging Face checkpoint) holding vocab.model or else tokenizer.json. A safejax
  export holds both; its vocab.model is the exact original."""
  location = epath.Path(path)
  if location.is_dir():
    if (location / SENTENCEPIECE_FILE).exists():
      return SafejaxVocabulary(str(location / SENTENCEPIECE_FILE))
    if (location / TOKENIZER_FILE).exists():
      return HfTokenizerVocabulary.from_pretrained(str(location))
    raise FileNotFoundError(f"{path} holds neither {SENTENCEPIECE_FILE} nor {TOKENIZER_FILE}")
  if location.name.endswith(".json"):
    return HfTokenizerVocabulary.from_pretrained(str(location))
  return SafejaxVocabulary(str(location))
