"""Model directories: where a model's checkpoints, vocabulary, config and metrics live, and how to
load one for inference. What serving, decoding, evaluation and the Hugging Face bridge use; the
trainer writes through the same functions.

  model_dir/
    checkpoints/<step>/{params, opt_state, meta}   Orbax CheckpointManager items
    vocab.model                                    the SentencePiece vocabulary
    model_config.json                              `ModelConfig` as JSON
    metrics.jsonl                                  one JSON object per logged step
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from safejax.model import Decoder, ModelConfig, build_model
from safejax.vocab import Vocabulary, load_vocabulary, save_vocabulary

VOCAB_FILE = "vocab.model"
CONFIG_FILE = "model_config.json"
METRICS_FILE = "metrics.jsonl"
log = logging.getLogger(__name__)


def model_path(path: str) -> epath.Path:
  """A local or gs:// path. os.path.abspath (and epath's resolve) would turn gs://b/m into ./gs:/b/m."""
  return epath.Path(path if "://" in path else os.path.abspath(path))


def checkpoint_manager(model_dir: str, *, keep: int = 3, save_every: int | None = None,
                       async_save: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_every or 1, enable_async_checkpointing=async_save,
      create=True)
  return ocp.CheckpointManager(model_path(model_dir) / "checkpoints",
                               item_names=("params", "opt_state", "meta"), options=options)


def write_model_files(model_dir: str, config: ModelConfig, vocab: Vocabulary) -> None:
  """Copies the vocabulary and writes the model config beside the checkpoints (once)."""
  model_path(model_dir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() != 0:
    return
  save_vocabulary(vocab, model_dir)
  (model_path(model_dir) / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))


def load_model_config(model_dir: str) -> ModelConfig:
  return ModelConfig(**json.loads((model_path(model_dir) / CONFIG_FILE).read_text()))


def load_for_inference(model_dir: str, step: int | None = None) -> tuple[Decoder, Vocabulary]:
  """The model (parameters of the newest or given checkpoint) and vocabulary of a model dir."""
  config = load_model_config(model_dir)
  vocab = load_vocabulary(model_dir)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  manager = checkpoint_manager(model_dir, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {model_dir}/checkpoints")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
  restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  manager.close()
  return nnx.merge(graphdef, restored["params"]), vocab


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
