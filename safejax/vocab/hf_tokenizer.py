"""`HfTokenizerVocabulary`: a Hugging Face byte-level BPE tokenizer (tokenizer.json, as SmolLM2 and
Llama 3 ship) with its ids kept and safejax's reserved tokens appended after them, and
`write_hf_tokenizer`, which writes any safejax vocabulary as tokenizer.json + tokenizer_config.json.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
import tokenizers
from etils import epath

from safejax.vocab.reserved import EOS, PAD, SPECIAL_TOKENS, ReservedTokens

# A model directory with a Hugging Face vocabulary holds these (see `safejax.vocab.save_vocabulary`).
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


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


def write_hf_tokenizer(vocab: ReservedTokens, directory: str, *, chat_template: str | None = None,
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
