"""Model directories: where a model's checkpoints, vocabulary, config and metrics live, and how to
load one for inference. What serving, decoding, evaluation and the Hugging Face bridge use; the
trainer writes through the same functions.

  model_dir/
    checkpoints/<step>/{params, opt_state, meta, input}   Orbax CheckpointManager items (input: each
                                                   process's tf.data iterator, `safejax.train`)
    damaged_checkpoints/<step>                     steps that failed to restore, moved aside by
                                                   training (`restore_newest`); never deleted
    vocab.model                                    the SentencePiece vocabulary
    model_config.json                              `ModelConfig` as JSON
    metrics.jsonl                                  one JSON object per logged step
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from safejax import UserError
from safejax.model import Decoder, ModelConfig, build_model

if TYPE_CHECKING:  # the vocabulary pulls in seqio and TensorFlow: imported where it is used, so
  # that the train step alone (benchmarks, accelerator checks) runs without them.
  from safejax.vocab import Vocabulary

VOCAB_FILE = "vocab.model"
CONFIG_FILE = "model_config.json"
METRICS_FILE = "metrics.jsonl"
DAMAGED_DIR = "damaged_checkpoints"
log = logging.getLogger(__name__)
T = TypeVar("T")


class NoUsableCheckpointError(UserError, FileNotFoundError):
  """A model directory with no checkpoint that restores (none at all, or every one damaged)."""


def model_path(path: str) -> epath.Path:
  """A local or gs:// path. os.path.abspath (and epath's resolve) would turn gs://b/m into ./gs:/b/m."""
  return epath.Path(path if "://" in path else os.path.abspath(path))


def checkpoint_manager(model_dir: str, *, keep: int = 3, save_every: int | None = None,
                       async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every or 1, enable_async_checkpointing=async_save,
      create=True)
  return ocp.CheckpointManager(model_path(model_dir) / "checkpoints",
                               item_names=("params", "opt_state", "meta", "input"), options=options)


def write_model_files(model_dir: str, config: ModelConfig, vocab: Vocabulary) -> None:
  """Copies the vocabulary and writes the model config beside the checkpoints (once)."""
  from safejax.vocab import save_vocabulary

  model_path(model_dir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() != 0:
    return
  save_vocabulary(vocab, model_dir)
  (model_path(model_dir) / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))


def load_model_config(model_dir: str) -> ModelConfig:
  return ModelConfig(**json.loads((model_path(model_dir) / CONFIG_FILE).read_text()))


def load_for_inference(model_dir: str, step: int | None = None) -> tuple[Decoder, Vocabulary]:
  """The model (parameters of the newest or given checkpoint) and vocabulary of a model dir."""
  from safejax.vocab import load_vocabulary

  config = load_model_config(model_dir)
  vocab = load_vocabulary(model_dir)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  manager = checkpoint_manager(model_dir, async_save=False)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
  restore = lambda s: manager.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
  try:
    if step is None:  # the newest that loads; a reader never moves anything (training does)
      step, restored = restore_newest(manager, restore, move_aside=False)
    else:
      restored = restore(step)
  finally:
    manager.close()
  return nnx.merge(graphdef, restored), vocab


def restore_newest(manager: ocp.CheckpointManager, restore: Callable[[int], T], *,
                   move_aside: bool) -> tuple[int, T]:
  """(step, restore(step)) of the newest step of `manager` that restores.

  A damaged step (an array file cut short, its metadata gone: a crash while copying, a full
  disk) costs that step, not the run: each step that fails is named in one logged line with its
  error, and the next older one is tried. With `move_aside` (training, which will write those
  step numbers again) the failed steps newer than the one restored are moved to
  `model_dir/damaged_checkpoints/` (never deleted: a person may want them back). Nothing is moved
  when no step restores (a config that fits none of them is the likelier cause).

  Raises:
    NoUsableCheckpointError: no step restores (one line naming each step and its error).
  """
  directory = epath.Path(manager.directory)
  failed: list[tuple[int, str]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = restore(step)
    except Exception as e:  # noqa: BLE001  whatever a damaged step raises (TensorStore, pytree, file)
      failed.append((step, _reason(e)))
      continue
    for bad, reason in failed:
      where = f"moved to {_move_aside(manager, bad)}" if move_aside else "left in place"
      log.warning("checkpoint step %d of %s cannot be restored (%s); %s; using step %d", bad, directory, reason,
                  where, step)
    if move_aside and failed:
      manager.reload()
    return step, restored
  if not failed:
    raise NoUsableCheckpointError(f"no checkpoint under {directory}")
  raise NoUsableCheckpointError(f"no checkpoint under {directory} restores: " +
                                "; ".join(f"step {step}: {reason}" for step, reason in failed))


def _reason(error: Exception) -> str:
  """An error in a few words: its type and first line (TensorStore's repr of its spec cut off)."""
  first = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
  return f"{type(error).__name__}: {first[:200]}"


def _move_aside(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  """Moves a damaged step's folder to model_dir/damaged_checkpoints/<step>[.n] (by process 0;
  returns where it goes)."""
  aside = epath.Path(manager.directory).parent / DAMAGED_DIR
  target, n = aside / str(step), 0
  while target.exists():
    n += 1
    target = aside / f"{step}.{n}"
  if jax.process_index() == 0:
    aside.mkdir(parents=True, exist_ok=True)
    ocp.step.find_step_path(manager.directory, ocp.step.standard_name_format(), step=step).rename(target)
  return target


def read_metrics(model_dir: str) -> list[dict[str, float]]:
  """The logged metrics; after resumes the newest record of each step wins.

  A last line without its newline is a record still being written (or cut by a crash): it is left
  out. A damaged line anywhere else raises ValueError naming the file and line.
  """
  by_step = {}
  path = model_path(model_dir) / METRICS_FILE
  with path.open() as f:
    lines = f.readlines()
  for number, line in enumerate(lines, start=1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines) and not line.endswith("\n"):
        log.warning("%s: leaving out the unfinished last line %d", path, number)
        break
      raise ValueError(f"{path}:{number}: not a metrics record ({e})") from None
    by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]
