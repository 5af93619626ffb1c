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
import os

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from safejax.model import Decoder, ModelConfig, build_model
from safejax.vocab import SafejaxVocabulary

VOCAB_FILE = "vocab.model"
CONFIG_FILE = "model_config.json"
METRICS_FILE = "metrics.jsonl"


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


def write_model_files(model_dir: str, config: ModelConfig, vocab: SafejaxVocabulary) -> None:
  """Copies the vocabulary and writes the model config beside the checkpoints (once)."""
  model_path(model_dir).mkdir(parents=True, exist_ok=True)
  if jax.process_index() != 0:
    return
  vocab_src, vocab_dst = model_path(vocab.sentencepiece_model_file), model_path(model_dir) / VOCAB_FILE
  if vocab_src != vocab_dst:
    vocab_src.copy(vocab_dst, overwrite=True)
  (model_path(model_dir) / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))


def load_model_config(model_dir: str) -> ModelConfig:
  return ModelConfig(**json.loads((model_path(model_dir) / CONFIG_FILE).read_text()))


def load_for_inference(model_dir: str, step: int | None = None) -> tuple[Decoder, SafejaxVocabulary]:
  """The model (parameters of the newest or given checkpoint) and vocabulary of a model dir."""
  config = load_model_config(model_dir)
  vocab = SafejaxVocabulary(os.path.join(model_dir, VOCAB_FILE))
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
  """The logged metrics; after resumes the newest record of each step wins."""
  by_step = {}
  with (model_path(model_dir) / METRICS_FILE).open() as f:
    for line in f:
      record = json.loads(line)
      by_step[record["step"]] = record
  return [by_step[s] for s in sorted(by_step)]
