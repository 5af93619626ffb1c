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
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator

import seqio
import sentencepiece as spm

PAD, EOS, UNK, BOS = "<pad>", "</s>", "<unk>", "<s>"
HARM_TAG = "<potentially_unsafe_content>"
USER, ASSISTANT, SYSTEM, END_OF_TURN = "<|user|>", "<|assistant|>", "<|system|>", "<|end_of_turn|>"
# Order matters: these take ids 4, 5, ... in every safejax vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (HARM_TAG, USER, ASSISTANT, SYSTEM, END_OF_TURN)


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


class SafejaxVocabulary(seqio.SentencePieceVocabulary):
  """A `seqio.SentencePieceVocabulary` that knows safejax's reserved tokens by name."""

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
    return dict(self._special_ids)

  @property
  def bos_id(self) -> int:
    return self._special_ids[BOS]

  @property
  def decoder_start_id(self) -> int:
    """The id every sequence starts with: seqio's DecoderFeatureConverter shifts targets right
    with 0 (the pad id), so a model trained through it has seen this token at position 0 of
    every document. Decoding and scoring prepend it too."""
    return self.pad_id

  def decode_without_specials(self, ids: Iterable[int]) -> str:
    """Decodes ids, dropping every reserved token (the harm tag never reaches returned text)."""
    reserved = set(self._special_ids.values())
    ids = list(ids)
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self.tokenizer.decode([i for i in ids if i not in reserved])

  def __getstate__(self):
    # seqio vocabularies are pickled by Beam; the SentencePiece processor is rebuilt on load.
    return {"path": self.sentencepiece_model_file, "extra_ids": self.extra_ids}

  def __setstate__(self, state):
    self.__init__(state["path"], extra_ids=state["extra_ids"])
