"""A Llama-family decoder (SmolLM2 shapes) in Flax NNX.

RMSNorm, RoPE, SwiGLU, grouped-query attention (`jax.nn.dot_product_attention`), optional tied
embeddings, segment-aware causal masking for packed sequences, and a functional KV cache for
decoding. Every parameter carries logical axis names; `safejax.partitioning` maps them to mesh
axes. Activations are constrained with the `activation_*` names so XLA keeps the batch sharded
and the model axis where the rules say.

The blocks' parameters are stacked along a leading `layers` axis (one Block built under
`nnx.vmap`), and the forward pass runs them with `jax.lax.scan`, so the compiled program holds one
layer whatever the depth: compile time stays flat from 4 to 32 layers. `scan_layers=False` runs the
same stacked parameters in a Python loop instead (one program per layer, as before the scan).
Decoding with a KV cache is always unrolled over the layers, each with a cache buffer of its own
and its parameters split once per decoding call (`Decoder.split_layers`): slicing a stacked cache
and stacked parameters inside the decoding loop made XLA:CPU copy them at every step (without,
beam search at batch 16, the demo's evaluation batch, runs 1.3-1.8x faster and greedy at batch 1
about 2x; the price is compile time that grows with depth, about 9 s for a 32-layer greedy decoder
on 2 CPU cores against 2 s scanned; README, Speed).

Shapes: L layers, B batch, T query length, S cache (key) length, D embed, N query heads, K kv
heads, H head dim, F mlp dim, V vocab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
import gin
import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from safejax import UserError
from safejax.partitioning import with_logical_constraint


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics; the gin files in gin/models/ name the standard sizes."""

  num_layers: int = 2
  embed_dim: int = 64
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  mlp_dim: int = 128
  vocab_size: int = 0  # 0: taken from the vocabulary at build time.
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype; logits and the loss are always float32.
  remat: str = "none"  # none | full | dots (save matmul outputs, recompute the rest)
  init_std: float = 0.02
  scan_layers: bool = True  # jax.lax.scan over the stacked layers; False: a Python loop over them
  attention: str = "xla"  # jax.nn.dot_product_attention's implementation: xla | cudnn (GPU, bf16)

  def __post_init__(self):
    sizes = ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim")
    for name in sizes:
      if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise UserError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
    if self.vocab_size < 0:
      raise UserError(f"ModelConfig.vocab_size must be >= 0 (0: the vocabulary's), got {self.vocab_size}")
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise UserError(f"head_dim={self.head_dim} must be even for RoPE")
    if self.remat not in ("none", "full", "dots"):
      raise UserError(f"remat must be none, full or dots, not {self.remat!r}")
    if self.attention not in ("xla", "cudnn"):
      raise UserError(f"attention must be xla or cudnn, not {self.attention!r}")

  def with_vocab_size(self, vocab_size: int) -> "ModelConfig":
    return self if self.vocab_size else dataclasses.replace(self, vocab_size=vocab_size)

  def num_params(self) -> int:
    """Parameter count (embeddings included once when tied)."""
    d, f, v = self.embed_dim, self.mlp_dim, self.vocab_size
    attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * v
    return v * d + self.num_layers * per_layer + d + head

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), PaLM appendix B convention."""
    # 6N covers every matmul weight once (the tied embedding counts through the output projection;
    # the input lookup costs no FLOPs); 12*L*T*d_attn is QK^T and AV, forward and backward.
    matmul_params = self.num_params() - (self.num_layers * 2 + 1) * self.embed_dim
    return 6 * matmul_params + 12 * self.num_layers * seq_len * self.num_heads * self.head_dim


@struct.dataclass
class KVCache:
  """Keys and values of every layer, written slot by slot.

  keys, values: one array per layer, [B, K, H, S] each: slots last, the order XLA:CPU's attention
  matmuls read (`cached_attention`), and a buffer per layer, so a decoding step writes each in
  place and reads it whole (slicing a stacked [L, ...] cache made XLA copy or transpose it at every
  layer of every step). key_valid: [B, S], True where a slot holds a real token (left padding of
  prompts and not-yet-written slots are False). index: int32 scalar, the next slot.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  key_valid: jax.Array
  index: jax.Array

  @classmethod
  def init(cls, config: ModelConfig, batch: int, length: int) -> "KVCache":
    zeros = lambda: tuple(jnp.zeros((batch, config.num_kv_heads, config.head_dim, length), config.dtype)
                          for _ in range(config.num_layers))
    return cls(zeros(), zeros(), jnp.zeros((batch, length), bool), jnp.zeros((), jnp.int32))

  @property
  def length(self) -> int:
    return self.key_valid.shape[1]

  def gather_rows(self, rows: jax.Array) -> "KVCache":
    """Reorders the batch: rows [B'] of indices into the current batch (beam search's first step)."""
    take = lambda x: jnp.take(x, rows, axis=0)
    return KVCache(jax.tree.map(take, self.keys), jax.tree.map(take, self.values), take(self.key_valid), self.index)

  def gather_beams(self, parents: jax.Array) -> "KVCache":
    """Beam search's reordering: rows are B prompts of k beams, and beam j of prompt b becomes a
    copy of its beam parents[b, j] ([B, k] int32).

    A batched one-hot matmul, not a gather: a gather fused with the step's write into the cache
    became an element-by-element loop over the whole cache on XLA:CPU (beam search at batch 4:
    1,623 ms a call with it, 1,100 with this). The copy is exact (each value times one, plus zeros).
    """
    batch, beam_size = parents.shape
    one_hot = (parents[..., None] == jnp.arange(beam_size)).astype(self.keys[0].dtype)  # [B, k, k]

    def take(x):  # [B*k, ...] rows
      grouped = x.reshape(batch, beam_size, -1)
      return jnp.einsum("bjp,bpx->bjx", one_hot, grouped).reshape(x.shape)

    key_valid = jnp.take_along_axis(self.key_valid.reshape(batch, beam_size, -1), parents[..., None], axis=1)
    return KVCache(jax.tree.map(take, self.keys), jax.tree.map(take, self.values),
                   key_valid.reshape(self.key_valid.shape), self.index)

  def keep_sibling(self, choice: jax.Array, num_siblings: int) -> "KVCache":
    """Keeps one of the sibling tokens just written (`Decoder.__call__(..., siblings=True)`).

    choice: [B] int32 in [0, num_siblings), the sibling each row keeps. Its keys and values move
    to the first sibling slot, the other slots become invalid, and the next write goes after it.
    """
    (keys, values), key_valid, index = keep_sibling_slots(
        (self.keys, self.values), self.key_valid, self.index, choice, num_siblings, slot_axis=3)
    return KVCache(keys, values, key_valid, index)


def keep_sibling_slots(buffers, valid: jax.Array, index: jax.Array, choice: jax.Array, num_siblings: int,
                       batch_axis: int = 0, slot_axis: int = 1):
  """`KVCache.keep_sibling` over any pytree of per-slot buffers and their valid [B, S].

  batch_axis, slot_axis: where B and S are in every buffer (0 and 3 in the KV cache's
  [B, K, H, S]). The siblings occupy slots index - num_siblings .. index - 1. Returns
  (buffers, valid, index), each row's chosen sibling moved to the first of those slots, the rest
  marked invalid.
  """
  first = index - num_siblings

  def keep(x):
    window = jax.lax.dynamic_slice_in_dim(x, first, num_siblings, axis=slot_axis)
    shape = [1] * x.ndim
    shape[batch_axis] = -1
    chosen = jnp.take_along_axis(window, choice.reshape(shape), axis=slot_axis)
    return jax.lax.dynamic_update_slice_in_dim(x, chosen, first, axis=slot_axis)

  window = jax.lax.dynamic_slice_in_dim(valid, first, num_siblings, axis=1)
  kept = (jnp.arange(num_siblings) == 0) & jnp.take_along_axis(window, choice[:, None], axis=1)
  valid = jax.lax.dynamic_update_slice_in_dim(valid, kept, first, axis=1)
  return jax.tree.map(keep, buffers), valid, first + 1


def _dense(cfg: ModelConfig, rngs: nnx.Rngs, d_in: int, d_out: int, axes: tuple[str, str]) -> nnx.Linear:
  init = nnx.with_partitioning(nnx.initializers.normal(cfg.init_std), axes)
  return nnx.Linear(d_in, d_out, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    kernel_init=init, rngs=rngs)


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
  init = nnx.with_partitioning(nnx.initializers.ones, ("norm",))
  return nnx.RMSNorm(cfg.embed_dim, epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     scale_init=init, rngs=rngs)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, rotate-half layout (as in Llama/HF). x [B, T, heads, H]; positions [B, T]."""
  half = x.shape[-1] // 2
  freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None].astype(jnp.float32) * freq  # [B, T, H/2]
  sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, h = cfg.embed_dim, cfg.head_dim
    self.q = _dense(cfg, rngs, d, cfg.num_heads * h, ("embed", "heads"))
    self.k = _dense(cfg, rngs, d, cfg.num_kv_heads * h, ("embed", "kv_heads"))
    self.v = _dense(cfg, rngs, d, cfg.num_kv_heads * h, ("embed", "kv_heads"))
    self.o = _dense(cfg, rngs, cfg.num_heads * h, d, ("heads", "embed"))

  def __call__(self, x, positions, mask, cache_update=None):
    """x [B,T,D]; mask [B,1,T,S] bool, or None for plain causal self-attention (is_causal: cuDNN then
    skips the masked half). cache_update: None (S = T), or, decoding, a function that writes this
    call's keys and values [B,T,K,H] into the cache and returns the layer's cached ones [B,K,H,S].
    Returns the output [B,T,D].
    """
    cfg = self.cfg
    b, t, _ = x.shape
    q = self.q(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = self.k(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = self.v(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    q = with_logical_constraint(rope(q, positions, cfg.rope_theta), ("activation_batch", "activation_length", "activation_heads", None))
    k = rope(k, positions, cfg.rope_theta)
    if cache_update is None:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=mask is None, implementation=cfg.attention)
    else:
      out = cached_attention(q, *cache_update(k, v), mask)
    out = with_logical_constraint(out, ("activation_batch", "activation_length", "activation_heads", None))
    return self.o(out.reshape(b, t, cfg.num_heads * cfg.head_dim))


def cached_attention(q: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array) -> jax.Array:
  """Attention of new queries q [B,T,N,H] over a cache's keys and values [B,K,H,S] (K kv heads,
  N = K*G), mask [B,1,T,S] bool -> [B,T,N,H].

  The arithmetic of `jax.nn.dot_product_attention`'s XLA path (grouped heads, scale, mask value,
  float32 softmax) written as the two matmuls XLA:CPU hands to its fast kernels (YNNPACK) as they
  stand: keys and values [H, S] per head, the probabilities [S, G*T]. Other orders made it copy
  each layer's cache at every step, or fall back to a slow generic matmul.
  """
  b, t, n, h = q.shape
  kv_heads = keys.shape[1]
  groups = n // kv_heads
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  # [B, K, G*T, H]: the queries of each kv head.
  q = q.reshape(b, t, kv_heads, groups, h).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, groups * t, h)
  logits = jax.lax.dot_general(q, keys.astype(q.dtype), (((3,), (2,)), ((0, 1), (0, 1))),
                               preferred_element_type=logits_dtype)  # [B, K, G*T, S]
  logits *= jnp.array(h ** -0.5, logits_dtype)
  large_negative = jnp.asarray(0.7 * jnp.finfo(logits_dtype).min, logits_dtype)  # as jax.nn's
  logits = jnp.where(mask[:, :, None], logits.reshape(b, kv_heads, groups, t, -1), large_negative)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)  # [B, K, G, T, S]
  probs = probs.reshape(b, kv_heads, groups * t, -1).transpose(0, 1, 3, 2)  # [B, K, S, G*T]
  out = jax.lax.dot_general(values.astype(q.dtype), probs, (((3,), (2,)), ((0, 1), (0, 1))))  # [B, K, H, G*T]
  return out.reshape(b, kv_heads, h, groups, t).transpose(0, 4, 1, 3, 2).reshape(b, t, n, h)


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.gate = _dense(cfg, rngs, cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"))
    self.up = _dense(cfg, rngs, cfg.embed_dim, cfg.mlp_dim, ("embed", "mlp"))
    self.down = _dense(cfg, rngs, cfg.mlp_dim, cfg.embed_dim, ("mlp", "embed"))

  def __call__(self, x):
    h = nnx.silu(self.gate(x)) * self.up(x)
    h = with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
    return self.down(h)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = _norm(cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = _norm(cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, mask, cache_update=None):
    """x [B,T,D] -> x [B,T,D]; see `Attention`."""
    x = x + self.attn(self.attn_norm(x), positions, mask, cache_update)
    x = x + self.mlp(self.mlp_norm(x))
    return with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """One Block whose parameters carry a leading layers axis [L, ...] (logical name "layers"),
  each layer initialised from its own split of the rngs."""

  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(rngs: nnx.Rngs) -> Block:
    return Block(cfg, rngs)

  return build(rngs)


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class Decoder(nnx.Module):
  """The decoder-only language model."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.vocab_size <= 0:
      raise ValueError("ModelConfig.vocab_size is unset: call config.with_vocab_size(vocab.vocab_size)")
    self.cfg = cfg
    self.embed = nnx.Embed(
        cfg.vocab_size, cfg.embed_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(cfg.init_std), ("vocab", "embed")),
        rngs=rngs)
    self.blocks = _stacked_blocks(cfg, rngs)
    self.final_norm = _norm(cfg, rngs)
    self.lm_head = None if cfg.tie_embeddings else _dense(cfg, rngs, cfg.embed_dim, cfg.vocab_size, ("embed", "vocab"))

  def __call__(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      input_mask: jax.Array | None = None,
      siblings: bool = False,
      layers: Sequence[nnx.State] | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Logits for every position: `logits(hidden_states(...))`.

    Args:
      tokens: [B, T] int32.
      positions: [B, T] token positions for RoPE; default 0..T-1 (or continuing from the cache).
      segment_ids: [B, T] for packed training sequences: tokens attend only within their segment;
        segment 0 marks padding. Ignored when a cache is given.
      cache: decoding state; the T new tokens are written at slots index..index+T-1.
      input_mask: [B, T] bool, with a cache: False for tokens that are padding (e.g. left-padded
        prompts); they are written but never attended to.
      siblings: with a cache: the T new tokens are alternatives for one and the same position
        (give them equal positions), not a sequence: each attends to the cache and itself only,
        so T candidates share one cache row; `KVCache.keep_sibling` then keeps one of them.
      layers: with a cache: the blocks' parameters split per layer (`Decoder.split_layers`). A
        decoder calls the model once per step inside its loop; split once before it, the
        parameters are not sliced out of the stacked arrays again at every step.
    Returns:
      logits [B, T, V] float32, and the updated cache (None without one).
    """
    x, cache = self.hidden_states(tokens, positions, segment_ids, cache, input_mask, siblings, layers)
    return self.logits(x), cache

  def hidden_states(
      self,
      tokens: jax.Array,
      positions: jax.Array | None = None,
      segment_ids: jax.Array | None = None,
      cache: KVCache | None = None,
      input_mask: jax.Array | None = None,
      siblings: bool = False,
      layers: Sequence[nnx.State] | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """The final (normed) hidden states [B, T, D] in the compute dtype, and the cache.

    Arguments as `__call__`. The training loss takes these and `output_embedding()` so that it
    never materialises the full logits (`safejax.model.losses.chunked_cross_entropy_loss`).
    """
    b, t = tokens.shape
    if siblings and cache is None:
      raise ValueError("siblings need a cache")
    if cache is None:
      if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      mask = None  # causal
      if segment_ids is not None:
        mask = jnp.tril(jnp.ones((t, t), bool))[None]
        mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        mask = mask[:, None]  # [B, 1, T, T]
      write_slots = None
    else:
      if positions is None:
        raise ValueError("decoding with a cache needs explicit positions")
      if input_mask is None:
        input_mask = jnp.ones((b, t), bool)
      write_slots = cache.index
      key_valid = jax.lax.dynamic_update_slice_in_dim(cache.key_valid, input_mask, write_slots, axis=1)
      query_slot = write_slots + jnp.arange(t)
      key_slot = jnp.arange(cache.length)
      if siblings:
        causal = (key_slot[None, :] < write_slots) | (key_slot[None, :] == query_slot[:, None])
      else:
        causal = key_slot[None, :] <= query_slot[:, None]
      mask = causal[None] & key_valid[:, None, :]
      mask = mask[:, None]  # [B, 1, T, S]

    x = self.embed(tokens)
    x = with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
    if cache is None:
      x = self._run_layers(x, positions, mask)
    else:
      x, keys, values = self._run_layers_with_cache(x, positions, mask, cache, write_slots, layers)
      cache = KVCache(keys, values, key_valid, cache.index + t)
    return self.final_norm(x), cache

  def _layer_fn(self):
    """(layer, the blocks' stacked parameters [L, ...]). layer(x, one layer's parameters, positions,
    mask, cache_update) -> x runs one Block, pure."""
    graphdef, stacked = nnx.split(self.blocks)

    def layer(x, params, positions, mask, cache_update=None):
      return nnx.merge(graphdef, params)(x, positions, mask, cache_update)

    return layer, stacked

  def _run_layers(self, x, positions, mask):
    """Training / scoring: every layer over x [B, T, D], rematerialised as the config says."""
    layer, stacked = self._layer_fn()
    run = lambda x, params: layer(x, params, positions, mask)
    if self.cfg.remat != "none":
      run = jax.checkpoint(run, policy=_REMAT_POLICIES[self.cfg.remat])
    if self.cfg.scan_layers:
      return jax.lax.scan(lambda x, params: (run(x, params), None), x, stacked)[0]
    for i in range(self.cfg.num_layers):
      x = run(x, jax.tree.map(lambda p: p[i], stacked))
    return x

  def split_layers(self) -> list[nnx.State]:
    """The blocks' parameters, one State per layer (for `__call__`'s `layers`)."""
    _, stacked = nnx.split(self.blocks)
    return [jax.tree.map(lambda p, i=i: p[i], stacked) for i in range(self.cfg.num_layers)]

  def _run_layers_with_cache(self, x, positions, mask, cache: KVCache, write_slots, layers=None):
    """Decoding: every layer writes this call's keys and values into its cache, then reads it.
    Unrolled over the layers (each has a cache buffer of its own). `layers`: the blocks'
    parameters split per layer (`split_layers`), or None to slice them here.
    Returns x and the cache's new keys and values, a tuple of [B, K, H, S] each."""
    layer, _ = self._layer_fn()
    if layers is None:
      layers = self.split_layers()
    keys, values = list(cache.keys), list(cache.values)
    for i, params in enumerate(layers):

      def cache_update(k, v, i=i):  # this call's [B, T, K, H]; returns the layer's cache [B, K, H, S]
        write = lambda buffer, new: jax.lax.dynamic_update_slice(
            buffer, new.transpose(0, 2, 3, 1).astype(buffer.dtype), (0, 0, 0, write_slots))
        keys[i], values[i] = write(keys[i], k), write(values[i], v)
        return keys[i], values[i]

      x = layer(x, params, positions, mask, cache_update)
    return x, tuple(keys), tuple(values)

  def logits(self, x: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] -> logits [B, T, V] float32."""
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    return with_logical_constraint(logits.astype(jnp.float32), ("activation_batch", "activation_length", "activation_vocab"))

  def output_embedding(self) -> tuple[jax.Array, bool]:
    """The output projection and whether it is vocab-major: the tied embedding [V, D] (True) or
    the lm_head kernel [D, V] (False)."""
    if self.lm_head is None:
      return self.embed.embedding[...], True
    return self.lm_head.kernel[...], False


def build_model(cfg: ModelConfig, seed: int = 0) -> Decoder:
  """Builds the model unsharded; `partitioning.create_sharded(lambda: build_model(...))` shards it.

  Flax's eager sharding is switched off here so that the logical-axis metadata is only recorded:
  placement is decided in one place, by the rules table, at jit boundaries.
  """
  with nnx.use_eager_sharding(False):
    return Decoder(cfg, rngs=nnx.Rngs(params=seed))


def param_count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

