"""Sharding on 8 fake CPU devices: the rules place parameters, and the mesh does not change the maths.

Tolerance: a 2x2x2 mesh splits reductions (the batch mean, the fsdp all-gathers, the tensor-parallel
matmul sums) into partial sums added in another order, so losses agree to float32 rounding:
relative 1e-5 here (seen: ~1e-7).
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from safejax import partitioning
from safejax.model import ModelConfig, build_model
from safejax.train import OptimizerConfig, train_step

CFG = ModelConfig(vocab_size=128, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)
RULES = partitioning.DEFAULT_RULES


def test_mesh_shape_fills_one_axis():
  assert partitioning.MeshConfig().shape(8) == (8, 1, 1)
  assert partitioning.MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == (2, 2, 2)
  assert partitioning.MeshConfig(data=1, fsdp=-1, tensor=1).shape(4) == (1, 4, 1)
  with pytest.raises(ValueError, match="at most one"):
    partitioning.MeshConfig(data=-1, fsdp=-1).shape(8)
  with pytest.raises(ValueError, match="needs 4 devices, have 8"):
    partitioning.MeshConfig(data=2, fsdp=2, tensor=1).shape(8)
  with pytest.raises(ValueError, match="cannot fill"):
    partitioning.MeshConfig(data=-1, fsdp=3).shape(8)


def test_logical_to_spec_follows_rules():
  assert partitioning.logical_to_spec(("batch", "activation_length", "activation_embed"), RULES) == P(("data", "fsdp"), None, None)
  assert partitioning.logical_to_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
  assert partitioning.logical_to_spec(("vocab", "embed"), RULES) == P("tensor", "fsdp")


def _mesh(data, fsdp, tensor):
  n = data * fsdp * tensor
  return partitioning.make_mesh(partitioning.MeshConfig(data, fsdp, tensor), jax.devices()[:n])


def test_parameters_are_sharded_as_the_rules_say():
  mesh = _mesh(2, 2, 2)
  with jax.set_mesh(mesh):
    model = partitioning.create_sharded(lambda: build_model(CFG), mesh, RULES)
  expected = {
      ("embed", "embedding"): P("tensor", "fsdp"),
      ("blocks", 0, "attn", "q", "kernel"): P("fsdp", "tensor"),
      ("blocks", 0, "attn", "o", "kernel"): P("tensor", "fsdp"),
      ("blocks", 1, "mlp", "down", "kernel"): P("tensor", "fsdp"),
      ("blocks", 1, "mlp_norm", "scale"): P(None),
  }
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  for path, spec in expected.items():
    array = flat[path][...]
    assert array.sharding.spec == spec, path
    shard_shape = array.addressable_shards[0].data.shape
    divisors = [1 if axis is None else mesh.shape[axis] for axis in spec] + [1] * (array.ndim - len(spec))
    assert shard_shape == tuple(d // k for d, k in zip(array.shape, divisors)), path


def _one_step_loss(mesh, batch):
  tx = OptimizerConfig(learning_rate=1e-2, warmup_steps=0).make(10)
  build = lambda: (lambda m: (m, nnx.Optimizer(m, tx, wrt=nnx.Param)))(build_model(CFG, seed=3))
  with jax.set_mesh(mesh):
    model, opt = partitioning.create_sharded(build, mesh, RULES)
    graphdef, state = nnx.split((model, opt))
    shardings = partitioning.state_shardings(state, mesh, RULES)
    step = jax.jit(functools.partial(train_step, graphdef, rules=RULES, z_loss=1e-4),
                   in_shardings=(shardings, partitioning.batch_sharding(mesh, RULES)), out_shardings=(shardings, None))
    losses = []
    for _ in range(3):
      state, metrics = step(state, partitioning.global_batch(batch, partitioning.batch_sharding(mesh, RULES)))
      losses.append(float(metrics["loss"]))
    return losses, float(metrics["grad_norm"])


def _batch(b=8, t=16):
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, CFG.vocab_size, (b, t + 1)).astype(np.int32)
  segments = np.ones((b, t), np.int32)
  segments[:, t // 2:] = 2
  positions = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)])[None].repeat(b, 0).astype(np.int32)
  return {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
          "decoder_loss_weights": np.ones((b, t), np.int32), "decoder_segment_ids": segments,
          "decoder_positions": positions}


def test_same_loss_on_1x1x1_and_2x2x2_meshes():
  batch = _batch()
  single, gnorm_single = _one_step_loss(_mesh(1, 1, 1), batch)
  sharded, gnorm_sharded = _one_step_loss(_mesh(2, 2, 2), batch)
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  assert gnorm_sharded == pytest.approx(gnorm_single, rel=1e-5)
  assert single[2] < single[0]  # and it learns


_WORKER = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, numpy as np
    from safejax import partitioning
    partitioning.initialize_distributed(coordinator_address=sys.argv[1], num_processes=2,
                                        process_id=int(sys.argv[2]), cpu_collectives="gloo")
    sys.path.insert(0, sys.argv[3])
    import test_partitioning as t
    mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=1, tensor=2))
    full = t._batch()
    rows = slice(jax.process_index() * 4, jax.process_index() * 4 + 4)  # this host's half of the batch
    local = {k: v[rows] for k, v in full.items()}
    losses, _ = t._one_step_loss(mesh, local)  # global arrays from each host's rows
    print("RESULT", json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "losses": losses}))
""")


def test_two_processes_through_jax_distributed(tmp_path):
  """Two local CPU processes (gloo collectives), 2 fake devices each: one global 2x1x2 mesh."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
  procs = [subprocess.Popen([sys.executable, str(script), f"127.0.0.1:{port}", str(i), os.path.dirname(__file__)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  import json
  results = []
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
    results.append(json.loads(out.split("RESULT", 1)[1]))
  assert [r["devices"] for r in results] == [4, 4]
  single, _ = _one_step_loss(_mesh(1, 1, 1), _batch())
  for r in results:
    np.testing.assert_allclose(r["losses"], single, rtol=1e-5)
