"""The trainer: SeqIO input, one readable sharded train step, Orbax checkpoints, metrics.

Launched t5x-style through gin (gin/runs/*.gin bind the macros MODEL_DIR, TRAIN_STEPS, BATCH_SIZE,
TASK_FEATURE_LENGTHS, MIXTURE_OR_TASK_NAME, MIXTURE_OR_TASK_MODULE):

  safejax train --gin_file=models/demo.gin --gin_file=runs/pretrain_text.gin \
      --gin.MODEL_DIR="'/tmp/demo'" --gin.TEXT_FILES="'docs.jsonl'" --gin.VOCAB="'vocab.model'"

The same code runs on one CPU, on 8 fake CPU devices and on a TPU pod (one process per host,
`jax.distributed` initialised first; each host reads its shard of the input).

Checkpoints (Orbax CheckpointManager, async) hold three items: `params` (the model state),
`opt_state` (the optimizer state; flax 0.12 keeps it apart from the parameters) and `meta` (step,
input position, config). Restarting the same command resumes from the newest checkpoint and, since
the input is deterministic and its position is checkpointed, reproduces the losses of an
uninterrupted run. The vocabulary and model config are copied beside the checkpoints so a model
directory is self-contained for `load_for_inference`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from safejax import partitioning
from safejax.checkpoints import (METRICS_FILE, checkpoint_manager, load_model_config,
                                 model_path, write_model_files)
from safejax.model import Decoder, ModelConfig, build_model
from safejax.vocab import ReservedTokens, Vocabulary, load_vocabulary

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------
# Optimizer


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """AdamW with linear warm-up and cosine decay (the paper: lr 5e-4, weight decay 0.01)."""

  learning_rate: float = 5e-4
  warmup_steps: int = 100
  min_learning_rate_ratio: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0
  z_loss: float = 0.0  # weight of log(Z)^2, PaLM-style logit drift control; 1e-4 is typical.

  def schedule(self, total_steps: int) -> optax.Schedule:
    warmup = min(self.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=self.learning_rate, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=self.learning_rate * self.min_learning_rate_ratio)

  def make(self, total_steps: int) -> optax.GradientTransformation:
    # Decay matrices (kernels, embeddings) only: norm scales and biases are 1-D.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    return optax.chain(
        optax.clip_by_global_norm(self.clip_norm),
        optax.adamw(self.schedule(total_steps), b1=self.b1, b2=self.b2, eps=self.eps,
                    weight_decay=self.weight_decay, mask=decay_mask))


# --------------------------------------------------------------------------------------------
# Loss and the train step


def cross_entropy_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                       z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Token-weighted mean cross-entropy. logits [B,T,V] f32; targets, weights [B,T]."""
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  total_weight = jnp.maximum(weights.sum(), 1.0)
  loss = (nll * weights).sum() / total_weight
  aux = {"nll": loss, "tokens": weights.sum()}
  if z_loss:
    loss = loss + z_loss * (jnp.square(log_z) * weights).sum() / total_weight
  return loss, aux


def train_step(graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array], *,
               rules: partitioning.Rules, z_loss: float) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One optimizer step on a packed batch (seqio DecoderFeatureConverter features).

  state: nnx.State of (model, optimizer). batch: decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights, decoder_segment_ids, decoder_positions, each [B, T].
  """
  with nnx.logical_axis_rules(rules):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model: Decoder):
      logits, _ = model(batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"])
      return cross_entropy_loss(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"], z_loss)

    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    metrics = {"loss": loss, "nll": aux["nll"], "target_tokens": aux["tokens"],
               "grad_norm": optax.global_norm(grads), "param_norm": optax.global_norm(nnx.state(model, nnx.Param))}
    return nnx.state((model, optimizer)), metrics


# --------------------------------------------------------------------------------------------
# Input

MODEL_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                  "decoder_segment_ids", "decoder_positions")


def import_task_module(module: str | None) -> None:
  """Imports the module that registers the SeqIO tasks (t5x's MIXTURE_OR_TASK_MODULE)."""
  if module:
    importlib.import_module(module)


def task_vocabulary(mixture_or_task_name: str) -> Vocabulary:
  import seqio

  vocab = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
  if not isinstance(vocab, ReservedTokens):
    raise TypeError(f"{mixture_or_task_name}: targets vocabulary is {type(vocab).__name__}, expected "
                    "safejax.vocab's SafejaxVocabulary or HfTokenizerVocabulary (reserved harm tag and chat tokens)")
  return vocab


def make_train_iterator(mixture_or_task_name: str, sequence_length: int, batch_size: int, *,
                        seed: int, start_batch: int = 0, split: str = "train") -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the global batches, as numpy, starting at batch `start_batch`.

  Deterministic for a seed, so skipping `start_batch` batches resumes exactly where a
  checkpointed run stopped (the skip re-reads those batches' input: cheap next to training them).
  """
  import seqio
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # the input pipeline never takes accelerators
  num_hosts, host = jax.process_count(), jax.process_index()
  if batch_size % num_hosts:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {num_hosts} processes")
  task = seqio.get_mixture_or_task(mixture_or_task_name)
  start_id = task.output_features["targets"].vocabulary.decoder_start_id  # shifted in before every document
  if "inputs" in task.output_features:
    # Prompt/response data (instruction tuning): one causal sequence, loss on the response only.
    # The converter's decoder_causal_attention (a prefix-LM mask) is ignored: the model is causal.
    lengths = {"inputs": sequence_length // 2, "targets": sequence_length - sequence_length // 2}
    converter = seqio.PrefixLMFeatureConverter(loss_on_targets_only=True, pack=True, bos_id=start_id)
  else:
    lengths = {"targets": sequence_length}
    converter = seqio.DecoderFeatureConverter(pack=True, bos_id=start_id)
  ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=True, seed=seed, num_epochs=None,
                        shard_info=seqio.ShardInfo(index=host, num_shards=num_hosts), use_cached=False)
  ds = converter(ds, lengths)
  ds = ds.batch(batch_size // num_hosts, drop_remainder=True).skip(start_batch).prefetch(2)
  for batch in ds.as_numpy_iterator():
    yield {k: batch[k].astype(np.int32) for k in MODEL_FEATURES}


# --------------------------------------------------------------------------------------------
# Throughput


# Peak dense bf16 FLOP/s per chip, for the MFU estimate.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


@functools.cache
def peak_flops_per_device() -> tuple[float, str]:
  """(peak FLOP/s, how it was obtained). Unknown devices (CPUs) get a measured f32 matmul peak."""
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_FLOPS.items():
    if kind.startswith(name):
      return flops, f"spec sheet ({kind})"
  n = 1024
  x = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  t0, reps = time.perf_counter(), 10
  for _ in range(reps):
    y = matmul(x)
  y.block_until_ready()
  per_device = 2 * n**3 * reps / (time.perf_counter() - t0) / max(1, len(jax.local_devices()))
  return per_device, f"measured {n}x{n} f32 matmul on {kind}"


# --------------------------------------------------------------------------------------------
# The loop


class NonFiniteLossError(FloatingPointError):
  pass


@gin.configurable
def train(
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    mixture_or_task_module: str | None = "tasks",
    task_registrations: Sequence[Any] = (),
    train_steps: int = gin.REQUIRED,
    batch_size: int = 8,
    sequence_length: int = 128,
    model_config: ModelConfig | None = None,
    optimizer: OptimizerConfig | None = None,
    init_from: str | None = None,
    mesh: partitioning.MeshConfig | None = None,
    seed: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    progress: bool = True,
) -> dict[str, float]:
  """Trains (or resumes) a decoder on a SeqIO task or mixture; returns the last metrics.

  `task_registrations` is for gin: references such as `@register_text_task()` are evaluated when
  train is called, registering the run's tasks before `mixture_or_task_name` is looked up.
  `model_config`, `optimizer`, `mesh`: None builds the class with its gin bindings (t5x style:
  `train.model_config = @ModelConfig()` or just `ModelConfig.num_layers = 4`).
  `init_from`: a model directory whose newest parameters start this run (fine-tuning, continued
  pretraining of an imported model); the optimizer starts fresh. Ignored when resuming.
  """
  del task_registrations  # evaluated by gin for their effect
  # Config objects left unbound are built here, after gin parsed: their classes' bindings apply.
  model_config = model_config or ModelConfig()
  optimizer = optimizer or OptimizerConfig()
  mesh = mesh or partitioning.MeshConfig()
  partitioning.initialize_distributed()
  import_task_module(mixture_or_task_module)
  vocab = task_vocabulary(mixture_or_task_name)
  config = model_config.with_vocab_size(vocab.vocab_size)
  if config.vocab_size < vocab.vocab_size:
    raise ValueError(f"model vocab_size {config.vocab_size} < vocabulary size {vocab.vocab_size}")
  write_model_files(model_dir, config, vocab)

  rules = partitioning.logical_rules()
  device_mesh = partitioning.make_mesh(mesh)
  tx = optimizer.make(train_steps)
  schedule = optimizer.schedule(train_steps)
  build = lambda: _model_and_optimizer(config, tx, seed)
  with jax.set_mesh(device_mesh):
    model, opt = partitioning.create_sharded(build, device_mesh, rules)
  graphdef, state = nnx.split((model, opt))
  del model, opt
  state_sharding = partitioning.state_shardings(state, device_mesh, rules)
  data_sharding = partitioning.batch_sharding(device_mesh, rules)

  manager = checkpoint_manager(model_dir, keep=keep_checkpoints, save_every=checkpoint_every,
                               async_save=async_checkpointing)
  start_step = manager.latest_step() or 0
  if manager.latest_step() == 0:  # training never saves step 0: this is an imported model
    raise ValueError(f"{model_dir} holds an imported model (step 0, no optimizer state): train a new "
                     f"MODEL_DIR from it with --gin.train.init_from=\"'{model_dir}'\"")
  if start_step:
    state = _restore(manager, start_step, state, state_sharding)
    log.info("resumed from step %d of %s", start_step, model_dir)
  elif init_from:
    state[0] = _initial_params(init_from, config, vocab, _abstract(state, state_sharding)[0])
    log.info("initialised parameters from %s", init_from)
  if start_step >= train_steps:
    log.info("already trained %d >= %d steps", start_step, train_steps)
    manager.close()
    return {}

  step_fn = jax.jit(functools.partial(train_step, graphdef, rules=rules, z_loss=optimizer.z_loss),
                    in_shardings=(state_sharding, data_sharding), out_shardings=(state_sharding, None),
                    donate_argnums=0)
  batches = make_train_iterator(mixture_or_task_name, sequence_length, batch_size, seed=seed,
                                start_batch=start_step)
  flops_per_token = config.flops_per_token(sequence_length)
  peak_flops, peak_source = peak_flops_per_device()
  log.info("model: %s parameters; MFU against %.3g FLOP/s per device (%s)", f"{config.num_params():,}",
           peak_flops, peak_source)

  writer = _MetricsWriter(model_dir, enabled=jax.process_index() == 0)
  bar = tqdm(total=train_steps, initial=start_step, desc="train", unit="step",
             disable=not progress or jax.process_index() != 0, dynamic_ncols=True)
  pending: tuple[int, dict[str, jax.Array]] | None = None
  window_start, window_steps, last = time.perf_counter(), 0, {}
  try:
    for step in range(start_step, train_steps):
      local = next(batches)
      batch = partitioning.global_batch(local, data_sharding)
      state, metrics = step_fn(state, batch)
      # Host checks run one step behind so the device is never idle waiting for them.
      if pending is not None:
        _check_finite(*pending)
      pending = (step + 1, metrics)
      window_steps += 1
      done = step + 1
      if done % log_every == 0 or done == train_steps:
        _check_finite(*pending)
        elapsed = time.perf_counter() - window_start
        tokens_per_s = window_steps * batch_size * sequence_length / elapsed
        last = {k: float(v) for k, v in jax.device_get(metrics).items()}
        last.update(step=done, learning_rate=float(schedule(done - 1)), perplexity=math.exp(min(last["nll"], 50.0)),
                    tokens_per_s=tokens_per_s,
                    mfu=tokens_per_s * flops_per_token / (peak_flops * jax.device_count()))
        writer.write(done, last)
        bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{last['mfu']:.1%}")
        window_start, window_steps = time.perf_counter(), 0
      bar.update(1)
      if done % checkpoint_every == 0 or done == train_steps:
        _check_finite(*pending)  # never checkpoint a poisoned state
        _save(manager, done, graphdef, state, config, mixture_or_task_name)
  finally:
    bar.close()
    writer.close()
    manager.wait_until_finished()
    manager.close()
  return last


@gin.configurable
def finetune(init_from: str = gin.REQUIRED) -> dict[str, float]:
  """`train` from another model's parameters: instruction tuning, the benign fine-tuning attack.

  Everything else (task, steps, optimizer, mesh) comes from `train`'s bindings, t5x style:
    safejax finetune --gin_file=runs/finetune_chat.gin --gin.finetune.init_from="'/tmp/base'"
  """
  return train(init_from=init_from)


def _model_and_optimizer(config: ModelConfig, tx: optax.GradientTransformation, seed: int):
  model = build_model(config, seed)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def _check_finite(step: int, metrics: Mapping[str, jax.Array]) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f"loss is {loss} at step {step}; stopped without saving it. The last good checkpoint is "
        "untouched: lower the learning rate, raise warm-up or enable z_loss, then restart.")


def _abstract(state: nnx.State, shardings: nnx.State) -> nnx.State:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)



def _save(manager: ocp.CheckpointManager, step: int, graphdef: nnx.GraphDef, state: nnx.State,
          config: ModelConfig, task: str) -> None:
  model, optimizer = nnx.merge(graphdef, state)
  meta = {"step": step, "input_batches_consumed": step, "mixture_or_task_name": task,
          "model_config": dataclasses.asdict(config)}
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(nnx.state(model)), opt_state=ocp.args.StandardSave(nnx.state(optimizer)),
      meta=ocp.args.JsonSave(meta)), force=True)


def _restore(manager: ocp.CheckpointManager, step: int, state: nnx.State, shardings: nnx.State) -> nnx.State:
  """Restores onto the current mesh, whatever mesh wrote the checkpoint."""
  target = _abstract(state, shardings)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target[0]), opt_state=ocp.args.StandardRestore(target[1]),
      meta=ocp.args.JsonRestore()))
  if restored["meta"]["input_batches_consumed"] != step:
    raise ValueError(f"checkpoint {step} records input position {restored['meta']['input_batches_consumed']}")
  state[0] = restored["params"]
  state[1] = restored["opt_state"]
  return state


def _initial_params(init_from: str, config: ModelConfig, vocab: Vocabulary, target: nnx.State) -> nnx.State:
  """The newest parameters of another model dir, laid out like `target` (any mesh)."""
  source_config = load_model_config(init_from)
  # init_std only says how fresh weights are drawn (imports keep the default).
  if dataclasses.replace(source_config, dtype=config.dtype, remat=config.remat, init_std=config.init_std) != config:
    raise ValueError(f"{init_from} holds a different architecture:\n  {source_config}\nvs\n  {config}")
  if load_vocabulary(init_from) != vocab:
    raise ValueError(f"{init_from} was trained with another vocabulary than {vocab}")
  manager = checkpoint_manager(init_from, async_save=False)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {init_from}/checkpoints")
  params = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
  manager.close()
  return params


class _MetricsWriter:
  """metrics.jsonl (for scripts and tests) and TensorBoard events via tf.summary (GCS included)."""

  def __init__(self, model_dir: str, enabled: bool):
    self.enabled = enabled
    if not enabled:
      return
    import tensorflow as tf

    self._jsonl = (model_path(model_dir) / METRICS_FILE).open("a")
    self._tb = tf.summary.create_file_writer(str(model_path(model_dir) / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    import tensorflow as tf

    self._jsonl.write(json.dumps(metrics) + "\n")
    self._jsonl.flush()
    with self._tb.as_default(step=step):
      for k, v in metrics.items():
        if k != "step":
          tf.summary.scalar(f"train/{k}", v)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
