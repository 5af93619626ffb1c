"""The chunked cross-entropy equals the plain loss over full logits, in value and gradient.

Tolerance: float32, the two differ only in summation order (chunk by chunk vs all at once):
loss to 1e-6 relative, gradients to 2e-5 absolute at these magnitudes (seen: ~1e-7 and ~1e-8).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safejax.model import ModelConfig, build_model
from safejax.model.losses import chunked_cross_entropy_loss, cross_entropy_loss
from safejax.train import model_loss

CFG = ModelConfig(vocab_size=97, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
B, T = 3, 10


def packed_batch(seed=0):
  """Two documents per row plus padding, one row padded more; weights 0 on padding and the
  first document of row 1 (as a prompt would be)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, CFG.vocab_size, (B, T + 1)).astype(np.int32)
  segments = np.array([[1] * 4 + [2] * 5 + [0], [1] * 6 + [2] * 4, [1] * 3 + [0] * 7], np.int32)
  positions = np.concatenate([np.arange(n) for n in (4, 5, 1)])[None].repeat(B, 0).astype(np.int32)
  positions[1] = np.concatenate([np.arange(6), np.arange(4)])
  positions[2] = np.concatenate([np.arange(3), np.zeros(7)])
  weights = (segments > 0).astype(np.int32)
  weights[1, :6] = 0
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": weights, "decoder_segment_ids": segments, "decoder_positions": positions}


def loss_and_grads(cfg, batch, z_loss, chunk_tokens):
  graphdef, state = nnx.split(build_model(cfg, seed=2))
  fn = lambda s: model_loss(nnx.merge(graphdef, s), batch, z_loss, chunk_tokens)
  (loss, aux), grads = jax.jit(jax.value_and_grad(fn, has_aux=True))(state)  # jit: compiling beats eager ops
  return float(loss), float(aux["nll"]), float(aux["tokens"]), grads


def test_model_loss_chunked_equals_plain_packed_and_masked():
  """Through the decoder (as train_step runs it): every parameter's gradient, the tied embedding's
  input and output parts included."""
  batch = packed_batch()
  plain = loss_and_grads(CFG, batch, 1e-2, 0)
  chunked = loss_and_grads(CFG, batch, 1e-2, 12)  # C = 4: T = 10 padded to 12
  assert chunked[0] == pytest.approx(plain[0], rel=1e-6)
  assert chunked[1] == pytest.approx(plain[1], rel=1e-6)
  assert chunked[2] == plain[2] == batch["decoder_loss_weights"].sum()
  flat_plain, flat_chunked = dict(nnx.to_flat_state(plain[3])), dict(nnx.to_flat_state(chunked[3]))
  assert flat_plain.keys() == flat_chunked.keys()
  for path in flat_plain:
    np.testing.assert_allclose(flat_chunked[path][...], flat_plain[path][...], atol=2e-5, err_msg=str(path))


def test_model_loss_bf16_compute_close_to_plain():
  """bf16 compute through the decoder, as train_step runs it (on CPU: no bf16 x bf16 -> f32 dots)."""
  import dataclasses

  cfg = dataclasses.replace(CFG, dtype="bfloat16")
  batch = packed_batch(3)
  plain, chunked = loss_and_grads(cfg, batch, 1e-3, 0), loss_and_grads(cfg, batch, 1e-3, 12)
  assert chunked[0] == pytest.approx(plain[0], rel=1e-2)
  for path, g in nnx.to_flat_state(plain[3]):
    g_chunked = dict(nnx.to_flat_state(chunked[3]))[path][...]
    assert g_chunked.dtype == jnp.float32, path  # float32 parameters get float32 gradients
    np.testing.assert_allclose(g_chunked, g[...], atol=5e-3, err_msg=str(path))


def random_inputs(seed=0, vocab=97, dim=16):
  """hidden [B, T, D], table [V, D], and the packed batch's targets and weights."""
  batch = packed_batch(seed)
  hidden = jax.random.normal(jax.random.key(seed), (B, T, dim))
  table = 0.5 * jax.random.normal(jax.random.key(seed + 1), (vocab, dim))
  return hidden, table, batch["decoder_target_tokens"], batch["decoder_loss_weights"]


def both_losses(hidden, table, targets, weights, z_loss, chunk_tokens, vocab_major=True, dtype=None):
  """(value, grads) of the chunked and the plain loss w.r.t. (hidden, table)."""
  def chunked(h, e):
    return chunked_cross_entropy_loss(h, e, targets, weights, z_loss, chunk_tokens=chunk_tokens,
                                      compute_dtype=dtype, embedding_is_vocab_major=vocab_major)

  def plain(h, e):
    cast = (lambda x: x.astype(dtype)) if dtype else (lambda x: x)
    logits = jnp.einsum("btd,vd->btv" if vocab_major else "btd,dv->btv", cast(h), cast(e)).astype(jnp.float32)
    return cross_entropy_loss(logits, targets, weights, z_loss)

  grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(hidden, table)
  return grad(chunked), grad(plain)


@pytest.mark.parametrize("chunk_tokens", [3, 12, 4096])  # C = 1 (one position), 4 (T padded to 12), T
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_chunked_equals_plain_masked(chunk_tokens, z_loss):
  ((loss, aux), grads), ((loss_ref, aux_ref), grads_ref) = both_losses(*random_inputs(), z_loss, chunk_tokens)
  assert float(loss) == pytest.approx(float(loss_ref), rel=1e-6)
  assert float(aux["nll"]) == pytest.approx(float(aux_ref["nll"]), rel=1e-6)
  assert float(aux["tokens"]) == float(aux_ref["tokens"])
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, atol=2e-5)
  assert float(jnp.abs(grads[1]).max()) > 1e-3  # not vacuous


def test_untied_head_layout_equals_plain():
  hidden, table, targets, weights = random_inputs(1)
  ((loss, _), grads), ((loss_ref, _), grads_ref) = both_losses(hidden, table.T, targets, weights, 1e-3, 6,
                                                               vocab_major=False)
  assert float(loss) == pytest.approx(float(loss_ref), rel=1e-6)
  assert grads[1].shape == table.T.shape
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, atol=2e-5)


def test_bf16_compute_close_to_plain():
  hidden, table, targets, weights = random_inputs(2)
  ((loss, _), grads), ((loss_ref, _), grads_ref) = both_losses(hidden.astype(jnp.bfloat16), table, targets,
                                                               weights, 0.0, 6, dtype="bfloat16")
  assert float(loss) == pytest.approx(float(loss_ref), rel=1e-2)  # the plain loss has bf16 logits
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32  # as the primals
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g_ref, np.float32), atol=2e-2)


def test_all_weights_zero_gives_zero_loss_and_gradients():
  hidden = jax.random.normal(jax.random.key(0), (2, 5, 8))
  table = jax.random.normal(jax.random.key(1), (11, 8))
  targets, weights = jnp.ones((2, 5), jnp.int32), jnp.zeros((2, 5), jnp.int32)
  (loss, aux), grads = jax.jit(jax.value_and_grad(
      lambda h, e: chunked_cross_entropy_loss(h, e, targets, weights, 1e-2, chunk_tokens=4), argnums=(0, 1),
      has_aux=True))(hidden, table)
  assert float(loss) == 0.0 and float(aux["tokens"]) == 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_gradient_scales_with_the_cotangent():
  """The backward pass scales the gradients formed in the forward pass by the incoming cotangent."""
  hidden = jax.random.normal(jax.random.key(0), (2, 6, 8))
  table = jax.random.normal(jax.random.key(1), (13, 8))
  targets = jax.random.randint(jax.random.key(2), (2, 6), 0, 13)
  weights = jnp.ones((2, 6))
  chunked = lambda h, e: 3.0 * chunked_cross_entropy_loss(h, e, targets, weights, 1e-3, chunk_tokens=4)[0]
  plain = lambda h, e: 3.0 * cross_entropy_loss(jnp.einsum("btd,vd->btv", h, e), targets, weights, 1e-3)[0]
  grads = lambda f: jax.jit(jax.grad(f, (0, 1)))(hidden, table)
  for g_chunked, g_plain in zip(grads(chunked), grads(plain)):
    np.testing.assert_allclose(g_chunked, g_plain, atol=1e-5)


def test_train_step_never_holds_full_logits():
  """No value over the vocabulary in the differentiated chunked loss has B x T x V elements; the
  plain loss has several."""
  b, t, v = 4, 16, CFG.vocab_size
  rng = np.random.default_rng(0)
  batch = {k: np.ones((b, t), np.int32) for k in ("decoder_loss_weights", "decoder_segment_ids")}
  batch["decoder_input_tokens"] = rng.integers(5, v, (b, t)).astype(np.int32)
  batch["decoder_target_tokens"] = rng.integers(5, v, (b, t)).astype(np.int32)
  batch["decoder_positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  graphdef, state = nnx.split(build_model(CFG))

  def full_logit_values(chunk_tokens):
    fn = lambda s: model_loss(nnx.merge(graphdef, s), batch, 1e-4, chunk_tokens)[0]
    jaxpr = jax.make_jaxpr(jax.grad(fn))(state)
    count = 0

    def visit(jaxpr):
      nonlocal count
      for eqn in jaxpr.eqns:
        shapes = [getattr(out.aval, "shape", ()) for out in eqn.outvars]
        count += sum(1 for shape in shapes if v in shape and np.prod(shape) >= b * t * v)
        for param in eqn.params.values():
          for inner in param if isinstance(param, (list, tuple)) else [param]:
            inner = getattr(inner, "jaxpr", inner)  # ClosedJaxpr -> Jaxpr
            if hasattr(inner, "eqns"):
              visit(inner)

    visit(jaxpr.jaxpr)
    return count

  assert full_logit_values(0) >= 3
  assert full_logit_values(16) == 0  # chunks of 4 x 4 positions: [4, 4, V] blocks only
