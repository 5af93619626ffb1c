"""Next-token cross-entropy: the plain loss over full logits, and a chunked one that never holds them.

The plain loss (`cross_entropy_loss`) takes logits [B, T, V]. At a 49k vocabulary those logits,
their softmax and their gradient are the largest buffers of a train step, and XLA re-lays them out
several times. `chunked_cross_entropy_loss` takes the final hidden states [B, T, D] and the output
embedding instead, and computes lm-head + log-softmax cross-entropy + z-loss a chunk of positions
at a time, so that at most one [B, chunk, V] block of logits exists at once.

It is a `jax.custom_vjp` that computes the gradients in the forward pass (as fused linear
cross-entropy kernels do): each chunk's softmax is at hand right after its log-normaliser, so the
chunk's gradient with respect to the hidden states and its share of the embedding gradient are
formed there and the logits are never recomputed. The backward pass only scales the saved
gradients by the incoming cotangent. Matmuls: one forward and two gradient matmuls per chunk, the
same three as the plain loss under autodiff. Called without differentiation (evaluation) only the
forward matmul runs.

Shapes: B batch, T length, D embed, V vocab, C chunk length (positions per chunk).

Tolerance against the plain loss (tests/test_losses.py): in float32 the two differ by summation
order only: loss to ~1e-6 relative, gradients to ~1e-5.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from safejax.partitioning import with_logical_constraint


def cross_entropy_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token-weighted mean cross-entropy. logits [B,T,V] f32; targets, weights [B,T].

  Returns (loss, aux): loss = sum(w * nll) / sum(w) + z_loss * sum(w * log(Z)^2) / sum(w);
  aux["nll"] the first term, aux["tokens"] sum(w).
  """
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  total_weight = jnp.maximum(weights.sum(), 1.0)
  loss = (nll * weights).sum() / total_weight
  aux = {"nll": loss, "tokens": weights.sum()}
  if z_loss:
    loss = loss + z_loss * (jnp.square(log_z) * weights).sum() / total_weight
  return loss, aux


def chunked_cross_entropy_loss(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    z_loss: float = 0.0,
    *,
    chunk_tokens: int = 2048,
    compute_dtype: str | jnp.dtype | None = None,
    embedding_is_vocab_major: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`cross_entropy_loss(hidden @ embedding.T, ...)` without the full [B, T, V] logits.

  Args:
    hidden: [B, T, D] final (normed) hidden states.
    embedding: the output projection: [V, D] (a tied input embedding) when
      `embedding_is_vocab_major`, else [D, V] (an untied lm_head kernel).
    targets: [B, T] int target ids; weights: [B, T] loss weights (0 on padding, prompts, and
      between packed documents, as seqio's converters give them).
    z_loss: weight of the mean log(Z)^2 term.
    chunk_tokens: about how many positions (B x C) one chunk holds; C = max(1, chunk_tokens // B).
      T is padded with zero-weight positions to a multiple of C.
    compute_dtype: dtype of the logits matmul inputs (the model's compute dtype); the logits,
      softmax and accumulations are float32 whatever it is.
  Returns:
    (loss, aux) as `cross_entropy_loss`; aux["nll"] carries no gradient, and neither do the
    weights (they are data).
  """
  b, t, _ = hidden.shape
  dtype = jnp.dtype(compute_dtype or hidden.dtype)
  length = max(1, min(t, chunk_tokens // b))
  pad = -t % length
  weights = weights.astype(jnp.float32)
  total_weight = jnp.maximum(weights.sum(), 1.0)
  if pad:
    pad_positions = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    hidden, targets, weights = pad_positions(hidden), pad_positions(targets), pad_positions(weights)
  # Per-position coefficients of nll and of log(Z)^2 in the loss.
  nll_coef = weights / total_weight
  z_coef = weights * (z_loss / total_weight)
  table = embedding if embedding_is_vocab_major else embedding.T
  loss, nll = _chunked_loss(hidden, table, targets.astype(jnp.int32), nll_coef, z_coef, length, dtype.name)
  return loss, {"nll": jax.lax.stop_gradient(nll), "tokens": weights.sum()}


def _split_chunks(x: jax.Array, length: int) -> jax.Array:
  """[B, T, ...] -> [T / length, B, length, ...]: the chunks as the leading (scanned) axis."""
  b, t = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, t // length, length, *x.shape[2:]), 1, 0)


def _merge_chunks(x: jax.Array) -> jax.Array:
  """The inverse of `_split_chunks`."""
  n, b, length = x.shape[:3]
  return jnp.moveaxis(x, 0, 1).reshape(b, n * length, *x.shape[3:])


def _matmul(spec: str, a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
  """einsum of a and b cast to the compute dtype, with a float32 result.

  Accelerators accumulate low-precision products in float32 (preferred_element_type). XLA:CPU
  has no bf16 x bf16 -> f32 dot, so there the product is rounded to the compute dtype first, as
  the plain loss's logits are (`nnx.Embed.attend` in the compute dtype, then cast).
  """
  a, b = a.astype(dtype), b.astype(dtype)
  if jnp.dtype(dtype) == jnp.float32 or jax.default_backend() != "cpu":
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
  return jnp.einsum(spec, a, b).astype(jnp.float32)


def _chunk_logits(h: jax.Array, table: jax.Array, dtype: str) -> jax.Array:
  """h [B, C, D] @ table [V, D]^T -> [B, C, V] float32 (inputs in the compute dtype)."""
  logits = _matmul("bcd,vd->bcv", h, table, dtype)
  return with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))


def _forward_and_gradients(hidden, table, targets, nll_coef, z_coef, length, dtype, with_gradients):
  """One pass over the chunks: (loss, nll) and, with_gradients, (d hidden, d table) of the loss."""
  xs = tuple(_split_chunks(x, length) for x in (hidden, targets, nll_coef, z_coef))

  def chunk(carry, x):
    h, target, c_nll, c_z = x  # [B, C, D], [B, C], [B, C], [B, C]
    logits = _chunk_logits(h, table, dtype)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, C]
    target_logit = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit
    loss_sum, nll_sum = carry[:2]
    loss_sum = loss_sum + (c_nll * nll).sum() + (c_z * jnp.square(log_z)).sum()
    nll_sum = nll_sum + (c_nll * nll).sum()
    if not with_gradients:
      return (loss_sum, nll_sum), None
    # d loss / d logits = softmax * (c_nll + 2 c_z log Z) - c_nll * onehot(target)
    probs = jnp.exp(logits - log_z[..., None])
    d_logits = probs * (c_nll + 2.0 * c_z * log_z)[..., None]
    d_logits = d_logits - jax.nn.one_hot(target, logits.shape[-1], dtype=jnp.float32) * c_nll[..., None]
    d_h = _matmul("bcv,vd->bcd", d_logits, table, dtype)
    # Accumulated as [D, V]: contracting the chunk's positions with d_logits on the right keeps
    # its [B*C, V] layout, where a [V, D] product made XLA:CPU transpose all of d_logits first.
    d_table_t = carry[2] + _matmul("bcd,bcv->dv", h, d_logits, dtype)
    return (loss_sum, nll_sum, d_table_t), d_h.astype(hidden.dtype)

  zero = jnp.zeros((), jnp.float32)
  if not with_gradients:
    (loss, nll), _ = jax.lax.scan(chunk, (zero, zero), xs)
    return loss, nll
  init = (zero, zero, jnp.zeros(table.shape[::-1], jnp.float32))
  (loss, nll, d_table_t), d_hidden = jax.lax.scan(chunk, init, xs)
  return loss, nll, _merge_chunks(d_hidden), d_table_t.T.astype(table.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _chunked_loss(hidden, table, targets, nll_coef, z_coef, length, dtype):
  """(loss, nll); only loss is differentiated (the caller stops nll's gradient)."""
  return _forward_and_gradients(hidden, table, targets, nll_coef, z_coef, length, dtype, with_gradients=False)


def _chunked_loss_fwd(hidden, table, targets, nll_coef, z_coef, length, dtype):
  loss, nll, d_hidden, d_table = _forward_and_gradients(
      hidden, table, targets, nll_coef, z_coef, length, dtype, with_gradients=True)
  return (loss, nll), (d_hidden, d_table, targets, nll_coef, z_coef)


def _chunked_loss_bwd(length, dtype, residuals, cotangents):
  del length, dtype
  d_hidden, d_table, targets, nll_coef, z_coef = residuals
  g_loss, _ = cotangents  # nll leaves through stop_gradient: its cotangent is zero
  # Integer targets take a float0 cotangent; the coefficients are data (weights), not trained.
  return ((g_loss * d_hidden).astype(d_hidden.dtype), (g_loss * d_table).astype(d_table.dtype),
          _zero_cotangent(targets), jnp.zeros_like(nll_coef), jnp.zeros_like(z_coef))


def _zero_cotangent(x: jax.Array) -> np.ndarray:
  return np.zeros(x.shape, jax.dtypes.float0)


_chunked_loss.defvjp(_chunked_loss_fwd, _chunked_loss_bwd)
