"""The decoder: shapes, masking, the KV cache, RoPE, dtypes, rematerialisation, the layer scan."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from safejax.model import KVCache, ModelConfig, build_model, param_count
from safejax.model.llama import rope

CFG = ModelConfig(vocab_size=97)


@pytest.fixture(scope="module")
def model():
  return build_model(CFG, seed=1)


def tokens(b, t, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, t), 5, CFG.vocab_size)


def test_shapes_and_param_count(model):
  logits, cache = model(tokens(3, 7))
  assert logits.shape == (3, 7, CFG.vocab_size) and logits.dtype == jnp.float32
  assert cache is None
  assert param_count(model) == CFG.num_params()
  untied = dataclasses.replace(CFG, tie_embeddings=False)
  assert param_count(build_model(untied)) == untied.num_params() == CFG.num_params() + CFG.embed_dim * CFG.vocab_size


def test_causal(model):
  x = tokens(1, 8)
  y = x.at[0, 5].set((x[0, 5] + 1) % CFG.vocab_size)
  a, _ = model(x)
  b, _ = model(y)
  np.testing.assert_allclose(a[0, :5], b[0, :5], atol=1e-6)
  assert not np.allclose(a[0, 5:], b[0, 5:])


def test_packed_segments_equal_separate_documents(model):
  a, b = tokens(1, 5, seed=1), tokens(1, 4, seed=2)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 3), jnp.int32)], axis=1)
  segments = jnp.array([[1] * 5 + [2] * 4 + [0] * 3])
  positions = jnp.array([list(range(5)) + list(range(4)) + [0] * 3])
  logits, _ = model(packed, positions, segments)
  alone_a, _ = model(a)
  alone_b, _ = model(b)
  np.testing.assert_allclose(logits[0, :5], alone_a[0], atol=1e-5)
  np.testing.assert_allclose(logits[0, 5:9], alone_b[0], atol=1e-5)


def test_cache_prefill_then_steps_equals_full_forward(model):
  x = tokens(2, 9)
  full, _ = model(x)
  cache = KVCache.init(CFG, 2, 12)
  positions = jnp.broadcast_to(jnp.arange(9), (2, 9))
  out, cache = model(x[:, :6], positions[:, :6], cache=cache)
  steps = [out]
  for t in range(6, 9):
    out, cache = model(x[:, t:t + 1], positions[:, t:t + 1], cache=cache)
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)
  assert int(cache.index) == 9


def test_left_padding_is_invisible(model):
  x = tokens(1, 5)
  alone, _ = model(x)
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), x], axis=1)
  mask = jnp.array([[False] * 3 + [True] * 5])
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  out, _ = model(padded, positions, cache=KVCache.init(CFG, 1, 8), input_mask=mask)
  np.testing.assert_allclose(out[0, 3:], alone[0], atol=1e-5)


def test_cache_gather_rows_reorders_batch(model):
  x = tokens(3, 4)
  _, cache = model(x, jnp.broadcast_to(jnp.arange(4), (3, 4)), cache=KVCache.init(CFG, 3, 6))
  reordered = cache.gather_rows(jnp.array([2, 0, 0]))
  np.testing.assert_array_equal(reordered.keys[0][0], cache.keys[0][2])
  np.testing.assert_array_equal(reordered.values[1][2], cache.values[1][0])


def test_cache_gather_beams_copies_each_prompts_parent_beams_exactly(model):
  x = tokens(6, 4)  # 2 prompts x 3 beams
  _, cache = model(x, jnp.broadcast_to(jnp.arange(4), (6, 4)),
                   cache=KVCache.init(CFG, 6, 6), input_mask=jnp.arange(4) < jnp.array([4, 3, 4, 2, 4, 1])[:, None])
  parents = jnp.array([[2, 2, 0], [1, 0, 1]])
  reordered = cache.gather_beams(parents)
  expected = cache.gather_rows(jnp.array([2, 2, 0, 4, 3, 4]))  # row b*3 + parents[b, j]
  for got, want in ((reordered.keys, expected.keys), (reordered.values, expected.values)):
    for layer_got, layer_want in zip(got, want):
      np.testing.assert_array_equal(layer_got, layer_want)  # bit for bit: a one-hot matmul copies exactly
  np.testing.assert_array_equal(reordered.key_valid, expected.key_valid)
  assert int(reordered.index) == int(cache.index) == 4


@functools.partial(nnx.jit, static_argnames="siblings")
def decode(model, x, positions, cache, input_mask=None, siblings=False):
  """The model with a cache, jitted: compiling beats running the ops one by one."""
  return model(x, positions, cache=cache, input_mask=input_mask, siblings=siblings)


def _prefilled(model, length):
  """A cache of `length` slots holding two prompts, the first left-padded by two."""
  x = tokens(2, 5, seed=3)
  mask = jnp.array([[False, False, True, True, True], [True] * 5])
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  _, cache = decode(model, x, positions, KVCache.init(CFG, 2, length), mask)
  return cache, positions[:, -1] + 1  # the cache and each row's next position [2]


def test_sibling_logits_equal_separate_single_token_steps(model):
  cache, next_position = _prefilled(model, 10)
  candidates = tokens(2, 3, seed=4)
  positions = jnp.broadcast_to(next_position[:, None], (2, 3))
  logits, after = decode(model, candidates, positions, cache, siblings=True)
  for j in range(3):
    alone, _ = decode(model, candidates[:, j:j + 1], positions[:, j:j + 1], cache)
    np.testing.assert_allclose(logits[:, j], alone[:, 0], atol=1e-5)
  assert int(after.index) == 5 + 3
  # As a sequence instead, the later tokens see the earlier ones.
  sequence, _ = decode(model, candidates, positions, cache)
  np.testing.assert_allclose(sequence[:, 0], logits[:, 0], atol=1e-5)
  assert not np.allclose(sequence[:, 1:], logits[:, 1:], atol=1e-3)
  with pytest.raises(ValueError, match="siblings need a cache"):
    model(candidates, siblings=True)


def test_keep_sibling_leaves_the_cache_of_a_single_step(model):
  cache, next_position = _prefilled(model, 10)
  candidates = tokens(2, 3, seed=5)
  positions = jnp.broadcast_to(next_position[:, None], (2, 3))
  _, after = decode(model, candidates, positions, cache, siblings=True)
  choice = jnp.array([2, 0])
  kept = after.keep_sibling(choice, 3)
  chosen = jnp.take_along_axis(candidates, choice[:, None], axis=1)
  _, single = decode(model, chosen, positions[:, :1], cache)
  assert int(kept.index) == int(single.index) == 6
  np.testing.assert_array_equal(kept.key_valid, single.key_valid)
  for kept_layer, single_layer in zip(kept.keys + kept.values, single.keys + single.values):
    np.testing.assert_allclose(kept_layer[..., :6], single_layer[..., :6], atol=1e-6)  # [B, K, H, S]
  # Decoding goes on as if only the chosen tokens had ever been written.
  following = tokens(2, 2, seed=6)
  following_positions = next_position[:, None] + jnp.arange(1, 3)
  after_kept, _ = decode(model, following, following_positions, kept)
  after_single, _ = decode(model, following, following_positions, single)
  np.testing.assert_allclose(after_kept, after_single, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  def score(pq, pk):
    return float(jnp.sum(rope(q, jnp.array([[pq]]), 10000.0) * rope(k, jnp.array([[pk]]), 10000.0)))
  assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_bf16_compute_keeps_f32_params_and_logits():
  cfg = dataclasses.replace(CFG, dtype="bfloat16")
  m = build_model(cfg)
  logits, _ = m(tokens(1, 4))
  assert logits.dtype == jnp.float32
  assert m.blocks.mlp.up.kernel[...].dtype == jnp.float32
  ref, _ = build_model(CFG)(tokens(1, 4))
  np.testing.assert_allclose(logits, ref, atol=0.1)  # same weights, bf16 rounding only


def _loss_and_grads(cfg, x, segments=None):
  graphdef, state = nnx.split(build_model(cfg, seed=4))
  loss = lambda s: jnp.mean(nnx.merge(graphdef, s)(x, segment_ids=segments)[0] ** 2)
  return jax.jit(jax.value_and_grad(loss))(state)


@pytest.mark.parametrize("policy, scan_layers", [("full", True), ("dots", True), ("full", False)])
def test_remat_changes_memory_not_maths(policy, scan_layers):
  x = tokens(2, 6)
  loss, grads = _loss_and_grads(dataclasses.replace(CFG, scan_layers=scan_layers), x)
  loss_r, grads_r = _loss_and_grads(dataclasses.replace(CFG, remat=policy, scan_layers=scan_layers), x)
  assert float(loss) == pytest.approx(float(loss_r), rel=1e-6)
  for g, gr in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g, gr, atol=1e-6)


def test_layers_are_stacked_and_the_scan_equals_the_loop():
  """One parameter tree, [L, ...] per block weight; the scan and a Python loop over the layers
  compute the same logits, gradients and cache (float32 rounding only)."""
  cfg = dataclasses.replace(CFG, num_layers=3)
  model = build_model(cfg, seed=1)
  assert model.blocks.attn.q.kernel[...].shape == (3, cfg.embed_dim, cfg.num_heads * cfg.head_dim)
  assert model.blocks.attn.q.kernel.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
  layers = [jax.tree.map(lambda p: p[i], nnx.state(model.blocks)) for i in range(3)]
  assert not np.allclose(layers[0]["attn"]["q"]["kernel"][...], layers[1]["attn"]["q"]["kernel"][...])
  looped = dataclasses.replace(cfg, scan_layers=False)
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
  x = tokens(2, 6)
  loss, grads = _loss_and_grads(cfg, x, segments)
  loss_loop, grads_loop = _loss_and_grads(looped, x, segments)
  assert float(loss) == pytest.approx(float(loss_loop), rel=1e-6)
  for g, g_loop in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_loop)):
    np.testing.assert_allclose(g, g_loop, atol=1e-6)
  positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
  scanned, cache = decode(model, x, positions, KVCache.init(cfg, 2, 8))
  loop_model = nnx.merge(nnx.graphdef(build_model(looped)), nnx.state(model))
  unrolled, loop_cache = decode(loop_model, x, positions, KVCache.init(cfg, 2, 8))
  np.testing.assert_allclose(scanned, unrolled, atol=1e-5)
  np.testing.assert_allclose(cache.keys, loop_cache.keys, atol=1e-6)
  # Decoding keeps a buffer per layer, slots last: [B, K, H, S] each.
  assert [k.shape for k in cache.keys] == [(2, cfg.num_kv_heads, cfg.head_dim, 8)] * 3


def test_scanned_program_does_not_grow_with_depth():
  """The scan traces one layer: the lowered program of 16 layers is the size of that of 2 (so
  compile time stays flat), where the Python loop's grows with every layer."""
  def program_size(num_layers, scan_layers):
    cfg = dataclasses.replace(CFG, num_layers=num_layers, scan_layers=scan_layers)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))
    loss = lambda s: jnp.mean(nnx.merge(graphdef, s)(jnp.zeros((1, 8), jnp.int32))[0])
    return len(jax.jit(jax.grad(loss)).lower(state).as_text())

  assert program_size(16, True) < 1.1 * program_size(2, True)
  assert program_size(16, False) > 4 * program_size(2, False)


def test_config_validation():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    ModelConfig(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="even"):
    ModelConfig(head_dim=15)
  with pytest.raises(ValueError, match="remat"):
    ModelConfig(remat="sometimes")
  with pytest.raises(ValueError, match="vocab_size is unset"):
    build_model(ModelConfig())
  with pytest.raises(ValueError, match="explicit positions"):
    build_model(CFG)(tokens(1, 2), cache=KVCache.init(CFG, 1, 4))


def test_flops_per_token_matches_6n_rule():
  cfg = ModelConfig(vocab_size=1000, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=4, head_dim=16, mlp_dim=256)
  matmul_params = cfg.num_params() - 5 * 64  # minus the five norm scales
  assert cfg.flops_per_token(128) == 6 * matmul_params + 12 * 2 * 128 * 64
