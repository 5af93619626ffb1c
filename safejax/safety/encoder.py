"""The encoder scorer: a BERT-family encoder in Flax NNX, mean-pooled, with a small classifier head.

The encoder and its checkpoint (all-MiniLM-L6-v2 by default) come from `safejax.safety.bert`.
Embedding = mean over the non-padding positions of the last hidden layer (as sentence-transformers
does for this model, before its L2 normalisation, which we skip: the head learns its own scale).

Windows: `max_length` word pieces including [CLS] and [SEP]; a longer document is cut into the
fewest consecutive windows of at most max_length - 2 pieces, all of about the same size. Training
sees each example's first window. With a frozen encoder it embeds each once and trains only the
head, which takes seconds; `trainable_top_layers` > 0 also fine-tunes the top encoder layers
(batches of similar lengths; tens of minutes on CPU for a few thousand examples). Window
embeddings can be cached on disk, keyed by the encoder's weights (the checkpoint's hash, and the
tuned layers' for a fine-tuned encoder) and the window's ids.

Saved as `scorer.json` (config and decision rule) + `head.safetensors` (+ `encoder.safetensors`
when encoder layers were tuned) beside a copy of the checkpoint's config.json, model.safetensors
and tokenizer.json, so a saved scorer is self-contained for Beam workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx
from tqdm.auto import tqdm

from safejax.safety import scorer as scorer_lib
from safejax.safety.bert import CHECKPOINT_FILES, BertEncoder, load_bert, load_tokenizer, mean_pool, minilm_dir
from safejax.safety import training
from safejax.safety.rubric import NUM_LEVELS

# ---------------------------------------------------------------------------------------------
# Classifier


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  max_length: int = 128  # word pieces per window, [CLS] and [SEP] included (CPU-friendly)
  head_hidden: int = 256
  trainable_top_layers: int = 0  # 0: frozen encoder, only the head trains
  seed: int = 0


class Head(nnx.Module):
  """Pooled embedding [B, D] -> logits [B, 6]."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.hidden = nnx.Linear(dim, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, NUM_LEVELS, rngs=rngs)

  def __call__(self, embedding: jax.Array) -> jax.Array:
    return self.out(nnx.gelu(self.hidden(self.norm(embedding))))


class EncoderClassifier(nnx.Module):
  """Encoder -> mean pool -> head. Input ids int [B, T], mask bool [B, T] -> logits [B, 6]."""

  def __init__(self, encoder: BertEncoder, config: EncoderConfig, *, rngs: nnx.Rngs):
    self.encoder, self.config = encoder, config
    self.head = Head(encoder.config.hidden_size, config.head_hidden, rngs=rngs)

  def embed(self, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    num_layers = self.encoder.config.num_hidden_layers
    first = num_layers - self.config.trainable_top_layers
    return mean_pool(self.encoder(input_ids, mask, first if first < num_layers else None), mask)

  def __call__(self, input_ids: jax.Array, mask: jax.Array) -> jax.Array:
    return self.head(self.embed(input_ids, mask))


def pad_windows(windows: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Pads id windows to one power-of-two length >= 16 (few jit shapes).

  Returns (ids int32 [B, T], mask bool [B, T]).
  """
  lengths = np.array([len(w) for w in windows])
  t = max(16, 1 << int(lengths.max() - 1).bit_length())
  ids = np.full((len(windows), t), pad_id, np.int32)
  for i, w in enumerate(windows):
    ids[i, :len(w)] = w
  return ids, np.arange(t)[None, :] < lengths[:, None]


class EmbeddingCache:
  """Frozen-encoder window embeddings on disk, keyed by sha1(checkpoint id, window ids).

  Filled as windows are embedded; `flush()` writes it (atomically) to path/embeddings.safetensors.
  """

  def __init__(self, path: str | Path, namespace: str):
    self.file = Path(path) / "embeddings.safetensors"
    self.namespace = namespace.encode()
    self.table: dict[bytes, np.ndarray] = {}
    self.unsaved = 0
    if self.file.is_file():
      saved = safetensors.numpy.load_file(str(self.file))
      self.table = dict(zip(map(bytes, saved["keys"]), saved["embeddings"]))

  def key(self, window: np.ndarray) -> bytes:
    return hashlib.sha1(self.namespace + b"\x00" + np.asarray(window, np.int32).tobytes()).digest()

  def add(self, keys: Sequence[bytes], embeddings: np.ndarray) -> None:
    self.table.update(zip(keys, embeddings))
    self.unsaved += len(keys)

  def flush(self) -> None:
    """Writes the table, merged with what other processes saved meanwhile (atomic replace)."""
    if not self.unsaved:
      return
    if self.file.is_file():
      saved = safetensors.numpy.load_file(str(self.file))
      for key, embedding in zip(map(bytes, saved["keys"]), saved["embeddings"]):
        self.table.setdefault(key, embedding)
    self.file.parent.mkdir(parents=True, exist_ok=True)
    part = self.file.with_suffix(f".{os.getpid()}.part")
    safetensors.numpy.save_file({
        "keys": np.frombuffer(b"".join(self.table), np.uint8).reshape(len(self.table), 20),
        "embeddings": np.stack(list(self.table.values())).astype(np.float32)}, str(part))
    os.replace(part, self.file)
    self.unsaved = 0


def _checkpoint_id(checkpoint_dir: Path) -> str:
  """sha1 of the checkpoint's weights: cached embeddings never outlive a change of encoder."""
  digest = hashlib.sha1()
  with open(checkpoint_dir / "model.safetensors", "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def _encoder_id(checkpoint_dir: Path, model: EncoderClassifier) -> str:
  """The embedding cache's namespace: the checkpoint's id, and for a fine-tuned encoder the sha1
  of its tuned weights too (each fine-tuned encoder embeds differently)."""
  if not model.config.trainable_top_layers:
    return _checkpoint_id(checkpoint_dir)
  digest = hashlib.sha1(_checkpoint_id(checkpoint_dir).encode())
  for path, variable in sorted(nnx.state(model.encoder, nnx.Param).flat_state(), key=lambda kv: str(kv[0])):
    digest.update(str(path).encode() + np.asarray(variable.get_value(), np.float32).tobytes())
  return digest.hexdigest()


class EncoderScorer(scorer_lib.WindowedScorer):
  """The encoder scorer: `score(texts)` / `score_probs(texts)` with max over word-piece windows."""

  def __init__(self, model: EncoderClassifier, checkpoint_dir: str | Path, batch_size: int = 64,
               embedding_cache_dir: str | Path | None = None,
               decision_rule: scorer_lib.DecisionRule = scorer_lib.ARGMAX):
    """`embedding_cache_dir` keeps window embeddings on disk: re-scoring the same windows (with
    another head, or in another run) then costs no encoder pass."""
    self.model, self.config = model, model.config
    self.decision_rule = decision_rule
    self.checkpoint_dir = Path(checkpoint_dir)
    self.cache: EmbeddingCache | None = None
    if embedding_cache_dir:
      self.use_embedding_cache(embedding_cache_dir)
    self.tokenizer = load_tokenizer(self.checkpoint_dir)
    self.name, self.batch_size = "encoder", batch_size
    self.cls_id, self.sep_id, self.pad_id = (self.tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if None in (self.cls_id, self.sep_id, self.pad_id):
      raise ValueError(f"{checkpoint_dir}/tokenizer.json lacks [CLS], [SEP] or [PAD]")
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed_fn(state, ids, mask):
      return nnx.merge(graphdef, state).embed(ids, mask)

    @jax.jit
    def head_probs_fn(state, embeddings):
      return jax.nn.softmax(nnx.merge(graphdef, state).head(embeddings), axis=-1)

    self._state, self._embed_fn, self._head_probs_fn = state, embed_fn, head_probs_fn

  def use_embedding_cache(self, embedding_cache_dir: str | Path) -> None:
    """Keeps window embeddings in `embedding_cache_dir`, under this encoder's id."""
    self.cache = EmbeddingCache(embedding_cache_dir, _encoder_id(self.checkpoint_dir, self.model))

  def windows(self, text: str) -> list[np.ndarray]:
    pieces = np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
    num_windows = max(1, -(-len(pieces) // (self.config.max_length - 2)))
    size = max(1, -(-len(pieces) // num_windows))  # equal sizes: no scrap of a window at the end
    chunks = [pieces[s:s + size] for s in range(0, len(pieces), size)] or [pieces]
    return [np.r_[np.int32(self.cls_id), c, np.int32(self.sep_id)].astype(np.int32) for c in chunks]

  def window_probs(self, windows: Sequence[np.ndarray]) -> np.ndarray:
    return np.asarray(self._head_probs_fn(self._state, jnp.asarray(self.embed_windows(windows))))

  def all_window_probs(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    result = super().all_window_probs(texts)
    if self.cache:
      self.cache.flush()
    return result

  def embed_windows(self, windows: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
    """float32 [len(windows), D] pooled embeddings, from the cache where possible."""
    out = np.zeros((len(windows), self.model.encoder.config.hidden_size), np.float32)
    keys = [self.cache.key(w) for w in windows] if self.cache else []
    todo = [i for i in range(len(windows)) if not self.cache or keys[i] not in self.cache.table]
    for i in set(range(len(windows))) - set(todo):
      out[i] = self.cache.table[keys[i]]
    todo.sort(key=lambda i: len(windows[i]))  # similar lengths together: less padding
    for s in tqdm(range(0, len(todo), self.batch_size), desc="embed", unit="batch", disable=not progress):
      batch = todo[s:s + self.batch_size]
      out[batch] = np.asarray(self._embed_fn(self._state, *pad_windows([windows[i] for i in batch], self.pad_id)))
      if self.cache:
        self.cache.add([keys[i] for i in batch], out[batch])
    return out

  def embed_first_windows(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [n, D]: the pooled embedding of each text's first window (training inputs)."""
    embeddings = self.embed_windows([self.windows(t)[0] for t in texts], progress=True)
    if self.cache:
      self.cache.flush()
    return embeddings

  def save(self, path: str | Path) -> None:
    path = Path(path)
    (path / "checkpoint").mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
      if self.checkpoint_dir.resolve() != (path / "checkpoint").resolve():
        shutil.copyfile(self.checkpoint_dir / name, path / "checkpoint" / name)
    scorer_lib.write_scorer_json(path, "encoder", dataclasses.asdict(self.config), self.decision_rule)
    training.save_params(self.model.head, path / "head.safetensors")
    if self.config.trainable_top_layers:
      training.save_params(self.model.encoder, path / "encoder.safetensors")

  @classmethod
  def load(cls, path: str | Path, embedding_cache_dir: str | Path | None = None) -> "EncoderScorer":
    path = Path(path)
    config = EncoderConfig(**scorer_lib.read_scorer_json(path, "encoder"))
    encoder = load_bert(path / "checkpoint")
    if config.trainable_top_layers:
      training.load_params(encoder, path / "encoder.safetensors")
    model = EncoderClassifier(encoder, config, rngs=nnx.Rngs(config.seed))
    training.load_params(model.head, path / "head.safetensors")
    return cls(model, path / "checkpoint", embedding_cache_dir=embedding_cache_dir,
               decision_rule=scorer_lib.read_decision_rule(path))


def train_encoder_scorer(texts: Sequence[str], labels: Sequence[int], config: EncoderConfig | None = None,
                         train_config: training.TrainConfig | None = None,
                         checkpoint_dir: str | Path | None = None,
                         embedding_cache_dir: str | Path | None = None) -> EncoderScorer:
  """Trains the classifier head (and the top `trainable_top_layers` layers) on labelled texts.

  With a frozen encoder, each text's first-window embedding is computed once (and cached in
  `embedding_cache_dir` when given) and only the head trains.
  """
  config, train_config = config or EncoderConfig(), train_config or training.TrainConfig()
  labels = np.asarray(labels, np.int32)
  if len(texts) != len(labels):
    raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
  checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else minilm_dir()
  model = EncoderClassifier(load_bert(checkpoint_dir), config, rngs=nnx.Rngs(config.seed))
  untrained = EncoderScorer(model, checkpoint_dir, embedding_cache_dir=embedding_cache_dir)
  if config.trainable_top_layers == 0:
    embeddings = untrained.embed_first_windows(list(texts))
    training.fit(model.head, lambda idx: (jnp.asarray(embeddings[idx]),), labels, train_config,
                 desc="train encoder head")
  else:
    windows = [untrained.windows(t)[0] for t in texts]
    first = model.encoder.config.num_hidden_layers - config.trainable_top_layers
    trainable = lambda path, value: isinstance(value, nnx.Param) and (
        path[0] == "head" or (path[0] == "encoder" and path[1] == "layers" and int(path[2]) >= first))
    training.fit(model, lambda idx: tuple(map(jnp.asarray, pad_windows([windows[i] for i in idx], untrained.pad_id))),
                 labels, train_config, wrt=trainable, desc="fine-tune encoder",
                 lengths=np.array([len(w) for w in windows]))
  return EncoderScorer(model, checkpoint_dir, embedding_cache_dir=embedding_cache_dir)
