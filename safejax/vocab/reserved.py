"""The reserved tokens and the one sanitiser of untrusted text.

The harm tag, chat role markers and pad/eos/unk/bos are reserved ids in every safejax vocabulary.
Nothing downstream hard-codes an id: it asks the vocabulary (`vocab.token_id(HARM_TAG)`,
`vocab.harm_tag_id`); `ReservedTokens` is what every vocabulary guarantees.

Reserved-token strings are matched verbatim anywhere in the text, so a raw document that happens to
contain `<potentially_unsafe_content>` would smuggle in a tag. `sanitize_text` is the one sanitiser
of untrusted text (pipeline sources, TEXT_FILES corpora, conversation data): it removes such strings
until none is left, nested fragments included (`strip_special_tokens`, also the server's output
filter), and rejects text that is not valid Unicode; the data sources count the removals.

The tag and role markers are written glued to the preceding text ("word<tag> next"): the
tokenizer then yields exactly one id for the marker and the next word keeps its word-boundary
piece, so removing the marker string restores the original text byte for byte.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  import tokenizers

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
HARM_TAG = "<potentially_unsafe_content>"
USER, ASSISTANT, SYSTEM, END_OF_TURN = "<|user|>", "<|assistant|>", "<|system|>", "<|end_of_turn|>"
# The harm tag's control: reserved and handled exactly like the tag, and inserted (by the demo's
# tags rung) at the tag's count into safe text, so that SafeBeam steered by it costs the same and
# any model-learned token is a control for the tag (issue 22).
SHAM_TAG = "<sham_tag>"
# Order matters: these take ids 4, 5, ... in every SentencePiece vocabulary, and are appended in
# this order to a Hugging Face tokenizer (the sham tag last, so the others keep their ids).
SPECIAL_TOKENS: tuple[str, ...] = (HARM_TAG, USER, ASSISTANT, SYSTEM, END_OF_TURN, SHAM_TAG)
# Reserved after vocabularies were first trained: one without it still loads, and `token_id` names
# it as missing (the sham control needs a vocabulary trained since).
LATER_TOKENS: tuple[str, ...] = (SHAM_TAG,)

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

  def word_start_ids(self) -> tuple[int, ...]:
    """The ids after which a word has ended: pieces that start a new word (a leading space in running
    text), EOS and END_OF_TURN. The harm tag is written glued to the end of a word ("word<tag>
    next"), so the tag can only come where one of these could: SafeBeam's boundary rule weighs the
    tag against them. Computed once per vocabulary."""
    cached = getattr(self, "_word_start_ids", None)
    if cached is None:
      starts = [i for i in range(self.vocab_size) if self.piece_bytes(i).startswith(b" ")]
      cached = tuple(sorted({*starts, self.eos_id, self._special_ids[END_OF_TURN]}))
      self._word_start_ids = cached
    return cached

  def decode_without_specials(self, ids: Iterable[int]) -> str:
    """Decodes ids up to the first EOS, dropping every reserved token (the harm tag never reaches
    returned text)."""
    reserved = set(self._special_ids.values())
    ids = list(ids)
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self._decode([i for i in ids if i not in reserved])
