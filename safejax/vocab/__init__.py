"""Vocabularies with safejax's reserved special tokens, in three modules:

  reserved.py       the reserved tokens, `ReservedTokens` (what every vocabulary guarantees) and the
                    one sanitiser of untrusted text (`sanitize_text`, `strip_special_tokens`)
  sentencepiece.py  `SafejaxVocabulary` (SentencePiece) and `train_sentencepiece`
  hf_tokenizer.py   `HfTokenizerVocabulary` (Hugging Face tokenizers) and `write_hf_tokenizer`

This package re-exports their public names; import them from `safejax.vocab`. Nothing downstream
hard-codes a reserved id: it asks the vocabulary (`vocab.token_id(HARM_TAG)`, `vocab.harm_tag_id`).

Two vocabularies give these guarantees (`ReservedTokens`), and everything that takes a vocabulary
accepts either:
  SafejaxVocabulary      a SentencePiece model trained by `train_sentencepiece` (the layout above);
  HfTokenizerVocabulary  a Hugging Face byte-level BPE tokenizer (tokenizer.json, as SmolLM2 and
                         Llama 3 ship), its ids kept, the reserved tokens appended after them.
A model directory stores its vocabulary as `vocab.model` or as `tokenizer.json` +
`tokenizer_config.json` (`save_vocabulary`, `load_vocabulary`).
"""

from __future__ import annotations

from typing import TypeAlias

from etils import epath

from safejax.vocab.hf_tokenizer import (HF_ROLES, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, HfTokenizerVocabulary,
                                        read_hf_special_tokens, write_hf_tokenizer)
from safejax.vocab.reserved import (ASSISTANT, BOS, END_OF_TURN, EOS, HARM_TAG, PAD, SHAM_TAG, SPECIAL_TOKENS, SYSTEM,
                                    UNK, USER, RejectedText, ReservedTokens, sanitize_text, strip_special_tokens)
from safejax.vocab.sentencepiece import SafejaxVocabulary, sentencepiece_to_tokenizers, train_sentencepiece

# A model directory's vocabulary: vocab.model, or tokenizer.json + tokenizer_config.json.
SENTENCEPIECE_FILE = "vocab.model"

__all__ = ["ASSISTANT", "BOS", "END_OF_TURN", "EOS", "HARM_TAG", "PAD", "SHAM_TAG", "SPECIAL_TOKENS", "SYSTEM", "UNK", "USER",
           "RejectedText", "ReservedTokens", "sanitize_text", "strip_special_tokens", "SafejaxVocabulary",
           "sentencepiece_to_tokenizers", "train_sentencepiece", "HF_ROLES", "TOKENIZER_CONFIG_FILE", "TOKENIZER_FILE",
           "HfTokenizerVocabulary", "read_hf_special_tokens", "write_hf_tokenizer", "SENTENCEPIECE_FILE", "Vocabulary",
           "save_vocabulary", "load_vocabulary"]

Vocabulary: TypeAlias = SafejaxVocabulary | HfTokenizerVocabulary


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
