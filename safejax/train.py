"""The trainer: SeqIO input, one readable sharded train step, Orbax checkpoints, metrics.

Launched t5x-style through gin (gin/runs/*.gin bind the macros MODEL_DIR, TRAIN_STEPS, BATCH_SIZE,
TASK_FEATURE_LENGTHS, MIXTURE_OR_TASK_NAME, MIXTURE_OR_TASK_MODULE):

  safejax train --gin_file=models/demo.gin --gin_file=runs/pretrain_text.gin \
      --gin.MODEL_DIR="'/tmp/demo'" --gin.TEXT_FILES="'docs.jsonl'" --gin.VOCAB="'vocab.model'"

The same code runs on one CPU, on 8 fake CPU devices and on a TPU pod (one process per host,
`jax.distributed` initialised first; each host reads its shard of the input).

Checkpoints (Orbax CheckpointManager, async) hold four items: `params` (the model state),
`opt_state` (the optimizer state; flax 0.12 keeps it apart from the parameters), `meta` (step,
input position, config) and `input` (each process's tf.data iterator state). Restarting the same
command resumes from the newest checkpoint, restores the iterator instead of re-reading the
consumed input, and reproduces the losses of an uninterrupted run. The vocabulary and model config
are copied beside the checkpoints so a model directory is self-contained for `load_for_inference`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from tqdm.auto import tqdm

from safejax import UserError, partitioning
from safejax.checkpoints import (METRICS_FILE, checkpoint_manager, load_model_config, model_path, restore_newest,
                                 write_model_files)
from safejax.model import Decoder, ModelConfig, build_model
from safejax.model.losses import chunked_cross_entropy_loss, cross_entropy_loss

if TYPE_CHECKING:  # the vocabulary pulls in seqio and TensorFlow: imported where it is used, so
  # that the train step alone (benchmarks, accelerator checks) runs without them.
  from safejax.vocab import Vocabulary

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


# Positions per chunk of the chunked loss (B x C); 0 selects the plain loss over full logits.
DEFAULT_LOSS_CHUNK_TOKENS = 2048


def model_loss(model: Decoder, batch: Mapping[str, jax.Array], z_loss: float = 0.0,
               loss_chunk_tokens: int = DEFAULT_LOSS_CHUNK_TOKENS) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The training loss of a packed batch: (loss, {"nll", "tokens"}).

  loss_chunk_tokens > 0: `chunked_cross_entropy_loss` from the final hidden states (never holds
  the [B, T, V] logits); 0: `cross_entropy_loss` over the full logits (the reference).
  """
  inputs = (batch["decoder_input_tokens"], batch["decoder_positions"], batch["decoder_segment_ids"])
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  if not loss_chunk_tokens:
    logits, _ = model(*inputs)
    return cross_entropy_loss(logits, targets, weights, z_loss)
  hidden, _ = model.hidden_states(*inputs)
  embedding, vocab_major = model.output_embedding()
  return chunked_cross_entropy_loss(hidden, embedding, targets, weights, z_loss, chunk_tokens=loss_chunk_tokens,
                                    compute_dtype=model.cfg.dtype, embedding_is_vocab_major=vocab_major)


def train_step(graphdef: nnx.GraphDef, state: nnx.State, batch: Mapping[str, jax.Array], *,
               rules: partitioning.Rules, z_loss: float,
               loss_chunk_tokens: int = DEFAULT_LOSS_CHUNK_TOKENS) -> tuple[nnx.State, dict[str, jax.Array]]:
  """One optimizer step on a packed batch (seqio DecoderFeatureConverter features).

  state: nnx.State of (model, optimizer). batch: decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights, decoder_segment_ids, decoder_positions, each [B, T]. loss_chunk_tokens:
  see `model_loss`.
  """
  with nnx.logical_axis_rules(rules):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model: Decoder):
      return model_loss(model, batch, z_loss, loss_chunk_tokens)

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

  from safejax.vocab import ReservedTokens

  vocab = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
  if not isinstance(vocab, ReservedTokens):
    raise TypeError(f"{mixture_or_task_name}: targets vocabulary is {type(vocab).__name__}, expected "
                    "safejax.vocab's SafejaxVocabulary or HfTokenizerVocabulary (reserved harm tag and chat tokens)")
  return vocab


class InputIterator:
  """This process's batches as numpy int32 features, from a tf.data iterator that checkpoints.

  The iterator's position (shuffle buffer, file offsets, prefetched batches) is saved with every
  checkpoint (`InputSave`, the checkpoint's `input` item), so a restart restores it instead of
  reading the consumed batches again: resuming costs the same at step 10 and at step 10^6.
  """

  def __init__(self, dataset):
    self.iterator = iter(dataset)
    # None until the first save tries; False when tf.data cannot serialize this pipeline (it
    # holds a stateful Python function: `tf.py_function`, `Dataset.from_generator`), so resume
    # falls back to re-reading the consumed batches.
    self.checkpointable: bool | None = None

  def __iter__(self) -> "InputIterator":
    return self

  def close(self) -> None:
    """Stops the tf.data pipeline now. Left alive until the interpreter exits (an exception's
    traceback keeps it so), its worker threads, which call into Python (the corpus parse), can
    deadlock the shutdown."""
    self.iterator = None

  def __next__(self) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
      batch = next(self.iterator)
    except tf.errors.OpError as e:
      from tasks.text import CorpusError

      corpus_error = CorpusError.carried_by(e)
      if corpus_error is None:
        raise
    else:
      return {k: batch[k].numpy().astype(np.int32) for k in MODEL_FEATURES}
    # The corpus's problem in one line, not TensorFlow's two tracebacks; raised out here, with no
    # TensorFlow error as its context, whose traceback would keep the pipeline alive (see close).
    raise corpus_error


def make_train_iterator(mixture_or_task_name: str, sequence_length: int, batch_size: int, *,
                        seed: int, start_batch: int = 0, split: str = "train",
                        prompt_length: int | None = None) -> InputIterator:
  """This process's share of the global batches, as numpy, starting at batch `start_batch`.

  For prompt/reply tasks (instruction tuning) `prompt_length` tokens of each packed sequence are the
  prompts' (default half) and the rest the replies'; longer prompts or replies are cut by seqio.

  Deterministic for a seed. A resumed run restores the iterator's checkpointed state into a
  fresh iterator (start_batch 0); `start_batch` > 0 is the fallback for checkpoints without that
  state, and skips by re-reading the consumed batches (O(steps)).
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
    prompt_length = sequence_length // 2 if prompt_length is None else prompt_length
    if not 0 < prompt_length < sequence_length:
      raise ValueError(f"prompt_length must lie in (0, {sequence_length}), got {prompt_length}")
    lengths = {"inputs": prompt_length, "targets": sequence_length - prompt_length}
    converter = seqio.PrefixLMFeatureConverter(loss_on_targets_only=True, pack=True, bos_id=start_id)
  else:
    lengths = {"targets": sequence_length}
    converter = seqio.DecoderFeatureConverter(pack=True, bos_id=start_id)
  ds = task.get_dataset(sequence_length=lengths, split=split, shuffle=True, seed=seed, num_epochs=None,
                        shard_info=seqio.ShardInfo(index=host, num_shards=num_hosts), use_cached=False)
  ds = converter(ds, lengths)
  ds = ds.batch(batch_size // num_hosts, drop_remainder=True)
  if start_batch:
    ds = ds.skip(start_batch)
  return InputIterator(ds.prefetch(2))


def _input_state_file(directory: epath.Path) -> epath.Path:
  """Each process checkpoints its own iterator (its own shard of the input)."""
  return directory / f"process_{jax.process_index()}_of_{jax.process_count()}"


class InputCheckpointHandler(ocp.CheckpointHandler):
  """Saves and restores each process's tf.data iterator (tf.train.Checkpoint) in an Orbax item.

  Synchronous: Orbax runs it while `CheckpointManager.save` is called, so the saved position is
  the one after exactly the batches trained so far, even when the arrays are written async.
  """

  def save(self, directory: epath.Path, args: "InputSave") -> None:
    import tensorflow as tf

    if args.iterator.checkpointable is False:
      return
    try:
      tf.train.Checkpoint(iterator=args.iterator.iterator).write(str(_input_state_file(directory)))
      args.iterator.checkpointable = True
    except tf.errors.FailedPreconditionError as e:  # "PyFunc is stateful": the item stays empty
      args.iterator.checkpointable = False
      log.warning("the input pipeline cannot be checkpointed (%s): a restart will skip the consumed "
                      "batches by reading them again", str(e).split(" [Op:")[0].split("}} ")[-1])

  def restore(self, directory: epath.Path, args: "InputRestore") -> InputIterator:
    import tensorflow as tf

    tf.train.Checkpoint(iterator=args.iterator.iterator).read(str(_input_state_file(directory))).assert_consumed()
    return args.iterator


@ocp.args.register_with_handler(InputCheckpointHandler, for_save=True)
@dataclasses.dataclass
class InputSave(ocp.args.CheckpointArgs):
  iterator: InputIterator


@ocp.args.register_with_handler(InputCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class InputRestore(ocp.args.CheckpointArgs):
  """Restores into `iterator`, a fresh iterator of the same pipeline (start_batch 0)."""

  iterator: InputIterator


def has_input_state(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether checkpoint `step` holds this process's input position (written by this process count)."""
  item = epath.Path(manager.directory) / str(step) / "input"
  return item.exists() and any(p.name.startswith(_input_state_file(item).name + ".") for p in item.iterdir())


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
    prompt_length: int | None = None,
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
    loss_chunk_tokens: int = DEFAULT_LOSS_CHUNK_TOKENS,
) -> dict[str, float]:
  """Trains (or resumes) a decoder on a SeqIO task or mixture; returns the last metrics.

  `task_registrations` is for gin: references such as `@register_text_task()` are evaluated when
  train is called, registering the run's tasks before `mixture_or_task_name` is looked up.
  `model_config`, `optimizer`, `mesh`: None builds the class with its gin bindings (t5x style:
  `train.model_config = @ModelConfig()` or just `ModelConfig.num_layers = 4`).
  `init_from`: a model directory whose newest parameters start this run (fine-tuning, continued
  pretraining of an imported model); the optimizer starts fresh. Ignored when resuming.
  `loss_chunk_tokens`: positions per chunk of the loss (`model_loss`); 0 for the plain loss.
  `prompt_length`: of a prompt/reply task's `sequence_length`, the prompts' share (default half).
  """
  del task_registrations  # evaluated by gin for their effect
  _check_positive(train_steps=train_steps, batch_size=batch_size, sequence_length=sequence_length,
                  log_every=log_every, checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints)
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
  if _finished(model_dir, train_steps):  # a finished run writes nothing: its directory may be read-only now
    return {}
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
  if manager.latest_step() == 0:  # training never saves step 0: this is an imported model
    raise ValueError(f"{model_dir} holds an imported model (step 0, no optimizer state): train a new "
                     f"MODEL_DIR from it with --gin.train.init_from=\"'{model_dir}'\"")
  start_step = 0
  make_batches = functools.partial(make_train_iterator, mixture_or_task_name, sequence_length, batch_size, seed=seed,
                                   prompt_length=prompt_length)
  if manager.latest_step():
    # The newest step that restores (a damaged one is moved aside), with the input positioned
    # after it: from its checkpointed iterator state, or for checkpoints without one (older
    # ones, or another process count) by re-reading the consumed batches.
    def resume(step: int) -> tuple[nnx.State, InputIterator, bool]:
      restore_input = has_input_state(manager, step)
      batches = make_batches(start_batch=0 if restore_input else step)
      return _restore(manager, step, state, state_sharding, batches if restore_input else None), batches, restore_input

    start_step, (state, batches, restored_input) = restore_newest(manager, resume, move_aside=True)
    log.info("resumed from step %d of %s (input: %s)", start_step, model_dir,
             "iterator state restored" if restored_input else f"no saved iterator state, re-read {start_step} batches")
  else:
    batches = make_batches()
  if not start_step and init_from:
    state[0] = _initial_params(init_from, config, vocab, _abstract(state, state_sharding)[0])
    log.info("initialised parameters from %s", init_from)

  step_fn = jax.jit(functools.partial(train_step, graphdef, rules=rules, z_loss=optimizer.z_loss,
                                      loss_chunk_tokens=loss_chunk_tokens),
                    in_shardings=(state_sharding, data_sharding), out_shardings=(state_sharding, None),
                    donate_argnums=0)
  flops_per_token = config.flops_per_token(sequence_length)
  peak_flops, peak_source = peak_flops_per_device()
  log.info("model: %s parameters; MFU against %.3g FLOP/s per device (%s)", f"{config.num_params():,}",
           peak_flops, peak_source)

  writer = _MetricsWriter(model_dir, enabled=jax.process_index() == 0, start_step=start_step)
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
        _save(manager, done, graphdef, state, config, mixture_or_task_name, batches)
  finally:
    bar.close()
    writer.close()
    manager.wait_until_finished()
    manager.close()
    batches.close()
  return last


@gin.configurable
def finetune(init_from: str = gin.REQUIRED) -> dict[str, float]:
  """`train` from another model's parameters: instruction tuning, the benign fine-tuning attack.

  Everything else (task, steps, optimizer, mesh) comes from `train`'s bindings, t5x style:
    safejax finetune --gin_file=runs/finetune_chat.gin --gin.finetune.init_from="'/tmp/base'"
  """
  return train(init_from=init_from)


def _check_positive(**values: Any) -> None:
  """Raises UserError naming the first gin binding of `train` that is not a positive integer."""
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise UserError(f"train.{name} must be a positive integer, got {value!r}")


def _finished(model_dir: str, train_steps: int) -> bool:
  """Whether `model_dir` already holds a checkpoint of step >= train_steps (logged). Looks
  without creating anything, so a finished, read-only model directory is fine."""
  steps = ocp.step.checkpoint_steps(model_path(model_dir) / "checkpoints")
  if not steps or max(steps) < train_steps:
    return False
  log.info("already trained %d >= %d steps", max(steps), train_steps)
  return True


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
          config: ModelConfig, task: str, batches: InputIterator) -> None:
  model, optimizer = nnx.merge(graphdef, state)
  meta = {"step": step, "input_batches_consumed": step, "mixture_or_task_name": task,
          "num_processes": jax.process_count(), "model_config": dataclasses.asdict(config)}
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(nnx.state(model)), opt_state=ocp.args.StandardSave(nnx.state(optimizer)),
      meta=ocp.args.JsonSave(meta), input=InputSave(batches)), force=True)


def _restore(manager: ocp.CheckpointManager, step: int, state: nnx.State, shardings: nnx.State,
             batches: InputIterator | None) -> nnx.State:
  """Restores onto the current mesh, whatever mesh wrote the checkpoint, and the input position
  into `batches` (a fresh iterator) when given."""
  target = _abstract(state, shardings)
  items = dict(params=ocp.args.StandardRestore(target[0]), opt_state=ocp.args.StandardRestore(target[1]),
               meta=ocp.args.JsonRestore())
  if batches is not None:
    items["input"] = InputRestore(batches)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  if restored["meta"]["input_batches_consumed"] != step:
    raise ValueError(f"checkpoint {step} records input position {restored['meta']['input_batches_consumed']}")
  state[0] = restored["params"]
  state[1] = restored["opt_state"]
  return state


def _initial_params(init_from: str, config: ModelConfig, vocab: Vocabulary, target: nnx.State) -> nnx.State:
  """The newest parameters of another model dir, laid out like `target` (any mesh)."""
  from safejax.vocab import load_vocabulary

  source_config = load_model_config(init_from)
  # init_std only says how fresh weights are drawn (imports keep the default); dtype, remat, the
  # layer scan and the attention kernel say how the same parameters are computed with.
  how = dict(dtype=config.dtype, remat=config.remat, init_std=config.init_std, scan_layers=config.scan_layers,
             attention=config.attention)
  if dataclasses.replace(source_config, **how) != config:
    raise ValueError(f"{init_from} holds a different architecture:\n  {source_config}\nvs\n  {config}")
  if load_vocabulary(init_from) != vocab:
    raise ValueError(f"{init_from} was trained with another vocabulary than {vocab}")
  manager = checkpoint_manager(init_from, async_save=False)
  try:
    _, params = restore_newest(
        manager, lambda step: manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))[
            "params"], move_aside=False)
  finally:
    manager.close()
  return params


class _MetricsWriter:
  """metrics.jsonl (for scripts and tests) and TensorBoard events via tf.summary (GCS included).

  metrics.jsonl holds one row per logged step: a run resumed from `start_step` first drops the
  rows after it (steps it is about to train again, logged before a crash or after a damaged
  checkpoint), so the replayed steps are not listed twice.
  """

  def __init__(self, model_dir: str, enabled: bool, start_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    import tensorflow as tf

    path = model_path(model_dir) / METRICS_FILE
    if path.exists():
      _drop_metrics_after(path, start_step)
    self._jsonl = path.open("a")
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


def _drop_metrics_after(path: epath.Path, step: int) -> None:
  """Rewrites metrics.jsonl without the rows of steps after `step` (and a last line cut short by
  a crash); an unreadable line in the middle is kept as it is."""
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record_step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
      if line.endswith("\n"):
        kept.append(line)
      continue
    if record_step <= step:
      kept.append(line)
  if kept != lines:
    tmp = path.parent / f"{path.name}.tmp"
    tmp.write_text("".join(kept))
    tmp.replace(path)
