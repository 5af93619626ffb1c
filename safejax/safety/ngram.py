"""The fast web-scale scorer: hashed word and character n-grams, mean-pooled, and a small MLP.

Features (fastText-style, computed with vectorised numpy, no Python loop over tokens):
  kind 0  word unigrams      words = maximal runs of [a-z0-9'] or non-ASCII bytes, lower-cased
  kind 1  word bigrams       consecutive words of the same document
  kind 2+ character n-grams  over the lower-cased UTF-8 bytes, one kind per size in `char_ngrams`;
                             only one n-gram type in `char_ngram_keep_one_in` is kept (chosen by
                             hash, so the same types everywhere): they outnumber words 6 to 1
Every n-gram is hashed with a 64-bit polynomial rolling hash (one cumulative sum over the bytes of
a whole batch; a substring's hash is read off the prefix sums), salted by its kind and mapped to
one of `num_buckets` rows of a shared embedding table.

Speed: the embedding gather dominates; rows of 16 floats (one cache line) make it about five times
faster than rows of 32, and features are laid out sorted by segment (kind-major).

Model: for each document and kind, the mean of its n-gram embeddings (EmbeddingBag), the kinds
concatenated [B, K * embed_dim], LayerNorm, Linear -> GELU -> Linear -> logits [B, 6].

Windows: at most `window_words` whitespace-separated words (about 2 KB of English at the default
384), equal-sized.
Saved as `scorer.json` (config and decision rule) + `params.safetensors`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from safejax.safety import scorer as scorer_lib
from safejax.safety import training
from safejax.safety.rubric import NUM_LEVELS


@gin.configurable
@dataclasses.dataclass(frozen=True)
class NgramConfig:
  """Feature hashing and model shapes."""

  num_buckets: int = 2**18  # a power of two
  embed_dim: int = 16  # 16 floats = one 64-byte cache line: the gather is ~5x faster than at 32
  hidden_dim: int = 128
  char_ngrams: tuple[int, ...] = (4,)
  char_ngram_keep_one_in: int = 2
  word_bigrams: bool = True
  window_words: int = 384
  seed: int = 0  # salts the hash and seeds the initialisation

  def __post_init__(self):
    if self.num_buckets & (self.num_buckets - 1) or self.num_buckets < 2:
      raise ValueError(f"num_buckets must be a power of two, got {self.num_buckets}")
    if any(n < 1 for n in self.char_ngrams):
      raise ValueError(f"char_ngrams sizes must be >= 1, got {self.char_ngrams}")
    if self.char_ngram_keep_one_in < 1:
      raise ValueError(f"char_ngram_keep_one_in must be >= 1, got {self.char_ngram_keep_one_in}")
    object.__setattr__(self, "char_ngrams", tuple(int(n) for n in self.char_ngrams))

  @property
  def num_kinds(self) -> int:
    return 1 + int(self.word_bigrams) + len(self.char_ngrams)


# ---------------------------------------------------------------------------------------------
# Hashing

_PRIME = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_PRIME_INV = np.uint64(pow(int(_PRIME), -1, 2**64))
_MIX1, _MIX2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_BIGRAM = np.uint64(0x9E3779B97F4A7C15)
_IS_WORD_BYTE = np.zeros(256, bool)
_IS_WORD_BYTE[[ord(c) for c in "abcdefghijklmnopqrstuvwxyz0123456789'"]] = True
_IS_WORD_BYTE[128:] = True  # UTF-8 lead and continuation bytes: non-ASCII letters stay in words
_SEPARATOR = 0  # byte between documents of a batch (NULs in the texts become spaces)


class _Powers:
  """PRIME**i and PRIME_INV**i modulo 2**64 for i < n, grown on demand."""

  def __init__(self):
    self.pow = self.inv = np.ones(1, np.uint64)

  def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(self.pow) < n:
      size = max(n, 2 * len(self.pow))
      self.pow = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _PRIME)], dtype=np.uint64)
      self.inv = np.cumprod(np.r_[np.uint64(1), np.full(size - 1, _PRIME_INV)], dtype=np.uint64)
    return self.pow[:n], self.inv[:n]


_POWERS = _Powers()


def _bucket(hashes: np.ndarray, salt: int, num_buckets: int) -> np.ndarray:
  """Mixes 64-bit hashes with a salt and keeps the top log2(num_buckets) bits: int32 [...]."""
  with np.errstate(over="ignore"):
    h = (hashes ^ np.uint64(salt)) * _MIX1
    h ^= h >> np.uint64(33)
    h *= _MIX2
  return (h >> np.uint64(64 - num_buckets.bit_length() + 1)).astype(np.int32)


def featurize(texts: Sequence[str], config: NgramConfig, num_docs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Hashed n-gram ids of a batch of texts.

  Args:
    texts: the documents.
    config: feature settings.
    num_docs: the batch size the segments are laid out for (>= len(texts); default len(texts)).
  Returns:
    ids: int32 [F] bucket of each n-gram occurrence.
    segments: int32 [F] = kind * num_docs + document, ascending.
  """
  num_docs = len(texts) if num_docs is None else num_docs
  if num_docs < len(texts):
    raise ValueError(f"num_docs={num_docs} < {len(texts)} texts")
  joined = "\x00".join(t.replace("\x00", " ").lower() for t in texts)
  b = np.frombuffer(joined.encode("utf-8", "replace"), np.uint8)
  length = len(b)
  doc = np.cumsum(b == _SEPARATOR, dtype=np.int32)  # a separator already counts as the next doc
  pw, inv = _POWERS.get(length + 1)
  with np.errstate(over="ignore"):
    prefix = np.zeros(length + 1, np.uint64)
    np.cumsum(b.astype(np.uint64) * pw[:length], out=prefix[1:])

    def substring_hash(start: np.ndarray, end: np.ndarray) -> np.ndarray:
      return (prefix[end] - prefix[start]) * inv[start]

    kinds_ids, kinds_segments = [], []
    salt = config.seed * 1_000_003

    def add(kind: int, hashes: np.ndarray, docs: np.ndarray) -> None:
      kinds_ids.append(_bucket(hashes, salt + kind, config.num_buckets))
      kinds_segments.append(kind * num_docs + docs)

    is_word = _IS_WORD_BYTE[b]
    starts = np.flatnonzero(is_word & ~np.r_[False, is_word[:-1]])
    ends = np.flatnonzero(is_word & ~np.r_[is_word[1:], False]) + 1
    words, word_docs = substring_hash(starts, ends), doc[starts]
    add(0, words, word_docs)
    kind = 1
    if config.word_bigrams:
      same = word_docs[1:] == word_docs[:-1]
      add(kind, (words[:-1] * _BIGRAM + words[1:])[same], word_docs[1:][same])
      kind += 1
    for n in config.char_ngrams:
      m = max(length - n + 1, 0)  # n-grams start at 0..m-1; contiguous slices, no gathers
      hashes = (prefix[n:n + m] - prefix[:m]) * inv[:m]
      ok = (doc[n - 1:n - 1 + m] == doc[:m]) & (b[:m] != _SEPARATOR)  # inside one document
      if config.char_ngram_keep_one_in > 1:
        ok &= (hashes * _MIX2 >> np.uint64(40)) % np.uint64(config.char_ngram_keep_one_in) == 0
      add(kind, hashes[ok], doc[:m][ok])
      kind += 1
  return np.concatenate(kinds_ids), np.concatenate(kinds_segments).astype(np.int32)


def _padded_size(n: int, min_size: int = 4096) -> int:
  """n rounded up to 2**k * {1, 1.25, 1.5, 1.75}: at most 25 % padding, 4 jit shapes an octave."""
  if n <= min_size:
    return min_size
  step = 1 << max(int(n - 1).bit_length() - 3, 0)
  return -(-n // step) * step


def _pad_features(ids: np.ndarray, segments: np.ndarray, num_segments: int):
  """Pads to a few fixed sizes; padding goes to the dropped last segment (order stays sorted)."""
  pad = _padded_size(len(ids)) - len(ids)
  counts = np.bincount(segments, minlength=num_segments).astype(np.float32)
  return (np.r_[ids, np.zeros(pad, np.int32)], np.r_[segments, np.full(pad, num_segments, np.int32)],
          counts)


# ---------------------------------------------------------------------------------------------
# Model


class NgramModel(nnx.Module):
  """Mean of hashed n-gram embeddings per kind -> MLP -> logits [B, 6]."""

  def __init__(self, config: NgramConfig, *, rngs: nnx.Rngs):
    self.config = config
    width = config.num_kinds * config.embed_dim
    self.embed = nnx.Embed(config.num_buckets, config.embed_dim,
                           embedding_init=nnx.initializers.normal(0.1), rngs=rngs)
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.hidden = nnx.Linear(width, config.hidden_dim, rngs=rngs)
    self.out = nnx.Linear(config.hidden_dim, NUM_LEVELS, rngs=rngs)

  def __call__(self, ids: jax.Array, segments: jax.Array, counts: jax.Array) -> jax.Array:
    """Logits [B, 6].

    Args:
      ids: int [F] buckets, all in range.
      segments: int [F] = kind * B + document, ascending; the value K * B marks padding.
      counts: float [K * B] features per segment.
    """
    k, d = self.config.num_kinds, self.config.embed_dim
    vectors = self.embed.embedding[...].at[ids].get(mode="promise_in_bounds")  # [F, D]
    sums = jax.ops.segment_sum(vectors, segments, num_segments=counts.shape[0] + 1, indices_are_sorted=True)[:-1]
    means = sums / jnp.maximum(counts, 1.0)[:, None]  # [K * B, D]
    pooled = means.reshape(k, -1, d).transpose(1, 0, 2).reshape(-1, k * d)  # [B, K * D]
    return self.out(nnx.gelu(self.hidden(self.norm(pooled))))


# ---------------------------------------------------------------------------------------------
# Scorer

_WORD_RE = re.compile(r"\S+")


def split_words(text: str, window_words: int) -> list[str]:
  """Cuts text into the fewest windows of at most `window_words` whitespace-separated words, all
  of about the same size (so no document ends in a scrap of a few words scored on its own)."""
  if len(text) <= 2 * window_words or len(text.split()) <= window_words:  # fast paths (C)
    return [text]
  starts = [m.start() for m in _WORD_RE.finditer(text)]
  num_windows = -(-len(starts) // window_words)
  size = -(-len(starts) // num_windows)
  cuts = starts[size::size]
  return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


class NgramScorer(scorer_lib.WindowedScorer):
  """The fast scorer: `score(texts)` / `score_probs(texts)` with max over word windows."""

  def __init__(self, model: NgramModel, batch_size: int = 256,
               decision_rule: scorer_lib.DecisionRule = scorer_lib.ARGMAX):
    self.model = model
    self.config = model.config
    self.name = "ngram"
    self.batch_size = batch_size
    self.decision_rule = decision_rule
    graphdef, state = nnx.split(model)

    @jax.jit
    def probs_fn(state, ids, segments, counts):
      return jax.nn.softmax(nnx.merge(graphdef, state)(ids, segments, counts), axis=-1)

    self._state, self._probs_fn = state, probs_fn

  def windows(self, text: str) -> list[str]:
    return split_words(text, self.config.window_words)

  def window_probs(self, windows: Sequence[str]) -> np.ndarray:
    n = len(windows)
    num_segments = self.batch_size * self.config.num_kinds  # docs padded to one batch shape
    if n > self.batch_size:
      raise ValueError(f"at most {self.batch_size} windows per call, got {n}")
    ids, segments = featurize(windows, self.config, self.batch_size)
    # Not converted to numpy here: JAX runs this batch while the next one is featurized.
    return self._probs_fn(self._state, *_pad_features(ids, segments, num_segments))[:n]

  def save(self, path: str | Path) -> None:
    path = Path(path)
    scorer_lib.write_scorer_json(path, "ngram", dataclasses.asdict(self.config), self.decision_rule)
    training.save_params(self.model, path / "params.safetensors")

  @classmethod
  def load(cls, path: str | Path) -> "NgramScorer":
    config = scorer_lib.read_scorer_json(path, "ngram")
    config = NgramConfig(**{**config, "char_ngrams": tuple(config["char_ngrams"])})
    model = NgramModel(config, rngs=nnx.Rngs(config.seed))
    training.load_params(model, Path(path) / "params.safetensors")
    return cls(model, decision_rule=scorer_lib.read_decision_rule(path))


class _FeatureTable:
  """Per-example hashed features of a training set, stored once (CSR), batched on demand."""

  def __init__(self, texts: Sequence[str], config: NgramConfig, chunk: int = 2048):
    ids, kinds, lengths = [], [], []
    for s in range(0, len(texts), chunk):
      part = texts[s:s + chunk]
      f_ids, f_seg = featurize(part, config)
      doc = f_seg % len(part)
      order = np.argsort(doc, kind="stable")
      ids.append(f_ids[order])
      kinds.append((f_seg // len(part))[order])
      lengths.append(np.bincount(doc, minlength=len(part)))
    self.ids, self.kinds = np.concatenate(ids), np.concatenate(kinds).astype(np.int32)
    self.offsets = np.r_[0, np.cumsum(np.concatenate(lengths))]
    self.num_kinds = config.num_kinds

  def batch(self, indices: np.ndarray) -> tuple[jax.Array, ...]:
    parts = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]
    rows = np.concatenate(parts)
    docs = np.repeat(np.arange(len(indices), dtype=np.int32), [len(p) for p in parts])
    segments = self.kinds[rows] * len(indices) + docs
    order = np.argsort(segments, kind="stable")  # the model expects ascending segments
    return tuple(map(jnp.asarray, _pad_features(self.ids[rows][order], segments[order],
                                                len(indices) * self.num_kinds)))


def train_ngram_scorer(texts: Sequence[str], labels: Sequence[int], config: NgramConfig | None = None,
                       train_config: training.TrainConfig | None = None) -> NgramScorer:
  """Trains an n-gram scorer on labelled texts (scores 0..5); seconds for a few thousand texts.

  Each text is one training window: long texts should be cut into windows beforehand.
  """
  config, train_config = config or NgramConfig(), train_config or training.TrainConfig()
  labels = np.asarray(labels, np.int32)
  if len(texts) != len(labels):
    raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
  if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_LEVELS:
    raise ValueError(f"labels must be in 0..{NUM_LEVELS - 1}")
  table = _FeatureTable(list(texts), config)
  model = NgramModel(config, rngs=nnx.Rngs(config.seed))
  training.fit(model, table.batch, labels, train_config, desc="train ngram")
  return NgramScorer(model)
