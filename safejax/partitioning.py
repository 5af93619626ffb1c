"""Device mesh, logical-axis rules and shardings; multi-host initialisation.

Parameters and activations carry logical axis names (see safejax.model.llama). `DEFAULT_RULES` maps
them to the mesh axes (data, fsdp, tensor), MaxText style: the table is data, not code, and gin can
replace it (`partitioning.DEFAULT_RULES`; bind `logical_rules.rules` in gin).

  data    pure data parallelism: parameters replicated, batch split.
  fsdp    batch split and parameters split along `embed` (ZeRO-3 style, all-gathered per layer).
  tensor  Megatron-style model parallelism over heads, mlp and vocab.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import gin
import jax
import numpy as np
from flax import linen
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_RULES: Rules = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    # activations and batches
    ("batch", ("data", "fsdp")),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape; -1 on one axis takes all remaining devices (like t5x's model_parallel_submesh)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    dims = [self.data, self.fsdp, self.tensor]
    if dims.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {dims}")
    known = int(np.prod([d for d in dims if d != -1]))
    if -1 in dims:
      if num_devices % known:
        raise ValueError(f"{num_devices} devices cannot fill mesh {dims}")
      dims[dims.index(-1)] = num_devices // known
    if int(np.prod(dims)) != num_devices:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, dims))} needs {int(np.prod(dims))} devices, have {num_devices}")
    return tuple(dims)


def make_mesh(config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh with Auto axis types (plain sharded code, compiler-propagated)."""
  config = config or MeshConfig()
  devices = list(devices if devices is not None else jax.devices())
  shape = config.shape(len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, devices=devices, axis_types=auto)


@gin.configurable
def logical_rules(rules: Rules = DEFAULT_RULES) -> Rules:
  """The active rules table; bind `logical_rules.rules` in gin to change it."""
  return tuple(rules)


def logical_to_spec(names: Sequence[str | None], rules: Rules | None = None) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec; unknown names are replicated."""
  rules = rules if rules is not None else (flax_spmd.get_logical_axis_rules() or logical_rules())
  return linen.logical_to_mesh_axes(tuple(names), rules)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh or without active rules."""
  rules = flax_spmd.get_logical_axis_rules()
  if not rules or jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))


def state_specs(state: nnx.State, rules: Rules) -> nnx.State:
  """PartitionSpecs of an nnx state from its variables' logical-axis metadata."""
  with nnx.logical_axis_rules(rules):
    return nnx.get_partition_spec(state)


def state_shardings(state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules) -> nnx.State:
  specs = state_specs(state, rules)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def create_sharded(build: Callable[[], nnx.Module], mesh: jax.sharding.Mesh, rules: Rules) -> nnx.Module:
  """Runs `build` under jit with its state laid out by the rules: no host ever holds it whole."""
  with nnx.logical_axis_rules(rules):  # eval_shape reads the logical names through the rules
    graphdef, abstract_state = nnx.split(nnx.eval_shape(build))
  shardings = state_shardings(abstract_state, mesh, rules)
  state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, length, ...] input array."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays (one process: a plain device_put)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, cpu_collectives: str | None = None) -> None:
  """`jax.distributed.initialize`, a no-op for one process.

  On TPU pods and SLURM/GPU clusters the arguments are discovered from the environment; on CPU
  (tests, laptops) give them explicitly and pick gloo collectives.
  """
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address is None and num_processes in (None, 1):
    try:
      jax.distributed.initialize()  # TPU pod / cluster: everything from the environment.
    except (ValueError, RuntimeError) as e:
      logging.info("single process (jax.distributed not initialised: %s)", e)
    return
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
